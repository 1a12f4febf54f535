"""Evaluation under the Market-1501 protocol: CMC / mAP / mINP (:mod:`eval.metrics`), k-reciprocal
re-ranking (:mod:`eval.rerank`), feature extraction, distances and feature files
(:mod:`eval.features`), plots (:mod:`eval.plots`) and the ``eval/evaluate.py`` command.

The library modules depend on numpy, torch and matplotlib only (nothing from ``solider`` or
``finetune``). Import what you need, e.g. ``from eval.metrics import evaluate_rank``.
"""
