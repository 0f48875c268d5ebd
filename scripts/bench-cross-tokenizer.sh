#!/usr/bin/env bash
# Distillation across tokenizers: the same student — 6 layers cut from SmolLM2-135M-Instruct,
# SmolLM2's tokenizer — trained on the same Moby Dick blocks in the same order three ways:
#   cross   distilled from Gemma 3 270M (another family, 262,144 tokens) with distill.vocab: cross
#   same    distilled from SmolLM2-135M-Instruct itself (the same tokenizer, the weaker teacher)
#   labels  on the labels alone (alpha 0)
# α = 0.5, T = 1, lr 3e-4 held constant after 5 warm-up steps (min_lr_ratio 1), so a longer
# run's evaluation at step N is the N-step run's. Compared on held-out chapters in bits per
# byte at equal tokens (the cross run's last step) and at equal training wall-clock (each
# arm's last evaluation within the cross run's training seconds; the faster arms run more
# steps for that). Writes docs/results/cross-tokenizer.{md,json}. About 40 minutes on 2 cores.
#   scripts/bench-cross-tokenizer.sh [cross steps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-60}"
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
scripts/fetch-assets.sh
cargo build --release --bin distill
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
smollm2="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
gemma="$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
config() { # name teacher alpha steps [extra student/distill lines]
  cat <<YAML
teacher: {source: $2, device: cpu, gguf_weights: dequantized}
data:
  source: {kind: folder, path: $assets/moby-dick, pattern: "chapter_*.txt"}
  block_size: 128
  validation_fraction: 0.1
  seed: 0
student:
  layers: 6
  init: {kind: from_teacher}
$5
distill:
  loss: forward_kl
  temperature: 1.0
  alpha: $3
$6
train: {steps: $4, batch_size: 4, lr: 3.0e-4, min_lr_ratio: 1.0, warmup_steps: 5, eval_every: 10, eval_blocks: 16, checkpoint_every: 1000, seed: 0}
output: {dir: $work, name: $1}
YAML
}
# The faster arms run long enough to reach the cross run's training time (measured speeds:
# same-tokenizer KD about 3×, labels alone about 4× the cross run's tokens per second).
config cross "$gemma" 0.5 "$steps" "  base: $smollm2" "  vocab: cross" > "$work/cross.yaml"
config same "$smollm2" 0.5 $((steps * 4)) "" "" > "$work/same.yaml"
config labels "$smollm2" 0.0 $((steps * 5)) "" "" > "$work/labels.yaml"
for arm in cross same labels; do
  echo "== $arm"
  target/release/distill run "$work/$arm.yaml" --overwrite | tail -12
done
python3 - "$work" "$steps" <<'PY'
import datetime, json, math, os, platform, subprocess, sys
work, steps = sys.argv[1], int(sys.argv[2])
arms = ("cross", "same", "labels")
rep = {a: json.load(open(f"{work}/{a}/report.json")) for a in arms}
def curve(arm):
    seconds, out = 0.0, []
    records = [json.loads(l) for l in open(f"{work}/{arm}/metrics.jsonl")]
    for r in records:
        if r.get("kind") == "train":
            seconds += sum(r["seconds"].values())
        elif r.get("kind") == "eval":
            e = {"step": r["step"], "train_seconds": seconds, "val_ppl": r["val_ppl"],
                 "top1_agreement": r.get("top1_agreement")}
            for k in ("val_kl", "val_uld", "aligned_share", "teacher_shared_mass", "teacher_unmatched_mass",
                      "teacher_top1_shared"):
                if k in r:
                    e[k] = r[k]
            out.append(e)
    return out
curves = {a: curve(a) for a in arms}
# Every arm is scored on the same validation blocks in the same (student) tokens: bits per byte
# are ln(ppl) times one factor, read off a report.
s = rep["labels"]["student"]
per_nat = s["val_bits_per_byte"] / math.log(s["val_ppl"])
for a in arms:
    for e in curves[a]:
        e["bits_per_byte"] = math.log(e["val_ppl"]) * per_nat
def at_step(a, n):
    return next(e for e in curves[a] if e["step"] == n)
budget = at_step("cross", steps)["train_seconds"]
def at_time(a):
    within = [e for e in curves[a] if e["train_seconds"] <= budget * 1.02]
    return within[-1] if within else curves[a][0]
