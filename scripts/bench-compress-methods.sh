#!/usr/bin/env bash
# Compression methods side by side: every technique at one size with the naive method and the
# data-aware ones (Wanda, SparseGPT, importance-matrix and GPTQ quantisation, SVD-LLM, weighted
# per-row k-means, Minitron importance, block influence), on two subjects:
# * decoder: configs/compress-subject.yaml (the quickstart student trained 400 steps, so its
#   weights are off the teacher's 4-bit grid); trained first when runs/compress-subject/final
#   is missing (~15 min). Every GGUF artifact is then loaded by llama.cpp (llama-cpp-python,
#   see scripts/setup-ref-venv.sh) and its logits compared with distill's on the same file.
#   Writes docs/results/compress-methods.{md,json}.
# * classifier: configs/compress-subject-classifier.yaml (all-MiniLM-L6-v2 fine-tuned on
#   SpamAssassin, a real f32 model); fine-tuned first when
#   runs/compress-subject-classifier/teacher is missing (~15 min).
#   Writes docs/results/compress-methods-classifier.{md,json}.
#   scripts/bench-compress-methods.sh [decoder|classifier|all]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
part="${1:-all}"
case "$part" in decoder|classifier|all) ;; *) echo "usage: $0 [decoder|classifier|all]" >&2; exit 2 ;; esac
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
subject="${SUBJECT:-runs/compress-subject/final}"
cls_subject="${CLS_SUBJECT:-runs/compress-subject-classifier/teacher}"
scripts/fetch-assets.sh
cargo build --release --bin distill
out=runs/bench-compress-methods
mkdir -p "$out"

if [ "$part" != decoder ]; then
rm -rf "$out/classifier" "$out/classifier.json"
if [ ! -d "$cls_subject" ]; then
  # The run section alone: the compress section is this script's to run.
  sed '/^compress:/,$d' configs/compress-subject-classifier.yaml > "$out/classifier-train.yaml"
  target/release/distill run "$out/classifier-train.yaml" --overwrite
fi
start=$(date +%s)
target/release/distill compress "$cls_subject" --config configs/compress-subject-classifier.yaml \
  --out "$out/classifier" --json > "$out/classifier.json"
wall=$(( $(date +%s) - start ))
python3 - "$out" "$wall" "$cls_subject" <<'PY'
import json, subprocess, sys, datetime
out, wall, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
o = json.load(open(f"{out}/classifier.json"))
base = o["rows"][0]
METHODS = ["magnitude", "wanda", "sparsegpt", "rtn", "svd-llm", "svd", "matrix", "row-weighted",
           "row-hessian", "weights", "activations", "loss", "block-influence"]
def split(variant):
    for m in sorted(METHODS, key=len, reverse=True):
        if variant.endswith("-" + m):
            return variant[: -len(m) - 1], m
    return variant, ""
rows = []
for r in o["rows"][1:]:
    technique, method = split(r["variant"])
    rows.append({"technique": technique, "method": method, "variant": r["variant"],
                 "acc": r["acc"], "kl_to_uncompressed": r["kl_to_uncompressed"],
                 "bytes": r["bytes"], "params": r["params"], "nonzero_params": r["nonzero_params"],
                 "seconds": round(r["seconds"], 1), "steps": r["steps"], "notes": r.get("notes", [])})
doc = {"script": "scripts/bench-compress-methods.sh classifier", "date": datetime.date.today().isoformat(),
       "commit": commit, "cpu": cpu, "wall_seconds": wall,
       "subject": {"model": subject, "config": "configs/compress-subject-classifier.yaml",
                   "why": "all-MiniLM-L6-v2 fine-tuned on SpamAssassin: a real f32 encoder whose weights were trained in full precision, so no method is flattered by weights already on a grid"},
       "baseline": {"acc": base["acc"], "kl_to_uncompressed": base["kl_to_uncompressed"],
                    "bytes": base["bytes"], "params": base["params"]},
       "rows": rows}
