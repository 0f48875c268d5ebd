#!/usr/bin/env bash
# Create the Python virtual environment that scripts/ref-minilm.py runs in.
#
# The venv holds CPU-run PyTorch (the ordinary PyPI wheel; on Linux it also pulls the NVIDIA CUDA
# runtime wheels, several GB, which are unused here) plus Hugging Face transformers, tokenizers,
# safetensors and numpy, all at pinned versions so that regenerated fixtures are comparable.
# It is only needed by maintainers who regenerate tests/fixtures/minilm-*.json; CI never needs it.
#
# Usage:
#   scripts/setup-ref-venv-torch.sh          # create/refresh ${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}
#   "$DISTILL_TORCH_VENV/bin/python" scripts/ref-minilm.py
#
# Idempotent: a second run finds the venv and the pinned versions in place and does nothing
# beyond a quick version check (no network traffic).
set -euo pipefail

venv="${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}"
python="${PYTHON:-python3}"
log() { printf 'setup-ref-venv-torch: %s\n' "$*" >&2; }

# Pinned versions. Bump them together and regenerate the fixtures when you do.
pins=(
  "torch==2.15.0"
  "transformers==5.24.0"
  "tokenizers==0.23.3"
  "safetensors==0.8.0"
  "numpy==2.4.6"
)

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv at $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi

# Everything already at the pinned version? Then there is nothing to do.
if "$venv/bin/python" - "${pins[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
PY
then
  log "venv at $venv already has: ${pins[*]}"
  exit 0
fi

log "installing ${pins[*]} into $venv (torch brings several GB of CUDA wheels; this takes a while)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --disable-pip-version-check "${pins[@]}"
log "done: $("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
