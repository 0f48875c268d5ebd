#!/usr/bin/env bash
# How should a student be cut from its teacher? configs/quickstart.yaml's run (SmolLM2-135M-
# Instruct on Moby Dick, same data, steps and tokens) with the student initialised from the
# teacher by weight norms (evenly spaced layers) and by activation importance (layers by block
# influence, heads/neurons by activations on 32 training blocks: Minitron), at two shapes of
# the quickstart's budget class: its own (6 layers, full width) and a narrow one (12 layers,
# FFN 512). Writes docs/results/init.{md,json}. About 16 minutes on 2 cores.
#   scripts/bench-init.sh [steps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-80}"
scripts/fetch-assets.sh
cargo build --release --bin distill
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shapes=("deep:layers: 6" "narrow:layers: 12\n  intermediate: 512")
for shape in "${shapes[@]}"; do
  name="${shape%%:*}"; student="${shape#*:}"
  for importance in weights activations; do
    v="$name-$importance"
    sed -e "s/^  steps: .*/  steps: $steps/" -e "s/^  name: .*/  name: $v/" \
        -e "s#^  dir: runs\$#  dir: $work#" -e '/^compress:/,$d' \
        -e "s/^  layers: 6 .*/  $student/" \
        -e "s/^  init: .*/  init: {kind: from_teacher, importance: $importance}/" \
        configs/quickstart.yaml > "$work/$v.yaml"
    grep -q "importance: $importance" "$work/$v.yaml" && ! grep -q "^compress:" "$work/$v.yaml"
    target/release/distill run "$work/$v.yaml" --overwrite | tail -3
  done
done
python3 - "$work" "$steps" <<'PY'
import datetime, json, os, platform, subprocess, sys
work, steps = sys.argv[1], int(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
runs = {}
for name in ("deep", "narrow"):
    for imp in ("weights", "activations"):
        rep = json.load(open(f"{work}/{name}-{imp}/report.json"))
        runs[f"{name}-{imp}"] = {
            "shape": name,
            "importance": imp,
            "val_ppl": rep["student"]["val_ppl"],
            "val_kl": rep["val_kl"],
            "top1_agreement": rep["top1_agreement"],
            "non_embedding_parameters": rep["student"]["parameters"] - rep["student"]["embedding_parameters"],
            "layers_from_teacher": rep["student_layers_from_teacher"],
            "train_seconds": rep["train_seconds"],
        }
teacher = json.load(open(f"{work}/deep-weights/report.json"))["teacher"]["val_ppl"]
out = {
    "teacher_ppl": teacher,
    "baseline_ppl": runs["deep-weights"]["val_ppl"],
    "importance_ppl": runs["deep-activations"]["val_ppl"],
    "runs": runs,
    "meta": {
        "script": "scripts/bench-init.sh",
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "steps": steps,
        "config": "configs/quickstart.yaml without compress:, student shape and init.importance varied",
    },
}
os.makedirs("docs/results", exist_ok=True)
json.dump(out, open("docs/results/init.json", "w"), indent=2)
md = [f"# Student initialisation: weight norms against activation importance ({out['meta']['date']}, {cpu}, {out['meta']['cores']} cores, commit {out['meta']['commit']})", "",
      f"`scripts/bench-init.sh {steps}`: the quickstart's run ({steps} steps, the same blocks in the same order) with the student cut from "
      f"SmolLM2-135M-Instruct (validation perplexity {teacher:.2f}) by weight norms (evenly spaced layers) or by activation importance "
      "(layers by block influence, then heads/neurons/channels by their activations on 32 training blocks).", "",
      "| shape | importance | non-embedding parameters | teacher layers kept | validation perplexity | KL per token | top-1 agreement | training s |",
      "|---|---|---:|---|---:|---:|---:|---:|"]
for r in runs.values():
    md.append(f"| {r['shape']} | {r['importance']} | {r['non_embedding_parameters'] / 1e6:.2f} M | {r['layers_from_teacher']} | {r['val_ppl']:.1f} | {r['val_kl']:.3f} | {100 * r['top1_agreement']:.1f}% | {r['train_seconds']:.0f} |")
open("docs/results/init.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
