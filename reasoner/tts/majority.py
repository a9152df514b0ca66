"""Self-consistency: sample n completions per problem and answer with the most common answer."""

from __future__ import annotations

import collections
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.rewards import extract_answer, is_correct, normalize_answer
from reasoner.sampling import SamplingConfig
from reasoner.tts.policy import Policy, Samples


def majority_correct(problem: Problem, completions: Sequence[str],
                     check: Callable[[Problem, str], bool] = is_correct) -> bool:
  """Self-consistency: the most common extracted answer (ties -> first seen) is correct."""
  votes = collections.Counter()
  first = {}
  for c in completions:
    ans = extract_answer(c)
    if ans is None:
      continue
    key = normalize_answer(ans)
    votes[key] += 1
    first.setdefault(key, c)
  if not votes:
    return False
  best = max(votes, key=lambda k: (votes[k], -list(first).index(k)))
  return bool(check(problem, first[best]))


def majority_accuracy(problems: Sequence[Problem], samples: Samples) -> float:
  """Fraction of problems whose majority answer (ties -> first seen) is correct."""
  return float(np.mean([majority_correct(p, row) for p, row in zip(problems, samples.texts)]))


def majority_vote(policy: Policy, problems: Sequence[Problem], n: int, sampling: SamplingConfig,
                  rng: jax.Array, samples: Optional[Samples] = None) -> dict:
  """maj@n accuracy of n samples per problem (or of `samples`)."""
  if samples is None:
    samples = policy.sample(problems, sampling.replace(n=n), rng)
  return {"accuracy": majority_accuracy(problems, samples), "n": samples.n}
