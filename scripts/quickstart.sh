#!/usr/bin/env bash
# Quickstart: fetch the real teacher and data, build, look at the teacher and measure it.
#   scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"

scripts/fetch-assets.sh
cargo build --release --bin distill
distill=target/release/distill
gguf="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

echo "== the teacher"
"$distill" inspect "$gguf"
echo
echo "== what the teacher sees"
"$distill" tokenize "$gguf" "Call me Ishmael."
echo
echo "== teacher perplexity on Moby Dick, chapter 1 (first 2048 tokens)"
"$distill" eval "$gguf" --text "$assets/moby-dick/chapter_1.txt" --max-tokens 2048 --block 256
