#!/usr/bin/env bash
# distill against PyTorch (transformers' LlamaForCausalLM) and llama.cpp on this CPU, side by
# side in one run: the quickstart training step, a small step, the teacher forward, and the GGUF
# teacher forward against llama.cpp. Writes docs/results/speed.{md,json}.
#
# Usage: scripts/bench-vs-torch/run.sh [--rounds N] [--steps N] [--cases quickstart,small,teacher,gguf]
#        DISTILL_BIN=path/to/distill to measure another build (default: this tree's release build).
# Needs the two reference venvs (scripts/setup-ref-venv-torch.sh, scripts/setup-ref-venv.sh); this
# script creates them when absent. About 10 minutes on 2 cores after the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
scripts/fetch-assets.sh
scripts/setup-ref-venv-torch.sh
scripts/setup-ref-venv.sh
if [[ -z "${DISTILL_BIN:-}" ]]; then
  cargo build --release --bin distill
  DISTILL_BIN=target/release/distill
fi
exec python3 scripts/bench-vs-torch/bench.py \
  --distill "$DISTILL_BIN" \
  --torch-python "${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}/bin/python" \
  --llama-python "${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python" \
  --assets "$assets" "$@"
