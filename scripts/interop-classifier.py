#!/usr/bin/env python3
"""Check that Hugging Face transformers loads classifiers exported by `distill run`
(task: classification) and computes the same class logits.

For each model folder: loads it with AutoModelForSequenceClassification and AutoTokenizer (CPU,
float32, eager attention), tokenises the texts that `distill eval --labelled ... --json
--predictions` listed (OURS.json: the decoded messages, their labels and distill's logits) with
truncation to the same max_length, and compares logits and predicted labels. Writes JSON to
stdout; scripts/check-interop-classifier.sh turns it into docs/results/interop-classifier.md.

Run:  scripts/setup-ref-venv-torch.sh && $HOME/.cache/distill/torch-venv/bin/python \
        scripts/interop-classifier.py DIR1 OURS1.json [DIR2 OURS2.json ...]
"""
import json
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

torch.set_num_threads(2)
results = []
for model_dir, ours_path in zip(sys.argv[1::2], sys.argv[2::2]):
    ours = json.load(open(ours_path))
    preds = ours["predictions"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref = []
    with torch.no_grad():
        for i in range(0, len(preds), 32):
            enc = tok([p["text"] for p in preds[i : i + 32]], truncation=True,
                      max_length=ours["max_length"], padding=True, return_tensors="pt")
            ref.append(model(**enc).logits.float().numpy())
    ref = np.concatenate(ref)
    got = np.asarray([p["logits"] for p in preds], dtype=np.float32)
    id2label = model.config.id2label
    ref_labels = [id2label[int(i)] for i in ref.argmax(1)]
    got_labels = [ours["confusion"]["labels"][int(i)] for i in got.argmax(1)]
    results.append({
        "model": model_dir,
        "architecture": model.config.architectures,
        "id2label": {str(k): v for k, v in id2label.items()},
        "examples": len(preds),
        "max_length": ours["max_length"],
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "prediction_agreement": float(np.mean([a == b for a, b in zip(ref_labels, got_labels)])),
        "transformers_accuracy": float(np.mean([l == p["label"] for l, p in zip(ref_labels, preds)])),
        "distill_accuracy": ours["accuracy"],
    })
print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                  "models": results}, indent=2))
