#!/usr/bin/env bash
# The one-shot GPU check: on a machine with an NVIDIA GPU, with a prebuilt CUDA binary
# (scripts/build-cuda.sh) and the assets, in under 8 minutes on one H200:
#   1. the teacher's logits on the GPU (bf16 and f32) against the CPU's on the same 256 tokens
#      of a held-out chapter: top-1 agreement, max |difference|, perplexity of each;
#   2. one distillation run of STEPS steps (default 300) of the quickstart student on the GPU;
#   2b. a short run with `batch_size: auto` and `student.matmul_dtype: bf16` (the batch chosen,
#      its training speed);
#   3. a throughput table: teacher tokens/s (bf16, f32), the student's training step tokens/s,
#      achieved TFLOP/s against the card's bf16 dense peak.
# Everything goes to $OUT (default runs/gpu-check): gpu.md, gpu.json, the logs.
# `--device cpu` is the dry run of the same steps on the CPU binary (a few steps), which
# scripts/test.sh does not run but must keep passing.
#   scripts/gpu-check.sh [--device cuda|cpu] [--bin PATH[.gz]] [--assets DIR]
# On a lent machine (the `device` tool) a call carries at most 64 MiB: the gzipped binary
# (≈ 19 MiB) and Moby Dick fit, the quickstart's 98 MB GGUF teacher does not; pass a smaller
# teacher there with --teacher (e.g. the 6-layer d = 384 Hugging Face folder that
# scripts/bench-vs-torch/small_teacher.py writes, ≈ 55 MB in f32, less in bf16).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
device=cuda
bin=""
teacher=""
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --assets) assets="$2"; shift 2 ;;
    --teacher) teacher="$2"; shift 2 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
if [[ "$device" == cpu ]]; then
  bin="${bin:-target/release/distill}"
  steps="${STEPS:-3}"; batch=2; max_tokens=64
else
  bin="${bin:-target-cuda/distill-cuda.gz}"
  steps="${STEPS:-300}"; batch="${BATCH:-16}"; max_tokens=256
  # The CUDA libraries of the machine's Python wheels (cuBLAS, cuRAND, the runtime); the
  # driver provides libcuda.
  libs=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})))
PY
)
  export LD_LIBRARY_PATH="${libs:+$libs:}${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" || true
fi
if [[ "$bin" == *.gz ]]; then
  gunzip -c "$bin" > "$out/distill"
  chmod +x "$out/distill"
  bin="$out/distill"
fi
[[ -x "$bin" ]] || { echo "gpu-check: no binary at $bin" >&2; exit 1; }
# A library the binary needs and the machine lacks (libnccl.so.2 of a `cuda,nccl` build, say)
# stops the check here, named, rather than at the first command.
missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}' | paste -sd' ' -)
[[ -z "$missing" ]] || { echo "gpu-check: $bin needs $missing, not found (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}); a --features cuda build needs no NCCL" >&2; exit 1; }
gguf="${teacher:-$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
text="$assets/moby-dick/chapter_2.txt"
[[ -e "$gguf" && -f "$text" ]] || { echo "gpu-check: teacher $gguf or text $text missing" >&2; exit 1; }
export RUST_LOG="${RUST_LOG:-info}"

# 1. Teacher logits, device against CPU.
"$bin" eval "$gguf" --text "$text" --max-tokens "$max_tokens" --block "$max_tokens" --dequantize \
  --device cpu --dtype f32 --json --save-logits "$out/logits-cpu.safetensors" > "$out/eval-cpu.json" 2> "$out/eval-cpu.log"
for dtype in bf16 f32; do
  "$bin" eval "$gguf" --text "$text" --max-tokens "$max_tokens" --block "$max_tokens" --dequantize \
    --device "$device" --dtype "$dtype" --json --save-logits "$out/logits-$dtype.safetensors" \
    > "$out/eval-$dtype.json" 2> "$out/eval-$dtype.log"
done

