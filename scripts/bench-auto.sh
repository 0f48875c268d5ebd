#!/usr/bin/env bash
# `distill auto` against the hand-written variants, on the quickstart student, side by side in
# one session: the `compress:` section of configs/quickstart-compress.yaml (every technique
# alone and two chains, each measured after every step) and `distill auto configs/quickstart.yaml
# --budget ppl:+5%`, both on runs/quickstart/final with the same 32 validation blocks. Reports
# the smallest artifact within the budget of each and how many validation measurements each
# made, and whether llama.cpp (llama-cpp-python, scripts/setup-ref-venv.sh) loads auto's file
# and agrees with distill's logits. Writes docs/results/auto.{md,json,svg}.
#   scripts/bench-auto.sh            # trains the quickstart first if runs/quickstart/final is missing
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
budget="ppl:+5%"
scripts/fetch-assets.sh
scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
cargo build --release --bin distill
d=target/release/distill
[ -f runs/quickstart/final/config.json ] || "$d" run configs/quickstart.yaml --overwrite
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

start=$(date +%s)
"$d" compress runs/quickstart/final --config configs/quickstart-compress.yaml --out runs/quickstart/compressed-hand --json \
  > "$tmp/hand.json"
hand_wall=$(( $(date +%s) - start ))
start=$(date +%s)
"$d" auto configs/quickstart.yaml --budget "$budget" --json > "$tmp/auto.json"
auto_wall=$(( $(date +%s) - start ))
art=runs/quickstart/auto/auto.gguf
"$d" eval "$art" --text "$assets/moby-dick/chapter_2.txt" --max-tokens 512 --block 512 --json \
  --save-logits "$tmp/ours.safetensors" > /dev/null
"$py" scripts/interop-llamacpp.py "$art" "$tmp/ours.safetensors" > "$tmp/interop.json"
cp runs/quickstart/auto/auto.svg docs/results/auto.svg

python3 - "$tmp" "$budget" "$hand_wall" "$auto_wall" <<'PY'
import json, sys, datetime, subprocess
tmp, budget, hand_wall, auto_wall = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
hand, auto = json.load(open(f"{tmp}/hand.json")), json.load(open(f"{tmp}/auto.json"))
interop = json.load(open(f"{tmp}/interop.json"))["models"][0]
rel = float(budget.split("+")[1].rstrip("%")) / 100
base = hand["rows"][0]["val_ppl"]
limit = base * (1 + rel)
finals = [r for r in hand["rows"] if r.get("artifact")]
within = [r for r in finals if r["val_ppl"] <= limit]
hand_best = min(within, key=lambda r: r["bytes"]) if within else None
variants = len({r["variant"] for r in hand["rows"][1:]})
b = auto["best"]
slim = lambda r: {k: r.get(k) for k in ("variant", "steps", "bytes", "val_ppl", "params", "artifact")}
doc = {
    "script": "scripts/bench-auto.sh", "date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu,
    "model": "runs/quickstart/final", "budget": budget, "limit": limit, "met": auto["met"],
    "uncompressed": {"bytes": hand["rows"][0]["bytes"], "val_ppl": base, "auto_val_ppl": auto["base_quality"]},
    "best": {"bytes": b["bytes"], "val_ppl": b["val_ppl"], "steps": b["steps"], "artifact": b["artifact"]},
    "best_steps": auto["best_steps"],
    "evaluations": auto["evaluations"], "proxy_evaluations": auto["proxy_evaluations"],
    "pareto": [slim(r) for r in auto["pareto"]],
    "rows": [slim(r) for r in auto["rows"]],
    "hand": {"config": "configs/quickstart-compress.yaml", "variants": variants,
             "evaluations": len(hand["rows"]), "best": slim(hand_best) if hand_best else None,
             "within_budget": [slim(r) for r in within]},
    "wall_seconds": {"hand": hand_wall, "auto": auto_wall},
    "llamacpp": {"loaded": interop["loaded"], "positions": interop["positions"],
                 "top1_agreement": interop["top1_agreement"], "max_abs_logit_diff": interop["max_abs_logit_diff"]},
}
json.dump(doc, open("docs/results/auto.json", "w"), indent=2)
mb = lambda x: f"{x / 1e6:.2f} MB"
hb = doc["hand"]["best"]
pareto = "\n".join(f"| {r['variant']} | {mb(r['bytes'])} | {r['val_ppl']:.2f} | {' → '.join(r['steps']) or '-'} |" for r in doc["pareto"])
md = f"""# `distill auto` on the quickstart student

Produced by `scripts/bench-auto.sh` on {doc['date']} (commit {commit}) on {cpu}, 2 cores: the quickstart
student (`runs/quickstart/final`, {mb(doc['uncompressed']['bytes'])} f32, validation perplexity {base:.2f} on 32 blocks),
budget `{budget}` (perplexity ≤ {limit:.2f}). Both searches measure on the same 32 validation blocks.

| | smallest artifact within budget | bytes | val perplexity | validation measurements | wall time |
|---|---|---:|---:|---:|---:|
| `distill auto configs/quickstart.yaml --budget {budget}` | `auto.gguf` | {mb(b['bytes'])} | {b['val_ppl']:.2f} | **{doc['evaluations']}** (+{doc['proxy_evaluations']} calibration screens) | {auto_wall} s |
| hand-written: `configs/quickstart-compress.yaml` ({variants} variants) | {('`' + hb['variant'] + '`') if hb else 'none'} | {mb(hb['bytes']) if hb else '–'} | {f"{hb['val_ppl']:.2f}" if hb else '–'} | {doc['hand']['evaluations']} | {hand_wall} s |

auto's artifact: {' → '.join(b['steps'])}. llama.cpp loads it; on the first {interop['positions']} tokens of chapter 2 its
logits differ from `distill eval`'s on the same file by at most {interop['max_abs_logit_diff']:.3g}, top-1 agreement
{100 * interop['top1_agreement']:.1f}%. The file's perplexity is measured through QMatMul (as a runtime runs it); the
search's probes measure the same weights decoded into dense matrices.

Pareto frontier of auto's measurements (every one is in `auto.json`):

| candidate | bytes | val perplexity | steps |
|---|---:|---:|---|
{pareto}

![size vs quality of every candidate auto measured](auto.svg)

How the search decides: [docs/auto.md](../auto.md).
"""
open("docs/results/auto.md", "w").write(md)
print(md)
PY
