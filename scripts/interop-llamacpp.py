#!/usr/bin/env python3
"""Check that llama.cpp loads a GGUF written by `distill compress` and computes the same logits.

For each GGUF given with the logits `distill eval FILE --text ... --save-logits OURS.safetensors`
wrote for its first window: reads every metadata key with `gguf` (PyPI) GGUFReader, loads the
file with llama.cpp (llama-cpp-python, CPU, f32 K/V cache), evaluates the same token ids in one
batch and compares the logits at every position, then greedily generates a continuation of a
prompt. Writes JSON to stdout; scripts/check-interop-gguf.sh turns it into
docs/results/interop-llamacpp.md.

Run:  scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python \
        scripts/interop-llamacpp.py FILE1.gguf OURS1.safetensors [FILE2.gguf OURS2.safetensors ...]
"""
import json
import sys
from importlib.metadata import version

import llama_cpp
import numpy as np
from gguf import GGUFReader
from llama_cpp import Llama
from safetensors.numpy import load_file

SETTINGS = dict(n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                logits_all=True, seed=0, n_gpu_layers=0, flash_attn=False,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
PROMPT = "Call me Ishmael. Some years ago"

results = []
for path, ours_path in zip(sys.argv[1::2], sys.argv[2::2]):
    reader = GGUFReader(path)
    keys = {}
    for name, field in reader.fields.items():
        try:
            v = field.contents()
        except Exception as e:  # a key gguf cannot decode is a failure of the export
            raise SystemExit(f"{path}: gguf cannot read key {name}: {e}")
        keys[name] = v if not isinstance(v, list) else f"[{len(v)} items]"
    ours = load_file(ours_path)
    ids = ours["ids"].astype(np.int64).tolist()
    got = ours["logits"].astype(np.float32)
    llm = Llama(model_path=path, **SETTINGS)
    llm.reset()
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.reset()
    out = llm.create_completion(PROMPT, max_tokens=24, temperature=0.0, top_k=1)
    results.append({
        "gguf": path,
        "loaded": True,
        "keys_read": len(keys),
        "architecture": keys.get("general.architecture"),
        "tokenizer_pre": keys.get("tokenizer.ggml.pre"),
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        "positions": len(ids),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "top1_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
        "generated": out["choices"][0]["text"],
    })
print(json.dumps({"llama_cpp_python": version("llama-cpp-python"), "gguf": version("gguf"),
                  "prompt": PROMPT, "models": results}, indent=2))
