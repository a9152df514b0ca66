"""Tiny random-weight Hugging Face model folders, built locally with `transformers` (no download).

For tests and smoke runs that need "a Qwen2 / Llama folder" without the real weights:

  make_hf_model(arch)            a small random LlamaForCausalLM / Qwen2ForCausalLM (torch)
  write_bpe_tokenizer(dir, texts) a Qwen-like byte-level BPE tokenizer.json trained on `texts`
  write_tiny_qwen2(dir, texts)   both in one folder: what `import_hf` + `load_tokenizer` (and so
                                 `--config.init=DIR --config.tokenizer.kind=from_init`) read

torch and transformers are imported only when a model is built (they are test requirements).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

HF_SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
# Qwen2.5's special tokens: <|endoftext|> pads, <|im_end|> ends a chat turn (the eos).
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def make_hf_model(arch: str, seed: int = 0, **overrides):
  """A random-weight LlamaForCausalLM / Qwen2ForCausalLM (float32, eager attention) of HF_SIZES
  (updated by `overrides`, any config field) whose norm weights and q/k/v biases are perturbed
  away from their 1 / 0 init so that they matter."""
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


def write_bpe_tokenizer(directory: str, texts: Iterable[str], vocab_size: int = 512) -> int:
  """Trains a byte-level BPE tokenizer (Qwen2's kind) on `texts` and writes DIR/tokenizer.json
  and a tokenizer_config.json with Qwen's specials: eos <|im_end|>, pad <|endoftext|>, no bos.
  Every byte is in the vocabulary, so any text encodes. Returns the vocabulary size."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(QWEN_SPECIALS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(list(texts), trainer)
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": 32768}
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return tok.get_vocab_size(with_added_tokens=True)


def write_tiny_qwen2(directory: str, texts: Iterable[str], vocab_size: int = 512, seed: int = 0,
                     **sizes) -> str:
  """A Qwen2-architecture HF folder in `directory`: a BPE tokenizer trained on `texts` and a
  random Qwen2ForCausalLM (HF_SIZES with tied embeddings, Qwen2.5's rope_theta, 512 positions;
  `sizes` override any config field). As in the real Qwen2.5 folders, the embedding has spare
  rows past the tokenizer's vocabulary (rounded up to 64 after room for the four reasoning tags
  the library adds), so loading it does not grow the vocabulary. Returns `directory`."""
  n_tokens = write_bpe_tokenizer(directory, texts, vocab_size)
  config = dict(vocab_size=-(-(n_tokens + 4) // 64) * 64, tie_word_embeddings=True,
                rope_theta=1000000.0, max_position_embeddings=512)
  config.update(sizes)
  model = make_hf_model("qwen2", seed=seed, **config)
  model.config.eos_token_id = model.config.pad_token_id = None  # the tokenizer's ids rule
  model.save_pretrained(directory)
  return directory
