#!/usr/bin/env bash
# Spam filter benchmark: fine-tune all-MiniLM-L6-v2 on SpamAssassin into a teacher, distil a
# 2-layer student, train the same student on labels alone; score all three on the held-out test
# split (accuracy, F1, size, CPU latency and throughput). Runs configs/spam-minilm.yaml and
# writes docs/results/spam.{md,json}; the run folder stays in runs/bench-spam (for
# scripts/check-interop-classifier.sh). About half an hour on 2 cores.
#   scripts/bench-spam.sh [config]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
config="${1:-configs/spam-minilm.yaml}"
scripts/fetch-assets.sh
cargo build --release --bin distill
work=runs
mkdir -p "$work"
sed -e "s#^  name: .*#  name: bench-spam\n  dir: $work#" "$config" > "$work/bench-spam.yaml"
start=$(date +%s)
/usr/bin/time -v target/release/distill run "$work/bench-spam.yaml" --overwrite 2> >(tee "$work/bench-spam.stderr.log" >&2)
wall=$(( $(date +%s) - start ))
python3 - "$work" "$wall" "$config" <<'PY'
import json, re, sys, datetime, subprocess
work, wall, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rep = json.load(open(f"{work}/bench-spam/report.json"))
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{work}/bench-spam.stderr.log").read())
s = rep["summary"]
out = dict(s)
out.update({
    "config": config,
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "date": datetime.date.today().isoformat(),
    "threads": rep["threads"],
    "wall_seconds": wall,
    "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None,
    "size_ratio": s["teacher_bytes"] / s["student_bytes"],
    "params_ratio": s["teacher_params"] / s["student_params"],
    "speedup_b32": s["student_msgs_per_s_b32"] / s["teacher_msgs_per_s_b32"],
    "speedup_b1": s["teacher_latency_ms_b1"] / s["student_latency_ms_b1"],
    "kd_acc_share_of_teacher": s["kd_acc"] / s["teacher_acc"],
    "data": rep["data"],
    "stages": [{k: st[k] for k in ("stage", "steps", "best", "stopped_early", "seconds", "examples_per_second", "trainable_parameters")} for st in rep["stages"]],
    "models": rep["models"],
})
json.dump(out, open("docs/results/spam.json", "w"), indent=2)
md = open(f"{work}/bench-spam/report.md").read()
md = md.replace("# bench-spam — classification report", "# Spam filter: MiniLM teacher vs distilled student")
head = (f"`scripts/bench-spam.sh` ({config}), commit {out['commit']}, {out['date']}; "
        f"whole run {wall} s wall on {rep['threads']} CPU threads, peak RSS {out['peak_rss_mb']:.0f} MB.\n\n"
        f"Student vs teacher: {out['size_ratio']:.1f}x smaller on disk ({out['params_ratio']:.1f}x fewer parameters), "
        f"{out['speedup_b32']:.1f}x the throughput at batch 32, {out['speedup_b1']:.1f}x at batch 1; "
        f"KD accuracy is {100*out['kd_acc_share_of_teacher']:.2f}% of the teacher's "
        f"(labels-only student: {s['scratch_acc']:.4f}, KD student: {s['kd_acc']:.4f}).\n\n")
md = md.replace("\n\nTest split", "\n\n" + head + "Test split", 1)
open("docs/results/spam.md", "w").write(md)
print(open("docs/results/spam.md").read())
PY
