"""The model being evaluated, bundled with what every strategy needs to prompt and sample it."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.model.config import ModelConfig
from reasoner.verify.answers import THINK_CLOSE
from reasoner.sampling import SamplingConfig
from reasoner.sampling.rollouts import sample_rollouts
from reasoner.tokenizer import format_prompt


@dataclasses.dataclass
class Samples:
  """n completions for each of P problems (problem-major nested lists).

  ids[i][j]: generated token ids of sample j of problem i (up to and including the stop token).
  texts[i][j]: the decoded completion. lengths: [P, n] int. mean_logprob: [P, n] float, mean raw
  token log-prob of the sampled (not injected) tokens (a confidence score).
  """

  ids: list
  texts: list
  lengths: np.ndarray
  mean_logprob: np.ndarray

  @property
  def n(self) -> int:
    return self.lengths.shape[1]

  def first(self, k: int) -> "Samples":
    """The first k samples of every problem."""
    return Samples([r[:k] for r in self.ids], [r[:k] for r in self.texts], self.lengths[:, :k],
                   self.mean_logprob[:, :k])


@dataclasses.dataclass
class Policy:
  """A model to sample: params (placed on `mesh` if given), its config and tokenizer, the prompt
  template, and the most rows per `generate` call."""

  params: Any
  cfg: ModelConfig
  tokenizer: Any
  template: str = "plain"
  mesh: Any = None
  batch_size: int = 256

  def prompt_ids(self, problems: Sequence[Problem]) -> list[list[int]]:
    return [self.tokenizer.encode(format_prompt(p.prompt, self.template)) for p in problems]

  @property
  def think_end_id(self) -> int:
    return self.tokenizer.token_id(THINK_CLOSE)

  def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, rng: jax.Array,
               min_prompts: int = 0):
    """`reasoner.sampling.sample_rollouts` in calls of at most `batch_size` rows, each call with
    the same number of prompts (at least `min_prompts`), so calls with varying numbers of prompts
    reuse one compiled program; returns a list of (completion ids, injected mask, raw log-probs)
    per row, rows prompt-major."""
    ro = sample_rollouts(self.params, self.cfg, self.tokenizer, prompts, sampling, rng,
                         mesh=self.mesh, batch_rows=self.batch_size, min_prompts=min_prompts)
    return list(zip(ro.completion_ids, ro.injected, ro.logprobs))

  def sample(self, problems: Sequence[Problem], sampling: SamplingConfig, rng: jax.Array) -> Samples:
    """`sampling.n` completions of each problem's prompt."""
    n = sampling.n
    rows = self.generate(self.prompt_ids(problems), sampling, rng)
    ids = [[rows[i * n + j][0] for j in range(n)] for i in range(len(problems))]
    texts = [[self.tokenizer.decode(c) for c in r] for r in ids]
    lengths = np.array([[len(c) for c in r] for r in ids], np.int32).reshape(len(problems), n)
    conf = []
    for _, inj, lp in rows:
      keep = ~inj
      conf.append(float(lp[keep].mean()) if keep.any() else 0.0)
    return Samples(ids, texts, lengths, np.asarray(conf, np.float32).reshape(len(problems), n))


def period_token_ids(tokenizer) -> tuple[int, ...]:
  """Ids of the tokens whose text contains '.': the tokens that can end a reasoning step."""
  key = id(tokenizer)
  if key not in _PERIODS:
    ids = []
    for i in range(tokenizer.vocab_size):
      try:
        piece = tokenizer.decode([i])
      except Exception:  # ids without a piece (e.g. unused slots of a padded vocab)
        continue
      if "." in piece:
        ids.append(i)
    _PERIODS[key] = (tokenizer, tuple(ids))
  return _PERIODS[key][1]


_PERIODS: dict = {}  # id(tokenizer) -> (tokenizer kept alive so the id stays unique, ids)
