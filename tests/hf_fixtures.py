"""Tiny Hugging Face models and tokenizers built locally (no downloads) for interop tests."""

from __future__ import annotations

import json
import os

import numpy as np

from reasoner.checkpoint.tiny_hf import HF_SIZES, make_hf_model  # noqa: F401 (re-exported)

LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8)


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
