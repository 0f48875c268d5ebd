#!/usr/bin/env bash
# The two real teachers side by side: SmolLM2-135M-Instruct (Q4_1 GGUF, Llama family, 49,152
# tokens) and Gemma 3 270M (Q4_K_M GGUF, 262,144 tokens), on the same held-out text, in bits per
# byte (perplexities of different tokenizers are not comparable) and in speed (tokens/s and
# bytes of text/s), through candle's QMatMul and dequantised to f32.
#
# The text: the first 8 KiB of Moby Dick chapters 10, 50 and 100 (cut at a line break), the same
# bytes for both teachers, in windows of 512 tokens.
# Writes docs/results/teachers.{md,json}. Usage: scripts/bench-teachers.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
scripts/fetch-assets.sh
cargo build --release --bin distill
out=docs/results
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$assets/moby-dick" "$tmp/held-out.txt" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
parts = []
for n in (10, 50, 100):
    text = open(f"{src}/chapter_{n}.txt", encoding="utf-8").read()
    cut = text.rfind("\n", 0, 8192)
    parts.append(text[: cut if cut > 0 else 8192])
open(dst, "w", encoding="utf-8").write("\n\n".join(parts) + "\n")
PY
declare -A gguf=(
  [smollm2-135m]="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  [gemma-3-270m]="$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
)
for teacher in smollm2-135m gemma-3-270m; do
  for mode in quantized dequantized; do
    flag=""; [[ $mode == dequantized ]] && flag="--dequantize"
    target/release/distill eval "${gguf[$teacher]}" --text "$tmp/held-out.txt" --block 512 --json $flag \
      > "$tmp/$teacher.$mode.json"
  done
done
python3 - "$tmp" "$out" <<'PY'
import datetime, json, os, platform, subprocess, sys
tmp, out = sys.argv[1], sys.argv[2]
teachers = {"smollm2-135m": "SmolLM2-135M-Instruct Q4_1", "gemma-3-270m": "Gemma 3 270M Q4_K_M"}
rows = []
for t, label in teachers.items():
    for mode in ("quantized", "dequantized"):
        r = json.load(open(f"{tmp}/{t}.{mode}.json"))
        rows.append({"teacher": t, "label": label, "weights": mode, "tokens": r["tokens"],
                     "predicted_tokens": r["predicted_tokens"], "predicted_bytes": r["predicted_bytes"],
                     "bits_per_byte": r["bits_per_byte"], "perplexity": r["perplexity"],
                     "tokens_per_second": r["tokens_per_second"],
                     "bytes_per_second": r["predicted_bytes"] / max(r["forward_seconds"], 1e-9),
                     "forward_seconds": r["forward_seconds"]})
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
meta = {"script": "scripts/bench-teachers.sh", "date": datetime.date.today().isoformat(), "cpu": cpu,
        "cores": os.cpu_count(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "text": "first 8 KiB (cut at a line break) of Moby Dick chapters 10, 50, 100", "block": 512}
best = {t: min(r["bits_per_byte"] for r in rows if r["teacher"] == t) for t in teachers}
doc = {"meta": meta, "teacher_bits_per_byte": {t: next(r["bits_per_byte"] for r in rows if r["teacher"] == t and r["weights"] == "quantized") for t in teachers},
       "rows": rows}
json.dump(doc, open(f"{out}/teachers.json.tmp", "w"), indent=2)
os.replace(f"{out}/teachers.json.tmp", f"{out}/teachers.json")
md = ["# The real teachers, side by side", "",
      f"{meta['text']}: the same bytes for both, windows of {meta['block']} tokens, every position scored. "
      f"{meta['cores']} cores ({cpu}), release build, commit {meta['commit']}, {meta['date']}. "
      "Produced by `scripts/bench-teachers.sh`; all rows in one run, so compare speeds by ratio.", "",
      "Bits per byte are the predicted tokens' negative log-likelihood in bits over the bytes of text those tokens stand "
      "for: unlike perplexity, comparable across tokenizers.", "",
      "Speed is given as text scored per second relative to SmolLM2 dequantised, measured side by side in this run "
      "(the absolute figures are in the JSON and hold only for this machine).", "",
      "| teacher | weights | tokens | bytes | bits per byte | perplexity | bytes of text/s relative |",
      "|---|---|---:|---:|---:|---:|---:|"]
base = next(r["bytes_per_second"] for r in rows if r["teacher"] == "smollm2-135m" and r["weights"] == "dequantized")
for r in rows:
    r["bytes_per_second_relative"] = r["bytes_per_second"] / base
    md.append(f"| {r['label']} | {r['weights']} | {r['predicted_tokens']} | {r['predicted_bytes']} | {r['bits_per_byte']:.4f} | "
              f"{r['perplexity']:.2f} | {r['bytes_per_second_relative']:.2f}× |")
json.dump(doc, open(f"{out}/teachers.json.tmp", "w"), indent=2)
os.replace(f"{out}/teachers.json.tmp", f"{out}/teachers.json")
open(f"{out}/teachers.md.tmp", "w").write("\n".join(md) + "\n")
os.replace(f"{out}/teachers.md.tmp", f"{out}/teachers.md")
print("\n".join(md))
PY
