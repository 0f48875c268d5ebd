#!/usr/bin/env bash
# Compression benchmark: the `compress:` sections of configs/quickstart-compress.yaml (on the
# quickstart student, runs/quickstart/final from scripts/quickstart.sh) and
# configs/spam-compress.yaml (on the spam student, runs/bench-spam/student from
# scripts/bench-spam.sh): every technique alone and the chains, each step measured by running
# it. Every GGUF artifact is then loaded by llama.cpp (llama-cpp-python in a venv, see
# scripts/setup-ref-venv.sh) and its logits compared with distill's on the same file.
# Writes docs/results/compress.{md,json} and the size-vs-quality plots compress-*.svg.
#   scripts/bench-compress.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
lm="${LM_STUDENT:-runs/quickstart/final}"
cls="${CLS_STUDENT:-runs/bench-spam/student}"
[ -d "$lm" ] || { echo "$lm missing: run scripts/quickstart.sh first" >&2; exit 1; }
[ -d "$cls" ] || { echo "$cls missing: run scripts/bench-spam.sh first" >&2; exit 1; }
scripts/setup-ref-venv.sh >/dev/null
py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
cargo build --release --bin distill
out=runs/bench-compress
rm -rf "$out"; mkdir -p "$out"
start=$(date +%s)
target/release/distill compress "$lm" --config configs/quickstart-compress.yaml --out "$out/quickstart" --json > "$out/quickstart.json"
target/release/distill compress "$cls" --config configs/spam-compress.yaml --out "$out/spam" --json > "$out/spam.json"
wall=$(( $(date +%s) - start ))

# llama.cpp interop of every GGUF artifact: distill's logits on the first 128 tokens of a
# held-out chapter against llama.cpp's on the same file.
args=()
for g in "$out"/quickstart/*.gguf; do
  target/release/distill eval "$g" --text "$assets/moby-dick/chapter_2.txt" --max-tokens 128 --block 128 --json \
    --save-logits "${g%.gguf}.logits.safetensors" > /dev/null
  args+=("$g" "${g%.gguf}.logits.safetensors")
done
"$py" scripts/interop-llamacpp.py "${args[@]}" > "$out/interop.json"
cp "$out/quickstart/compress.svg" docs/results/compress-quickstart.svg
cp "$out/spam/compress.svg" docs/results/compress-spam.svg

python3 - "$out" "$wall" "$lm" "$cls" <<'PY'
import json, sys, datetime, subprocess, os
out, wall, lm, cls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
interop = {os.path.basename(m["gguf"]): m for m in json.load(open(f"{out}/interop.json"))["models"]}
runs = {"quickstart": json.load(open(f"{out}/quickstart.json")), "spam": json.load(open(f"{out}/spam.json"))}
rows = []
for key, o in runs.items():
    for r in o["rows"]:
        row = {"model": key, "variant": r["variant"], "steps": r["steps"], "params": r["params"],
               "nonzero_params": r["nonzero_params"], "bytes": r["bytes"]}
        if "val_ppl" in r:
            row["val_ppl"] = r["val_ppl"]; row["tokens_per_s"] = r["tokens_per_s"]
        else:
            row["acc"] = r["acc"]; row["msgs_per_s"] = r["msgs_per_s"]
        art = r.get("artifact")
        if art and art.endswith(".gguf"):
            m = interop[os.path.basename(art)]
            row["llamacpp_interop"] = {"loaded": m["loaded"], "max_abs_logit_diff": m["max_abs_logit_diff"],
                                       "top1_agreement": m["top1_agreement"], "generated": m["generated"]}
        else:
            row["llamacpp_interop"] = None
        row["final"] = art is not None
        row["notes"] = r.get("notes", [])
        rows.append(row)
doc = {"date": datetime.date.today().isoformat(), "commit": commit, "wall_seconds": wall,
       "quickstart_student": lm, "spam_student": cls,
       "headline": {k: o["headline"] for k, o in runs.items()}, "rows": rows}
json.dump(doc, open("docs/results/compress.json", "w"), indent=2)

def table(key):
    lmt = key == "quickstart"
    head = ("| variant | step | params | non-zero | bytes | val perplexity | tokens/s | llama.cpp max abs diff / top-1 |\n|---|---|---:|---:|---:|---:|---:|---|\n"
            if lmt else "| variant | step | params | non-zero | bytes | val accuracy | msgs/s |\n|---|---|---:|---:|---:|---:|---:|\n")
    t = head
    for r in rows:
        if r["model"] != key: continue
        step = r["steps"][-1] if r["steps"] else "-"
        name = f"**{r['variant']}**" if r["final"] else r["variant"]
        if lmt:
            i = r["llamacpp_interop"]
            ic = f"{i['max_abs_logit_diff']:.3g} / {100*i['top1_agreement']:.1f}%" if i else ""
            t += f"| {name} | {step} | {r['params']/1e6:.2f} M | {r['nonzero_params']/1e6:.2f} M | {r['bytes']/1e6:.2f} MB | {r['val_ppl']:.2f} | {r['tokens_per_s']:.1f} | {ic} |\n"
        else:
            t += f"| {name} | {step} | {r['params']/1e6:.2f} M | {r['nonzero_params']/1e6:.2f} M | {r['bytes']/1e6:.2f} MB | {100*r['acc']:.2f}% | {r['msgs_per_s']:.1f} |\n"
    return t

def headline(key, budget, unit):
    o = runs[key]; h = o["headline"]; base = o["rows"][0]
    if not h: return f"No {key} variant stays within {budget}."
    q = f"perplexity {h['val_ppl']:.2f} (uncompressed {base['val_ppl']:.2f})" if "val_ppl" in h else f"accuracy {100*h['acc']:.2f}% (uncompressed {100*base['acc']:.2f}%)"
    sp = f"{h['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in h else f"{h['msgs_per_s']:.0f} msgs/s"
    return (f"**{key}**: smallest artifact within {budget} is `{h['variant']}` ({' → '.join(h['steps'])}): "
            f"{h['bytes']/1e6:.2f} MB, {base['bytes']/h['bytes']:.1f}x smaller than {base['bytes']/1e6:.2f} MB; {q}; {sp} on this CPU.")

md = f"""# Compression benchmark

Produced by `scripts/bench-compress.sh` on {doc['date']} (commit {commit}), 2 CPU cores, {wall} s for both
pipelines. Each variant starts from the uncompressed student and is measured after every step by
running it: perplexity on 32 validation blocks of 128 tokens (held-out Moby Dick chapters) and CPU
tokens/s scoring them, one block at a time; accuracy and messages/s (batch 32) on the SpamAssassin
validation split (605 messages). Bytes are the weights as written (the file on disk for a variant's
last step, in **bold**; the exact serialised size for intermediate steps). GGUF rows run the file
through candle's QMatMul; llama.cpp (llama-cpp-python) loads each GGUF and its logits on the first 128
tokens of chapter 2 are compared with distill's on the same file.

## Headlines

- {headline('quickstart', '3% of the uncompressed validation perplexity', '')}
- {headline('spam', '1 point of the uncompressed validation accuracy', '')}

## Quickstart student (`{lm}`, 6-layer SmolLM2 student)

![size vs quality](compress-quickstart.svg)

{table('quickstart')}
## Spam student (`{cls}`, 2-layer 128-wide BERT classifier, f16)

![size vs quality](compress-spam.svg)

{table('spam')}
## Notes per step

"""
for r in rows:
    for n in r["notes"]:
        md += f"- {r['model']} / {r['variant']} / {r['steps'][-1]}: {n}\n"
open("docs/results/compress.md", "w").write(md)
print(md)
PY
