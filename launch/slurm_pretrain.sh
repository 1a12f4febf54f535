#!/usr/bin/env bash
# SOLIDER pretraining on 2 nodes x 8 GPUs under SLURM (one task per node; accelerate starts the
# 8 processes of each node). Submit with:  sbatch launch/slurm_pretrain.sh [key=value ...]
#SBATCH --job-name=solider-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
# Pre-emption: SLURM sends SIGTERM to the job's processes (pre-emption, scancel) and, by --signal,
# SIGUSR1 to this shell 300 s before the time limit; this shell passes it on to srun as SIGTERM.
# pretrain.py then finishes its step, saves last.pt and exits with status 75 (EX_TEMPFAIL), on which
# (or after a passed-on signal) the job is requeued; resume=auto below continues from last.pt.
set -euo pipefail

CONFIG=${CONFIG:-configs/pretrain/swin_tiny.yaml}
OUTPUT_DIR=${OUTPUT_DIR:-runs/pretrain_swin_tiny}
# sed reads all of it: head would exit early, and a SIGPIPE to scontrol fails the job under pipefail
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
MASTER_PORT=${MASTER_PORT:-29500}

# The inner shell receives the values as arguments ("$@"), never spliced into its command string,
# so overrides with spaces or shell characters reach pretrain.py verbatim; SLURM_NODEID differs per
# node, so the inner shell reads it. exec: srun's signals (pre-emption) reach accelerate directly.
REQUEUE_STATUS=75  # solider.utils.preemption.REQUEUE_EXIT_CODE
srun --kill-on-bad-exit=1 bash -c 'exec accelerate launch \
    --config_file launch/accelerate/multi_node_2x8.yaml \
    --num_machines "$SLURM_NNODES" --num_processes "$((SLURM_NNODES * 8))" \
    --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$1" --main_process_port "$2" \
    solider/pretrain.py --config "$3" "output_dir=$4" resume=auto "${@:5}"' \
    bash "$MASTER_ADDR" "$MASTER_PORT" "$CONFIG" "$OUTPUT_DIR" "$@" &
SRUN_PID=$!
SIGNALLED=0
trap 'SIGNALLED=1; kill -TERM "$SRUN_PID" 2>/dev/null || true' USR1 TERM
status=0
wait "$SRUN_PID" || status=$?
if [ "$SIGNALLED" = 1 ]; then  # wait returned at the signal: wait for the run to save and exit
    status=0
    wait "$SRUN_PID" || status=$?
fi
if [ "$status" = "$REQUEUE_STATUS" ] || [ "$SIGNALLED" = 1 ]; then
    echo "pre-empted (status $status): requeueing job $SLURM_JOB_ID; resume=auto continues from last.pt"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"
