"""Held-out evaluation: greedy accuracy, pass@1 / maj@k / pass@k from k samples, format rate, length."""

from __future__ import annotations

import collections
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.data.tasks import TASKS, get_task
from reasoner.rewards.format import format_reward
from reasoner.rewards.verify import extract_answer, math_accuracy, normalize_answer
from reasoner.sampling import SamplingConfig, generate


def check_completion(problem: Problem, completion: str) -> bool:
  """True iff `completion` solves `problem` (the task's own checker, else the math verifier)."""
  if problem.task in TASKS:
    return bool(get_task(problem.task).check(problem, completion))
  return math_accuracy(completion, problem.answer) > 0


def majority_correct(problem: Problem, completions: Sequence[str],
                     check: Callable[[Problem, str], bool] = check_completion) -> bool:
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


def sample_completions(params, model_cfg, tokenizer, prompts_ids, sampling: SamplingConfig, rng,
                       mesh=None, batch_size: int = 256):
  """Generates in chunks of `batch_size` rows; returns (texts [P*n], lengths [P*n])."""
  texts, lengths = [], []
  per_chunk = max(1, batch_size // sampling.n)
  for i in range(0, len(prompts_ids), per_chunk):
    out = generate(params, model_cfg, prompts_ids[i:i + per_chunk], sampling,
                   jax.random.fold_in(rng, i), pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                   mesh=mesh)
    for row, n in zip(out.tokens, out.lengths):
      texts.append(tokenizer.decode(row[:n].tolist()))
    lengths.extend(out.lengths.tolist())
  return texts, np.asarray(lengths)


def evaluate(params, model_cfg, tokenizer, problems: Sequence[Problem], prompts_ids, *, k: int,
             temperature: float, max_new_tokens: int, rng, mesh=None, batch_size: int = 256,
             stop_ids: Sequence[int] = ()) -> dict:
  """Metrics on held-out `problems` (prompts_ids: their encoded prompts)."""
  greedy_cfg = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, n=1,
                              stop_token_ids=tuple(stop_ids))
  greedy, _ = sample_completions(params, model_cfg, tokenizer, prompts_ids, greedy_cfg, rng, mesh,
                                 batch_size)
  samp_cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=k,
                            stop_token_ids=tuple(stop_ids))
  sampled, lengths = sample_completions(params, model_cfg, tokenizer, prompts_ids, samp_cfg,
                                        jax.random.fold_in(rng, 1), mesh, batch_size)
  correct = np.array([check_completion(p, c) for p, c in
                      zip([p for p in problems for _ in range(k)], sampled)]).reshape(len(problems), k)
  maj = np.mean([majority_correct(p, sampled[i * k:(i + 1) * k]) for i, p in enumerate(problems)])
  return {
      "n_problems": len(problems),
      "greedy_acc": float(np.mean([check_completion(p, c) for p, c in zip(problems, greedy)])),
      "pass@1": float(correct.mean()),
      f"maj@{k}": float(maj),
      f"pass@{k}": float(correct.any(axis=1).mean()),
      "format_rate": float(np.mean([format_reward(c) for c in sampled])),
      "mean_length": float(lengths.mean()),
      "examples": [{"prompt": problems[i].prompt, "completion": greedy[i]} for i in range(min(3, len(problems)))],
  }
