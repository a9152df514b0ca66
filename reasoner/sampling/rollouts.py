"""Completions for many prompts, decoded: the one loop every stage and the evaluation sample
through.

`sample_rollouts` runs the sampler over at most `batch_rows` rows at a time (so its KV cache is
bounded), decodes the completions and keeps what the training rows need: the completion ids up to
and including the stop token, whether it stopped, the tokens budget forcing injected and the
sampler's per-token log-probs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from reasoner.model.config import ModelConfig
from reasoner.sampling.config import SamplingConfig
from reasoner.sampling.engine import generate
from reasoner.tokenizer.base import Tokenizer


@dataclasses.dataclass
class Rollouts:
  prompt_ids: list[list[int]]  # [rows] (each prompt repeated n times, prompt-major)
  completion_ids: list[list[int]]  # [rows], up to and including the stop token
  texts: list[str]  # decoded completions
  lengths: np.ndarray  # [rows]
  done: np.ndarray  # [rows] bool: stopped by EOS / stop sequence
  injected: list[np.ndarray]  # [rows] masks of forced tokens
  logprobs: list[np.ndarray]  # [rows] the sampling policy's log-prob of each completion token


def concat_rollouts(parts: Sequence[Rollouts]) -> Rollouts:
  """The rows of `parts` one after the other (prompt-major order kept within each)."""
  lists = {f.name: [x for r in parts for x in getattr(r, f.name)]
           for f in dataclasses.fields(Rollouts) if f.name not in ("lengths", "done")}
  return Rollouts(**lists, lengths=np.concatenate([r.lengths for r in parts]),
                  done=np.concatenate([r.done for r in parts]))


def sample_rollouts(params, model_cfg: ModelConfig, tokenizer: Tokenizer,
                    prompts: Sequence[Sequence[int]], sampling: SamplingConfig, rng: jax.Array, *,
                    mesh=None, batch_rows: int = 0, min_prompts: int = 0) -> Rollouts:
  """Samples `sampling.n` completions per prompt (rows prompt-major).

  With `batch_rows` > 0 the sampler runs on at most that many rows (batch_rows // n prompts, at
  least one) at a time, the call starting at prompt i keyed `fold_in(rng, i)`, and every call
  gets the same number of prompts (the last one is filled up with copies of the last prompt,
  their rows dropped), so the calls share one compiled program. `min_prompts` widens a single
  call to that many prompts the same way, so callers with varying numbers of prompts (a beam
  search) reuse one program too. batch_rows 0 = all prompts in one call, keyed `rng`.
  """
  prompts = [list(p) for p in prompts]
  count = len(prompts)
  if not count:
    return Rollouts([], [], [], np.zeros(0, np.int32), np.zeros(0, bool), [], [])
  per_call = count if batch_rows <= 0 else max(1, batch_rows // sampling.n)
  width = max(1, min(per_call, max(count, min_prompts)) if batch_rows > 0 else count)
  total = -(-count // width) * width
  padded = prompts + [prompts[-1]] * (total - count)
  outs = []
  for i in range(0, total, width):
    key = rng if width >= total else jax.random.fold_in(rng, i)
    outs.append(generate(params, model_cfg, padded[i:i + width], sampling, key,
                         pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, mesh=mesh))
  keep = count * sampling.n
  rows = [(row, m, lp, length) for out in outs
          for row, m, lp, length in zip(out.tokens, out.injected, out.logprobs, out.lengths)][:keep]
  completions = [row[:length].tolist() for row, _, _, length in rows]
  return Rollouts(prompt_ids=[p for p in prompts for _ in range(sampling.n)],
                  completion_ids=completions, texts=[tokenizer.decode(c) for c in completions],
                  lengths=np.concatenate([out.lengths for out in outs])[:keep],
                  done=np.concatenate([out.done for out in outs])[:keep],
                  injected=[np.asarray(m[:length], bool) for _, m, _, length in rows],
                  logprobs=[np.asarray(lp[:length], np.float32) for _, _, lp, length in rows])
