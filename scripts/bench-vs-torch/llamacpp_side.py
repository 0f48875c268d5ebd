"""llama.cpp side of scripts/bench-vs-torch (runs in the llama-cpp-python venv of
scripts/setup-ref-venv.sh).

  llamacpp_side.py config  FILE.gguf             the model's shape as a transformers LlamaConfig dict
  llamacpp_side.py forward FILE.gguf TEXT --tokens N --threads T [--repeats R]
        one sequence of the text's first N tokens, logits at every position, R timed evaluations
        after one warm-up; prints tokens/s of each
"""
import argparse
import json
import sys
import time


def config(path):
    from gguf import GGUFReader
    r = GGUFReader(path)

    def get(key):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return v.tolist()[0] if hasattr(v, "tolist") else v

    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in r.tensors}
    return {
        "vocab_size": vocab,
        "hidden_size": get(f"{arch}.embedding_length"),
        "intermediate_size": get(f"{arch}.feed_forward_length"),
        "num_hidden_layers": get(f"{arch}.block_count"),
        "num_attention_heads": get(f"{arch}.attention.head_count"),
        "num_key_value_heads": get(f"{arch}.attention.head_count_kv"),
        "rms_norm_eps": get(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": get(f"{arch}.rope.freq_base"),
        "max_position_embeddings": get(f"{arch}.context_length"),
        "tie_word_embeddings": "output.weight" not in names,
    }


def forward(a):
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(model_path=a.model, n_ctx=a.tokens, n_batch=a.tokens, n_ubatch=a.tokens, logits_all=True,
                n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    text = open(a.text, encoding="utf-8").read()
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[: a.tokens]
    if len(ids) < a.tokens:
        sys.exit(f"{a.text}: only {len(ids)} tokens")
    rates = []
    for i in range(a.repeats + 1):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        dt = time.perf_counter() - t
        if i > 0:
            rates.append(len(ids) / dt)
    json.dump({"tokens_per_second": rates, "version": llama_cpp.__version__}, sys.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["config", "forward"])
    p.add_argument("model")
    p.add_argument("text", nargs="?")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    if a.mode == "config":
        json.dump(config(a.model), sys.stdout)
    else:
        forward(a)


if __name__ == "__main__":
    main()
