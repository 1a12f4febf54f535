#!/usr/bin/env bash
# One command, one table: pretraining images/s, MFU and peak memory (bf16, batch 64 and 128, eager
# and compiled), the window attention's SDPA backend, the data loader alone (15 workers),
# fine-tuning images/s, the evaluator and re-ranking at Market size. No network needed.
#   bash benchmarks/gpu_check.sh [--tiny] [--skip-compile] [--json FILE]
# PYTHON picks the interpreter (default: python3 on PATH, e.g. the project's venv).
set -euo pipefail
cd "$(dirname "$0")/.."
exec env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