# 2. A distillation run on the device (the quickstart's run section alone: its compress
# section would add CPU-bound GPTQ and GGUF measurement to the timed run).
sed -e "s|^  device: auto|  device: $device|" -e "s|^  steps: 80|  steps: $steps|" \
    -e "s|^  batch_size: 4|  batch_size: $batch|" -e "s|^  eval_every: 20|  eval_every: $(( steps / 3 > 0 ? steps / 3 : 1 ))|" \
    -e "s|^  checkpoint_every: 20|  checkpoint_every: $steps|" \
    -e "s|^  dir: runs|  dir: $out|" -e "s|^  name: quickstart|  name: distil|" \
    -e "s|\${DISTILL_ASSETS:-~/.cache/distill/assets}|$assets|g" \
    -e "s|^  source: .*\.gguf$|  source: $gguf|" -e '/^compress:/,$d' configs/quickstart.yaml > "$out/distil.yaml"
rm -rf "$out/distil"
start=$(date +%s)
"$bin" run "$out/distil.yaml" > "$out/distil.log" 2>&1
echo $(( $(date +%s) - start )) > "$out/distil.seconds"

# 2b. The GPU options on a short run: `batch_size: auto` (the largest micro-batch whose step
# fits; the CPU keeps the default) and bf16 products over f32 student weights.
short=$(( steps / 6 > 2 ? steps / 6 : 2 ))
sed -e "s|^  batch_size: $batch\$|  batch_size: auto|" -e "s|^  steps: $steps\$|  steps: $short|" \
    -e "s|^  eval_every: .*|  eval_every: $short|" -e "s|^  checkpoint_every: .*|  checkpoint_every: $short|" \
    -e "s|^  name: distil\$|  name: distil-auto-bf16|" -e "s|^  init: {kind: from_teacher}|&\n  matmul_dtype: bf16|" \
    "$out/distil.yaml" > "$out/distil-auto.yaml"
grep -q "batch_size: auto" "$out/distil-auto.yaml" && grep -q "matmul_dtype: bf16" "$out/distil-auto.yaml" \
  || { echo "gpu-check: could not write $out/distil-auto.yaml from $out/distil.yaml" >&2; exit 1; }
rm -rf "$out/distil-auto-bf16"
start=$(date +%s)
"$bin" run "$out/distil-auto.yaml" > "$out/distil-auto.log" 2>&1
echo $(( $(date +%s) - start )) > "$out/distil-auto.seconds"

