"""Decoder configuration and presets for the Llama / Qwen2 family."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

ARCHITECTURES = ("llama", "qwen2")
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a decoder-only transformer.

  `arch` only matters for Hugging Face interop ("llama" -> LlamaForCausalLM,
  "qwen2" -> Qwen2ForCausalLM); the forward pass is driven by the fields.
  """

  arch: str = "llama"
  vocab_size: int = 512
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 384
  max_seq_len: int = 512
  rope_theta: float = 10000.0
  # Llama 3 style frequency scaling: dict(factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings) or None.
  rope_scaling: Optional[dict] = None
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  tie_embeddings: bool = False
  dtype: str = "float32"  # activations / compute
  param_dtype: str = "float32"  # stored (master) weights
  remat: bool = False  # rematerialise each layer in the backward pass
  init_std: float = 0.02
  # Training / prefill attention (reasoner.model.attention): auto | dense | blockwise | cudnn |
  # splash. "auto" picks the memory-efficient kernel of the backend for long rows (cuDNN on a
  # GPU for rows of one sequence); "cudnn" also runs packed rows (SFT's) through cuDNN, with
  # their segment mask as a [b, 1, t, t] bias.
  attention: str = "auto"
  # Output-layer memory (reasoner.losses.logprobs): when a device's float32 [rows, seq, vocab]
  # logits would exceed this many MiB, log-probs / entropies are computed over sequence chunks
  # of at most this size each (recomputed in the backward pass); 0 = never chunk.
  logits_chunk_mib: int = 256
  # LoRA adapters (reasoner.model.lora) on the projections named in lora_targets; rank 0 = none.
  # Each adapted projection adds (lora_alpha / lora_rank) x (x a) b to x w.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = "wq,wk,wv,wo,w_gate,w_up,w_down"

  def __post_init__(self):
    validate(self)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config field(s) {unknown}; valid fields: {sorted(names)}")
    return cls(**d)

  @property
  def n_params(self) -> int:
    d, f, h, k, hd = self.d_model, self.d_ff, self.n_heads, self.n_kv_heads, self.head_dim
    per_layer = 2 * d + d * hd * (h + 2 * k) + h * hd * d + 3 * d * f
    if self.qkv_bias:
      per_layer += hd * (h + 2 * k)
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.n_layers * per_layer + emb + d


def validate(cfg: ModelConfig) -> None:
  if cfg.arch not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {cfg.arch!r}; expected one of {ARCHITECTURES}")
  for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
    if getattr(cfg, name) <= 0:
      raise ValueError(f"model config {name} must be positive, got {getattr(cfg, name)}")
  if cfg.n_heads % cfg.n_kv_heads:
    raise ValueError(f"n_heads ({cfg.n_heads}) must be a multiple of n_kv_heads ({cfg.n_kv_heads})")
  if cfg.head_dim % 2:
    raise ValueError(f"head_dim must be even for rotary embeddings, got {cfg.head_dim}")
  from reasoner.model.attention import IMPLS
  if cfg.attention not in IMPLS:
    raise ValueError(f"unknown attention {cfg.attention!r}; expected one of {IMPLS}")
  if cfg.logits_chunk_mib < 0:
    raise ValueError(f"logits_chunk_mib must be >= 0 (0 = never chunk), got {cfg.logits_chunk_mib}")
  if isinstance(cfg.lora_rank, bool) or not isinstance(cfg.lora_rank, (int, np.integer)) \
      or cfg.lora_rank < 0:
    raise ValueError(f"lora_rank must be an integer >= 0 (0 = no adapters), got {cfg.lora_rank!r}")
  if cfg.lora_rank and not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha > 0):
    raise ValueError(f"lora_alpha must be a positive number (adapters add alpha / rank x (x a) b), "
                     f"got {cfg.lora_alpha!r}")
  targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
  bad = sorted(set(targets) - set(LORA_TARGETS))
  if bad or (cfg.lora_rank and not targets):
    raise ValueError(f"lora_targets must name some of {LORA_TARGETS}, got {cfg.lora_targets!r}")
  twice = sorted({t for t in targets if targets.count(t) > 1})
  if twice:
    raise ValueError(f"lora_targets names {', '.join(twice)} more than once: {cfg.lora_targets!r}")
  for name in ("dtype", "param_dtype"):
    if getattr(cfg, name) not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"{name} must be float32, bfloat16 or float16, got {getattr(cfg, name)!r}")


_LLAMA3_SCALING = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)
_LLAMA31_SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)

PRESETS: dict[str, dict[str, Any]] = {
    # Trains on a laptop CPU in minutes.
    "tiny": dict(arch="llama", vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                 head_dim=32, d_ff=384, max_seq_len=512, rope_theta=10000.0, tie_embeddings=True),
    # The sampler benchmark's mid-size shape.
    "mid": dict(arch="llama", vocab_size=32000, d_model=1024, n_layers=16, n_heads=16,
                n_kv_heads=4, head_dim=64, d_ff=2816, max_seq_len=2048, rope_theta=10000.0),
    "qwen2_5_0_5b": dict(arch="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                         n_kv_heads=2, head_dim=64, d_ff=4864, max_seq_len=32768,
                         rope_theta=1000000.0, qkv_bias=True, tie_embeddings=True),
    "qwen2_5_1_5b": dict(arch="qwen2", vocab_size=151936, d_model=1536, n_layers=28, n_heads=12,
                         n_kv_heads=2, head_dim=128, d_ff=8960, max_seq_len=32768,
                         rope_theta=1000000.0, qkv_bias=True, tie_embeddings=True),
    "qwen2_5_7b": dict(arch="qwen2", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
                       n_kv_heads=4, head_dim=128, d_ff=18944, max_seq_len=32768,
                       rope_theta=1000000.0, qkv_bias=True, tie_embeddings=False),
    "llama3_2_1b": dict(arch="llama", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                        n_kv_heads=8, head_dim=64, d_ff=8192, max_seq_len=131072,
                        rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING, norm_eps=1e-5,
                        tie_embeddings=True),
    "llama3_1_8b": dict(arch="llama", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                        n_kv_heads=8, head_dim=128, d_ff=14336, max_seq_len=131072,
                        rope_theta=500000.0, rope_scaling=_LLAMA31_SCALING, norm_eps=1e-5,
                        tie_embeddings=False),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the preset `name` with `overrides` applied."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
  return ModelConfig.from_dict({**PRESETS[name], **overrides})
