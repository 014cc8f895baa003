#!/usr/bin/env bash
# Set up (idempotent) and run the main job offline: train an SAE on the embedded SmolLM2 with the
# bundled corpus, evaluate it, and write a feature dashboard to runs/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The main job trains on the residual stream (block 15 output); see docs/sae.md for its figures.
exec .venv/bin/mlxterp run --component output --out runs/default "$@"
