"""Rollouts: sample completions for prompts and lay them out as training rows.

A row is `prompt + completion`, right-padded to a fixed length so the train step compiles once:
tokens / positions / segment_ids / loss_mask [rows, prompt_len + max_new], with loss_mask on the
sampled completion tokens only (tokens injected by budget forcing are masked out). Given the
sampler's per-token log-probs, the rows also carry them as behaviour_logprobs [rows, t] in the
log-prob alignment (column j holds token j's log-prob; 0 off the completion).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from reasoner.sampling import SamplingConfig, generate


@dataclasses.dataclass
class Rollouts:
  prompt_ids: list[list[int]]  # [rows] (each prompt repeated n times, prompt-major)
  completion_ids: list[list[int]]  # [rows], up to and including the stop token
  texts: list[str]  # decoded completions
  lengths: np.ndarray  # [rows]
  done: np.ndarray  # [rows] bool: stopped by EOS / stop sequence
  injected: list[np.ndarray]  # [rows] masks of forced tokens
  logprobs: list[np.ndarray]  # [rows] the sampling policy's log-prob of each completion token


def sample_rollouts(params, ctx, prompts: Sequence[list[int]], sampling: SamplingConfig,
                    rng: jax.Array, batch_rows: int = 0) -> Rollouts:
  """Samples `sampling.n` completions per prompt. With `batch_rows` > 0 the sampler runs on at
  most that many rows (batch_rows // n prompts) at a time, which bounds its KV cache; 0 = all
  prompts in one call."""
  prompts = list(prompts)
  per_call = len(prompts) if batch_rows <= 0 else max(1, batch_rows // sampling.n)
  outs = []
  for i in range(0, len(prompts), per_call):
    key = rng if per_call >= len(prompts) else jax.random.fold_in(rng, i)
    outs.append(generate(params, ctx.model_cfg, prompts[i:i + per_call], sampling, key,
                         pad_id=ctx.tokenizer.pad_id, eos_id=ctx.tokenizer.eos_id, mesh=ctx.mesh))
  rows = [(row, m, lp, length) for out in outs
          for row, m, lp, length in zip(out.tokens, out.injected, out.logprobs, out.lengths)]
  completions = [row[:length].tolist() for row, _, _, length in rows]
  return Rollouts(prompt_ids=[list(p) for p in prompts for _ in range(sampling.n)],
                  completion_ids=completions, texts=[ctx.decode(c) for c in completions],
                  lengths=np.concatenate([out.lengths for out in outs]),
                  done=np.concatenate([out.done for out in outs]),
                  injected=[np.asarray(m[:length], bool) for _, m, _, length in rows],
                  logprobs=[np.asarray(lp[:length], np.float32) for _, _, lp, length in rows])


def rollout_rows(prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], seq_len: int,
                 pad_id: int, injected: Sequence[np.ndarray] = (),
                 logprobs: Sequence[np.ndarray] = ()) -> dict:
  """Right-padded rows with the loss on completion tokens; prompts are truncated from the left.
  With `logprobs` (per completion token) the rows get behaviour_logprobs too."""
  rows = len(prompt_ids)
  tokens = np.full((rows, seq_len), pad_id, np.int32)
  segment_ids = np.zeros((rows, seq_len), np.int32)
  loss_mask = np.zeros((rows, seq_len), np.float32)
  behaviour = np.zeros((rows, seq_len), np.float32)
  for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
    c = list(c)[:seq_len - 1]
    p = list(p)[-(seq_len - len(c)):]
    n = len(p) + len(c)
    tokens[i, :n] = p + c
    segment_ids[i, :n] = 1
    loss_mask[i, len(p):n] = 1.0
    if len(injected) and len(injected[i]):
      inj = np.asarray(injected[i][:len(c)], bool)
      loss_mask[i, len(p):len(p) + len(inj)][inj] = 0.0
    if len(logprobs):
      lp = np.asarray(logprobs[i][:len(c)], np.float32)
      behaviour[i, len(p):len(p) + len(lp)] = lp
  positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
  out = {"tokens": tokens, "positions": positions, "segment_ids": segment_ids, "loss_mask": loss_mask}
  if len(logprobs):
    out["behaviour_logprobs"] = behaviour
  return out
