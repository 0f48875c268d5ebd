#!/usr/bin/env bash
# Data-parallel training on this machine's CPU, measured: the quickstart's run section
# (SmolLM2-135M teacher, 6-layer student, batch 4 × 128) for STEPS steps (default 12) trained
# by one process and by `distill launch --nproc-per-node 2` (two ranks over TCP, each with
# half the cores), each with the binary's allocator setting and with glibc's defaults
# (DISTILL_MALLOC_DEFAULTS=1), side by side in one session. Compares the loss of every step (the
# group must train what one process trains), the training speed, and the optimiser phase, which
# in a group holds the per-step sum of the gradients over loopback TCP.
# Writes docs/results/data-parallel.{md,json}.
#   scripts/bench-data-parallel.sh [--bin target/release/distill]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=target/release/distill
[[ "${1:-}" == "--bin" ]] && bin="$2"
[[ -x "$bin" ]] || cargo build --release --bin distill
steps="${STEPS:-12}"
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
scripts/fetch-assets.sh >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The run section alone (no compress/auto), checkpoints and evaluation only at the end.
sed -e "s|^  steps: 80|  steps: $steps|" -e "s|^  eval_every: 20|  eval_every: $steps|" \
    -e "s|^  checkpoint_every: 20|  checkpoint_every: $steps|" -e "s|^  eval_blocks: 16|  eval_blocks: 4|" \
    -e "s|^  dir: runs|  dir: $work|" -e "s|\${DISTILL_ASSETS:-~/.cache/distill/assets}|$assets|g" \
    -e '/^compress:/,$d' configs/quickstart.yaml > "$work/base.yaml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# name ranks malloc-defaults
for run in "one 1 0" "two 2 0" "one-glibc 1 1" "two-glibc 2 1"; do
  read -r name ranks defaults <<< "$run"
  sed -e "s|^  name: quickstart|  name: $name|" "$work/base.yaml" > "$work/$name.yaml"
  env=()
  [[ "$defaults" == 1 ]] && env=(DISTILL_MALLOC_DEFAULTS=1)
  start=$(date +%s.%N)
  if [[ "$ranks" == 1 ]]; then
    env "${env[@]}" "$bin" run "$work/$name.yaml" > "$work/$name.log" 2>&1
  else
    env "${env[@]}" "$bin" launch --nproc-per-node "$ranks" --master-port "$port" -- run "$work/$name.yaml" > "$work/$name.log" 2>&1
  fi
  python3 -c "import time; print(round(time.time() - $start, 1))" > "$work/$name.seconds"
done

python3 - "$work" "$steps" <<'PY'
import json, sys, statistics, datetime, subprocess
work, steps = sys.argv[1], int(sys.argv[2])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()

def run(name):
    recs = [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl")]
    train = [r for r in recs if r["kind"] == "train"]
    rep = json.load(open(f"{work}/{name}/report.json"))
    later = train[2:] or train
    med = lambda f: statistics.median(f(r) for r in later)
    return {
        "losses": [r["loss"] for r in train],
        "tokens_per_second": med(lambda r: r["tokens_per_second"]),
        "forward_seconds": med(lambda r: r["seconds"]["forward"]),
        "backward_seconds": med(lambda r: r["seconds"]["backward"]),
        "optimizer_seconds": med(lambda r: r["seconds"]["optimizer"]),
        "wall_seconds": float(open(f"{work}/{name}.seconds").read()),
        "student_parameters": rep["student"]["parameters"],
        "val_ppl": rep["student"]["val_ppl"],
    }

runs = {n: run(n) for n in ("one", "two", "one-glibc", "two-glibc")}
worst = max(abs(a - b) / max(abs(a), 1e-9)
            for other in ("two", "one-glibc", "two-glibc")
            for a, b in zip(runs["one"]["losses"], runs[other]["losses"]))
params = runs["one"]["student_parameters"]
doc = {"script": "scripts/bench-data-parallel.sh", "date": datetime.date.today().isoformat(),
       "commit": commit, "cpu": cpu, "cores": cores, "steps": steps, "runs": runs,
       "max_relative_loss_difference": worst, "gradient_bytes_per_step": 4 * params}
json.dump(doc, open("docs/results/data-parallel.json", "w"), indent=2)
o, t, og, tg = runs["one"], runs["two"], runs["one-glibc"], runs["two-glibc"]
row = lambda label, key, fmt: f"| {label} | " + " | ".join(format(r[key], fmt) for r in (o, t, og, tg)) + " |"
md = f"""# Data-parallel training on the CPU

The quickstart's run section (SmolLM2-135M-Instruct teacher, 6-layer student of
{params / 1e6:.1f} M parameters, batch 4 × 128 tokens, {steps} steps), trained by one process and by
`distill launch --nproc-per-node 2` (two ranks summing their gradients over loopback TCP, each
with half the cores), with the binary's allocator setting (blocks under 1 GiB kept in the heap
for reuse, `crates/cli/src/main.rs`) and with glibc's defaults (`DISTILL_MALLOC_DEFAULTS=1`),
one after the other by `scripts/bench-data-parallel.sh` on {doc['date']} (commit {commit}) on
{cpu}, {cores} cores.

| | one process | two ranks | one process, glibc defaults | two ranks, glibc defaults |
|---|---:|---:|---:|---:|
{row("training tokens/s (median step from step 3)", "tokens_per_second", ".0f")}
{row("forward s / step", "forward_seconds", ".2f")}
{row("backward s / step", "backward_seconds", ".2f")}
{row("optimiser s / step (a group's holds the gradient sum)", "optimizer_seconds", ".2f")}
{row("wall time of the run (load, train, evaluate, export), s", "wall_seconds", ".0f")}
{row("student validation perplexity", "val_ppl", ".2f")}

The loss of every step agrees across all four to within {worst:.1e} (relative): two ranks train what
one process trains on the combined batch. Each step moves {4 * params / 1e6:.0f} MB of f32 gradients from
rank 1 to rank 0 and back; with the allocator setting the sum costs
{t['optimizer_seconds'] - o['optimizer_seconds']:.2f} s a step more than one process's optimiser phase
({tg['optimizer_seconds'] - og['optimizer_seconds']:.2f} s with glibc's defaults, which map and fault in every
buffer of the sum afresh each step). Two ranks train at {t['tokens_per_second'] / o['tokens_per_second']:.2f}× the speed
of one process on the same cores ({tg['tokens_per_second'] / og['tokens_per_second']:.2f}× with glibc's defaults);
the allocator setting alone gives one process {o['tokens_per_second'] / og['tokens_per_second']:.2f}×.
"""
open("docs/results/data-parallel.md", "w").write(md)
print(md)
PY
