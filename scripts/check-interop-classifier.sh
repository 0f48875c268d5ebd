#!/usr/bin/env bash
# On-demand interop check of exported classifiers with Hugging Face transformers (CPU torch from
# PyPI, several GB: not part of CI): the teacher and the student of a classification run are
# loaded with AutoModelForSequenceClassification and their logits compared with distill's on the
# run's test messages. Writes docs/results/interop-classifier.{md,json}.
#   scripts/check-interop-classifier.sh RUN_DIR CONFIG    (e.g. runs/spam-minilm configs/spam-minilm.yaml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
run="${1:?run folder}"; config="${2:?run config}"
scripts/setup-ref-venv-torch.sh >/dev/null
py="${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}/bin/python"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=()
for m in teacher student; do
  target/release/distill eval "$run/$m" --labelled "$config" --split test --json --predictions > "$tmp/$m.json"
  args+=("$run/$m" "$tmp/$m.json")
done
"$py" scripts/interop-classifier.py "${args[@]}" > "$tmp/result.json"
mkdir -p docs/results
cp "$tmp/result.json" docs/results/interop-classifier.json
python3 - "$tmp/result.json" "$run" "$config" <<'PY'
import json, sys, datetime, subprocess
r = json.load(open(sys.argv[1]))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
md = f"""# Exported classifiers in Hugging Face transformers

The teacher and student folders of `{sys.argv[2]}` (written by `distill run {sys.argv[3]}`) loaded with
`AutoModelForSequenceClassification` and `AutoTokenizer` (transformers {r['transformers']}, torch
{r['torch']}, CPU float32, eager attention) and run on the run's test messages as distill decodes
them. Produced by `scripts/check-interop-classifier.sh` on {datetime.date.today().isoformat()} (commit {commit}).

| model | loads as | messages | max tokens | max abs logit diff | same prediction | accuracy (transformers) | accuracy (distill) |
|---|---|---:|---:|---:|---:|---:|---:|
"""
for m in r["models"]:
    md += (f"| `{m['model']}` | {', '.join(m['architecture'])} | {m['examples']} | {m['max_length']} | "
           f"{m['max_abs_logit_diff']:.2e} | {100*m['prediction_agreement']:.1f}% | "
           f"{m['transformers_accuracy']:.4f} | {m['distill_accuracy']:.4f} |\n")
md += "\nThe student is stored in the run's export dtype; transformers upcasts it to float32 as distill does.\n"
open("docs/results/interop-classifier.md", "w").write(md)
print(md)
PY