cross = rep["cross"]
x = cross["cross_vocab"]
first = curves["cross"][0]
out = {
    "teacher_bits_per_byte": {"gemma-3-270m": cross["teacher"]["val_bits_per_byte"],
                              "smollm2-135m": rep["same"]["teacher"]["val_bits_per_byte"]},
    "kd_bits_per_byte": at_step("cross", steps)["bits_per_byte"],
    "same_tokenizer_kd_bits_per_byte": at_step("same", steps)["bits_per_byte"],
    "labels_only_bits_per_byte": at_step("labels", steps)["bits_per_byte"],
    "equal_time": {a: at_time(a) for a in arms},
    "aligned_share": x["aligned_share_validation"],
    "aligned_share_train": x["aligned_share_train"],
    "matched_ids": x["matched"], "student_ids": x["student_ids"], "teacher_ids": x["teacher_ids"],
    "teacher_tokens_per_student_token": x["teacher_tokens_per_student_token"],
    "teacher_shared_mass": at_step("cross", steps).get("teacher_shared_mass"),
    "teacher_unmatched_mass": at_step("cross", steps).get("teacher_unmatched_mass"),
    "teacher_top1_shared": at_step("cross", steps).get("teacher_top1_shared"),
    "train_tokens_per_second": {a: rep[a]["train_tokens_per_second"] for a in arms},
    "steps": steps, "tokens": steps * 4 * 128,
    "curves": curves,
}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
out["meta"] = {"script": "scripts/bench-cross-tokenizer.sh", "date": datetime.date.today().isoformat(), "cpu": cpu,
               "cores": os.cpu_count(),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
os.makedirs("docs/results", exist_ok=True)
json.dump(out, open("docs/results/cross-tokenizer.json.tmp", "w"), indent=2)
os.replace("docs/results/cross-tokenizer.json.tmp", "docs/results/cross-tokenizer.json")
m = out["meta"]; et = out["equal_time"]
rel = lambda a: out["train_tokens_per_second"][a] / out["train_tokens_per_second"]["labels"]
md = ["# Distillation across tokenizers", "",
      f"The same student — 6 of SmolLM2-135M-Instruct's 30 layers, SmolLM2's tokenizer (49,152 ids), "
      f"{rep['cross']['student']['parameters'] / 1e6:.1f} M parameters — on the same Moby Dick blocks in the same order: "
      "distilled from Gemma 3 270M across tokenizers (`distill.vocab: cross`), distilled from SmolLM2-135M-Instruct "
      "(the same tokenizer), and on the labels alone. α = 0.5, T = 1, batch 4 × 128 tokens, lr 3e-4 constant after "
      "5 warm-up steps. Held-out chapters, the same 16 validation blocks for every arm, in bits per byte.", "",
      f"Produced by `scripts/bench-cross-tokenizer.sh {steps}` on {m['date']} (commit {m['commit']}), "
      f"{m['cores']} cores ({cpu}); all arms in one run.", "",
      "| | teacher bits per byte | student bits per byte, equal tokens (step %d) | equal training time: step | bits per byte |" % steps,
      "|---|---:|---:|---:|---:|",
      f"| across tokenizers, from Gemma 3 270M | {out['teacher_bits_per_byte']['gemma-3-270m']:.4f} | {out['kd_bits_per_byte']:.4f} | {et['cross']['step']} | {et['cross']['bits_per_byte']:.4f} |",
      f"| same tokenizer, from SmolLM2-135M | {out['teacher_bits_per_byte']['smollm2-135m']:.4f} | {out['same_tokenizer_kd_bits_per_byte']:.4f} | {et['same']['step']} | {et['same']['bits_per_byte']:.4f} |",
      f"| labels only | | {out['labels_only_bits_per_byte']:.4f} | {et['labels']['step']} | {et['labels']['bits_per_byte']:.4f} |",
      "",
      f"Training speed relative to labels only, measured side by side: across tokenizers {rel('cross'):.2f}×, "
      f"same tokenizer {rel('same'):.2f}× (equal time = the cross run's {budget:.0f} s of training steps, evaluation excluded).", "",
      f"Alignment: {100 * out['aligned_share']:.1f}% of the student's validation positions ({100 * out['aligned_share_train']:.1f}% of training ones) "
      f"end at the same byte as a teacher token and carry the cross loss; {out['matched_ids']:,} of the student's "
      f"{out['student_ids']:,} ids spell a piece of the teacher's {out['teacher_ids']:,}; the teacher reads "
      f"{out['teacher_tokens_per_student_token']:.3f} tokens per student token.", "",
      *( [f"At the aligned validation positions (T = 1, the teacher's top-64): the teacher puts "
          f"{100 * out['teacher_shared_mass']:.1f}% of its probability on ids the student spells (the KL's buckets), "
          f"{100 * out['teacher_unmatched_mass']:.1f}% on ids it lacks (the ULD term's), the rest beyond its top 64; "
          f"its most probable token is one the student spells at {100 * out['teacher_top1_shared']:.1f}% of them.", ""]
         if out.get("teacher_shared_mass") is not None else []),
      "Bits per byte over training (validation):", "",
      "| step | across tokenizers | same tokenizer | labels only |", "|---:|---:|---:|---:|"]
by = {a: {e["step"]: e["bits_per_byte"] for e in curves[a]} for a in arms}
for n in sorted(set(by["cross"]) | set(by["same"]) | set(by["labels"])):
    f = lambda a: f"{by[a][n]:.4f}" if n in by[a] else ""
    md.append(f"| {n} | {f('cross')} | {f('same')} | {f('labels')} |")
open("docs/results/cross-tokenizer.md.tmp", "w").write("\n".join(md) + "\n")
os.replace("docs/results/cross-tokenizer.md.tmp", "docs/results/cross-tokenizer.md")
print("\n".join(md))
PY
