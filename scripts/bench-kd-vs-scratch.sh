#!/usr/bin/env bash
# Does distillation help? The same student (6 layers initialised from SmolLM2's layers), the same
# data, block order, steps and tokens, trained (a) with the teacher's soft targets (forward KL at
# temperature KD_TEMPERATURE, weight KD_ALPHA) and (b) on the labels alone (alpha 0). Writes
# docs/results/kd-vs-scratch${SUFFIX}.{md,json}. About 20 minutes on 2 cores.
# TEACHER_CACHE=DIR runs both from an offline teacher cache (made first by `distill
# cache-teacher`, or finished, or reused when complete): neither run then runs the teacher.
#   [KD_ALPHA=0.5] [KD_TEMPERATURE=1.0] [SUFFIX=] [TEACHER_CACHE=DIR] scripts/bench-kd-vs-scratch.sh [steps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-80}"
kd_alpha="${KD_ALPHA:-0.5}"
kd_temperature="${KD_TEMPERATURE:-1.0}"
suffix="${SUFFIX:-}"
scripts/fetch-assets.sh
cargo build --release --bin distill
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for variant in kd scratch; do
  alpha=$kd_alpha; [[ $variant == scratch ]] && alpha=0.0
  sed -e "s/^  steps: .*/  steps: $steps/" -e "s/^  alpha: .*/  alpha: $alpha/" \
      -e "s/^  temperature: .*/  temperature: $kd_temperature/" \
      -e "s/^  name: .*/  name: bench-$variant/" -e "s#^  dir: .*#  dir: $work#" \
      configs/quickstart.yaml > "$work/$variant.yaml"
  grep -q "alpha: $alpha" "$work/$variant.yaml"
  if [[ -n "${TEACHER_CACHE:-}" ]]; then
    sed -i "s#^  gguf_weights: dequantized.*#  gguf_weights: dequantized\n  cache: $TEACHER_CACHE#" "$work/$variant.yaml"
    target/release/distill cache-teacher "$work/$variant.yaml" | tail -2
  fi
  target/release/distill run "$work/$variant.yaml" --overwrite | tail -12
done
python3 - "$work" "$steps" "$kd_alpha" "$kd_temperature" "$suffix" <<'PY'
import json, os, sys, subprocess, datetime
work, steps, kd_alpha, kd_t, suffix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rep = {v: json.load(open(f"{work}/bench-{v}/report.json")) for v in ("kd", "scratch")}
evals = {}
for v in ("kd", "scratch"):
    evals[v] = [json.loads(l) for l in open(f"{work}/bench-{v}/metrics.jsonl") if '"eval"' in l]
kd, sc = rep["kd"], rep["scratch"]
out = {
    "teacher_val_ppl": kd["teacher"]["val_ppl"],
    "kd_val_ppl": kd["student"]["val_ppl"],
    "scratch_val_ppl": sc["student"]["val_ppl"],
    "kd_top1_agreement": kd["top1_agreement"],
    "scratch_top1_agreement": sc["top1_agreement"],
    "kd_val_kl": kd["val_kl"],
    "scratch_val_kl": sc["val_kl"],
    "student_params": kd["student"]["parameters"],
    "teacher_params": kd["teacher"]["parameters"],
    "train_tokens": kd["train_tokens"],
    "steps": steps,
    "kd_train_tokens_per_second": kd["train_tokens_per_second"],
    "scratch_train_tokens_per_second": sc["train_tokens_per_second"],
    "curves": {v: [{"step": e["step"], "val_ppl": e["val_ppl"], "top1_agreement": e.get("top1_agreement")} for e in evals[v]] for v in evals},
    "config": f"configs/quickstart.yaml with alpha {kd_alpha}, T {kd_t} (kd) / alpha 0 (scratch)",
    "kd_alpha": float(kd_alpha),
    "kd_temperature": float(kd_t),
    "date": datetime.date.today().isoformat(),
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
}
os.makedirs("docs/results", exist_ok=True)
name = f"docs/results/kd-vs-scratch{suffix}"
json.dump(out, open(f"{name}.json.tmp", "w"), indent=2)
os.replace(f"{name}.json.tmp", f"{name}.json")
rows = "\n".join(
    f"| {e_kd['step']} | {e_kd['val_ppl']:.2f} | {e_sc['val_ppl']:.2f} |"
    for e_kd, e_sc in zip(evals["kd"], evals["scratch"]))
md = f"""# Knowledge distillation vs labels only

Teacher SmolLM2-135M-Instruct (Q4_1 GGUF, run dequantised). Student: 6 of its 30 layers
(evenly spaced, full width), {out['student_params']/1e6:.1f} M parameters vs {out['teacher_params']/1e6:.1f} M.
Both students start from the same weights and see the same {out['train_tokens']} tokens of Moby Dick in the same
order ({steps} steps of 4 × 128 tokens); validation is on held-out chapters.
Produced by `scripts/bench-kd-vs-scratch.sh` on {out['date']} (commit {out['commit']}), 2 CPU cores.

| | validation perplexity | top-1 agreement with teacher | KL(teacher ‖ student) |
|---|---:|---:|---:|
| teacher | {out['teacher_val_ppl']:.2f} | | |
| student, distilled (α = {kd_alpha}, T = {kd_t}) | {out['kd_val_ppl']:.2f} | {100*out['kd_top1_agreement']:.1f}% | {out['kd_val_kl']:.3f} |
| student, labels only (α = 0) | {out['scratch_val_ppl']:.2f} | {100*out['scratch_top1_agreement']:.1f}% | {out['scratch_val_kl']:.3f} |

Training throughput: {out['kd_train_tokens_per_second']:.0f} tokens/s distilled (teacher forward included),
{out['scratch_train_tokens_per_second']:.0f} tokens/s labels only.

Validation perplexity during training:

| step | distilled | labels only |
|---:|---:|---:|
{rows}
"""
open(f"{name}.md.tmp", "w").write(md)
os.replace(f"{name}.md.tmp", f"{name}.md")
print(md)
PY
