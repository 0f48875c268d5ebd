#!/usr/bin/env python3
"""Dump every intermediate tensor llama.cpp computes for one prompt, for kernel-level debugging.

llama.cpp calls back for each node of its compute graph (`cb_eval`); this script copies every f32
node into a safetensors file under the node's name (`attn_norm-0`, `Qcur-0`, `kq_soft_max-0`, ...;
a name computed more than once gets `#1`, `#2`, ... in order). Compare a layer of distill's
llama.cpp-compatible CPU path against these to find the first op that differs, bit for bit.

  $HOME/.cache/distill/ref-venv/bin/python scripts/dump-llamacpp-tensors.py MODEL.gguf OUT.safetensors 'prompt text' [NODE ...]

With node names after the prompt, only those nodes (and the ids) are kept: how
tests/fixtures/gemma3-layer0-nodes.safetensors was made (see crates/models/tests/ggml_gemma3.rs).

Uses the same settings as scripts/ref-llamacpp.py (f32 KV cache, no flash attention, 2 threads).
Not used by tests; the fixtures those use are made by ref-llamacpp.py.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import llama_cpp
from safetensors.numpy import save_file


class GgmlTensor(ctypes.Structure):
    # ggml.h `struct ggml_tensor` of the pinned llama.cpp (GGML_MAX_DIMS 4, MAX_SRC 10, MAX_NAME 64).
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


GGML_TYPE_F32 = 0


def main() -> None:
    model_path, out_path, text = sys.argv[1], sys.argv[2], sys.argv[3]
    keep = set(sys.argv[4:])
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
    vocab = llama_cpp.llama_model_get_vocab(model)

    dumped: dict[str, np.ndarray] = {}

    def callback(t_ptr, ask, _user):
        t = ctypes.cast(t_ptr, ctypes.POINTER(GgmlTensor)).contents
        if ask:
            return True
        if t.type != GGML_TYPE_F32 or not t.data:
            return True
        ne = [t.ne[i] for i in range(4)]
        nb = [t.nb[i] for i in range(4)]
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + 4
        raw = (ctypes.c_uint8 * span).from_address(t.data)
        arr = np.ndarray(shape=ne[::-1], dtype=np.float32, buffer=raw, strides=nb[::-1]).copy()
        name = t.name.decode()
        key, k = name, 1
        while key in dumped:
            key = f"{name}#{k}"
            k += 1
        dumped[key] = np.ascontiguousarray(arr.squeeze())
        return True

    cb = llama_cpp.ggml_backend_sched_eval_callback(callback)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 512
    cparams.n_batch = 512
    cparams.n_ubatch = 512
    cparams.n_threads = 2
    cparams.n_threads_batch = 2
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.type_k = llama_cpp.GGML_TYPE_F32
    cparams.type_v = llama_cpp.GGML_TYPE_F32
    cparams.cb_eval = cb
    cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cparams)

    buf = (llama_cpp.llama_token * 4096)()
    n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 4096, False, True)
    ids = list(buf[:n])
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    for i, tok in enumerate(ids):
        batch.token[i] = tok
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = True
    batch.n_tokens = n
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")
    if keep:
        missing = keep - dumped.keys()
        if missing:
            raise SystemExit(f"not in llama.cpp's graph: {sorted(missing)}")
        dumped = {k: v for k, v in dumped.items() if k in keep}
    dumped["ids"] = np.array(ids, dtype=np.int64)
    save_file(dumped, out_path)
    print(f"{len(dumped)} tensors, {n} tokens -> {out_path}")


if __name__ == "__main__":
    main()