json.dump(doc, open("docs/results/compress-methods-classifier.json", "w"), indent=2)
t = "| technique | method | val accuracy | KL to uncompressed | bytes | non-zero params | seconds |\n|---|---|---:|---:|---:|---:|---:|\n"
t += f"| uncompressed | | {100 * base['acc']:.2f}% | 0 | {base['bytes']/1e6:.2f} MB | {base['nonzero_params']/1e6:.2f} M | |\n"
for r in rows:
    t += (f"| {r['technique']} | {r['method']} | {100 * r['acc']:.2f}% | {r['kl_to_uncompressed']:.4f} | "
          f"{r['bytes']/1e6:.2f} MB | {r['nonzero_params']/1e6:.2f} M | {r['seconds']:.0f} |\n")
def best(tech):
    rs = [r for r in rows if r["technique"] == tech]
    return min(rs, key=lambda r: r["kl_to_uncompressed"]) if rs else None
summary = []
for tech, naive in [("sparse-50", "magnitude"), ("two-four", "magnitude"), ("low-rank-20", "svd"),
                    ("kmeans-4bit", "matrix"), ("ffn-768", "weights"), ("heads-8", "weights"),
                    ("drop-1-layer", "loss")]:
    n = next((r for r in rows if r["technique"] == tech and r["method"] == naive), None)
    b = best(tech)
    if n and b:
        summary.append(f"| {tech} | {naive}: {100 * n['acc']:.2f}%, KL {n['kl_to_uncompressed']:.4f} | "
                       f"{b['method']}: {100 * b['acc']:.2f}%, KL {b['kl_to_uncompressed']:.4f} |")
md = f"""# Compression methods on a classifier: naive and calibrated, side by side

Produced by `scripts/bench-compress-methods.sh classifier` on {doc['date']} (commit {commit}) on
{cpu}, 2 cores; {wall} s for every variant. Subject: `{subject}` ({doc['subject']['why']}),
{base['params']/1e6:.2f} M parameters, {base['bytes']/1e6:.2f} MB. Quality is accuracy on the
validation split (a stratified 10% of the messages, never used for calibration) and the
mean KL divergence (nats) of each message's class distribution from the uncompressed
classifier's: accuracy moves in steps of one message, the divergence shows what it hides. The
data-aware methods calibrate on 256 training messages. GGUF has no BERT classifier, so 4-bit
here is weight sharing; `heads-8` also narrows the residual stream to 8 heads × 32 (BERT ties
the two). Each variant starts from the uncompressed model, without healing.

{t}
## Best method per technique (by KL), against the naive one

| technique | naive | best |
|---|---|---|
""" + "\n".join(summary) + "\n\n## Notes per variant\n\n"
for r in rows:
    for n in r["notes"]:
        md += f"- {r['variant']}: {n}\n"
open("docs/results/compress-methods-classifier.md", "w").write(md)
print(md)
PY
fi

[ "$part" = classifier ] && exit 0
rm -rf "$out/decoder" "$out/decoder.json" "$out/interop.json"
if [ ! -d "$subject" ]; then
  # The run section alone: the compress section is this script's to run.
  sed '/^compress:/,$d' configs/compress-subject.yaml > "$out/subject-train.yaml"
  target/release/distill run "$out/subject-train.yaml" --overwrite
fi
start=$(date +%s)
target/release/distill compress "$subject" --config configs/compress-subject.yaml \
  --out "$out/decoder" --json > "$out/decoder.json"
wall=$(( $(date +%s) - start ))

scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
# distill's logits on the first 512 tokens of a held-out chapter: with llama.cpp's own CPU
# arithmetic (`--ggml`, bit for bit) where that path multiplies the file's types (Q8_0, Q4_1,
# f32), else through candle's QMatMul (its own activation rounding and summation order).
args=()
: > "$out/interop-arith.txt"
for g in "$out"/decoder/*.gguf; do
  how=ggml
  target/release/distill eval "$g" --ggml --text "$assets/moby-dick/chapter_2.txt" --max-tokens 512 --block 512 --json \
    --save-logits "${g%.gguf}.logits.safetensors" > /dev/null 2>&1 || {
    how=qmatmul
    target/release/distill eval "$g" --text "$assets/moby-dick/chapter_2.txt" --max-tokens 512 --block 512 --json \
      --save-logits "${g%.gguf}.logits.safetensors" > /dev/null
  }
  echo "$(basename "$g") $how" >> "$out/interop-arith.txt"
  args+=("$g" "${g%.gguf}.logits.safetensors")
done
"$py" scripts/interop-llamacpp.py "${args[@]}" > "$out/interop.json"

python3 - "$out" "$wall" "$subject" <<'PY'
import json, os, subprocess, sys, datetime
out, wall, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
o = json.load(open(f"{out}/decoder.json"))
interop = {os.path.basename(m["gguf"]): m for m in json.load(open(f"{out}/interop.json"))["models"]}
arith = dict(l.split() for l in open(f"{out}/interop-arith.txt") if l.strip())
base = o["rows"][0]
METHODS = ["magnitude", "wanda", "sparsegpt", "candle", "rtn", "imatrix", "gptq", "svd-llm", "svd",
           "matrix", "row-weighted", "row-hessian", "weights", "activations", "loss", "block-influence"]
def split(variant):
    for m in sorted(METHODS, key=len, reverse=True):
        if variant.endswith("-" + m):
            return variant[: -len(m) - 1], m
    return variant, ""
rows, by_variant = [], {}
for r in o["rows"][1:]:
    by_variant.setdefault(r["variant"], []).append(r)
for variant, steps in by_variant.items():
    last = steps[-1]
    technique, method = split(variant)
    row = {"technique": technique, "method": method, "variant": variant,
           "val_ppl": last["val_ppl"], "increase": last["val_ppl"] / base["val_ppl"] - 1,
           "bytes": last["bytes"], "params": last["params"], "nonzero_params": last["nonzero_params"],
           "seconds": round(sum(s["seconds"] for s in steps), 1),
           "steps": last["steps"], "notes": [n for s in steps for n in s.get("notes", [])]}
    art = last.get("artifact") or ""
    if art.endswith(".gguf"):
        m = interop[os.path.basename(art)]
        row["llamacpp"] = {"loaded": m["loaded"], "top1_agreement": m["top1_agreement"],
                           "max_abs_logit_diff": m["max_abs_logit_diff"], "positions": m["positions"],
                           "ours": arith[os.path.basename(art)]}
        if len(steps) > 1:
            row["val_ppl_dense"] = steps[-2]["val_ppl"]
    rows.append(row)
doc = {"script": "scripts/bench-compress-methods.sh", "date": datetime.date.today().isoformat(),
       "commit": commit, "cpu": cpu, "wall_seconds": wall,
       "subject": {"model": subject, "config": "configs/compress-subject.yaml",
                   "why": "the quickstart student trained 400 steps (5x the quickstart): its layers were copied from the Q4_1 teacher, and training moved them off that 4-bit grid, so 4-bit methods are not flattered by weights already on one"},
       "baseline": {"val_ppl": base["val_ppl"], "bytes": base["bytes"], "params": base["params"]},
       "rows": rows}
json.dump(doc, open("docs/results/compress-methods.json", "w"), indent=2)

def inc(r): return f"{100 * r['increase']:+.1f}%"
t = "| technique | method | val perplexity | increase | bytes | non-zero params | seconds | llama.cpp top-1 |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
t += f"| uncompressed | | {base['val_ppl']:.2f} | | {base['bytes']/1e6:.2f} MB | {base['nonzero_params']/1e6:.2f} M | | |\n"
for r in rows:
    ll = f"{100 * r['llamacpp']['top1_agreement']:.1f}% ({r['llamacpp']['ours']})" if "llamacpp" in r else ""
    t += (f"| {r['technique']} | {r['method']} | {r['val_ppl']:.2f} | {inc(r)} | {r['bytes']/1e6:.2f} MB | "
          f"{r['nonzero_params']/1e6:.2f} M | {r['seconds']:.0f} | {ll} |\n")
def get(tech, meth):
    return next((r for r in rows if r["technique"] == tech and r["method"] == meth), None)
targets = []
def target(name, ok, detail):
    targets.append(f"| {name} | {'met' if ok else 'missed'} | {detail} |")
for tech in ["sparse-50", "two-four"]:
    mag, best = get(tech, "magnitude"), min((r for r in rows if r["technique"] == tech and r["method"] != "magnitude"), key=lambda r: r["increase"])
    target(f"{tech}: ≤ half of magnitude's increase", best["increase"] <= mag["increase"] / 2,
           f"magnitude {inc(mag)}, {best['method']} {inc(best)}")
for tech in ["q4_k", "q4_k-e8", "q4_0"]:
    rtn = get(tech, "rtn")
    cal = [r for r in rows if r["technique"] == tech and r["method"] in ("imatrix", "gptq")]
    if rtn and cal:
        best = min(cal, key=lambda r: r["increase"])
        target(f"{tech} GGUF: ≤ 5% and ≤ half of RTN's increase", best["increase"] <= 0.05 and best["increase"] <= rtn["increase"] / 2,
               f"rtn {inc(rtn)}, " + ", ".join(f"{r['method']} {inc(r)}" for r in cal))
lr = get("low-rank-20", "svd-llm")
if lr: target("low rank saving 20%: ≤ +50% before healing", lr["increase"] <= 0.5, f"svd {inc(get('low-rank-20', 'svd'))}, svd-llm {inc(lr)}")
km = [r for r in rows if r["technique"] == "kmeans-4bit" and r["method"].startswith("row")]
iq = get("q4_k", "imatrix")
if km and iq:
    best = min(km, key=lambda r: r["increase"])
    target("k-means 4-bit per row: within 2x of the 4-bit imatrix K-quant's increase", best["increase"] <= 2 * iq["increase"],
           ", ".join(f"{r['method']} {inc(r)}" for r in km) + f"; q4_k imatrix {inc(iq)}")
ggufs = [r for r in rows if "llamacpp" in r]
worst = min(ggufs, key=lambda r: r["llamacpp"]["top1_agreement"]) if ggufs else None
if worst: target("every GGUF loads in llama.cpp with top-1 ≥ 95%", all(r["llamacpp"]["loaded"] and r["llamacpp"]["top1_agreement"] >= 0.95 for r in ggufs),
                 f"{len(ggufs)} files, lowest {100 * worst['llamacpp']['top1_agreement']:.1f}% ({worst['variant']})")
md = f"""# Compression methods: naive and calibrated, side by side

Produced by `scripts/bench-compress-methods.sh` on {doc['date']} (commit {commit}) on {cpu}, 2 cores;
{wall} s for every variant. Subject: `{subject}` ({doc['subject']['why']}), {base['params']/1e6:.2f} M
parameters, {base['bytes']/1e6:.2f} MB. Quality is perplexity on 32 validation blocks of 128 tokens
(held-out Moby Dick chapters); the data-aware methods calibrate on 64 blocks of the training split,
never on validation text. Each variant starts from the uncompressed model; a GGUF row is the file
run through candle's QMatMul, and llama.cpp (llama-cpp-python) loads every GGUF and its logits on
the first 512 tokens of chapter 2 are compared with distill's on the same file (top-1 agreement):
`(ggml)` where distill runs the file with llama.cpp's own CPU arithmetic (its ggml path, for
Q8_0/Q4_1/f32 matrices), `(qmatmul)` where it runs candle's QMatMul, whose activation rounding and
summation order differ, so near-tied logits of this weak model can swap.
`q4_k` rows of 576 values do not fit Q4_K's 256-value blocks and fall back to Q5_0 as llama.cpp
does; `q4_k-e8` keeps the (tied) embedding at Q8_0, as the teacher's own GGUF does; `q4_0` is
4-bit everywhere.

{t}
## Targets

| target | | numbers |
|---|---|---|
""" + "\n".join(targets) + "\n\n## Notes per variant\n\n"
for r in rows:
    for n in r["notes"]:
        md += f"- {r['variant']}: {n}\n"
open("docs/results/compress-methods.md", "w").write(md)
print(md)
PY
