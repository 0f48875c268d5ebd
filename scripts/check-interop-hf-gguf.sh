#!/usr/bin/env bash
# On-demand check that a Hugging Face folder model (no GGUF anywhere in its history: the
# tokenizer metadata is built from its tokenizer.json) exports to a GGUF that llama.cpp loads,
# tokenises like `distill tokenize` on the folder, and computes the same logits. Uses the
# quickstart student (runs/quickstart/final, from scripts/quickstart.sh) as that folder, and
# llama-cpp-python from scripts/setup-ref-venv.sh. Writes docs/results/interop-hf-gguf.{md,json}.
#   scripts/check-interop-hf-gguf.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model="${1:-runs/quickstart/final}"
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
[ -d "$model" ] || { echo "$model missing: run scripts/quickstart.sh first" >&2; exit 1; }
scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
cargo build --release --bin distill
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# No --tokenizer-from: the folder's own tokenizer.json is the only source.
target/release/distill compress "$model" --gguf "$tmp/model.gguf" --quantize f32 --json > /dev/null
target/release/distill eval "$tmp/model.gguf" --ggml --text "$assets/moby-dick/chapter_2.txt" --max-tokens 512 --block 512 \
  --json --save-logits "$tmp/ours.safetensors" > /dev/null
strings=(
  "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse,"
  "In 1851, 3,000 whalers sailed; 42% returned by 1853."
  "<|im_start|>user
What is a whale?<|im_end|>
<|im_start|>assistant
"
  "  leading spaces,	tabs and
newlines   "
  "Ünïcödé: café, naïve, 東京, 🐋 and emoji 🐳!"
  "x=3.14159; y = x**2 // 7"
)
: > "$tmp/ours-tokens.jsonl"
for s in "${strings[@]}"; do
  target/release/distill tokenize "$model" "$s" --json | tr -d '\n' >> "$tmp/ours-tokens.jsonl"
  echo >> "$tmp/ours-tokens.jsonl"
done
printf '%s\0' "${strings[@]}" > "$tmp/strings.bin"
# Logits (and key reading, generation) by the shared interop check; tokenisation below.
"$py" scripts/interop-llamacpp.py "$tmp/model.gguf" "$tmp/ours.safetensors" > "$tmp/interop.json"
"$py" - "$tmp" "$model" <<'PY'
import json, sys, datetime, subprocess
from llama_cpp import Llama
tmp, model = sys.argv[1], sys.argv[2]
strings = open(f"{tmp}/strings.bin", "rb").read().decode().split("\0")[:-1]
ours = [json.loads(l) for l in open(f"{tmp}/ours-tokens.jsonl") if l.strip()]
interop = json.load(open(f"{tmp}/interop.json"))
m = interop["models"][0]
vocab = Llama(model_path=f"{tmp}/model.gguf", vocab_only=True, verbose=False)
tok = []
for s, o in zip(strings, ours):
    theirs = vocab.tokenize(s.encode(), add_bos=False, special=True)
    tok.append({"text": s, "same": theirs == o, "distill": o, "llama_cpp": theirs})
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
doc = {"script": "scripts/check-interop-hf-gguf.sh", "model": model, "commit": commit,
       "date": datetime.date.today().isoformat(), "cpu": cpu,
       "llama_cpp_python": interop["llama_cpp_python"], "tokenisation": tok,
       "positions": m["positions"], "max_abs_logit_diff": m["max_abs_logit_diff"],
       "top1_agreement": m["top1_agreement"], "tokenizer_pre": m["tokenizer_pre"],
       "generated": m["generated"]}
json.dump(doc, open("docs/results/interop-hf-gguf.json", "w"), indent=2, ensure_ascii=False)
rows = "\n".join(f"| {json.dumps(t['text'], ensure_ascii=False)[:60]} | {len(t['distill'])} | {'same' if t['same'] else 'DIFFERENT'} |" for t in tok)
md = f"""# A Hugging Face folder exported to GGUF, in llama.cpp

`distill compress {model} --gguf model.gguf --quantize f32`, with no GGUF tokenizer source: the
`tokenizer.ggml.*` keys are built from the folder's `tokenizer.json` and `tokenizer_config.json`
(pre-tokenizer `{doc['tokenizer_pre']}`). llama.cpp (llama-cpp-python {doc['llama_cpp_python']}) loads the file;
produced by `scripts/check-interop-hf-gguf.sh` on {doc['date']} (commit {commit}) on {cpu}.

Tokenisation, llama.cpp (`tokenize(special=True)`, no BOS) against `distill tokenize` on the folder:

| text | tokens | |
|---|---:|---|
{rows}

Logits on the first {doc['positions']} tokens of Moby Dick chapter 2, llama.cpp against `distill eval --ggml`
on the same file: max abs difference {doc['max_abs_logit_diff']:.3g}, top-1 agreement
{100 * doc['top1_agreement']:.1f}%. llama.cpp's greedy continuation of "{interop['prompt']}":
{json.dumps(doc['generated'], ensure_ascii=False)}.
"""
open("docs/results/interop-hf-gguf.md", "w").write(md)
print(md)
PY
