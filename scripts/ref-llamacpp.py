#!/usr/bin/env python3
"""Reference fixtures for SmolLM2-135M-Instruct (Q4_1 GGUF), produced by llama.cpp itself.

What it makes (all under tests/fixtures/):

  smollm2-tokenizer.json      llama.cpp's tokenisation of 70+ varied strings (ASCII, whitespace
                              runs, CRLF, accents, CJK, emoji/ZWJ/flags, numbers, code, URLs,
                              contractions, RTL and Indic scripts, the model's special tokens,
                              a chat-template-formatted conversation, the empty string, a Moby
                              Dick paragraph), without BOS and with special-token parsing on,
                              plus the GGUF's tokenizer metadata ("gguf_tokenizer_meta").
  smollm2-logits.safetensors  llama.cpp's logits at EVERY position for a few prompts, stored
                              compactly: per prompt i, `p{i}.ids`, `p{i}.argmax`, the top-40
                              (`p{i}.topk_ids`, `p{i}.topk_logits`, descending) and the logits
                              of 1024 fixed vocab ids (`p{i}.sample_logits`, columns = the
                              global `sample_ids`).
  smollm2-f32-logits.safetensors
                              the same, for the model dequantised to F32 by llama.cpp's own
                              quantize tool (no activation quantisation anywhere): proves the
                              architecture's arithmetic (rope, Q/K layout, norms, attention)
                              against llama.cpp without quantisation noise.
  smollm2-logits.json         metadata for the above: prompt texts, token counts, vocab size,
                              llama-cpp-python version, every llama.cpp setting used, the
                              safetensors file's sha256.

How to run (from the repository root; needs the assets from scripts/fetch-assets.sh):

  scripts/setup-ref-venv.sh && $HOME/.cache/distill/ref-venv/bin/python scripts/ref-llamacpp.py

The fixtures are committed, so CI and `cargo test` never need llama.cpp or Python; rerun this
only to regenerate them (e.g. after bumping the pinned llama-cpp-python in setup-ref-venv.sh).
Assets are read from ${DISTILL_ASSETS:-$HOME/.cache/distill/assets}.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.constants import TokenType
from llama_cpp import Llama
import llama_cpp
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("DISTILL_ASSETS", Path.home() / ".cache/distill/assets"))
MODEL = ASSETS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MOBY = ASSETS / "moby-dick" / "chapter_1.txt"
FIXTURES = REPO / "tests" / "fixtures"

TOPK = 40
N_SAMPLE = 1024
SAMPLE_SEED = 0

# Settings for the logits run. Keyword names are those of llama_cpp.Llama in the pinned version.
LLAMA_SETTINGS = dict(
    n_ctx=512,
    n_batch=512,
    n_ubatch=512,
    n_threads=2,
    n_threads_batch=2,
    logits_all=True,
    seed=0,
    n_gpu_layers=0,
    flash_attn=False,
    # f32 K/V cache: compare the model's arithmetic, not the cache's storage precision (an f16
    # cache rounds K and V, and llama.cpp then multiplies Q in f16 too).
    type_k=llama_cpp.GGML_TYPE_F32,
    type_v=llama_cpp.GGML_TYPE_F32,
    verbose=False,
)


# --------------------------------------------------------------------------------------------
# GGUF metadata


def field_value(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.contents()
    return v


def tokenizer_meta(reader: GGUFReader) -> dict:
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    type_counts: dict[str, int] = {}
    for t in types:
        name = TokenType(t).name
        type_counts[name] = type_counts.get(name, 0) + 1
    special = [
        {"id": i, "text": tokens[i], "type": TokenType(t).name}
        for i, t in enumerate(types)
        if TokenType(t) != TokenType.NORMAL
    ]
    meta = {
        "tokenizer.ggml.model": field_value(reader, "tokenizer.ggml.model"),
        "tokenizer.ggml.pre": field_value(reader, "tokenizer.ggml.pre"),
        "tokenizer.ggml.add_bos_token": field_value(reader, "tokenizer.ggml.add_bos_token"),
        "tokenizer.ggml.add_eos_token": field_value(reader, "tokenizer.ggml.add_eos_token"),
        "tokenizer.ggml.add_space_prefix": field_value(reader, "tokenizer.ggml.add_space_prefix"),
        "tokenizer.ggml.bos_token_id": field_value(reader, "tokenizer.ggml.bos_token_id"),
        "tokenizer.ggml.eos_token_id": field_value(reader, "tokenizer.ggml.eos_token_id"),
        "tokenizer.ggml.padding_token_id": field_value(reader, "tokenizer.ggml.padding_token_id"),
        "tokenizer.ggml.unknown_token_id": field_value(reader, "tokenizer.ggml.unknown_token_id"),
        "n_tokens": len(tokens),
        "n_merges": len(field_value(reader, "tokenizer.ggml.merges") or []),
        "token_type_counts": type_counts,
        "non_normal_tokens": special,
    }
    return meta


# --------------------------------------------------------------------------------------------
# Tokenizer cases


def chat_text(reader: GGUFReader, messages: list[dict], add_generation_prompt: bool) -> str:
    """Render the GGUF's own chat template (jinja2 comes with llama-cpp-python)."""
    import jinja2

    template = field_value(reader, "tokenizer.chat_template")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


