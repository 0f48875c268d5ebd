#!/usr/bin/env bash
# Chat quickstart: fetch the real teacher and data, build the chat prompts and the tool, have
# the teacher answer the prompts (its targets cached with its answers), then distil
# SmolLM2-135M-Instruct into a 6-layer student on those answers (configs/quickstart-chat.yaml).
# About 13 minutes on 2 CPU cores after the one-time build and asset fetch; ends with the
# student's answers to held-out prompts beside the teacher's.
#   scripts/quickstart-chat.sh            # first run (a rerun reuses the teacher's answers)
#   scripts/quickstart-chat.sh --resume   # continue an interrupted training (Ctrl-C checkpoints)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-assets.sh
cargo build --release --bin distill
python3 scripts/make-chat-prompts.py --out runs/chat-prompts.jsonl
target/release/distill cache-teacher configs/quickstart-chat.yaml
flag="${1:---overwrite}"
target/release/distill run configs/quickstart-chat.yaml "$flag"
