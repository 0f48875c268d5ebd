#!/usr/bin/env python3
"""A Qwen3 GGUF file written with llama.cpp's own tables, and llama.cpp's logits on it.

No real Qwen3 GGUF is reachable here, so this writes one the way llama.cpp's converter does:
the tiny transformers-made Qwen3 of tests/fixtures/families/qwen3 (scripts/ref-transformers-
families.py), its tensors named by gguf-py's `TensorNameMap` for `MODEL_ARCH.QWEN3` (the table
convert_hf_to_gguf.py uses; no Q/K permutation for Qwen), its hyper-parameters under `qwen3.*`,
f32, with a made-up byte-level vocabulary of its 160 ids. llama.cpp then loads the file and
computes the logits of the fixture's first sequence.

Writes tests/fixtures/families/qwen3/model.gguf and tests/fixtures/families/qwen3/llamacpp.safetensors
(`ids` int64 [40], `logits` f32 [40, 160]).

  scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python scripts/ref-llamacpp-qwen3.py
"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file, save_file

DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "families" / "qwen3"


def main() -> int:
    cfg = json.loads((DIR / "config.json").read_text())
    weights = load_file(str(DIR / "model.safetensors"))
    ref = load_file(str(DIR / "reference.safetensors"))
    n_layers, vocab = cfg["num_hidden_layers"], cfg["vocab_size"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]

    out = DIR / "model.gguf"
    w = gguf.GGUFWriter(str(out), "qwen3")
    w.add_name("tiny-qwen3")
    w.add_block_count(n_layers)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_token_merges(["t1 t2"])  # llama.cpp wants at least one; the ids are given, not tokenised
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.QWEN3, n_layers)
    for hf, t in weights.items():
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"llama.cpp's table has no name for {hf}"
        w.add_tensor(name, t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ids = [int(i) for i in ref["ids"][0]]
    llm = Llama(model_path=str(out), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2, logits_all=True,
                n_gpu_layers=0, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    diff = float(np.abs(logits - ref["logits"][0]).max())
    print(f"llama.cpp on the written file vs transformers: max |dlogit| {diff:.2e}")
    save_file({"ids": np.asarray(ids, dtype=np.int64), "logits": logits}, str(DIR / "llamacpp.safetensors"),
              metadata={"source": f"scripts/ref-llamacpp-qwen3.py, llama-cpp-python {version('llama-cpp-python')}, gguf {version('gguf')}"})
    print(f"wrote {out} ({out.stat().st_size} bytes) and llamacpp.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
