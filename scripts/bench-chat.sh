#!/usr/bin/env bash
# What should a chat student learn from? The same student (6 layers initialised from
# SmolLM2-135M-Instruct's), the same steps, batch and block size, every variant's teacher
# targets from a teacher cache (so no variant runs the teacher while it trains, and a step costs
# the same in each), trained (i) with logit KD on raw text as the quickstart does (Moby Dick),
# (ii) with cross-entropy alone on the answers the teacher wrote to the chat prompts, (iii) with
# logit KD on those answers (configs/quickstart-chat.yaml). Each student is then judged on the
# same held-out prompts by `distill eval --prompts`: reverse KL of its sampled answers graded by
# the teacher, the teacher's NLL of its greedy answers, greedy match over 32 tokens, samples.
# (i) runs twice: at equal steps, and at the chat runs' wall-clock (a chat step counts only the
# answers' rows, so it is cheaper). Writes docs/results/chat.{md,json}. About 40 minutes on 2 cores (the teacher's answers and
# caches are kept in $BENCH_DIR and reused by a rerun).
#   [BENCH_DIR=runs/bench-chat] scripts/bench-chat.sh [steps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-120}"
work="${BENCH_DIR:-runs/bench-chat}"
scripts/fetch-assets.sh
cargo build --release --bin distill
mkdir -p "$work"
python3 scripts/make-chat-prompts.py --out "$work/prompts.jsonl"
teacher="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

chat_config() { # name alpha
  sed -e "s/^  steps: .*/  steps: $steps/" -e "s/^  alpha: .*/  alpha: $2/" \
      -e "s/^  name: .*/  name: $1/" -e "s#^  dir: runs\$#  dir: $work#" \
      -e "s#^    dir: .*#    dir: $work/chat-cache#" \
      -e "s#^    paths: .*#    paths: [$work/prompts.jsonl]#" \
      configs/quickstart-chat.yaml > "$work/$1.yaml"
  grep -q "alpha: $2" "$work/$1.yaml" && grep -q "$work/chat-cache" "$work/$1.yaml"
}
chat_config kd-answers 0.5
chat_config ce-answers 0.0
# (i): the quickstart's raw text in blocks of the chat runs' size, its targets cached too.
sed -e "s/^  steps: .*/  steps: $steps/" -e "s/^  name: .*/  name: kd-text/" \
    -e "s#^  dir: runs\$#  dir: $work#" -e "s/^  block_size: .*/  block_size: 256/" \
    -e "s#^  gguf_weights: dequantized.*#  gguf_weights: dequantized\n  cache: $work/text-cache#" \
    -e '/^compress:/,$d' configs/quickstart.yaml > "$work/kd-text.yaml"
grep -q "text-cache" "$work/kd-text.yaml" && ! grep -q "^compress:" "$work/kd-text.yaml"

for v in kd-text ce-answers kd-answers; do
  target/release/distill cache-teacher "$work/$v.yaml" | tail -2
  target/release/distill run "$work/$v.yaml" --overwrite | tail -3
done
# A chat step counts the answers' rows alone, a text step every row: at equal steps the text
# run takes longer. (i) again at the chat runs' mean training wall-clock: its steps scaled by
# the measured seconds (its blocks are a prefix of the first run's, all in its cache).
time_steps=$(python3 - "$work" "$steps" <<'PY'
import json, sys
work, steps = sys.argv[1], int(sys.argv[2])
secs = {v: json.load(open(f"{work}/{v}/report.json"))["train_seconds"] for v in ("kd-text", "ce-answers", "kd-answers")}
print(max(1, round(steps * (secs["ce-answers"] + secs["kd-answers"]) / 2 / secs["kd-text"])))
PY
)
sed -e "s/^  steps: .*/  steps: $time_steps/" -e "s/^  name: .*/  name: kd-text-time/" \
    "$work/kd-text.yaml" > "$work/kd-text-time.yaml"
target/release/distill run "$work/kd-text-time.yaml" --overwrite | tail -3

# The held-out prompts: the chat runs' validation documents (lines of the prompts file).
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
held = json.load(open(f"{work}/kd-answers/split.json"))["validation"]
lines = open(f"{work}/prompts.jsonl").read().splitlines()
keep = [lines[int(d.rsplit(":", 1)[1]) - 1] for d in held]
open(f"{work}/held-out.jsonl", "w").write("\n".join(keep) + "\n")
print(f"{len(keep)} held-out prompts")
PY
for v in kd-text kd-text-time ce-answers kd-answers; do
  target/release/distill eval "$work/$v" --teacher "$teacher" --dequantize \
    --prompts "$work/held-out.jsonl" --max-new-tokens 64 --json > "$work/$v-answers.json"
