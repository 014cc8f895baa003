#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on MLX's CPU backend, with OpenBLAS preloaded on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for blas in /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3; do
  [ -e "$blas" ] && export LD_PRELOAD="$blas${LD_PRELOAD:+:$LD_PRELOAD}" && break
done
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then  # a CPU newer than OpenBLAS: its widest target, not SSE3
  core=$(.venv/bin/python -c 'from mlxterp import platform as p; print(p.openblas_path() and p.forced_openblas_core(p.openblas_path()) or "")')
  if [ -n "$core" ]; then export OPENBLAS_CORETYPE="$core"; fi
fi
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
