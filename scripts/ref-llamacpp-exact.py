#!/usr/bin/env python3
"""Bit-exactness fixture for distill's ggml path: llama.cpp's full logits, hashed.

For four prompts on SmolLM2-135M-Instruct Q4_1 (the three of scripts/ref-llamacpp.py and the first
1500 characters of Moby Dick chapter 1, about 350 tokens), it stores in
tests/fixtures/smollm2-exact-logits.json:

  ids          the tokens (llama.cpp's own tokenisation)
  argmax       llama.cpp's top token at every position
  top8         the 8 largest logits per position with their ids
  sha256       SHA-256 of all logits, [n_tokens, n_vocab] f32 little-endian, row-major

A test hashes distill's logits for the same ids (`gguf_weights: ggml`) and requires the same
digest: every one of the n_tokens x 49152 values identical in its bits, in about 100 KB of fixture.
Settings are those of scripts/ref-llamacpp.py (f32 KV cache, no flash attention, 2 threads).

  scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python scripts/ref-llamacpp-exact.py
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("DISTILL_ASSETS", Path.home() / ".cache/distill/assets"))
MODEL = ASSETS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MOBY = ASSETS / "moby-dick" / "chapter_1.txt"
OUT = REPO / "tests" / "fixtures" / "smollm2-exact-logits.json"
SETTINGS = dict(n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                logits_all=True, seed=0, n_gpu_layers=0, flash_attn=False,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)


def main() -> None:
    shared = json.loads((REPO / "tests" / "fixtures" / "smollm2-logits.json").read_text())
    prompts = [{"name": p["name"], "text": p["text"]} for p in shared["prompts"]]
    prompts.append({"name": "moby_dick_1500", "text": MOBY.read_text(encoding="utf-8")[:1500]})
    llm = Llama(model_path=str(MODEL), **SETTINGS)
    out = {
        "model": MODEL.name,
        "llama_cpp_python": version("llama-cpp-python"),
        "settings": {k: v for k, v in SETTINGS.items() if k not in ("type_k", "type_v")}
        | {"type_k": "f32", "type_v": "f32"},
        "hash": "sha256 of the [n_tokens, n_vocab] f32 little-endian logits, row-major",
        "prompts": [],
    }
    for p in prompts:
        ids = [int(t) for t in llm.tokenize(p["text"].encode("utf-8"), add_bos=False, special=True)]
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype="<f4", copy=True)
        assert logits.shape == (len(ids), llm.n_vocab()) and np.isfinite(logits).all()
        top = np.argsort(-logits, axis=1, kind="stable")[:, :8]
        out["prompts"].append({
            "name": p["name"],
            "ids": ids,
            "argmax": logits.argmax(axis=1).tolist(),
            "top8_ids": top.tolist(),
            "top8_logits": np.take_along_axis(logits, top, axis=1).tolist(),
            "sha256": hashlib.sha256(logits.tobytes()).hexdigest(),
        })
        print(f"{p['name']}: {len(ids)} tokens")
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, OUT)
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
