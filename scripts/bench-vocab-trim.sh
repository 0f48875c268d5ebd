#!/usr/bin/env bash
# Vocabulary trimming, measured: the quickstart (configs/quickstart.yaml) and the same run with
# the student's vocabulary trimmed to the training chapters (configs/quickstart-trimmed.yaml),
# side by side in one session on this machine. Compares bytes (the f32 student and the Q4_0 edge
# artifact), validation perplexity (each on its own tokenisation, and per teacher token on the
# whole held-out text), training speed; and checks the trimmed student's files in the runtimes
# others use: transformers (AutoTokenizer, AutoModelForCausalLM; scripts/setup-ref-venv-torch.sh)
# and llama.cpp (llama-cpp-python, scripts/setup-ref-venv.sh) tokenise like `distill tokenize`.
# Writes docs/results/vocab-trim.{md,json}.
#   scripts/bench-vocab-trim.sh
#   scripts/bench-vocab-trim.sh --render   # docs/results/vocab-trim.md again from the .json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Renders docs/results/vocab-trim.md from docs/results/vocab-trim.json.
render() {
python3 - <<'PY'
import json
doc = json.load(open("docs/results/vocab-trim.json"))
v = {"full": doc["full_ids"], "kept": doc["kept_ids"], "corpus_distinct": doc["corpus_distinct_ids"],
     "corpus_tokens": doc["corpus_tokens"], "kept_for": doc["kept_for"],
     "merges_before": doc["merges_before"], "merges_after": doc["merges_after"]}
vt, tf, lc = doc["validation_text"], doc["transformers"], doc["llama_cpp"]
mb = lambda b: f"{b / 1e6:.1f} MB"
ok = lambda xs: "all same" if all(xs) else "DIFFERENT: " + str(xs)
share = doc["embedding_share_before"]
unused = share * (1 - v["corpus_distinct"] / v["full"])
removed = share * (1 - v["kept"] / v["full"])
fall = 1 - doc["student_bytes_after"] / doc["student_bytes_before"]
md = f"""# Vocabulary trimming on the quickstart

`configs/quickstart.yaml` against `configs/quickstart-trimmed.yaml` (the same run plus
`student.vocab: {{trim: corpus, min_count: 1}}`), both run by `scripts/bench-vocab-trim.sh` on
{doc['date']} (commit {doc['commit']}) on {doc['cpu']}, 2 cores, one after the other.

The training chapters ({v['corpus_tokens']:,} tokens) use **{v['corpus_distinct']:,} of the {v['full']:,} ids**.
The student keeps **{v['kept']:,}**: {v['kept_for']['corpus']:,} for the corpus, {v['kept_for']['special']} special,
{v['kept_for']['bytes']} byte tokens not already counted, {v['kept_for']['template']} for the chat template's text and roles,
{v['kept_for']['merges']:,} intermediate tokens of the merges that build them; {v['merges_after']:,} of
{v['merges_before']:,} merges stay. The trimmed tokenizer splits every training chapter exactly as the full one
(checked by the run).

| | full vocabulary | trimmed | ratio |
|---|---:|---:|---:|
| student parameters | {doc['student_params_before'] / 1e6:.2f} M | {doc['student_params_after'] / 1e6:.2f} M | {doc['student_params_after'] / doc['student_params_before']:.2f}× |
| student bytes (f32 safetensors) | {mb(doc['student_bytes_before'])} | {mb(doc['student_bytes_after'])} | {doc['student_bytes_after'] / doc['student_bytes_before']:.2f}× |
| edge artifact bytes (GPTQ Q4_0 GGUF) | {mb(doc['artifact_bytes_before'])} | {mb(doc['artifact_bytes_after'])} | {doc['artifact_bytes_after'] / doc['artifact_bytes_before']:.2f}× |
| artifact / teacher bytes | {doc['artifact_bytes_before'] / doc['teacher_bytes']:.2f}× | {doc['artifact_bytes_after'] / doc['teacher_bytes']:.2f}× | |
| student validation perplexity (report, own tokenisation) | {doc['val_ppl_before']:.2f} | {doc['val_ppl_after']:.2f} | |
| artifact validation perplexity | {doc['artifact_val_ppl_before']:.2f} | {doc['artifact_val_ppl_after']:.2f} | |
| teacher validation perplexity (trimmed: renormalised over the kept ids) | {doc['teacher_val_ppl_before']:.2f} | {doc['teacher_val_ppl_after']:.2f} | |
| held-out chapters, tokens | {vt['teacher_tokens']:,} | {vt['trimmed_tokens']:,} | {vt['trimmed_tokens'] / vt['teacher_tokens']:.3f}× |
| held-out chapters, perplexity per teacher token | {vt['ppl_per_teacher_token_before']:.2f} | {vt['ppl_per_teacher_token_after']:.2f} | {vt['ppl_per_teacher_token_after'] / vt['ppl_per_teacher_token_before']:.3f}× |
| training tokens/s | {doc['train_tokens_per_second_before']:.0f} | {doc['train_tokens_per_second_after']:.0f} | {doc['train_tokens_per_second_after'] / doc['train_tokens_per_second_before']:.2f}× |
| run wall time (train, export, compress) | {doc['wall_seconds_before']} s | {doc['wall_seconds_after']} s | |

The embedding table was {100 * share:.1f}% of the full student's parameters. The ids the corpus does not use
are {100 * unused:.1f}% of the student; trimming removes {100 * (1 - v['kept'] / v['full']):.1f}% of the rows
({100 * removed:.1f}% of the student), and the f32 student falls by exactly that, {100 * fall:.1f}%. The
difference, {100 * (unused - removed):.1f} points, is the {v['kept'] - v['corpus_distinct']:,} ids kept besides the corpus's:
mostly merge intermediates, without which the trimmed tokenizer could not reproduce the corpus's tokens.

Perplexities in the report are per token of each model's own tokenisation. Held-out chapters hold words the
training chapters do not, which the trimmed tokenizer spells with more, shorter tokens; the row "per teacher
token" divides each student's total negative log-likelihood on the whole held-out text (`distill eval
--block 512`) by the teacher tokenizer's token count, so the two numbers score the same text on the same
scale: on text outside its corpus the trimmed student is worse, by the ratio shown.

Files others load (the strings: a training chapter's first 2,000 characters, a chat turn, text outside the corpus):

- transformers {tf['version']}: `AutoTokenizer` on the trimmed folder ({tf['vocab']:,} tokens) tokenises like
  `distill tokenize`: {ok(tf['same'])}; `AutoModelForCausalLM` loads it, logits over {tf['logits_vocab']:,} ids.
- llama.cpp (llama-cpp-python {lc['version']}): loads the artifact's vocabulary ({lc['vocab']:,} tokens) and tokenises
  like `distill tokenize` on the folder: {ok(lc['same'])}; `distill tokenize` on the GGUF file: {ok(lc['gguf_same_as_folder'])}.
"""
open("docs/results/vocab-trim.md", "w").write(md)
print(md)
PY
}
[[ "${1:-}" == "--render" ]] && { render; exit 0; }
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
scripts/fetch-assets.sh
scripts/setup-ref-venv.sh >/dev/null
scripts/setup-ref-venv-torch.sh >/dev/null
llama_py="${DISTILL_REF_VENV:-$HOME/.cache/distill/ref-venv}/bin/python"
torch_py="${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}/bin/python"
cargo build --release --bin distill
d=target/release/distill
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