def generic_cases() -> list[str]:
    """Strings any tokenizer is checked on (no model's special tokens)."""
    return [
        # degenerate inputs and whitespace
        "",
        " ",
        "\n",
        "\t",
        "  ",
        "\n\n",
        "\n\n\n\n",
        "\r\n",
        "line one\r\nline two\r\n",
        "   leading spaces",
        "trailing spaces   ",
        "  both sides  ",
        "runs  of   spaces    between     words",
        "tabs\tbetween\t\twords\t",
        "\tindented with a tab",
        "paragraph one.\n\nparagraph two.\n\n\nparagraph three.",
        " \n \t \r\n ",
        # plain ASCII
        "Once",
        "Once upon a time",
        "Once upon a time, there was a little girl who lived in a village near the forest.",
        "Hello world",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
        "a",
        "A",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        # contractions
        "don't",
        "I'LL do it, we've seen it, they're here, she'd go, it's fine, I'm ok.",
        "DON'T Won't CAN'T y'all o'clock rock'n'roll",
        "'s 't 're 've 'm 'll 'd",
        # punctuation
        "!!!???...",
        "Wait... what?!?! -- no --- really;;; (yes) [no] {maybe} <ok>",
        "***___~~~```###",
        "\"quoted\" 'single' `backtick` «guillemets» „Anführung“ “curly”",
        "a—b–c-d…e",
        # digits
        "0",
        "42",
        "1234567890",
        "12345678901234567890",
        "3.14159265358979",
        "-0.001 +1e-10 6.022e23",
        "1,234,567",
        "2024-01-15 12:34:56",
        "15/01/2024 and 01.15.2024",
        "Version 1.2.3-beta+build.45",
        "$1,000.00 €99,95 ¥500 £3",
        "phone: +1 (555) 123-4567",
        # code
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{:?}\", v);\n}\n",
        '{"name": "distill", "version": "0.1.0", "tags": ["kd", "rust"], "n": null, "ok": true}',
        '<!DOCTYPE html>\n<html lang="en">\n  <body><p class="x">Hi &amp; bye</p></body>\n</html>',
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "x += 1; y = x ** 2 // 3 % 7 != 0 && z || !w",
        "#include <stdio.h>\nint main(void) { return 0; }",
        # URLs / emails / paths
        "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
        "Contact me at john.doe+test@example.com or admin@localhost.",
        "/usr/local/bin/python3 C:\\Users\\me\\file.txt ~/.cache/distill",
        # accents and Latin scripts
        "café naïve résumé déjà vu à la française",
        "Größe, Straße, Übermut, schön, Äpfel",
        "¿Dónde está el niño? ¡Mañana será otro día!",
        "Tiếng Việt có nhiều dấu: người, được, những, trường.",
        "Zażółć gęślą jaźń. Příliš žluťoučký kůň.",
        # CJK
        "你好，世界！今天天气很好。",
        "日本語のテキストです。ひらがなとカタカナと漢字。",
        "안녕하세요, 세계! 한국어 문장입니다.",
        # other scripts
        "مرحبا بالعالم، كيف حالك؟",
        "שלום עולם, מה שלומך?",
        "Привет, мир! Как дела?",
        "Γειά σου Κόσμε! Ελληνικά.",
        "नमस्ते दुनिया, आप कैसे हैं?",
        "ภาษาไทย สวัสดีครับ",
        "English, Français, 中文, русский, العربية and 😀 in one line.",
        # emoji
        "😀",
        "I love 🦀 and 🐍!",
        "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag",
        "🇫🇷🇩🇪🇯🇵🇺🇸",
        "❤️ ✔️ ©️ ™ ☃ ★",
        # rare / odd characters
        "\u00a0non-breaking\u00a0spaces\u2009thin\u200bzero-width",
        "ﬁ ligature, Ⅻ roman, ① circled, ｆｕｌｌｗｉｄｔｈ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 ∀x∈ℝ: x²≥0 ∑∫√∞",
    ]


