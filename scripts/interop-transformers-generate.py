#!/usr/bin/env python3
"""Greedy decoding of an exported student in transformers against `distill generate`'s.

  interop-transformers-generate.py MODEL_DIR PROMPTS.jsonl OURS.json MAX_NEW_TOKENS

PROMPTS.jsonl holds `{"prompt": TEXT}` (tokenised as the tokenizer does by default) or
`{"messages": [...]}` (rendered with `apply_chat_template(add_generation_prompt=True)` and
tokenised without adding special tokens, as `distill generate` does) per line; OURS.json is
`distill generate --json` on the same file and folder. Each prompt is decoded greedily by
`model.generate` alone, ended at EOS or the chat template's end-of-turn token (not kept), and
compared token for token. Prints JSON.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, prompts_path, ours_path, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model.eval()
stops = {tok.eos_token_id} | {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>") if t in tok.get_vocab()}
stops.discard(None)
ours = json.load(open(ours_path))["answers"]
rows = []
for line, answer in zip(open(prompts_path), ours):
    p = json.loads(line)
    if "messages" in p:
        text = tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    else:
        ids = tok(p["prompt"], return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new, eos_token_id=sorted(stops),
                             pad_token_id=tok.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if new and new[-1] in stops:
        new = new[:-1]
    same_prefix = 0
    for a, b in zip(new, answer["ids"]):
        if a != b:
            break
        same_prefix += 1
    rows.append({"kind": "chat" if "messages" in p else "text", "identical": new == answer["ids"],
                 "tokens": len(new), "agree_before_first_difference": same_prefix})
print(json.dumps({"transformers": version("transformers"), "torch": version("torch"), "max_new_tokens": max_new,
                  "prompts": len(rows), "identical": sum(r["identical"] for r in rows),
                  "tokens": sum(r["tokens"] for r in rows),
                  "tokens_before_first_difference": sum(r["agree_before_first_difference"] for r in rows),
                  "rows": rows}, indent=2))
