"""Samples checked by the verifier, and samples laid out as training rows.

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

from reasoner.data.problem import Problem
from reasoner.rewards import format_reward, is_correct
from reasoner.sampling import SamplingConfig
from reasoner.stages.context import StageContext


@dataclasses.dataclass
class Verified:
  """A problem's samples, each checked: stopped by itself, well formatted and correct."""

  problem: Problem
  prompt_ids: list[int]
  completion_ids: list[list[int]]  # [n]
  texts: list[str]  # [n]
  ok: list[bool]  # [n]


VERIFY_CHUNK = 64  # problems per `sample_and_verify` chunk


def sample_and_verify(ctx: StageContext, params, problems: Sequence[Problem],
                      sampling: SamplingConfig, rng: jax.Array, chunk: int = VERIFY_CHUNK,
                      batch_rows: int = 0) -> list[Verified]:
  """`sampling.n` samples of every problem, `chunk` problems at a time (the chunk starting at
  problem i keyed `fold_in(rng, i)`), each chunk in sampler calls of at most `batch_rows` rows
  (`sample_rollouts`; 0 = the whole chunk in one call), each sample checked: it is ok when it
  stopped by itself (not cut at max_new_tokens), its format reward is 1 and `is_correct` accepts
  it. Rejection sampling and the DPO pairs keep or pair samples from this one list."""
  n, out = sampling.n, []
  for i in range(0, len(problems), chunk):
    batch = problems[i:i + chunk]
    prompts = [ctx.encode_prompt(p.prompt) for p in batch]
    ro = ctx.sample(params, prompts, sampling, jax.random.fold_in(rng, i), batch_rows=batch_rows)
    for j, problem in enumerate(batch):
      rows = range(j * n, (j + 1) * n)
      out.append(Verified(problem, prompts[j], [ro.completion_ids[r] for r in rows],
                          [ro.texts[r] for r in rows],
                          [bool(ro.done[r]) and format_reward(ro.texts[r]) == 1.0
                           and is_correct(problem, ro.texts[r]) for r in rows]))
  return out


def verify_call_prompts(n_problems: int, samples: int, batch_rows: int) -> int:
  """The most prompts one sampler call of `sample_and_verify` holds (what `launch.plan` plans)."""
  prompts = min(VERIFY_CHUNK, max(1, int(n_problems)))
  return prompts if batch_rows <= 0 else min(prompts, max(1, int(batch_rows) // int(samples)))


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
