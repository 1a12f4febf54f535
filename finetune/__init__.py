"""ReID fine-tuning (docs/FINETUNING.md).

Entry points: ``finetune/run.py`` (training, ``--eval-only``) and ``finetune/export.py`` (ONNX).
Library: ``finetune.model`` (``ReIDModel``, ``ReIDOutput``, ``build_backbone``), ``finetune.losses``,
``finetune.optim`` (parameter groups, ``LRSchedule``), ``finetune.step`` (``reid_step``),
``finetune.checkpoint`` (``initialize_model``, ``load_finetuned``), ``finetune.evaluation``.
"""