def tokenizer_cases(reader: GGUFReader, moby: str) -> list[str]:
    chat = chat_text(
        reader,
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ],
        add_generation_prompt=False,
    )
    chat_default_system = chat_text(
        reader, [{"role": "user", "content": "Hi!"}], add_generation_prompt=True
    )
    return generic_cases() + [
        # special tokens
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "Hello<|endoftext|>World",
        "text before <|im_end|> text after",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|><|endoftext|>",
        "<|im_start",
        "< |im_start| >",
        "<repo_name>distill<file_sep>src/main.rs<jupyter_code>print(1)<empty_output>",
        "<|im_start|>system\n<|im_end|>\n\n<|im_start|> spaced",
        chat,
        chat_default_system,
        # long text
        moby,
    ]


# --------------------------------------------------------------------------------------------
# Logits


def topk_desc(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by logit descending; ties broken by smaller id first (deterministic)."""
    order = np.lexsort((np.arange(row.shape[0]), -row.astype(np.float64)))[:k]
    return order.astype(np.int64), row[order].astype(np.float32)


def eval_all_logits(llm: Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    n = len(ids)
    assert llm.n_tokens == n, (llm.n_tokens, n)
    scores = np.array(llm.scores[:n], dtype=np.float32, copy=True)
    assert scores.shape == (n, llm.n_vocab())
    return scores


def dump_cases_json(obj: dict) -> str:
    """Pretty JSON with one line per case, so regenerated fixtures diff readably."""
    head = {k: v for k, v in obj.items() if k != "cases"}
    body = json.dumps(head, ensure_ascii=False, indent=1)
    lines = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in obj["cases"])
    return body[:-2] + ',\n "cases": [\n' + lines + "\n ]\n}\n"


def main() -> int:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    lcp_version = version("llama-cpp-python")
    reader = GGUFReader(str(MODEL))
    meta = tokenizer_meta(reader)

    print(f"llama-cpp-python {lcp_version}")
    print(f"model: {MODEL}")
    for k, v in meta.items():
        if k != "non_normal_tokens":
            print(f"  {k}: {v}")
    print(f"  non-normal tokens ({len(meta['non_normal_tokens'])}):")
    for t in meta["non_normal_tokens"]:
        print(f"    {t['id']:>6} {t['type']:<13} {t['text']!r}")

    moby_text = MOBY.read_text(encoding="utf-8")
    moby_para = moby_text[:1500]

    # ---- tokenizer fixture -------------------------------------------------------------------
    vocab = Llama(model_path=str(MODEL), vocab_only=True, verbose=False)

    def tok(text: str) -> list[int]:
        return [int(t) for t in vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)]

    texts = tokenizer_cases(reader, moby_para)
    assert len(set(texts)) == len(texts), "duplicate test strings"
    cases = [{"text": t, "ids": tok(t)} for t in texts]
    once = tok("Once")
    assert once == [6403], f'"Once" tokenised to {once}, expected [6403]'

    tok_fixture = {
        "model": MODEL.name,
        "llama_cpp_python": lcp_version,
        "add_bos": False,
        "parse_special": True,
        "gguf_tokenizer_meta": meta,
        "cases": cases,
    }
    tok_path = FIXTURES / "smollm2-tokenizer.json"
    tok_path.write_text(dump_cases_json(tok_fixture), encoding="utf-8")
    print(f"wrote {tok_path.relative_to(REPO)}: {len(cases)} cases")
    for c in cases:
        if len(c["ids"]) <= 4 or "<|" in c["text"]:
            print(f"  {c['text'][:60]!r:<64} -> {c['ids'][:24]}")
    del vocab

    # ---- logits fixture ----------------------------------------------------------------------
    para = moby_text.split("\n\n")[1]
    moby_prompt = para[: para.index("on shore,") + len("on shore,")]
    chat_prompt = chat_text(
        reader,
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        add_generation_prompt=True,
    )
    code_prompt = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"
    prompts = [
        {"name": "moby_dick", "text": moby_prompt},
        {"name": "chat", "text": chat_prompt},
        {"name": "code", "text": code_prompt},
    ]

    llm = Llama(model_path=str(MODEL), **LLAMA_SETTINGS)
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(SAMPLE_SEED)
    sample_ids = np.sort(rng.choice(n_vocab, size=N_SAMPLE, replace=False)).astype(np.int64)

    tensors: dict[str, np.ndarray] = {"sample_ids": sample_ids}
    prompt_meta = []
    for i, p in enumerate(prompts):
        ids = [int(t) for t in llm.tokenize(p["text"].encode("utf-8"), add_bos=False, special=True)]
        assert len(ids) + 1 <= LLAMA_SETTINGS["n_ctx"]
        logits = eval_all_logits(llm, ids)
        n = len(ids)
        assert np.isfinite(logits).all()
        # The rows must differ: all-positions logits, not the last row repeated.
        assert n < 2 or not np.allclose(logits[0], logits[-1])

        # Cross-check a prefix: evaluating ids[:k] alone must give the same logits at row k-1.
        k = max(1, n // 2)
        prefix = eval_all_logits(llm, ids[:k])
        diff = float(np.abs(prefix[k - 1] - logits[k - 1]).max())
        assert diff < 1e-2, f"prefix logits differ by {diff}"

        argmax = logits.argmax(axis=1).astype(np.int64)
        tk = [topk_desc(logits[t], TOPK) for t in range(n)]
        tensors[f"p{i}.ids"] = np.asarray(ids, dtype=np.int64)
        tensors[f"p{i}.argmax"] = argmax
        tensors[f"p{i}.topk_ids"] = np.stack([a for a, _ in tk])
        tensors[f"p{i}.topk_logits"] = np.stack([b for _, b in tk])
        tensors[f"p{i}.sample_logits"] = np.ascontiguousarray(logits[:, sample_ids], dtype=np.float32)

        agree = float((argmax[:-1] == np.asarray(ids[1:])).mean()) if n > 1 else float("nan")
        print(
            f"prompt {i} ({p['name']}): {n} tokens, argmax[t]==ids[t+1] for {agree:.1%}, "
            f"prefix({k}) max|diff|={diff:.2e}, logit range [{logits.min():.2f}, {logits.max():.2f}]"
        )
        if p["name"] == "moby_dick":
            # A 135M Q4_1 model guesses roughly a quarter of 1851 prose; a broken run (wrong
            # rows, garbage weights) lands near 0%.
            assert agree >= 0.15, f"next-token agreement {agree:.1%} is implausibly low"
        prompt_meta.append(
            {
                "index": i,
                "name": p["name"],
                "text": p["text"],
                "n_tokens": n,
                "ids": ids,
                "argmax_next_token_agreement": round(agree, 4),
                "prefix_check": {"k": k, "max_abs_diff": diff},
            }
        )

    # Sanity only (not stored): next-token agreement over a longer stretch of chapter 1.
    long_ids = [int(t) for t in llm.tokenize(moby_para.encode("utf-8"), add_bos=False, special=True)]
    long_am = eval_all_logits(llm, long_ids).argmax(axis=1)
    long_agree = float((long_am[:-1] == np.asarray(long_ids[1:])).mean())
    print(f"sanity: Moby Dick first 1500 chars, {len(long_ids)} tokens: argmax[t]==ids[t+1] for {long_agree:.1%}")
    assert long_agree >= 0.15, f"next-token agreement {long_agree:.1%} is implausibly low"

    st_path = FIXTURES / "smollm2-logits.safetensors"
    # One metadata key only: safetensors writes the metadata map in hash order, so several keys
    # would make the file's bytes (and sha256) differ from run to run.
    save_file(
        tensors,
        str(st_path),
        metadata={"source": f"scripts/ref-llamacpp.py, llama-cpp-python {lcp_version}, {MODEL.name}"},
    )
    st_path.chmod(0o644)
    sha = hashlib.sha256(st_path.read_bytes()).hexdigest()

    settings = {k: v for k, v in LLAMA_SETTINGS.items()}
    settings["type_k"] = settings["type_v"] = "f32"
    settings.update(
        {
            "add_bos": False,
            "parse_special": True,
            "eval": "llm.reset(); llm.eval(ids) as one batch; logits = llm.scores[:n]",
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        }
    )
    logits_meta = {
        "model": MODEL.name,
        "model_sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "llama_cpp_python": lcp_version,
        "vocab_size": n_vocab,
        "settings": settings,
        "topk": TOPK,
        "topk_order": "logit descending, ties by smaller id",
        "sample_ids": {"n": N_SAMPLE, "how": "np.sort(np.random.default_rng(0).choice(vocab_size, 1024, replace=False))"},
        "tensors": {
            "sample_ids": "int64 [1024]",
            "p{i}.ids": "int64 [n] prompt token ids (no BOS)",
            "p{i}.argmax": "int64 [n] argmax of the logits at each position",
            "p{i}.topk_ids": f"int64 [n,{TOPK}]",
            "p{i}.topk_logits": f"float32 [n,{TOPK}]",
            "p{i}.sample_logits": "float32 [n,1024] logits[:, sample_ids]",
        },
        "prompts": prompt_meta,
        "safetensors": st_path.name,
        "safetensors_sha256": sha,
    }
    meta_path = FIXTURES / "smollm2-logits.json"
    meta_path.write_text(json.dumps(logits_meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {st_path.relative_to(REPO)} ({st_path.stat().st_size} bytes, sha256 {sha})")

    # llama.cpp against itself: the same Q4_1 model evaluated in micro-batches of 8 tokens
    # instead of one batch. Activations are quantised to Q8_1 before every matrix product, so
    # float noise of accumulation order flips roundings and is amplified through 30 layers; this
    # is the floor any other implementation of the Q4_1 arithmetic can be compared against.
    small = Llama(model_path=str(MODEL), **{**LLAMA_SETTINGS, "n_batch": 8, "n_ubatch": 8})
    agree = total = 0
    worst = 0.0
    for i in range(len(prompts)):
        ids = [int(t) for t in tensors[f"p{i}.ids"]]
        other = eval_all_logits(small, ids)
        agree += int((other.argmax(axis=1) == tensors[f"p{i}.argmax"]).sum())
        total += len(ids)
        worst = max(worst, float(np.abs(other[:, sample_ids] - tensors[f"p{i}.sample_logits"]).max()))
    noise = {"compare": "n_batch=n_ubatch=8 vs 512, same Q4_1 file", "top1_agreement": agree / total,
             "positions": total, "max_abs_diff_sampled": worst}
    print(f"llama.cpp vs itself (ubatch 8 vs 512): top-1 {agree}/{total}, max |diff| {worst:.4f}")
    logits_meta["noise_floor_q4_1"] = noise
    del small

    # F32 reference: llama.cpp dequantises the file itself, then runs without quantisation.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = Path(tmp) / "smollm2-f32.gguf"
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
        qp.allow_requantize = True
        qp.nthread = 2
        rc = llama_cpp.llama_model_quantize(str(MODEL).encode(), str(f32_path).encode(), qp)
        assert rc == 0, f"llama_model_quantize returned {rc}"
        f32 = Llama(model_path=str(f32_path), **LLAMA_SETTINGS)
        f32_tensors: dict[str, np.ndarray] = {"sample_ids": sample_ids}
        for i in range(len(prompts)):
            ids = [int(t) for t in tensors[f"p{i}.ids"]]
            logits = eval_all_logits(f32, ids)
            tk = [topk_desc(logits[t], TOPK) for t in range(len(ids))]
            f32_tensors[f"p{i}.ids"] = np.asarray(ids, dtype=np.int64)
            f32_tensors[f"p{i}.argmax"] = logits.argmax(axis=1).astype(np.int64)
            f32_tensors[f"p{i}.topk_ids"] = np.stack([a for a, _ in tk])
            f32_tensors[f"p{i}.topk_logits"] = np.stack([b for _, b in tk])
            f32_tensors[f"p{i}.sample_logits"] = np.ascontiguousarray(logits[:, sample_ids], dtype=np.float32)
        del f32
    f32_st = FIXTURES / "smollm2-f32-logits.safetensors"
    save_file(f32_tensors, str(f32_st), metadata={"source": f"scripts/ref-llamacpp.py, llama-cpp-python {lcp_version}, {MODEL.name} dequantised to F32 by llama_model_quantize"})
    f32_st.chmod(0o644)
    logits_meta["f32_reference"] = {
        "safetensors": f32_st.name,
        "safetensors_sha256": hashlib.sha256(f32_st.read_bytes()).hexdigest(),
        "how": "llama_model_quantize(ftype=LLAMA_FTYPE_ALL_F32, allow_requantize=True), same settings and prompts",
    }
    meta_path.write_text(json.dumps(logits_meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {f32_st.relative_to(REPO)}")
    print(f"wrote {meta_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
