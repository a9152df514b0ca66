"""Held-out evaluation: greedy accuracy, pass@1 / maj@k / pass@k from k samples, format rate, length."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.rewards import format_reward, is_correct
from reasoner.sampling import SamplingConfig
from reasoner.sampling.rollouts import sample_rollouts
from reasoner.pipeline.study import pass_at_k
from reasoner.tts.majority import majority_correct


def evaluate(params, model_cfg, tokenizer, problems: Sequence[Problem], prompts_ids, *, k: int,
             temperature: float, max_new_tokens: int, rng, mesh=None, batch_size: int = 256,
             stop_ids: Sequence[int] = (), greedy: bool = True) -> dict:
  """Metrics on held-out `problems` (prompts_ids: their encoded prompts); `greedy=False` skips
  the greedy pass (no greedy_acc or examples; the sampled metrics are unchanged)."""
  if greedy:
    greedy_cfg = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, n=1,
                                stop_token_ids=tuple(stop_ids))
    greedy_texts = sample_rollouts(params, model_cfg, tokenizer, prompts_ids, greedy_cfg, rng,
                                   mesh=mesh, batch_rows=batch_size).texts
  samp_cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=k,
                            stop_token_ids=tuple(stop_ids))
  ro = sample_rollouts(params, model_cfg, tokenizer, prompts_ids, samp_cfg,
                       jax.random.fold_in(rng, 1), mesh=mesh, batch_rows=batch_size)
  sampled, lengths = ro.texts, ro.lengths
  correct = np.array([is_correct(p, c) for p, c in
                      zip([p for p in problems for _ in range(k)], sampled)]).reshape(len(problems), k)
  maj = np.mean([majority_correct(p, sampled[i * k:(i + 1) * k]) for i, p in enumerate(problems)])
  metrics = {
      "n_problems": len(problems),
      "pass@1": float(correct.mean()),
      f"maj@{k}": float(maj),
      # The unbiased estimator with n = k samples: the share of problems with a correct one.
      f"pass@{k}": float(np.mean([pass_at_k(k, int(c), k) for c in correct.sum(axis=1)])),
      "format_rate": float(np.mean([format_reward(c) for c in sampled])),
      "mean_length": float(lengths.mean()),
  }
  if greedy:
    metrics["greedy_acc"] = float(np.mean([is_correct(p, c)
                                           for p, c in zip(problems, greedy_texts)]))
    metrics["examples"] = [{"prompt": problems[i].prompt, "completion": greedy_texts[i]}
                           for i in range(min(3, len(problems)))]
  return metrics


def prefixed(metrics: dict, prefix: str) -> dict:
  """`metrics` of a second evaluation set under `prefix` (its examples left out)."""
  return {f"{prefix}{k}": v for k, v in metrics.items() if k != "examples"}