declare -A wall
for cfg in quickstart quickstart-trimmed; do
  start=$(date +%s)
  "$d" run "configs/$cfg.yaml" --overwrite
  wall[$cfg]=$(( $(date +%s) - start ))
done

# The held-out chapters (the same split in both runs), scored whole by each student.
python3 - runs/quickstart/split.json runs/quickstart-trimmed/split.json "$tmp/validation.txt" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["validation"] == b["validation"], "the two runs hold out different chapters"
open(sys.argv[3], "w").write("\n\n".join(open(p).read() for p in a["validation"]))
PY
for cfg in quickstart quickstart-trimmed; do
  "$d" eval "runs/$cfg/final" --text "$tmp/validation.txt" --block 512 --json > "$tmp/$cfg-eval.json"
done

# Strings for the tokenisation checks: training text, a chat turn, text outside the corpus.
python3 - runs/quickstart-trimmed/split.json "$tmp/strings.json" <<'PY'
import json, sys
split = json.load(open(sys.argv[1]))
train = open(split["train"][0]).read()
strings = [
    train[:2000],
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n" + train[:300] + "<|im_end|>\n<|im_start|>assistant\n",
    "Quantum electrodynamics, 東京, café ☃ and 🐋 — none of it in Moby Dick.",
]
json.dump(strings, open(sys.argv[2], "w"), ensure_ascii=False)
PY
model=runs/quickstart-trimmed/final
art=$(python3 -c "import json; print(json.load(open('runs/quickstart-trimmed/report.json'))['artifact']['stats']['name'])")
python3 - "$tmp/strings.json" "$d" "$model" "$art" "$tmp/ours.json" <<'PY'
import json, subprocess, sys
strings, d, model, art, out = sys.argv[1:6]
tok = lambda m, s: json.loads(subprocess.run([d, "tokenize", m, s, "--json"], check=True, capture_output=True, text=True).stdout)
json.dump([{"folder": tok(model, s), "gguf": tok(art, s)} for s in json.load(open(strings))], open(out, "w"))
PY
"$torch_py" - "$model" "$tmp/strings.json" "$tmp/ours.json" > "$tmp/transformers.json" <<'PY'
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
model, strings, ours = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
tok = AutoTokenizer.from_pretrained(model)
m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
same = [tok(s, add_special_tokens=False)["input_ids"] == o["folder"] for s, o in zip(strings, ours)]
with torch.no_grad():
    logits = m(torch.tensor([ours[0]["folder"][:64]])).logits
