#!/usr/bin/env bash
# Teacher forward speed on CPU: SmolLM2-135M-Instruct Q4_1 kept quantised (candle's QMatMul),
# dequantised to f32, and run with llama.cpp's arithmetic (the ggml path), on Moby Dick
# chapter 1, windows of 256 tokens.
# Writes docs/results/teacher-forward.{md,json}. Usage: scripts/bench-teacher.sh [max_tokens]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
max_tokens="${1:-1024}"
scripts/fetch-assets.sh
cargo build --release --bin distill
gguf="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
text="$assets/moby-dick/chapter_1.txt"
out=docs/results
mkdir -p "$out"
tmp=$(mktemp -d)
for mode in quantized dequantized ggml; do
  flag=""; [[ $mode == dequantized ]] && flag="--dequantize"; [[ $mode == ggml ]] && flag="--ggml"
  target/release/distill eval "$gguf" --text "$text" --max-tokens "$max_tokens" --block 256 --json $flag > "$tmp/$mode.json"
done
python3 - "$tmp" "$out" "$max_tokens" <<'PY'
import json, sys, platform, os, subprocess, datetime
tmp, out, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = {m: json.load(open(f"{tmp}/{m}.json")) for m in ("quantized", "dequantized", "ggml")}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
meta = {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "text": "moby-dick/chapter_1.txt", "max_tokens": max_tokens, "block": 256}
json.dump({"meta": meta, "rows": rows}, open(f"{out}/teacher-forward.json.tmp", "w"), indent=2)
os.replace(f"{out}/teacher-forward.json.tmp", f"{out}/teacher-forward.json")
md = ["# Teacher forward on CPU", "",
      f"SmolLM2-135M-Instruct Q4_1 GGUF, full-sequence forward (logits at every position), windows of 256 tokens, "
      f"first {max_tokens} tokens of Moby Dick chapter 1. {meta['cores']} cores ({cpu}), release build, commit {meta['commit']}, {meta['date']}.",
      "Produced by `scripts/bench-teacher.sh`; the three paths run one after another in one run, so compare them by the ratio column.", "",
      "| weights | tokens/s | speed / dequantised | forward s | perplexity |", "|---|---:|---:|---:|---:|"]
base = rows["dequantized"]["tokens_per_second"]
for m, r in rows.items():
    label = {"quantized": "Q4_1 kept quantised (candle QMatMul)", "dequantized": "dequantised to f32",
             "ggml": "Q4_1, llama.cpp's arithmetic (`--ggml`; logits = llama.cpp's bit for bit)"}[m]
    md.append(f"| {label} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / base:.2f}× | {r['forward_seconds']:.2f} | {r['perplexity']:.3f} |")
open(f"{out}/teacher-forward.md.tmp", "w").write("\n".join(md) + "\n")
os.replace(f"{out}/teacher-forward.md.tmp", f"{out}/teacher-forward.md")
print("\n".join(md))
PY
