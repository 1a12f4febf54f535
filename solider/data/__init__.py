"""Data for SOLIDER pretraining and ReID fine-tuning (see docs/DATA.md).

Modules: ``images`` (decoding), ``market`` (Market-1501 / MSMT17 readers), ``unlabeled`` (crop folders and
list files), ``keypoints`` (COCO-17 / OpenPose-18 / ORA-16 readers), ``multicrop`` and ``transforms``
(augmentations), ``augment_ops`` (batched photometric ops), ``sampler`` (P x K batches), ``datasets``,
``synthetic`` (+ ``synthetic_people``, ``synthetic_render``, ``synthetic_cameras``, ``synthetic_kitti``)
and ``kitti`` (KITTI / ORA -> Market-1501 converter). Nothing is imported here: import the module you need.
"""
