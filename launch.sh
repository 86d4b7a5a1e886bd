#!/usr/bin/env bash
# Per-rank entry point of megatron_vist2 training. Every launcher starts this once per rank:
#   deepspeed --hostfile HOSTS --no_ssh_check --master_addr ADDR --no_python ./launch.sh ARGS
#   torchrun --nproc_per_node N --no-python ./launch.sh ARGS
#   srun ./launch.sh ARGS            (SLURM: rank variables are derived below)
# ARGS are those of `python -m megatron_vist2.train`: --preset NAME and dotted overrides.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Under SLURM without another launcher: one task per rank, rank 0's host is the master.
if [[ -z "${RANK:-}" && -n "${SLURM_PROCID:-}" ]]; then
  export RANK="$SLURM_PROCID"
  export WORLD_SIZE="${SLURM_NTASKS:-${SLURM_NPROCS:?SLURM_NTASKS is not set}}"
  export LOCAL_RANK="${SLURM_LOCALID:-0}"
  export LOCAL_WORLD_SIZE="${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE%%(*}}"
  if [[ -z "${MASTER_ADDR:-}" ]]; then
    MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    export MASTER_ADDR
  fi
  export MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
fi

# GPU environment defaults (CUDA_DEVICE_MAX_CONNECTIONS=1 with tensor parallelism, the CUDA
# allocator's expandable segments, NCCL's flight recorder) are set by the entry point itself
# (parallel/distributed.py gpu_environment), for every launcher; exported values win.
# JIT-built DeepSpeed ops (shm_comm on the CPU) are cached in a git-ignored folder.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$here/.cache/torch_extensions}"

# The deepspeed launcher appends --local_rank=N; LOCAL_RANK already carries it.
args=()
for a in "$@"; do
  case "$a" in --local_rank=*) ;; *) args+=("$a") ;; esac
done
exec "${PYTHON:-python3}" -m megatron_vist2.train "${args[@]}"
