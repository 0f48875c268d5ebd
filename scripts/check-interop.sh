#!/usr/bin/env bash
# On-demand interop check of an exported student with Hugging Face transformers (CPU torch from
# PyPI, several GB: not part of CI): logits on Moby Dick, and greedy decoding of the 20 prompts of
# tests/fixtures/smollm2-generate.json (10 plain, 10 through the chat template) by
# `model.generate` against `distill generate`. Writes docs/results/interop-transformers.{md,json}.
#   scripts/check-interop.sh [RUN_DIR]      (default runs/quickstart, made by scripts/quickstart.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
run="${1:-runs/quickstart}"
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
text="$assets/moby-dick/chapter_2.txt"
scripts/setup-ref-venv-torch.sh >/dev/null
py="${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}/bin/python"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
target/release/distill eval "$run/final" --text "$text" --max-tokens 512 --block 128 --json \
  --save-logits "$tmp/ours.safetensors" > "$tmp/ours.json"
"$py" scripts/interop-transformers.py "$run/final" "$text" "$tmp/ours.safetensors" "$tmp/ours.json" > "$tmp/result.json"
python3 - tests/fixtures/smollm2-generate.json "$tmp/prompts.jsonl" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    for p in f["prompts"]:
        line = {"prompt": p["text"]} if p["kind"] == "text" else {"messages": [{"role": "user", "content": p["user"]}]}
        out.write(json.dumps(line) + "\n")
PY
target/release/distill generate "$run/final" --prompts "$tmp/prompts.jsonl" --max-new-tokens 24 \
  --temperature 0 --device cpu --json > "$tmp/generated.json"
"$py" scripts/interop-transformers-generate.py "$run/final" "$tmp/prompts.jsonl" "$tmp/generated.json" 24 \
  > "$tmp/generate.json"
python3 - "$tmp/result.json" "$tmp/generate.json" <<'PY'
import json, platform, sys
r = json.load(open(sys.argv[1]))
r["greedy"] = json.load(open(sys.argv[2]))
r["cpu"] = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
json.dump(r, open(sys.argv[1], "w"), indent=2)
PY
mkdir -p docs/results
cp "$tmp/result.json" docs/results/interop-transformers.json
python3 - "$tmp/result.json" "$run" <<'PY'
import json, sys, datetime, subprocess
r = json.load(open(sys.argv[1]))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
md = f"""# Exported student in Hugging Face transformers

`{sys.argv[2]}/final` (written by `distill run`) loaded with `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained`, CPU float32 ({r['cpu']}). Produced by `scripts/check-interop.sh` on
{datetime.date.today().isoformat()} (commit {commit}).

| check | result |
|---|---|
| transformers loads it as | {', '.join(r['architecture'])} |
| token ids of the first window equal ours | {r['token_ids_equal_first_window']} |
| max abs logit difference, first window ({r['first_window_tokens']} tokens) | {r['max_abs_logit_diff_first_window']:.2e} |
| top-1 agreement, first window | {100*r['top1_agreement_first_window']:.1f}% |
| perplexity, transformers | {r['transformers_perplexity']:.4f} |
| perplexity, distill eval | {r['distill_perplexity']:.4f} |

Text: Moby Dick chapter 2, first 512 tokens in windows of 128 ({r['predicted_tokens']} predictions).

Greedy decoding, 24 new tokens at most, of the {r['greedy']['prompts']} prompts of
`tests/fixtures/smollm2-generate.json` (plain text, and user turns through the chat template):
`model.generate` (transformers {r['greedy']['transformers']}, each prompt alone) against `distill generate`
(all prompts in one batch): **{r['greedy']['identical']}/{r['greedy']['prompts']} answers identical**,
{r['greedy']['tokens_before_first_difference']}/{r['greedy']['tokens']} of transformers' tokens before the first difference.
"""
open("docs/results/interop-transformers.md", "w").write(md)
print(md)
PY
