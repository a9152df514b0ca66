"""Sampling options. All fields are static: each distinct config compiles once per shape bucket."""

from __future__ import annotations

import dataclasses
from typing import Optional

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to generate.

  max_new_tokens: generation budget per row.
  temperature / top_k (0 = off) / top_p (1.0 = off): the sampling rule; greedy = argmax.
  n: samples per prompt (a GRPO group); rows are prompt-major (row i*n + j = sample j of prompt i).
    The prompt prefill runs once per prompt; its cache is repeated n times.
  stop_token_ids: extra single tokens that end a row (EOS always does).
  stop_sequences: token-id tuples (e.g. the ids of `</answer>`); a row ends when its generated
    tokens end with one of them.
  max_thinking_tokens / think_end_id: once this many tokens were generated without the row
    emitting `think_end_id`, `think_end_id` is forced. The completion is assumed to start inside
    the thinking (the model writes `<think>` itself), so thinking tokens are counted from the
    first generated token.
  min_thinking_tokens / wait_token_ids: s1 budget forcing; a `think_end_id`, EOS or stop token
    sampled before this many tokens (while thinking is open) is replaced by the "Wait" tokens.
  prompt_buckets: prompts are padded up to the next bucket so a new length reuses a compile.
  engine: which sampler `reasoner.sampling.generate` runs: "paged" (the rollout engine:
    continuous batching over a paged KV cache, `reasoner.sampling.engine`, whose
    `EngineConfig.layout` may run a one-wave call on a dense per-slot cache) or "static" (one
    lockstep batch over a preallocated cache, `reasoner.sampling.sampler`). Greedy outputs are
    the same.
  """

  max_new_tokens: int = 128
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  n: int = 1
  stop_token_ids: tuple = ()
  stop_sequences: tuple = ()
  max_thinking_tokens: Optional[int] = None
  think_end_id: Optional[int] = None
  wait_token_ids: tuple = ()
  min_thinking_tokens: int = 0
  prompt_buckets: tuple = DEFAULT_BUCKETS
  engine: str = "paged"

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.n <= 0:
      raise ValueError(f"n (samples per prompt) must be positive, got {self.n}")
    if not self.greedy and not self.temperature > 0:
      raise ValueError(f"temperature must be > 0 (or set greedy=True), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.max_thinking_tokens is not None and self.max_thinking_tokens < 0:
      raise ValueError(f"max_thinking_tokens must be >= 0, got {self.max_thinking_tokens}")
    if self.min_thinking_tokens < 0:
      raise ValueError(f"min_thinking_tokens must be >= 0, got {self.min_thinking_tokens}")
    if (self.max_thinking_tokens is not None or self.min_thinking_tokens) and self.think_end_id is None:
      raise ValueError("max_thinking_tokens / min_thinking_tokens need think_end_id")
    if self.min_thinking_tokens and not self.wait_token_ids:
      raise ValueError("min_thinking_tokens needs wait_token_ids (e.g. the tokens of ' Wait,')")
    if self.engine not in ("paged", "static"):
      raise ValueError(f"engine must be 'paged' or 'static', got {self.engine!r}")
    if not self.prompt_buckets or any(int(b) <= 0 for b in self.prompt_buckets):
      raise ValueError(f"prompt_buckets must be positive lengths, got {self.prompt_buckets}")
    seqs = tuple(tuple(int(t) for t in s) for s in self.stop_sequences)
    if any(not s for s in seqs):
      raise ValueError("stop_sequences must not contain an empty sequence")
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
    object.__setattr__(self, "stop_sequences", seqs)
    object.__setattr__(self, "wait_token_ids", tuple(int(t) for t in self.wait_token_ids))
    object.__setattr__(self, "prompt_buckets", tuple(sorted(int(b) for b in self.prompt_buckets)))
    if self.think_end_id is not None:
      object.__setattr__(self, "think_end_id", int(self.think_end_id))

  @property
  def forces_budget(self) -> bool:
    return self.max_thinking_tokens is not None or self.min_thinking_tokens > 0

  def replace(self, **kw) -> "SamplingConfig":
    return dataclasses.replace(self, **kw)
