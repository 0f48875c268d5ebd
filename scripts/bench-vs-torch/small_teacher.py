"""Writes the small benchmark's teacher as a Hugging Face folder: a byte-level BPE tokenizer of
8,192 ids trained on the Moby Dick chapters, and a 6-layer Llama (d = 384, 6 heads) from
transformers with seeded random weights. distill trains a 4-layer d = 256 student from it;
the PyTorch side builds the same shapes.

  small_teacher.py OUT_DIR MOBY_DICK_DIR
"""
import glob
import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

out, corpus = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
VOCAB = 8192

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train(sorted(glob.glob(os.path.join(corpus, "chapter_*.txt"))), trainer)
assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
tok.save(os.path.join(out, "tokenizer.json"))
json.dump({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"},
          open(os.path.join(out, "tokenizer_config.json"), "w"))

cfg = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": VOCAB, "hidden_size": 384, "intermediate_size": 1024,
    "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 6,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
    "tie_word_embeddings": True, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0,
}
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**cfg)).float()
state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
print(out)
