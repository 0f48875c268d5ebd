#!/usr/bin/env bash
# Generation speed, side by side in one run on the same GGUF (SmolLM2-135M-Instruct Q4_1), 2
# threads: batch-1 prefill (a ~128-token Moby Dick paragraph) and greedy decode (64 new
# tokens) of `distill generate` — through candle's QMatMul, dequantised to f32, and on the ggml
# path (llama.cpp's arithmetic on the quantised blocks, each sequence alone) — against
# llama.cpp (llama-cpp-python, the pinned reference venv: scripts/setup-ref-venv.sh); and the
# engine's batched throughput at 8 and 32 sequences. Each figure is the median of 3 runs.
# Writes docs/results/generate.{md,json}. Usage: scripts/bench-generate.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
venv="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}"
scripts/fetch-assets.sh
[[ -x "$venv/bin/python" ]] || scripts/setup-ref-venv.sh
cargo build --release --bin distill
gguf="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$assets/moby-dick" "$tmp" <<'PY'
import json, sys
src, tmp = sys.argv[1], sys.argv[2]
paras = []
for n in range(1, 136):
    for p in open(f"{src}/chapter_{n}.txt", encoding="utf-8").read().split("\n\n"):
        p = " ".join(p.split())
        if 400 <= len(p) <= 700:
            paras.append(p)
open(f"{tmp}/one.txt", "w").write(paras[0])
for b in (1, 8, 32):
    with open(f"{tmp}/batch{b}.jsonl", "w") as f:
        for p in paras[:b]:
            f.write(json.dumps({"prompt": p}) + "\n")
PY
export RAYON_NUM_THREADS=2
# candle's QMatMul is slow on CPU for many rows at once (docs/results/teachers.md: 0.06× the
# dequantised path), so the quantised path is timed at batch 1 only; the ggml path runs each
# sequence alone, so batch 1 is its figure.
for mode in quantized dequantized ggml; do
  flag=""; batches="1"
  [[ $mode == dequantized ]] && flag="--dequantize" && batches="1 8 32"
  [[ $mode == ggml ]] && flag="--ggml"
  for b in $batches; do
    for r in 1 2 3; do
      target/release/distill generate "$gguf" --prompts "$tmp/batch$b.jsonl" --max-new-tokens 64 \
        --device cpu --json $flag > "$tmp/$mode.b$b.r$r.json"
    done
  done
done
"$venv/bin/python" - "$gguf" "$tmp" <<'PY'
import json, sys, time
import numpy as np
from llama_cpp import Llama
gguf, tmp = sys.argv[1], sys.argv[2]
llm = Llama(model_path=gguf, n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, logits_all=False,
            seed=0, n_gpu_layers=0, verbose=False)
prompt = json.loads(open(f"{tmp}/batch1.jsonl").readline())["prompt"]
ids = llm.tokenize(prompt.encode(), add_bos=False)
runs = []
for _ in range(3):
    llm.reset()
    t0 = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t0
    t = int(np.argmax(llm.scores[llm.n_tokens - 1])); n = 0
    t0 = time.perf_counter()
    for _ in range(63):
        llm.eval([t]); n += 1
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode = time.perf_counter() - t0
    runs.append({"prefill_tokens_per_second": len(ids) / prefill, "decode_tokens_per_second": n / decode})
json.dump({"prompt_tokens": len(ids), "runs": runs}, open(f"{tmp}/llamacpp.json", "w"))
PY
python3 - "$tmp" <<'PY'
import datetime, json, os, platform, statistics, subprocess, sys
tmp = sys.argv[1]
med = lambda xs: statistics.median(xs)
ours = {}
for mode, batches in (("quantized", (1,)), ("dequantized", (1, 8, 32)), ("ggml", (1,))):
    for b in batches:
        rs = [json.load(open(f"{tmp}/{mode}.b{b}.r{r}.json")) for r in (1, 2, 3)]
        ours[(mode, b)] = {"tokens_per_second": med([r["tokens_per_second"] for r in rs]),
                           "prefill_tokens_per_second": med([r["prefill_tokens_per_second"] for r in rs]),
                           "decode_tokens_per_second": med([r["decode_tokens_per_second"] for r in rs]),
                           "new_tokens": rs[0]["new_tokens"], "prompt_tokens": rs[0]["prompt_tokens"]}
ll = json.load(open(f"{tmp}/llamacpp.json"))
lp = med([r["prefill_tokens_per_second"] for r in ll["runs"]])
ld = med([r["decode_tokens_per_second"] for r in ll["runs"]])
best = max(("quantized", "dequantized", "ggml"), key=lambda m: ours[(m, 1)]["decode_tokens_per_second"])
batched = "dequantized"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
doc = {
    "decode_ratio": ours[(best, 1)]["decode_tokens_per_second"] / ld,
    "prefill_ratio": ours[(best, 1)]["prefill_tokens_per_second"] / lp,
    "best_path": best,
    "batch8_tokens_per_s": ours[(batched, 8)]["tokens_per_second"],
    "batch32_tokens_per_s": ours[(batched, 32)]["tokens_per_second"],
    "llamacpp": {"prefill_tokens_per_second": lp, "decode_tokens_per_second": ld, "prompt_tokens": ll["prompt_tokens"]},
    "ours": {f"{m}.batch{b}": v for (m, b), v in ours.items()},
    "meta": {"script": "scripts/bench-generate.sh", "date": datetime.date.today().isoformat(), "cpu": cpu,
             "cores": os.cpu_count(), "threads": 2,
             "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
             "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "new_tokens": 64},
}
os.makedirs("docs/results", exist_ok=True)
json.dump(doc, open("docs/results/generate.json.tmp", "w"), indent=2)
os.replace("docs/results/generate.json.tmp", "docs/results/generate.json")
m = doc["meta"]
md = ["# Generation speed", "",
      f"SmolLM2-135M-Instruct Q4_1 GGUF, greedy, 64 new tokens, 2 threads, {cpu}; `distill generate` and llama.cpp "
      f"(llama-cpp-python, f16 K/V cache, its defaults) side by side in one run, medians of 3. Produced by "
      f"`scripts/bench-generate.sh` on {m['date']} (commit {m['commit']}).", "",
      "Every speed is a ratio to llama.cpp's batch-1 figure of the same kind (prefill: prompt tokens per second; "
      "decode and batched: new tokens per second), measured in the same run; the absolute figures are in the JSON "
      "and hold only for this machine.", "",
      "| | prefill (batch 1) | decode (batch 1) | batch 8, new tokens | batch 32, new tokens |",
      "|---|---:|---:|---:|---:|",
      "| llama.cpp | 1.00× | 1.00× | | |"]
for mode in ("quantized", "dequantized", "ggml"):
    o = lambda b, k, base: f"{ours[(mode, b)][k] / base:.2f}×" if (mode, b) in ours else "—"
    md.append(f"| distill, {mode} | {o(1, 'prefill_tokens_per_second', lp)} | {o(1, 'decode_tokens_per_second', ld)} | "
              f"{o(8, 'tokens_per_second', ld)} | {o(32, 'tokens_per_second', ld)} |")
md += ["", f"decode_ratio (distill {best} / llama.cpp, batch 1): **{doc['decode_ratio']:.2f}**; prefill_ratio: "
       f"**{doc['prefill_ratio']:.2f}**. Batched figures count every sequence's new tokens over the whole call "
       "(prefill included), against llama.cpp's batch-1 decode."]
open("docs/results/generate.md.tmp", "w").write("\n".join(md) + "\n")
os.replace("docs/results/generate.md.tmp", "docs/results/generate.md")
print("\n".join(md))
PY
