#!/usr/bin/env bash
# On-demand check that a Gemma 3 student distilled from Gemma 3 270M exports as GGUF files that
# llama.cpp (llama-cpp-python, built into a venv: not part of CI) loads with the logits
# `distill eval` gives on the same files (dequantised, QMatMul, and the ggml path). Runs
# configs/gemma3-student.yaml (20 steps, about two minutes on 2 cores), exports the student as
# f32 and q8_0 (the run's own compressed artifact), and compares every position of the first 128
# tokens of Moby Dick chapter 2 (BOS first).
# Writes docs/results/interop-gemma3.{md,json}.
#   scripts/check-interop-gemma3.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
teacher="$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
text="$assets/moby-dick/chapter_2.txt"
scripts/fetch-assets.sh
scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
cargo build --release --bin distill
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed "s|dir: runs|dir: $tmp/runs|" configs/gemma3-student.yaml > "$tmp/run.yaml"
start=$(date +%s)
target/release/distill run "$tmp/run.yaml" > "$tmp/run.log" 2>&1
seconds=$(( $(date +%s) - start ))
run="$tmp/runs/gemma3-student"
target/release/distill compress "$run/final" --gguf "$tmp/student-f32.gguf" --quantize f32 \
  --tokenizer-from "$teacher" --json > "$tmp/f32.json"
cp "$run/compressed/student-q8_0.gguf" "$tmp/student-q8_0.gguf"
args=()
for q in f32 q8_0; do
  for mode in dequantized quantized ggml; do
    flag=""; [[ $mode == dequantized ]] && flag="--dequantize"; [[ $mode == ggml ]] && flag="--ggml"
    target/release/distill eval "$tmp/student-$q.gguf" --text "$text" --max-tokens 128 --block 128 --json $flag \
      --save-logits "$tmp/$q-$mode.safetensors" > "$tmp/$q-$mode-eval.json"
    args+=("$tmp/student-$q.gguf" "$tmp/$q-$mode.safetensors")
  done
done
"$py" scripts/interop-llamacpp.py "${args[@]}" > "$tmp/result.json"
python3 - "$tmp" "$run" "$seconds" <<'PY'
import datetime, json, os, platform, subprocess, sys
tmp, run, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(f"{tmp}/result.json"))
report = json.load(open(f"{run}/report.json"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rows = []
for m, (q, mode) in zip(r["models"], [(q, mode) for q in ("f32", "q8_0") for mode in ("dequantized", "quantized", "ggml")]):
    ev = json.load(open(f"{tmp}/{q}-{mode}-eval.json"))
    rows.append({"gguf": q, "distill_weights": mode, "bytes": os.path.getsize(f"{tmp}/student-{q}.gguf"),
                 "loaded": m["loaded"], "keys_read": m["keys_read"], "positions": m["positions"],
                 "max_abs_logit_diff": m["max_abs_logit_diff"], "top1_agreement": m["top1_agreement"],
                 "distill_perplexity_first_128": ev["perplexity"], "generated": m["generated"]})
doc = {"script": "scripts/check-interop-gemma3.sh", "config": "configs/gemma3-student.yaml", "commit": commit,
       "date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
       "llama_cpp_python": r["llama_cpp_python"], "run_seconds": seconds,
       "teacher_val_ppl": report["teacher"].get("val_ppl"), "student_val_ppl": report["student"].get("val_ppl"),
       "rows": rows}
os.makedirs("docs/results", exist_ok=True)
json.dump(doc, open("docs/results/interop-gemma3.json", "w"), indent=2)
md = f"""# A Gemma 3 student in llama.cpp

`configs/gemma3-student.yaml`: six of Gemma 3 270M's 18 layers (five sliding-window, one global),
20 steps on Moby Dick ({seconds} s for the whole run on {doc['cores']} cores, {cpu}); the student exported
as GGUF f32 (`distill compress --quantize f32`) and the run's q8_0 artifact. llama.cpp
(llama-cpp-python {r['llama_cpp_python']}, CPU, f32 K/V cache) loads each file; its logits at every
position of the first 128 tokens of Moby Dick chapter 2 (BOS first) against `distill eval` on the
same file, with the matrices dequantised to f32, multiplied quantised (candle's QMatMul), or on the
ggml path (llama.cpp's CPU arithmetic, `distill eval --ggml`). Produced by `scripts/check-interop-gemma3.sh`
on {doc['date']} (commit {commit}).

Validation perplexity (blocks of 128, BOS first): teacher {doc['teacher_val_ppl']:.2f}, student {doc['student_val_ppl']:.2f}.

| GGUF | distill weights | bytes | loads | keys read | max \\|Δlogit\\| | top-1 agreement | perplexity (distill, 128 tokens) |
|---|---|---:|---|---:|---:|---:|---:|
"""
for x in rows:
    md += (f"| {x['gguf']} | {x['distill_weights']} | {x['bytes']/1e6:.1f} MB | {x['loaded']} | {x['keys_read']} | "
           f"{x['max_abs_logit_diff']:.4f} | {100*x['top1_agreement']:.1f}% | {x['distill_perplexity_first_128']:.2f} |\n")
md += f"\nllama.cpp's greedy continuation of {r['prompt']!r} with the f32 file: {rows[0]['generated']!r}\n"
open("docs/results/interop-gemma3.md", "w").write(md)
print(md)
PY
