#!/usr/bin/env bash
# Quickstart: fetch the real teacher and data, build, and distil SmolLM2-135M-Instruct into a
# 6-layer student on Moby Dick (configs/quickstart.yaml). About 13 minutes on 2 CPU cores after
# the one-time build and asset fetch. Prints the report's headline table at the end.
#   scripts/quickstart.sh            # first run
#   scripts/quickstart.sh --resume   # continue an interrupted run (Ctrl-C checkpoints)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-assets.sh
cargo build --release --bin distill
flag="${1:---overwrite}"
target/release/distill run configs/quickstart.yaml "$flag"
