#!/usr/bin/env bash
# The quickstart as a new user runs it, measured: scripts/quickstart.sh from a fresh run folder
# (distil, then compress into the 4-bit GGUF edge artifact), its wall time, the report's
# headline table (teacher, student, artifact), and the artifact loaded by llama.cpp
# (llama-cpp-python, scripts/setup-ref-venv.sh) with its logits compared with distill's on the
# first 512 tokens of a held-out chapter. Writes docs/results/quickstart.{md,json}.
#   scripts/bench-quickstart.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
scripts/fetch-assets.sh
cargo build --release --bin distill
start=$(date +%s)
scripts/quickstart.sh --overwrite
wall=$(( $(date +%s) - start ))
run=runs/quickstart
art=$(python3 -c "import json; print(json.load(open('$run/report.json'))['artifact']['stats']['name'])")
scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
target/release/distill eval "$art" --text "$assets/moby-dick/chapter_2.txt" --max-tokens 512 --block 512 --json \
  --save-logits "$tmp/ours.safetensors" > /dev/null
"$py" scripts/interop-llamacpp.py "$art" "$tmp/ours.safetensors" > "$tmp/interop.json"
python3 - "$run" "$wall" "$tmp/interop.json" <<'PY'
import json, sys, datetime, subprocess
run, wall, interop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
rep = json.load(open(f"{run}/report.json"))
i = json.load(open(interop))
m = i["models"][0]
t, a = rep["teacher"], rep["artifact"]["stats"]
doc = {"script": "scripts/bench-quickstart.sh", "date": datetime.date.today().isoformat(), "commit": commit,
       "cpu": cpu, "wall_seconds": wall, "teacher": t, "student": rep["student"], "artifact": rep["artifact"],
       "artifact_over_teacher_bytes": a["bytes_on_disk"] / t["bytes_on_disk"],
       "llamacpp": {"version": i["llama_cpp_python"], "loaded": m["loaded"], "positions": m["positions"],
                    "top1_agreement": m["top1_agreement"], "max_abs_logit_diff": m["max_abs_logit_diff"],
                    "tensor_types": m["tensor_types"], "generated": m["generated"]}}
json.dump(doc, open("docs/results/quickstart.json", "w"), indent=2)
table = open(f"{run}/report.md").read().split("\n\n")[1]
md = f"""# Quickstart: teacher, student and edge artifact

`scripts/quickstart.sh` (`distill run configs/quickstart.yaml`: distil SmolLM2-135M-Instruct into a
6-layer student on Moby Dick, then GPTQ it into a Q4_0 GGUF), produced by
`scripts/bench-quickstart.sh` on {doc['date']} (commit {commit}) on {cpu}, 2 cores: {wall} s after
the build. The report's headline table:

{table}

The artifact is {100 * doc['artifact_over_teacher_bytes']:.0f}% of the teacher's bytes. llama.cpp
(llama-cpp-python {i['llama_cpp_python']}) loads it (tensor types {', '.join(m['tensor_types'])}); on the first
{m['positions']} tokens of chapter 2 its top-1 token agrees with distill's at {100 * m['top1_agreement']:.1f}% of
positions (max abs logit difference {m['max_abs_logit_diff']:.3f}: distill runs Q4_0 through candle's QMatMul,
whose activation rounding and summation order differ from llama.cpp's). llama.cpp's greedy
continuation of "Call me Ishmael. Some years ago": {json.dumps(m['generated'])}.
"""
open("docs/results/quickstart.md", "w").write(md)
print(md)
PY
