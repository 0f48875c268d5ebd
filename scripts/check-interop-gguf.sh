#!/usr/bin/env bash
# On-demand check that llama.cpp (llama-cpp-python, built from source into a venv: not part of
# CI) loads GGUF files written by `distill compress` and agrees with distill's logits. Exports the
# quickstart student (runs/quickstart/final, from scripts/quickstart.sh) as f32, q8_0 and q4_k
# with the teacher's tokenizer metadata. Writes docs/results/interop-llamacpp.{md,json}.
#   scripts/check-interop-gguf.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model="${1:-runs/quickstart/final}"
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
teacher="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
text="$assets/moby-dick/chapter_2.txt"
scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
cargo build --release --bin distill
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=()
for q in f32 q8_0 q4_k; do
  target/release/distill compress "$model" --gguf "$tmp/student-$q.gguf" --quantize "$q" --tokenizer-from "$teacher" --json > "$tmp/$q.json"
  target/release/distill eval "$tmp/student-$q.gguf" --text "$text" --max-tokens 128 --block 128 --json \
    --save-logits "$tmp/$q.safetensors" > "$tmp/$q-eval.json"
  args+=("$tmp/student-$q.gguf" "$tmp/$q.safetensors")
done
"$py" scripts/interop-llamacpp.py "${args[@]}" > "$tmp/result.json"
python3 - "$tmp" "$model" <<'PY'
import json, sys, datetime, subprocess
tmp, model = sys.argv[1], sys.argv[2]
r = json.load(open(f"{tmp}/result.json"))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rows = []
for m, q in zip(r["models"], ["f32", "q8_0", "q4_k"]):
    export = json.load(open(f"{tmp}/{q}.json"))
    ev = json.load(open(f"{tmp}/{q}-eval.json"))
    m.update({"quantize": q, "bytes": export["rows"][-1]["bytes"], "fallbacks": len(export["gguf_fallbacks"]),
              "distill_perplexity_first_128": ev["perplexity"], "distill_tokens_per_s": ev["tokens_per_second"]})
    m["gguf"] = f"student-{q}.gguf"
    rows.append(m)
json.dump({"model": model, "commit": commit, "date": datetime.date.today().isoformat(), **r, "models": rows},
          open("docs/results/interop-llamacpp.json", "w"), indent=2)
md = f"""# GGUF export in llama.cpp

`distill compress {model} --quantize Q --tokenizer-from SmolLM2-135M-Instruct.Q4_1.gguf`, each file
loaded by llama.cpp (llama-cpp-python {r['llama_cpp_python']}, CPU, f32 K/V cache) and read key by key
by `gguf` {r['gguf']}; logits at every position of the first 128 tokens of Moby Dick chapter 2
compared with `distill eval` on the same file (quantised matrices through candle's QMatMul).
Produced by `scripts/check-interop-gguf.sh` on {datetime.date.today().isoformat()} (commit {commit}).

| type | bytes | tensors in a fallback type | keys read | loads | max abs logit diff | top-1 agreement | perplexity (distill, 128 tokens) |
|---|---:|---:|---:|---|---:|---:|---:|
"""
for m in rows:
    md += (f"| {m['quantize']} | {m['bytes']/1e6:.1f} MB | {m['fallbacks']} | {m['keys_read']} | {m['loaded']} | "
           f"{m['max_abs_logit_diff']:.3g} | {100*m['top1_agreement']:.1f}% | {m['distill_perplexity_first_128']:.2f} |\n")
md += f"\nGreedy continuation of {r['prompt']!r} by llama.cpp:\n\n"
for m in rows:
    md += f"- {m['quantize']}: {m['generated']!r}\n"
open("docs/results/interop-llamacpp.md", "w").write(md)
print(md)
PY
