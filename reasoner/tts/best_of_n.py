"""Best-of-N: sample N completions per problem, score each with a verifier, keep the best.

Verifiers (each gives scores [P, N], higher = better):
  oracle      the task's own checker (`is_correct`): 1 if correct. Best-of-N with it is
              pass@N, an upper bound no real reranker reaches.
  prm         a process reward model's score of the last step (or min / product of the steps).
  confidence  the policy's mean token log-prob (no extra model).
With prm and confidence, samples without an extractable answer rank below all others.
The default is confidence: an oracle pick uses the reference answer, so its "accuracy" is pass@N
(report it as `oracle pass@N`, never as a strategy's accuracy).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.rewards import is_correct
from reasoner.verify.answers import extract_answer
from reasoner.sampling import SamplingConfig
from reasoner.tts.policy import Policy, Samples

VERIFIERS = ("oracle", "prm", "confidence")
NO_ANSWER_SCORE = -1e9  # prm / confidence score of a sample with no extractable answer


def correctness(problems: Sequence[Problem], samples: Samples) -> np.ndarray:
  """[P, n] bool: whether each sample solves its problem."""
  return np.array([[is_correct(p, t) for t in row] for p, row in zip(problems, samples.texts)],
                  bool).reshape(len(problems), samples.n)


def verifier_scores(verifier: str, problems: Sequence[Problem], samples: Samples,
                    prm=None, aggregate: str = "last") -> np.ndarray:
  """[P, n] float scores of every sample under `verifier` (see the module docstring)."""
  if verifier not in VERIFIERS:
    raise ValueError(f"unknown verifier {verifier!r}; expected one of {VERIFIERS}")
  if verifier == "oracle":
    return correctness(problems, samples).astype(np.float32)
  if verifier == "confidence":
    scores = np.asarray(samples.mean_logprob, np.float32)
  else:
    if prm is None:
      raise ValueError("verifier 'prm' needs a trained PRM (pass --prm_dir, or --train_prm)")
    flat_p = [p for p in problems for _ in range(samples.n)]
    flat_t = [t for row in samples.texts for t in row]
    scores = prm.score(flat_p, flat_t, aggregate).reshape(len(problems), samples.n)
  # A sample without an answer cannot be the pick while one with an answer exists.
  has_answer = np.array([[extract_answer(t) is not None for t in row] for row in samples.texts],
                        bool).reshape(scores.shape)
  return np.where(has_answer, scores, NO_ANSWER_SCORE).astype(np.float32)


def select_best(scores: np.ndarray) -> np.ndarray:
  """[P, n] scores -> [P] index of the best sample of each problem (ties: the first)."""
  scores = np.asarray(scores)
  if scores.ndim != 2 or scores.shape[1] == 0:
    raise ValueError(f"scores must be [problems, n >= 1], got shape {scores.shape}")
  return np.argmax(scores, axis=1)


def best_of_n_metrics(correct: np.ndarray, scores: np.ndarray) -> dict:
  """Accuracy of the best-scored sample, with pass@1 and pass@n of the same samples.

  correct, scores: [P, n]."""
  correct = np.asarray(correct, bool)
  pick = select_best(scores)
  chosen = correct[np.arange(len(correct)), pick]
  return {"accuracy": float(chosen.mean()), "pass@1": float(correct.mean()),
          f"pass@{correct.shape[1]}": float(correct.any(axis=1).mean()), "chosen": pick.tolist()}


def best_of_n(policy: Policy, problems: Sequence[Problem], n: int, sampling: SamplingConfig,
              rng: jax.Array, *, verifier: str = "confidence", prm=None, aggregate: str = "last",
              samples: Optional[Samples] = None) -> dict:
  """Samples n completions per problem (or uses `samples`) and keeps the one `verifier` ranks
  best. Returns {'accuracy', 'pass@1', 'pass@n', 'chosen', 'completions' (the kept ones)}."""
  if samples is None:
    samples = policy.sample(problems, sampling.replace(n=n), rng)
  scores = verifier_scores(verifier, problems, samples, prm, aggregate)
  out = best_of_n_metrics(correctness(problems, samples), scores)
  out["completions"] = [row[i] for row, i in zip(samples.texts, out["chosen"])]
  out["verifier"] = verifier
  return out
