#!/usr/bin/env python3
"""Greedy continuations of SmolLM2-135M-Instruct (Q4_1 GGUF) by llama.cpp itself: the reference
the generation engine is checked against (crates/distill/tests/generate.rs).

Writes tests/fixtures/smollm2-generate.json: 20 prompts (10 plain text, 10 ChatML conversations
rendered with the model's template, opening the assistant's turn), their token ids as llama.cpp
tokenises them (BOS as the file says, special tokens parsed), and llama.cpp's greedy tokens —
the most probable token at every step, through its own key/value cache — for up to 24 new
tokens or until an end-of-turn token, for the Q4_1 file as it is and for the file dequantised to
F32 by llama.cpp's quantize tool (no quantisation anywhere: the engine's dense path must follow
it token for token).

  scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python scripts/ref-llamacpp-generate.py

The fixture is committed; CI never needs llama.cpp or Python.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("DISTILL_ASSETS", Path.home() / ".cache/distill/assets"))
MODEL = ASSETS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = REPO / "tests" / "fixtures" / "smollm2-generate.json"
NEW_TOKENS = 24

SETTINGS = dict(n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2, logits_all=True,
                seed=0, n_gpu_layers=0, flash_attn=False, type_k=llama_cpp.GGML_TYPE_F32,
                type_v=llama_cpp.GGML_TYPE_F32, verbose=False)

PLAIN = [
    "Call me Ishmael. Some years ago",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
    "The whale swam",
    "In the beginning of the nineteenth century, sailors",
    "To make a cup of tea, first",
]
CHAT = [
    "What is a whale?",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into French.",
    "Who wrote Moby Dick?",
    "Explain what a harpoon is in one sentence.",
    "List two animals that live in the ocean.",
    "What is the opposite of cold?",
    "Summarise: The ship left the harbour at dawn and returned at night with a great catch.",
]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def greedy(llm: Llama, ids: list[int], stop: set[int]) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(NEW_TOKENS):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        t = int(np.argmax(logits))  # the lowest id among ties, as the engine's argmax
        if t in stop:
            break
        out.append(t)
        llm.eval([t])
    return out


def main() -> None:
    q = Llama(model_path=str(MODEL), **SETTINGS)
    stop = {q.token_eos()}
    for text in ("<|im_end|>", "<|endoftext|>"):
        ids = q.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) == 1:
            stop.add(ids[0])
    prompts = []
    for text in PLAIN:
        prompts.append({"kind": "text", "text": text,
                        "ids": q.tokenize(text.encode(), add_bos=q.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=False)})
    for user in CHAT:
        text = chatml(user)
        prompts.append({"kind": "chat", "user": user, "text": text,
                        "ids": q.tokenize(text.encode(), add_bos=False, special=True)})
    for p in prompts:
        p["q4_1"] = greedy(q, p["ids"], stop)
    del q
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = Path(tmp) / "smollm2-f32.gguf"
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
        qp.allow_requantize = True
        qp.nthread = 2
        assert llama_cpp.llama_model_quantize(str(MODEL).encode(), str(f32_path).encode(), qp) == 0
        f = Llama(model_path=str(f32_path), **SETTINGS)
        for p in prompts:
            p["f32"] = greedy(f, p["ids"], stop)
        del f
    doc = {"model": MODEL.name, "llama_cpp_python": version("llama-cpp-python"), "new_tokens": NEW_TOKENS,
           "stop_ids": sorted(stop), "settings": {k: str(v) for k, v in SETTINGS.items()}, "prompts": prompts}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    same = sum(p["q4_1"] == p["f32"] for p in prompts)
    print(f"wrote {OUT}: {len(prompts)} prompts; Q4_1 and F32 greedy identical on {same}")


if __name__ == "__main__":
    main()