# 3. The table.
python3 - "$out" "$device" "$steps" "$batch" "$(basename "$gguf")" <<'PY'
import json, struct, sys, statistics, array, math
out, device, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def logits(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        t = header["logits"]
        a, b = t["data_offsets"]
        assert t["dtype"] == "F32", t["dtype"]
        f.seek(base + a)
        v = array.array("f"); v.frombytes(f.read(b - a))
        return v, t["shape"]

cpu, shape = logits(f"{out}/logits-cpu.safetensors")
rows, vocab = shape
doc = {"device": device, "gpu": open(f"{out}/gpu.txt").read().strip() if device != "cpu" else "none (dry run)",
       "tokens": rows, "vocab": vocab, "teacher": {}}
for dtype in ("bf16", "f32"):
    dev, _ = logits(f"{out}/logits-{dtype}.safetensors")
    agree, worst = 0, 0.0
    for r in range(rows):
        c = cpu[r * vocab:(r + 1) * vocab]; d = dev[r * vocab:(r + 1) * vocab]
        agree += max(range(vocab), key=c.__getitem__) == max(range(vocab), key=d.__getitem__)
        worst = max(worst, max(abs(x - y) for x, y in zip(c, d)))
    ev = json.load(open(f"{out}/eval-{dtype}.json"))
    doc["teacher"][dtype] = {"top1_agreement_with_cpu": agree / rows, "max_abs_diff": worst,
                             "ppl": ev.get("perplexity"), "tokens_per_second": ev.get("tokens_per_second")}
doc["teacher"]["cpu_f32"] = {k: json.load(open(f"{out}/eval-cpu.json")).get(k) for k in ("perplexity", "tokens_per_second")}
rep = json.load(open(f"{out}/distil/report.json"))
recs = [json.loads(l) for l in open(f"{out}/distil/metrics.jsonl")]
train = [r for r in recs if r.get("kind") == "train"]
tps = statistics.median(r["tokens_per_second"] for r in train[3:] or train)
# FLOPs per trained token: 2·teacher params (forward) + 6·student params (forward and backward).
flops = 2 * rep["teacher"]["parameters"] + 6 * rep["student"]["parameters"]
doc["distil"] = {"steps": steps, "batch_size": batch, "seconds": int(open(f"{out}/distil.seconds").read()),
                 "student_val_ppl": rep["student"]["val_ppl"], "teacher_val_ppl": rep["teacher"]["val_ppl"],
                 "train_tokens_per_second": tps, "achieved_tflops": tps * flops / 1e12}
peak = 989.0 if "H200" in doc["gpu"] or "H100" in doc["gpu"] else None
doc["distil"]["share_of_bf16_peak"] = doc["distil"]["achieved_tflops"] / peak if peak else None
import re
resolved = open(f"{out}/distil-auto-bf16/config.yaml").read()
auto_batch = int(re.search(r"^  batch_size: (\d+)$", resolved, re.M).group(1))
auto_train = [json.loads(l) for l in open(f"{out}/distil-auto-bf16/metrics.jsonl")]
auto_train = [r for r in auto_train if r.get("kind") == "train"]
auto_rep = json.load(open(f"{out}/distil-auto-bf16/report.json"))
auto_tps = statistics.median(r["tokens_per_second"] for r in auto_train[1:] or auto_train)
doc["auto_bf16"] = {"steps": len(auto_train), "batch_size_chosen": auto_batch,
                    "seconds": int(open(f"{out}/distil-auto.seconds").read()),
                    "train_tokens_per_second": auto_tps, "achieved_tflops": auto_tps * flops / 1e12,
                    "student_val_ppl": auto_rep["student"]["val_ppl"],
                    "share_of_bf16_peak": auto_tps * flops / 1e12 / peak if peak else None}
json.dump(doc, open(f"{out}/gpu.json", "w"), indent=2)
t = doc["teacher"]
L = [f"# GPU check ({device})", "", f"GPU: {doc['gpu']}", "",
     f"Teacher ({sys.argv[5]}, GGUF dequantised) on {rows} tokens of a held-out chapter, against the CPU in f32:", "",
     "| dtype | top-1 agreement | max abs diff | perplexity | tokens/s |", "|---|---:|---:|---:|---:|",
     f"| CPU f32 | | | {t['cpu_f32']['perplexity']:.3f} | {t['cpu_f32']['tokens_per_second']:.0f} |"]
for dtype in ("bf16", "f32"):
    x = t[dtype]
    L.append(f"| {device} {dtype} | {100*x['top1_agreement_with_cpu']:.1f}% | {x['max_abs_diff']:.4f} | {x['ppl']:.3f} | {x['tokens_per_second']:.0f} |")
d = doc["distil"]
L += ["", f"Distillation on {device}: {steps} steps of batch {batch} × 128 in {d['seconds']} s; student validation perplexity {d['student_val_ppl']:.2f} (teacher {d['teacher_val_ppl']:.2f});",
      f"training {d['train_tokens_per_second']:.0f} tokens/s, ≈ {d['achieved_tflops']:.2f} TFLOP/s (2·teacher + 6·student parameters per token)"
      + (f", {100*d['share_of_bf16_peak']:.2f}% of the bf16 dense peak." if d["share_of_bf16_peak"] else ".")]
a = doc["auto_bf16"]
L += ["", f"`batch_size: auto` with `student.matmul_dtype: bf16` on {device}: batch {a['batch_size_chosen']} chosen, {a['steps']} steps in {a['seconds']} s (the batch search included);",
      f"training {a['train_tokens_per_second']:.0f} tokens/s, ≈ {a['achieved_tflops']:.2f} TFLOP/s"
      + (f", {100*a['share_of_bf16_peak']:.2f}% of the bf16 dense peak" if a["share_of_bf16_peak"] else "")
      + f"; student validation perplexity {a['student_val_ppl']:.2f} after these steps."]
open(f"{out}/gpu.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
