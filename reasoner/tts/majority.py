"""Self-consistency: sample n completions per problem and answer with the most common answer."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.pipeline.evaluate import majority_correct
from reasoner.sampling import SamplingConfig
from reasoner.tts.policy import Policy, Samples


def majority_accuracy(problems: Sequence[Problem], samples: Samples) -> float:
  """Fraction of problems whose majority answer (ties -> first seen) is correct."""
  return float(np.mean([majority_correct(p, row) for p, row in zip(problems, samples.texts)]))


def majority_vote(policy: Policy, problems: Sequence[Problem], n: int, sampling: SamplingConfig,
                  rng: jax.Array, samples: Optional[Samples] = None) -> dict:
  """maj@n accuracy of n samples per problem (or of `samples`)."""
  if samples is None:
    samples = policy.sample(problems, sampling.replace(n=n), rng)
  return {"accuracy": majority_accuracy(problems, samples), "n": samples.n}
