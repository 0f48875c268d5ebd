#!/usr/bin/env python3
"""Check that Hugging Face transformers loads a student exported by `distill run` and computes
the same logits.

Loads RUN/final with AutoModelForCausalLM and AutoTokenizer, tokenises the text with the exported
tokenizer, compares the token ids and the logits of the first window with those `distill eval
--save-logits` wrote, and the perplexity over the same windows. Writes the result as JSON to
stdout; scripts/check-interop.sh turns it into docs/results/interop-transformers.md.

Run:  scripts/setup-ref-venv-torch.sh && $HOME/.cache/distill/torch-venv/bin/python \
        scripts/interop-transformers.py MODEL_DIR TEXT OUR_LOGITS.safetensors OUR_EVAL.json
"""
import json
import math
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text_path, logits_path, eval_path = sys.argv[1:5]
torch.set_num_threads(2)
ours = load_file(logits_path)
ours_eval = json.load(open(eval_path))
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
text = open(text_path, encoding="utf-8").read()
ids = tok(text, add_special_tokens=False)["input_ids"][: ours_eval["tokens"]]
block = ours_eval["block"]
windows = [ids[i : i + block] for i in range(0, len(ids), block)]
windows = [w for w in windows if len(w) >= 2]
first = np.asarray(windows[0], dtype=np.int64)
ids_equal = bool(np.array_equal(first, ours["ids"].astype(np.int64)))
nll, count = 0.0, 0
with torch.no_grad():
    for i, w in enumerate(windows):
        logits = model(torch.tensor([w])).logits[0].float()
        if i == 0:
            ref = logits.numpy()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll -= logp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum().item()
        count += len(w) - 1
diff = float(np.abs(ref - ours["logits"]).max())
top1 = float((ref.argmax(-1) == ours["logits"].argmax(-1)).mean())
print(json.dumps({
    "model": model_dir, "architecture": model.config.architectures, "transformers_loaded": True,
    "token_ids_equal_first_window": ids_equal, "first_window_tokens": len(windows[0]),
    "max_abs_logit_diff_first_window": diff, "top1_agreement_first_window": top1,
    "transformers_perplexity": math.exp(nll / count), "distill_perplexity": ours_eval["perplexity"],
    "predicted_tokens": count,
}, indent=2))
