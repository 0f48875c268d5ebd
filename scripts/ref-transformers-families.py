#!/usr/bin/env python3
"""Reference fixtures for decoder families whose real weights are out of reach here: tiny
random models that transformers itself builds and runs, with their logits.

For each family (Gemma 3, Qwen3, Phi-3) it writes tests/fixtures/families/<family>/:

  config.json          the model's config, as transformers saves it
  model.safetensors    its seeded random weights, as transformers saves them (f32)
  reference.safetensors
                       `ids` [2, 40] (int64; the second row right-padded by 7 with
                       `attention_mask` 0 there) and transformers' `logits` [2, 40, vocab] (f32),
                       from `model(input_ids, attention_mask).logits` in f32 with eager attention

Sizes are tiny (vocab 160, hidden 64, 3 layers) but every trait of the family is on: Gemma 3's
sliding window (8, shorter than the 40 tokens) and local rotary base, q/k norms, a head size
independent of hidden; Phi-3's fused qkv and gate-up matrices and its sliding window.

How to run (from the repository root):

  scripts/setup-ref-venv-torch.sh && $HOME/.cache/distill/torch-venv/bin/python scripts/ref-transformers-families.py

The fixtures are committed; CI never needs Python or torch.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "families"

COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)


def families():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    from transformers import Phi3Config, Phi3ForCausalLM
    from transformers import Qwen3Config, Qwen3ForCausalLM

    yield "gemma3", Gemma3ForCausalLM, Gemma3TextConfig(
        **{**COMMON, "tie_word_embeddings": True}, head_dim=24, query_pre_attn_scalar=20,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, hidden_activation="gelu_pytorch_tanh")
    yield "qwen3", Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=24, rope_theta=1_000_000.0)
    yield "phi3", Phi3ForCausalLM, Phi3Config(**COMMON, sliding_window=12, rope_theta=10_000.0,
                                              resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)


def main() -> int:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, COMMON["vocab_size"], (2, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 33:] = 0
    ids[1, 33:] = 0
    for name, cls, cfg in families():
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        model = cls(cfg).eval()
        # Random norms, not ones (or zeros): a norm read the wrong way must show.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.copy_(torch.randn_like(p) * 0.3 + (0.0 if name == "gemma3" else 1.0))
        out_dir = OUT / name
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        save_file({"ids": ids.contiguous(), "attention_mask": mask.contiguous(), "logits": logits.contiguous()},
                  str(out_dir / "reference.safetensors"),
                  metadata={"source": f"scripts/ref-transformers-families.py, transformers {version('transformers')}, torch {torch.__version__}"})
        for extra in ("generation_config.json",):
            (out_dir / extra).unlink(missing_ok=True)
        cfg_text = json.loads((out_dir / "config.json").read_text())
        print(f"{name}: {cfg_text['model_type']}, {sum(p.numel() for p in model.parameters())} params, "
              f"files {sorted(p.name for p in out_dir.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