print(json.dumps({"version": transformers.__version__, "same": same, "vocab": len(tok),
                  "logits_vocab": logits.shape[-1]}))
PY
"$llama_py" - "$art" "$tmp/strings.json" "$tmp/ours.json" > "$tmp/llamacpp.json" <<'PY'
import json, sys
import llama_cpp
from llama_cpp import Llama
art, strings, ours = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
v = Llama(model_path=art, vocab_only=True, verbose=False)
same = [v.tokenize(s.encode(), add_bos=False, special=True) == o["folder"] for s, o in zip(strings, ours)]
print(json.dumps({"version": llama_cpp.__version__, "same": same, "vocab": v.n_vocab(),
                  "gguf_same_as_folder": [o["gguf"] == o["folder"] for o in ours]}))
PY

python3 - "$tmp" "${wall[quickstart]}" "${wall[quickstart-trimmed]}" <<'PY'
import json, math, sys, datetime, subprocess
tmp, wall_full, wall_trim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
full, trim = (json.load(open(f"runs/{r}/report.json")) for r in ("quickstart", "quickstart-trimmed"))
ev = {r: json.load(open(f"{tmp}/{r}-eval.json")) for r in ("quickstart", "quickstart-trimmed")}
tf, lc = json.load(open(f"{tmp}/transformers.json")), json.load(open(f"{tmp}/llamacpp.json"))
strings = json.load(open(f"{tmp}/strings.json"))
v = trim["vocab"]
nll = {r: e["mean_nll"] * e["predicted_tokens"] for r, e in ev.items()}
per_teacher_token = {r: math.exp(nll[r] / ev["quickstart"]["predicted_tokens"]) for r in ev}
h = full["student"]["parameters"] - full["student"]["embedding_parameters"]
doc = {
    "script": "scripts/bench-vocab-trim.sh", "date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu,
    "configs": ["configs/quickstart.yaml", "configs/quickstart-trimmed.yaml"],
    "full_ids": v["full"], "kept_ids": v["kept"], "corpus_distinct_ids": v["corpus_distinct"],
    "corpus_tokens": v["corpus_tokens"], "kept_for": v["kept_for"],
    "merges_before": v["merges_before"], "merges_after": v["merges_after"],
    "embedding_share_before": full["student"]["embedding_parameters"] / full["student"]["parameters"],
    "student_params_before": full["student"]["parameters"], "student_params_after": trim["student"]["parameters"],
    "student_bytes_before": full["student"]["bytes_on_disk"], "student_bytes_after": trim["student"]["bytes_on_disk"],
    "artifact_bytes_before": full["artifact"]["stats"]["bytes_on_disk"], "artifact_bytes_after": trim["artifact"]["stats"]["bytes_on_disk"],
    "teacher_bytes": full["teacher"]["bytes_on_disk"],
    "val_ppl_before": full["student"]["val_ppl"], "val_ppl_after": trim["student"]["val_ppl"],
    "artifact_val_ppl_before": full["artifact"]["stats"]["val_ppl"], "artifact_val_ppl_after": trim["artifact"]["stats"]["val_ppl"],
    "teacher_val_ppl_before": full["teacher"]["val_ppl"], "teacher_val_ppl_after": trim["teacher"]["val_ppl"],
    "validation_text": {"teacher_tokens": ev["quickstart"]["tokens"], "trimmed_tokens": ev["quickstart-trimmed"]["tokens"],
                        "ppl_per_teacher_token_before": per_teacher_token["quickstart"],
                        "ppl_per_teacher_token_after": per_teacher_token["quickstart-trimmed"]},
    "train_tokens_per_second_before": full["train_tokens_per_second"], "train_tokens_per_second_after": trim["train_tokens_per_second"],
    "wall_seconds_before": wall_full, "wall_seconds_after": wall_trim,
    "transformers": tf, "llama_cpp": lc, "strings": strings,
}
json.dump(doc, open("docs/results/vocab-trim.json", "w"), indent=2, ensure_ascii=False)
PY
render
