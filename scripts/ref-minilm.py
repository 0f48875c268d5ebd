#!/usr/bin/env python3
"""Reference values for the all-MiniLM-L6-v2 BERT encoder, computed with Hugging Face transformers.

What it makes
-------------
* ``tests/fixtures/minilm-embeddings.json``: for a fixed, varied list of sentences (short, long,
  accents, punctuation, numbers, an e-mail with headers, spam, CJK, emoji, control characters,
  one text longer than ``max_length``...), the unpadded token ids, the mean-pooled embedding
  (sum(h * mask) / sum(mask) over ``last_hidden_state``, *not* L2-normalised), its L2-normalised
  version, and the full ``last_hidden_state`` row of the [CLS] token (position 0). All sentences
  go through the model as ONE padded batch, exactly as
  ``tokenizer(sentences, padding=True, truncation=True, max_length=128)`` produces it.
* ``tests/fixtures/minilm-cls-head.json``: a sequence-classification reference.
  ``BertForSequenceClassification`` (num_labels=2) is built from the same folder with a
  deterministic, freshly initialised head (``torch.manual_seed(0)``), saved with
  ``save_pretrained(safe_serialization=True)`` to ``$DISTILL_REF/minilm-cls/``
  (default ``~/.cache/distill/ref/minilm-cls/``), and the fixture records the logits for the
  first four sentences, the tensor names/shapes of the saved ``model.safetensors``, its sha256,
  and the ``config.json`` that ``save_pretrained`` wrote. The saved weights are NOT committed;
  rerunning this script recreates the folder (the original tokenizer files are copied next to
  them, so the folder is self-contained).

The fixtures are committed, so CI and the Rust tests never need Python or torch; only maintainers
who regenerate them do.

How to run it
-------------
    scripts/fetch-assets.sh                 # the model folder (once)
    scripts/setup-ref-venv-torch.sh         # pinned torch/transformers venv (once, several GB)
    "${DISTILL_TORCH_VENV:-$HOME/.cache/distill/torch-venv}/bin/python" scripts/ref-minilm.py

Options: ``--model DIR`` (default ``${DISTILL_ASSETS:-~/.cache/distill/assets}/all-minilm-l6-v2``),
``--out-dir DIR`` (default ``tests/fixtures`` of this repository), ``--cls-dir DIR`` (default
``${DISTILL_REF:-~/.cache/distill/ref}/minilm-cls``). Everything runs offline on the CPU in float32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Never touch the network: the model is loaded from a local folder only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128
# The eager (plain softmax(QK^T/sqrt(d) + mask) V) attention is the textbook computation a Rust
# implementation mirrors; SDPA agrees with it to ~1e-7 on CPU.
ATTN_IMPLEMENTATION = "eager"
CLS_SEED = 0
CLS_NUM_LABELS = 2
CLS_CASES = 4  # logits are recorded for the first CLS_CASES sentences

LONG_TEXT = (
    "Knowledge distillation trains a small student network to imitate a larger teacher. "
    "Instead of learning only from hard labels, the student also matches the softened output "
    "distribution of the teacher, which carries information about how similar the classes are. "
    "In practice the teacher is run once over the training data, its logits or embeddings are "
    "cached, and the student is optimised with a weighted sum of the usual cross entropy loss "
    "and a distillation loss at a raised temperature. The result is often a model that is "
    "several times faster while losing only a little accuracy, which matters on modest hardware."
)  # ~100 words, fits in 128 tokens (asserted below)

# Longer than MAX_LENGTH tokens: exercises truncation (the ids end with [SEP] at position 127).
# Its sentences in reverse order, twice, so that the kept 128 tokens differ from LONG_TEXT's.
_SENTS = [x.strip() + "." for x in LONG_TEXT.split(". ") if x.strip()]
TRUNCATED_TEXT = " ".join(list(reversed(_SENTS)) * 2 + ["This tail is cut off by truncation."])
TRUNCATED_TEXT = TRUNCATED_TEXT.replace("..", ".")

SENTENCES: list[str] = [
    # 0..3 are also the sequence-classification cases
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "CONGRATULATIONS!!! You have WON a FREE iPhone 15 Pro!!! Click "
    "http://win-prizes.example.com/claim?id=12345 NOW to claim your $1,000 gift card. "
    "Limited time offer, act fast!!!",
    "From: alice@example.com\nTo: bob@example.org\nSubject: Re: Q3 budget review\n"
    "Date: Mon, 4 Mar 2024 09:15:00 +0000\n\nHi Bob,\nPlease find the revised numbers attached.\n"
    "Thanks,\nAlice",
    "distillation",
    LONG_TEXT,
    "Café crème brûlée à la française: naïve señor Zoë, déjà vu in São Paulo and Kraków.",
    "Wait... what?! (Really) -- yes; no: maybe, \"quoted\" & 'single' [brackets] {braces} "
    "<angle> #hash @at %percent ^caret *star ~tilde `backtick` |pipe\\ slash/",
    "In 2023, revenue grew 12.5% to $3,450,000.99; call +1-555-0100 or ping 192.168.0.1 at "
    "10:30pm on 03/04/2024 (order #A-7781, 3x faster, 1e-5 lr).",
    "机器学习是人工智能的一个分支。東京は日本の首都です。한국어 문장도 포함합니다.",
    "I love this 😍🔥👍 so much! 🎉 Party time 🥳 ❤️",
    "Don't STOP believing: state-of-the-art e-mail isn't U.S.A.-only, it's world-wide.",
    "  tabs\tand\nnewlines,\r\nzero\u200bwidth and   multiple   spaces  ",
    TRUNCATED_TEXT,
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def floats(t: torch.Tensor) -> list:
    """Exact float32 values as Python floats (json writes the shortest round-tripping repr)."""
    return t.detach().to(torch.float32).cpu().tolist()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1)


def dump_json(obj, path: Path) -> None:
    """Indented JSON, but each list of numbers on a single line (keeps the diff readable)."""

    def enc(o, ind):
        pad = "  " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f'{pad}  {json.dumps(k, ensure_ascii=False)}: {enc(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(isinstance(x, (int, float, str, bool)) or x is None for x in o):
                return json.dumps(o, ensure_ascii=False)
            return "[\n" + ",\n".join(f"{pad}  {enc(x, ind + 1)}" for x in o) + "\n" + pad + "]"
        if isinstance(o, float):
            assert math.isfinite(o), o
        return json.dumps(o, ensure_ascii=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(enc(obj, 0) + "\n", encoding="utf-8")
    json.loads(tmp.read_text(encoding="utf-8"))  # sanity: it parses
    tmp.replace(path)


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def embeddings_fixture(model_dir: Path, out: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
    ).eval()

    tok_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))

    batch = tok(SENTENCES, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # [B, T, 384]
    mask = batch["attention_mask"]
    pooled = mean_pool(hidden, mask)
    normed = torch.nn.functional.normalize(pooled, p=2, dim=1)

    cases = []
    max_single_diff = 0.0
    ids_match_alone = True
    for i, text in enumerate(SENTENCES):
        n = int(mask[i].sum())
        ids = batch["input_ids"][i, :n].tolist()
        assert mask[i, :n].all() and not mask[i, n:].any(), "right padding expected"
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id, ids

        # The same sentence tokenised alone must give the same (unpadded) ids ...
        alone = tok(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        if alone != ids:
            ids_match_alone = False
            print(f"case {i}: ids differ when tokenised alone: {alone} vs {ids}", file=sys.stderr)
        # ... and the model run on it alone must agree with the padded batch up to float noise.
        with torch.inference_mode():
            single = torch.tensor([ids])
            h1 = model(input_ids=single, attention_mask=torch.ones_like(single)).last_hidden_state
        d = max(
            float((mean_pool(h1, torch.ones_like(single))[0] - pooled[i]).abs().max()),
            float((h1[0, 0] - hidden[i, 0]).abs().max()),
        )
        max_single_diff = max(max_single_diff, d)

        cases.append(
            {
                "text": text,
                "truncated": len(tok(text)["input_ids"]) > MAX_LENGTH,
                "tokens": tok.convert_ids_to_tokens(ids),
                "input_ids": ids,
                "mean_pooled": floats(pooled[i]),
                "normalized": floats(normed[i]),
                "cls_hidden": floats(hidden[i, 0, :8]),
                "last_hidden_first_token_row": floats(hidden[i, 0]),
            }
        )

    # The L2 norm of the normalised vectors is 1; of the pooled ones, recorded for orientation.
    fixture = {
        "model": "all-MiniLM-L6-v2",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "versions": versions(),
        "max_length": MAX_LENGTH,
        "dtype": "float32",
        "attn_implementation": ATTN_IMPLEMENTATION,
        "pooling": "mean over attention mask of last_hidden_state: sum(h*mask)/sum(mask); "
        "'normalized' = mean_pooled / ||mean_pooled||_2",
        "batching": "all cases in ONE batch: tokenizer(texts, padding=True, truncation=True, "
        f"max_length={MAX_LENGTH}), right-padded with [PAD]=0 to the longest case",
        "batch_vs_single_max_abs_diff": max_single_diff,
        "ids_equal_when_tokenised_alone": ids_match_alone,
        "model_safetensors_sha256": sha256_file(model_dir / "model.safetensors"),
        "tokenizer_json_padding": tok_json.get("padding"),
        "tokenizer_json_truncation": tok_json.get("truncation"),
        "cases": cases,
    }
    by_text = {c["text"]: c for c in cases}
    assert not by_text[LONG_TEXT]["truncated"] and by_text[TRUNCATED_TEXT]["truncated"]
    dump_json(fixture, out)
    print(f"wrote {out} ({len(cases)} cases, batch-vs-single max |diff| {max_single_diff:.3g})")
    return fixture


def cls_fixture(model_dir: Path, cls_dir: Path, out: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(CLS_SEED)
    model = BertForSequenceClassification.from_pretrained(
        str(model_dir),
        num_labels=CLS_NUM_LABELS,
        dtype=torch.float32,
        attn_implementation=ATTN_IMPLEMENTATION,
    ).eval()

    # Save into a fresh temporary folder next to the destination, then swap it into place, so a
    # half-written folder never sits at cls_dir.
    cls_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cls_dir.name + ".tmp-", dir=cls_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    model.save_pretrained(str(tmp), safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, tmp / name)
    for p in tmp.iterdir():
        p.chmod(0o644)
    if cls_dir.exists():
        shutil.rmtree(cls_dir)
    tmp.replace(cls_dir)

    texts = SENTENCES[:CLS_CASES]
    batch = tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        outp = model(**batch)
        logits = outp.logits
        pooler = model.bert(**batch).pooler_output

    # Reload what was saved and make sure it reproduces the logits bit for bit.
    reloaded = BertForSequenceClassification.from_pretrained(
        str(cls_dir), dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
    ).eval()
    with torch.inference_mode():
        logits2 = reloaded(**batch).logits
    reload_diff = float((logits - logits2).abs().max())
    assert reload_diff == 0.0, f"reloaded model gives different logits (max |diff| {reload_diff})"

    weights = cls_dir / "model.safetensors"
    names, shapes, dtypes = [], {}, {}
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            sl = f.get_slice(k)
            names.append(k)
            shapes[k] = list(sl.get_shape())
            dtypes[k] = sl.get_dtype()

    fixture = {
        "model": "all-MiniLM-L6-v2",
        "head": "BertForSequenceClassification",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "versions": versions(),
        "seed": CLS_SEED,
        "num_labels": CLS_NUM_LABELS,
        "max_length": MAX_LENGTH,
        "attn_implementation": ATTN_IMPLEMENTATION,
        "saved_to": str(cls_dir),
        "saved_model_safetensors_sha256": sha256_file(weights),
        "saved_files": sorted(p.name for p in cls_dir.iterdir()),
        "safetensors_metadata": meta,
        "state_dict_keys": names,
        "state_dict_shapes": shapes,
        "state_dict_dtypes": dtypes,
        "config": json.loads((cls_dir / "config.json").read_text(encoding="utf-8")),
        "cases": [
            {
                "text": t,
                "input_ids": batch["input_ids"][i, : int(batch["attention_mask"][i].sum())].tolist(),
                "logits": floats(logits[i]),
                "pooler_output": floats(pooler[i]),
            }
            for i, t in enumerate(texts)
        ],
    }
    dump_json(fixture, out)
    print(f"wrote {out}; model saved to {cls_dir}")
    return fixture


def main() -> None:
    assets = Path(os.environ.get("DISTILL_ASSETS", Path.home() / ".cache/distill/assets"))
    ref = Path(os.environ.get("DISTILL_REF", Path.home() / ".cache/distill/ref"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=assets / "all-minilm-l6-v2")
    ap.add_argument("--out-dir", type=Path, default=REPO / "tests" / "fixtures")
    ap.add_argument("--cls-dir", type=Path, default=ref / "minilm-cls")
    args = ap.parse_args()

    if not (args.model / "model.safetensors").exists():
        sys.exit(f"{args.model} has no model.safetensors; run scripts/fetch-assets.sh first")

    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    embeddings_fixture(args.model, args.out_dir / "minilm-embeddings.json")
    cls_fixture(args.model, args.cls_dir, args.out_dir / "minilm-cls-head.json")


if __name__ == "__main__":
    main()