done

python3 - "$work" "$steps" <<'PY'
import datetime, json, os, platform, subprocess, sys
work, steps = sys.argv[1], int(sys.argv[2])
names = {"kd-text": "(i) logit KD on raw text, equal steps", "kd-text-time": "(i) logit KD on raw text, equal wall-clock",
         "ce-answers": "(ii) CE on teacher answers", "kd-answers": "(iii) logit KD on teacher answers"}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
variants = {}
for v in names:
    rep = json.load(open(f"{work}/{v}/report.json"))
    ans = json.load(open(f"{work}/{v}-answers.json"))
    variants[v] = {
        "variant": names[v],
        "reverse_kl": ans["reverse_kl"],
        "teacher_nll": ans["teacher_nll"],
        "greedy_match": ans["greedy_match"],
        "wall_seconds": rep["train_seconds"],
        "steps": rep["steps"],
        "teacher_ppl": rep["teacher"]["val_ppl"],
        "val_ppl": rep["student"]["val_ppl"],
        "train_tokens": rep["train_tokens"],
        "alpha": rep["alpha"],
        "student_cut": ans["student_cut"],
        "samples": ans["samples"],
    }
first = json.load(open(f"{work}/kd-answers-answers.json"))
best = min(variants, key=lambda v: variants[v]["reverse_kl"])
others = [variants[v]["reverse_kl"] for v in variants if v != "kd-answers"]
iii = variants["kd-answers"]["reverse_kl"]
out = {
    "variants": variants,
    "lowest_reverse_kl": best,
    "kd_answers_reverse_kl_vs_next_best": iii / min(others),
    "held_out_prompts": first["prompts"],
    "max_new_tokens": first["max_new_tokens"],
    "match_tokens": first["match_tokens"],
    "teacher_nll_of_teacher": first["teacher_nll_of_teacher"],
    "meta": {
        "script": "scripts/bench-chat.sh",
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "steps": steps,
        "teacher": "SmolLM2-135M-Instruct.Q4_1.gguf (dequantised)",
        "student": "6 layers initialised from the teacher's",
    },
}
os.makedirs("docs/results", exist_ok=True)
json.dump(out, open("docs/results/chat.json", "w"), indent=2)
cell = lambda s: s.strip().replace("|", "\\|").replace("\n", "<br>")
md = [f"# Chat students: what to learn from ({out['meta']['date']}, {cpu}, {out['meta']['cores']} cores, commit {out['meta']['commit']})", "",
      f"`scripts/bench-chat.sh {steps}`: the same 6-layer student of SmolLM2-135M-Instruct, {steps} steps of 4 blocks of 256 tokens in each variant, "
      "its teacher targets read from a teacher cache (no variant runs the teacher while training). Judged by `distill eval --prompts` on "
      f"{out['held_out_prompts']} held-out prompts (answers of at most {out['max_new_tokens']} tokens; the teacher's own greedy answers score "
      f"{out['teacher_nll_of_teacher']:.3f} nats per token under it).", "",
      "| variant | reverse KL per token (sampled answers, teacher-graded) | teacher NLL per token (greedy answers) | greedy match, first 32 tokens | steps | training wall seconds |",
      "|---|---:|---:|---:|---:|---:|"]
for v in variants.values():
    md.append(f"| {v['variant']} | {v['reverse_kl']:.3f} | {v['teacher_nll']:.3f} | {100 * v['greedy_match']:.1f}% | {v['steps']} | {v['wall_seconds']:.0f} |")
md += ["", "A chat step computes the head and the losses on the answers' rows alone, a raw-text step on every row, so at equal steps the raw-text run trains longer; "
       "its second run has its steps scaled to the chat runs' mean wall-clock (the target compares at equal wall-clock)."]
md += ["", f"Lowest held-out reverse KL: **{names[best]}**; (iii) / best of the others: {out['kd_answers_reverse_kl_vs_next_best']:.3f}.", ""]
for v in variants.values():
    md += [f"## Samples: {v['variant']}", "", "| prompt | teacher | student |", "|---|---|---|"]
    md += [f"| {cell(s['prompt'])} | {cell(s['teacher'])} | {cell(s['student'])} |" for s in v["samples"]]
    md.append("")
open("docs/results/chat.md", "w").write("\n".join(md))
print("\n".join(md[:12]))
PY
