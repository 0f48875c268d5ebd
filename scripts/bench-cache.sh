#!/usr/bin/env bash
# Offline teacher cache benchmark, on the quickstart run (configs/quickstart.yaml): caches made
# at k = 8, 32 and 128 with the residual as one bucket, and at k = 8, 16 (the default) and 32
# with 24 tail samples (8-bit log-probabilities throughout); then the same 80 steps trained
# online (the teacher run at every step) and from each cache. Records bytes per position, the
# validation-perplexity cost of each cache against online distillation at equal steps, and the
# step time online and offline, side by side on this machine.
# Writes docs/results/cache.{md,json}.
#   scripts/bench-cache.sh        (VARIANTS="k:m ..." STEPS=80 to change; m = tail samples)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-assets.sh >/dev/null
cargo build --release --bin distill
variants="${VARIANTS:-8:0 32:0 128:0 8:24 16:24 32:24}"
steps="${STEPS:-80}"
out="${OUT:-runs/bench-cache}"
rm -rf "$out"; mkdir -p "$out"
config() { # name [k m]
  sed -e "s|^  name: quickstart|  name: $1|" -e "s|^  dir: runs|  dir: $out/runs|" \
      -e "s|^  steps: 80|  steps: $steps|" configs/quickstart.yaml > "$out/$1.yaml"
  if [ -n "${2:-}" ]; then
    sed -i "s|^  gguf_weights: dequantized.*|  gguf_weights: dequantized\n  cache: {dir: $out/cache-$1, top_k: $2, tail_samples: $3, logprob_bits: 8}|" "$out/$1.yaml"
  fi
}
config online
for v in $variants; do
  n="k${v%%:*}m${v##*:}"
  config "$n" "${v%%:*}" "${v##*:}"
  s=$(date +%s.%N)
  target/release/distill cache-teacher "$out/$n.yaml" > "$out/cache-$n.log" 2>&1
  echo "$(echo "$(date +%s.%N) - $s" | bc)" > "$out/cache-$n.seconds"
done
target/release/distill run "$out/online.yaml" > "$out/online.log" 2>&1
for v in $variants; do
  n="k${v%%:*}m${v##*:}"
  target/release/distill run "$out/$n.yaml" > "$out/$n.log" 2>&1
done

python3 - "$out" "$variants" "$steps" <<'PY'
import json, sys, datetime, subprocess, statistics, os
out, steps = sys.argv[1], int(sys.argv[3])
variants = [tuple(int(x) for x in v.split(":")) for v in sys.argv[2].split()]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]

def run(name):
    r = json.load(open(f"{out}/runs/{name}/report.json"))
    steps_ = [json.loads(l) for l in open(f"{out}/runs/{name}/metrics.jsonl")]
    secs = [sum(s["seconds"].values()) for s in steps_ if s.get("kind") == "train" and s["step"] > 3]
    return {
        "val_ppl": r["student"]["val_ppl"],
        "teacher_val_ppl": r["teacher"]["val_ppl"],
        "top1_agreement": r["top1_agreement"],
        "step_seconds_median": statistics.median(secs),
        "train_tokens_per_second": r["train_tokens_per_second"],
    }

online = run("online")
tokens_per_step = 4 * 128
doc = {
    "date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu, "cpu_features": simd,
    "threads": os.cpu_count(), "script": "scripts/bench-cache.sh", "config": "configs/quickstart.yaml",
    "steps": steps, "online": online, "caches": {},
    "bytes_per_token": {}, "ppl_cost_pct": {}, "offline_speedup_by_k": {},
}
def key(k, m):
    return str(k) if m == 0 else f"{k}+{m}"
for k, m in variants:
    name = f"k{k}m{m}"
    man = json.load(open(f"{out}/cache-{name}/cache.json"))
    r = run(name)
    shards = sum(os.path.getsize(f"{out}/cache-{name}/{s['file']}") for sp in man["splits"] for s in sp["shards"])
    positions = sum(len(sp["blocks"]) for sp in man["splits"]) * (man["identity"]["block_size"] - 1)
    build = float(open(f"{out}/cache-{name}.seconds").read())
    kk = key(k, m)
    doc["caches"][kk] = {**r, "top_k": k, "tail_samples": m, "record_bytes": man["layout"]["record_bytes"],
        "positions": positions, "shard_bytes": shards, "build_seconds": build,
        "teacher_tokens_per_second": man["teacher_tokens_per_second"]}
    doc["bytes_per_token"][kk] = shards / positions
    doc["ppl_cost_pct"][kk] = 100 * (r["val_ppl"] / online["val_ppl"] - 1)
    doc["offline_speedup_by_k"][kk] = online["step_seconds_median"] / r["step_seconds_median"]
ref = "16+24" if "16+24" in doc["caches"] else key(*variants[0])
doc["default"] = ref
doc["offline_speedup"] = doc["offline_speedup_by_k"][ref]
json.dump(doc, open("docs/results/cache.json", "w"), indent=2)

L = ["# Offline teacher cache", "",
     f"`scripts/bench-cache.sh` at {commit}, {doc['date']}, on {cpu} ({', '.join(simd)}), {doc['threads']} threads.",
     f"The quickstart run (`configs/quickstart.yaml`: SmolLM2-135M teacher dequantised, 6-layer student, batch 4 × 128, forward KL at T = 1, α 0.5), {steps} steps,",
     "trained online (the teacher run at every step) and from caches made by `distill cache-teacher` (8-bit log-probabilities):",
     "k tokens kept exactly, and either the residual mass as one bucket (`k`) or spread over m tokens sampled from the teacher's tail (`k+m`, the default 16+24; `docs/teacher-cache.md`).",
     "Validation perplexity on the same 16 held-out blocks; step time is the median over steps 4 onwards (forward + backward + optimiser), side by side in one run.", "",
     "| teacher targets | bytes / position | validation ppl | cost vs online | top-1 agreement | step (s) | speed-up | cache build (s) |",
     "|---|---:|---:|---:|---:|---:|---:|---:|",
     f"| online | (full logits) | {online['val_ppl']:.2f} | | {100*online['top1_agreement']:.1f}% | {online['step_seconds_median']:.2f} | 1.00× | |"]
for kk, c in doc["caches"].items():
    label = f"cache, k = {c['top_k']}" + (f", {c['tail_samples']} tail samples" if c["tail_samples"] else ", residual bucket") + (" (default)" if kk == ref else "")
    L.append(f"| {label} | {doc['bytes_per_token'][kk]:.1f} | {c['val_ppl']:.2f} | {doc['ppl_cost_pct'][kk]:+.2f}% | {100*c['top1_agreement']:.1f}% | {c['step_seconds_median']:.2f} | {doc['offline_speedup_by_k'][kk]:.2f}× | {c['build_seconds']:.0f} |")
L += ["", f"Teacher validation perplexity: online {online['teacher_val_ppl']:.2f}; from each cache's next-token log-probabilities "
      + ", ".join(f"{c['teacher_val_ppl']:.2f}" for c in doc["caches"].values()) + ".",
      "Top-1 agreement offline is against the cached top-1 over the positions that have a next token; online, over all positions.",
      "Bytes per position include the 32-byte shard headers; the f32 logits of one position are " + f"{4*49152:,} bytes.",
      "Speed-up is the online step time over the offline one; making the cache costs the teacher's forward once per block (the build column, for the 320 training and 16 validation blocks the run reads)."]
open("docs/results/cache.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
