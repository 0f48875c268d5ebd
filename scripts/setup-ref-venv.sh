#!/usr/bin/env bash
# Create the Python virtual environment used to regenerate reference fixtures.
#
# What it makes: a venv at ${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv} holding PINNED
# versions of llama-cpp-python (llama.cpp is compiled from the sdist, CPU only), gguf, numpy and
# safetensors. Reference scripts such as scripts/ref-llamacpp.py run with that venv's python.
#
# Usage:
#   scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python scripts/ref-llamacpp.py
#
# The fixtures those scripts write (tests/fixtures/...) are committed, so CI and `cargo test`
# never need this venv, llama.cpp or Python at all; only maintainers regenerating fixtures do.
#
# Idempotent: a second run finds every pinned version installed and does nothing (no rebuild).
# The llama.cpp build takes a while on a small machine (it is limited to 2 parallel jobs);
# set CMAKE_BUILD_PARALLEL_LEVEL to use more.
set -euo pipefail

venv="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}"
python="${PYTHON:-python3}"
log() { printf 'setup-ref-venv: %s\n' "$*" >&2; }

# Pinned versions. Changing LLAMA_CPP_PYTHON changes the llama.cpp the fixtures come from:
# regenerate the fixtures (scripts/ref-llamacpp.py) and commit them together with the bump.
LLAMA_CPP_PYTHON=0.3.36
GGUF=0.19.0
NUMPY=2.4.6
SAFETENSORS=0.8.0

pins=(
  "llama-cpp-python==$LLAMA_CPP_PYTHON"
  "gguf==$GGUF"
  "numpy==$NUMPY"
  "safetensors==$SAFETENSORS"
)

# --- torch/transformers ---------------------------------------------------------------------
# Placeholder: torch / transformers pins for the Hugging Face reference scripts are added here
# later (see also scripts/setup-ref-venv-torch.sh). Append them to `pins` like the lines above.
# --- end torch/transformers -----------------------------------------------------------------

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv at $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi

# Skip pip entirely when every pin is already satisfied (fast, offline second run).
if "$venv/bin/python" - "${pins[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
then
  log "all pinned packages already installed in $venv"
  exit 0
fi

log "installing ${pins[*]} into $venv (llama.cpp is compiled from source; this takes a while)"
start=$(date +%s)
# llama-cpp-python ships only an sdist on PyPI: pip builds llama.cpp with CMake (CPU backend).
# The build is for AVX2 + FMA rather than llama.cpp's default GGML_NATIVE=ON: the native build
# segfaults on the first eval of a Q4_1 model on AVX-512/AMX machines of this kind, and the
# AVX2 build is the one whose arithmetic the ggml teacher path reproduces bit for bit. Set
# CMAKE_ARGS to build otherwise. Build tools (cmake, ninja, scikit-build-core) come as wheels
# into pip's isolated build environment.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
export MAKEFLAGS="${MAKEFLAGS:--j2}"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-cache-dir "${pins[@]}"
log "done in $(( $(date +%s) - start ))s"
