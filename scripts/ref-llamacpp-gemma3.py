#!/usr/bin/env python3
"""Reference fixtures for Gemma 3 270M (Q4_K_M GGUF), produced by llama.cpp itself.

What it makes (all under tests/fixtures/):

  gemma3-tokenizer.json       llama.cpp's tokenisation (BOS added, special-token parsing on) of
                              the generic strings scripts/ref-llamacpp.py checks SmolLM2 on,
                              Gemma's own special and user-defined tokens (turn markers, newline
                              and tab runs, image markers), and a Moby Dick paragraph.
  gemma3-logits.safetensors   llama.cpp's logits at every position of the first 640 tokens of
                              Moby Dick's chapter 2 (BOS first): 640 > the 512-token sliding
                              window, so the local layers' window is exercised. Stored compactly:
                              `ids`, `argmax`, the top-20 (`topk_ids`, `topk_logits`, descending)
                              and the logits of 256 fixed ids (`sample_logits`, columns =
                              `sample_ids`), all ids int32.
  gemma3-f32-logits.safetensors
                              the same for the model dequantised to F32 by llama.cpp's own
                              quantize tool: the architecture's arithmetic (sandwich norms, q/k
                              norms, GeGLU, sliding windows, both rotary bases) against
                              llama.cpp without quantisation noise.
  gemma3-logits.json          settings, versions, sha256s and llama.cpp's noise floor.

How to run (from the repository root; needs the assets from scripts/fetch-assets.sh):

  scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python scripts/ref-llamacpp-gemma3.py

The fixtures are committed; CI never needs llama.cpp or Python.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np
from gguf import GGUFReader
from llama_cpp import Llama
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("ref_llamacpp", HERE / "ref-llamacpp.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

MODEL = ref.ASSETS / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
CHAPTER = ref.ASSETS / "moby-dick" / "chapter_2.txt"
FIXTURES = ref.FIXTURES

POSITIONS = 640
TOPK = 20
N_SAMPLE = 256
SETTINGS = {**ref.LLAMA_SETTINGS, "n_ctx": POSITIONS, "n_batch": POSITIONS, "n_ubatch": POSITIONS}


def gemma_cases(moby: str) -> list[str]:
    return ref.generic_cases() + [
        # Gemma's control tokens
        "<bos>",
        "<eos>",
        "<pad>",
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
        "Hello<end_of_turn>World",
        "<start_of_turn",
        "< start_of_turn >",
        "<unused0><unused99>",
        # user-defined tokens: newline and tab runs, image markers
        "a\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nb",
        "\t\t\t\t\tindented five tabs",
        "[multimodal]",
        "<start_of_image>an image<end_of_image>",
        "line\n\nbreak\n \nspace-newline",
        # long text
        moby,
    ]


def logits_tensors(llm: Llama, ids: list[int], sample_ids: np.ndarray) -> dict[str, np.ndarray]:
    logits = ref.eval_all_logits(llm, ids)
    assert np.isfinite(logits).all()
    tk = [ref.topk_desc(logits[t], TOPK) for t in range(len(ids))]
    return {
        "sample_ids": sample_ids.astype(np.int32),
        "ids": np.asarray(ids, dtype=np.int32),
        "argmax": logits.argmax(axis=1).astype(np.int32),
        "topk_ids": np.stack([a for a, _ in tk]).astype(np.int32),
        "topk_logits": np.stack([b for _, b in tk]).astype(np.float32),
        "sample_logits": np.ascontiguousarray(logits[:, sample_ids], dtype=np.float32),
    }


def save(tensors: dict[str, np.ndarray], name: str, what: str) -> str:
    path = FIXTURES / name
    save_file(tensors, str(path), metadata={"source": f"scripts/ref-llamacpp-gemma3.py, {what}"})
    path.chmod(0o644)
    print(f"wrote {path.relative_to(ref.REPO)} ({path.stat().st_size} bytes)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    lcp_version = version("llama-cpp-python")
    reader = GGUFReader(str(MODEL))
    meta = ref.tokenizer_meta(reader)
    chapter = CHAPTER.read_text(encoding="utf-8")

    vocab = Llama(model_path=str(MODEL), vocab_only=True, verbose=False)

    def tok(text: str) -> list[int]:
        return [int(t) for t in vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True)]

    texts = gemma_cases(chapter[:1500])
    assert len(set(texts)) == len(texts), "duplicate test strings"
    cases = [{"text": t, "ids": tok(t)} for t in texts]
    meta.pop("non_normal_tokens")  # 6,400 of them: counts are enough
    tok_fixture = {
        "model": MODEL.name,
        "llama_cpp_python": lcp_version,
        "add_bos": True,
        "parse_special": True,
        "gguf_tokenizer_meta": meta,
        "cases": cases,
    }
    (FIXTURES / "gemma3-tokenizer.json").write_text(ref.dump_cases_json(tok_fixture), encoding="utf-8")
    print(f"wrote tests/fixtures/gemma3-tokenizer.json: {len(cases)} cases")

    ids = tok(chapter)[:POSITIONS]
    assert len(ids) == POSITIONS
    del vocab

    llm = Llama(model_path=str(MODEL), **SETTINGS)
    n_vocab = llm.n_vocab()
    sample_ids = np.sort(np.random.default_rng(0).choice(n_vocab, size=N_SAMPLE, replace=False))
    q = logits_tensors(llm, ids, sample_ids)
    agree = float((q["argmax"][:-1] == np.asarray(ids[1:])).mean())
    print(f"Q4_K_M: argmax[t] == ids[t+1] for {agree:.1%} of {POSITIONS} positions")
    assert agree >= 0.2, f"next-token agreement {agree:.1%} is implausibly low"
    sha_q = save(q, "gemma3-logits.safetensors", f"llama-cpp-python {lcp_version}, {MODEL.name}")

    # llama.cpp against itself (micro-batches of 16): the floor of any other Q4_K_M arithmetic.
    small = Llama(model_path=str(MODEL), **{**SETTINGS, "n_batch": 16, "n_ubatch": 16})
    other = ref.eval_all_logits(small, ids)
    noise = {
        "compare": "n_batch=n_ubatch=16 vs 640, same file",
        "top1_agreement": float((other.argmax(axis=1) == q["argmax"]).mean()),
        "max_abs_diff_sampled": float(np.abs(other[:, sample_ids] - q["sample_logits"]).max()),
    }
    print(f"llama.cpp vs itself: {noise}")
    del small, llm

    with tempfile.TemporaryDirectory() as tmp:
        f32_path = Path(tmp) / "gemma3-f32.gguf"
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
        qp.allow_requantize = True
        qp.nthread = 2
        rc = llama_cpp.llama_model_quantize(str(MODEL).encode(), str(f32_path).encode(), qp)
        assert rc == 0, f"llama_model_quantize returned {rc}"
        f32 = Llama(model_path=str(f32_path), **SETTINGS)
        f = logits_tensors(f32, ids, sample_ids)
        del f32
    f32_agree = float((f["argmax"][:-1] == np.asarray(ids[1:])).mean())
    print(f"F32: argmax[t] == ids[t+1] for {f32_agree:.1%}")
    sha_f = save(f, "gemma3-f32-logits.safetensors", f"llama-cpp-python {lcp_version}, {MODEL.name} dequantised to F32 by llama_model_quantize")

    settings = {k: v for k, v in SETTINGS.items()}
    settings["type_k"] = settings["type_v"] = "f32"
    settings.update({"add_bos": True, "parse_special": True,
                     "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()})
    logits_meta = {
        "model": MODEL.name,
        "model_sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "llama_cpp_python": lcp_version,
        "vocab_size": n_vocab,
        "text": f"{CHAPTER.name}, first {POSITIONS} tokens (BOS first)",
        "settings": settings,
        "topk": TOPK,
        "sample_ids": N_SAMPLE,
        "next_token_agreement": {"q4_k_m": round(agree, 4), "f32": round(f32_agree, 4)},
        "noise_floor": noise,
        "safetensors_sha256": {"gemma3-logits.safetensors": sha_q, "gemma3-f32-logits.safetensors": sha_f},
    }
    (FIXTURES / "gemma3-logits.json").write_text(json.dumps(logits_meta, indent=1) + "\n", encoding="utf-8")
    print("wrote tests/fixtures/gemma3-logits.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
