"""PyTorch side of scripts/bench-vs-torch: the same training step and teacher forward as distill,
built from transformers' LlamaForCausalLM at distill's shapes (random weights: speed does not
depend on their values), f32 on the CPU.

  torch_side.py step    --teacher T.json --student S.json --batch B --seq N --steps K ...
  torch_side.py forward --teacher T.json --batch B --seq N --steps K

Prints one JSON object: per-step (or per-forward) seconds by phase, versions and thread count.
The step is distill's: teacher forward under no_grad, student forward, α·T²·KL(teacher‖student)
at temperature T plus (1−α)·cross-entropy on the next token, backward, global-norm clipping and
AdamW (PyTorch's fused CPU implementation, its fastest).
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def config(path):
    c = json.load(open(path))
    keep = {k: c[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
        "tie_word_embeddings", "max_position_embeddings", "hidden_act") if k in c}
    if c.get("head_dim"):
        keep["head_dim"] = c["head_dim"]
    # Eager attention is what the composed student computes; sdpa is PyTorch's fused kernel and
    # its fastest on the CPU, so that is the one measured.
    return LlamaConfig(**keep, attn_implementation="sdpa")


def model(cfg, seed):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(cfg)
    m.float()
    return m


def step_bench(a):
    teacher = model(config(a.teacher), 0).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = model(config(a.student), 1).train()
    vocab = student.config.vocab_size
    decay = [p for n, p in student.named_parameters() if "norm" not in n and not n.endswith(".bias")]
    other = [p for n, p in student.named_parameters() if "norm" in n or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    g = torch.Generator().manual_seed(2)
    rows = []
    T, alpha = a.temperature, a.alpha
    for i in range(a.warmup + a.steps):
        ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g)
        t0 = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits[:, :-1].reshape(-1, vocab)
        s_logits = student(input_ids=ids).logits[:, :-1].reshape(-1, vocab)
        labels = ids[:, 1:].reshape(-1)
        kl = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1),
                      log_target=True, reduction="batchmean") * T * T
        ce = F.cross_entropy(s_logits, labels)
        loss = alpha * kl + (1 - alpha) * ce
        loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        t3 = time.perf_counter()
        if i >= a.warmup:
            rows.append({"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0})
    return rows


def forward_bench(a):
    teacher = model(config(a.teacher), 0).eval()
    vocab = teacher.config.vocab_size
    g = torch.Generator().manual_seed(3)
    rows = []
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g)
            t0 = time.perf_counter()
            logits = teacher(input_ids=ids).logits
            logits.sum().item()
            dt = time.perf_counter() - t0
            if i >= a.warmup:
                rows.append({"forward": dt, "total": dt})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["step", "forward"])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = step_bench(a) if a.mode == "step" else forward_bench(a)
    json.dump({"rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "transformers": transformers.__version__, "tokens": a.batch * a.seq}, sys.stdout)


if __name__ == "__main__":
    main()
