"""Tiny Hugging Face models and tokenizers built locally (no downloads) for interop tests."""

from __future__ import annotations

import json
import os

import numpy as np

HF_SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8)


def make_hf_model(arch: str, seed: int = 0, **overrides):
  """A random-weight LlamaForCausalLM / Qwen2ForCausalLM (float32, eager attention) whose norm
  weights and q/k/v biases are perturbed away from their 1 / 0 init so that they matter."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
  torch.manual_seed(seed)
  kw = {**HF_SIZES, **overrides}
  if arch == "llama":
    cfg, cls = LlamaConfig(**kw), LlamaForCausalLM
  else:
    cfg, cls = Qwen2Config(**kw), Qwen2ForCausalLM
  cfg._attn_implementation = "eager"
  model = cls(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ("norm" in name or "bias" in name) and "o_proj" not in name:
        p.add_(0.2 * torch.randn_like(p))
  return model


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


WORDS = ["<unk>", "<|endoftext|>", "<|im_end|>", "the", "answer", "is", "1", "2", "3", "+", "=",
         "User:", "Assistant:", "think"]


def write_hf_tokenizer(directory: str) -> None:
  """A Qwen-like tokenizer folder: WordLevel tokenizer.json, eos <|im_end|>, pad <|endoftext|>
  (given as dicts, as real tokenizer_config.json files do), no bos, no reasoning tags."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
  tok.add_special_tokens([AddedToken(w, special=True) for w in WORDS[:3]])
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = {"eos_token": {"content": "<|im_end|>", "special": True}, "pad_token": "<|endoftext|>",
            "bos_token": None, "tokenizer_class": "Qwen2Tokenizer"}
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
