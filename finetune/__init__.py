"""ReID fine-tuning (docs/FINETUNING.md).

Entry points: ``finetune/run.py`` (training, ``--eval-only``), ``finetune/export.py`` (ONNX) and
``finetune/infer.py`` (embeddings for deployment: TAO JSON or .npy, from a checkpoint or ONNX file).
Library: ``finetune.model`` (``ReIDModel``, ``ReIDOutput``, ``build_backbone``), ``finetune.resnet``
(ResNet backbones, last stride 1, ImageNet weights from disk), ``finetune.losses``,
``finetune.optim`` (parameter groups, ``LRSchedule``), ``finetune.step`` (``reid_step``),
``finetune.checkpoint`` (``initialize_model``, ``load_finetuned``), ``finetune.evaluation``.
"""
