"""Accuracy against the number of samples N and against the thinking budget, and their plot;
and strategies compared at equal generated tokens (`compare_strategies`).

The N sweep samples max(ns) completions per problem once and evaluates every N on the first N
samples of each problem (nested subsets, so curves are comparable across N).

`compare_strategies` runs the PRM-guided search, counts the tokens it generated per problem (every
expansion, kept or not: `reasoner.tts.search`), then samples a pool of completions per problem
until the sampling strategies can spend as much, and picks the N whose mean generated tokens per
problem (the sum of the first N completions' lengths) is closest to the search's. Majority vote,
best-of-N (PRM- and confidence-scored) and one sample are scored on the first N (or 1) samples of
the same pool; each gets its accuracy over the problems with a 95% Wilson interval and its mean
generated tokens per problem. Oracle figures (pass@N of the pool, any correct final beam of the
search) use the reference answers: they are reported apart, as upper bounds, never as a
strategy's accuracy.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.sampling import SamplingConfig
from reasoner.tts.best_of_n import best_of_n_metrics, correctness, select_best, verifier_scores
from reasoner.tts.budget import budget_forcing
from reasoner.tts.majority import majority_accuracy, majority_correct
from reasoner.tts.policy import Policy, Samples
from reasoner.tts.search import prm_search

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """The Wilson score interval of a binomial proportion (`successes` of `n`; 95% by default)."""
  if n < 1 or not 0 <= successes <= n:
    raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
  p, z2 = successes / n, z * z
  denom = 1 + z2 / n
  centre = (p + z2 / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a, b, z: float = Z95) -> dict:
  """Accuracy of `a` minus that of `b` on the same problems ([P] bool each), with the Wald
  interval of a paired difference of proportions: var = (p10 + p01 - (p10 - p01)^2) / P, p10 the
  share of problems only `a` solves, p01 only `b`."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"need two [P] arrays of the same problems, got {a.shape} and {b.shape}")
  p10, p01 = float(np.mean(a & ~b)), float(np.mean(~a & b))
  diff = p10 - p01
  half = z * math.sqrt(max(p10 + p01 - diff * diff, 0.0) / len(a))
  return {"diff": diff, "ci95": [max(-1.0, diff - half), min(1.0, diff + half)]}


def powers_of_two(limit: int) -> list[int]:
  """1, 2, 4, ... up to and including `limit` (which is added when not a power of two)."""
  out, n = [], 1
  while n < limit:
    out.append(n)
    n *= 2
  return out + [limit]


def accuracy_vs_n(policy: Policy, problems: Sequence[Problem], ns: Sequence[int],
                  sampling: SamplingConfig, rng: jax.Array, prm=None) -> dict:
  """{'n': ns, 'pass@1', 'oracle_best_of_n' (= pass@N), 'majority', 'confidence_best_of_n'
  [, 'prm_best_of_n']: lists aligned with ns}."""
  ns = sorted({int(n) for n in ns})
  if not ns or ns[0] < 1:
    raise ValueError(f"ns must be positive sample counts, got {ns}")
  samples = policy.sample(problems, sampling.replace(n=ns[-1]), rng)
  correct = correctness(problems, samples)
  verifiers = ["oracle", "confidence"] + (["prm"] if prm is not None else [])
  scores = {v: verifier_scores(v, problems, samples, prm) for v in verifiers}
  out = {"n": ns, "pass@1": [], "majority": [], **{f"{v}_best_of_n": [] for v in verifiers}}
  for n in ns:
    out["pass@1"].append(float(correct[:, :n].mean()))
    out["majority"].append(majority_accuracy(problems, samples.first(n)))
    for v in verifiers:
      out[f"{v}_best_of_n"].append(best_of_n_metrics(correct[:, :n], scores[v][:, :n])["accuracy"])
  return out


def accuracy_vs_budget(policy: Policy, problems: Sequence[Problem], budgets: Sequence[int],
                       sampling: SamplingConfig, rng: jax.Array, modes: Sequence[str] = ("cap", "force"),
                       answer_tokens: int = 16, wait_text: Optional[str] = None) -> dict:
  """{'budget': budgets, mode: [accuracy per budget], mode + '_thinking_tokens': [...]}."""
  budgets = sorted({int(b) for b in budgets})
  out = {"budget": budgets}
  kw = {} if wait_text is None else {"wait_text": wait_text}
  for mode in modes:
    runs = [budget_forcing(policy, problems, b, sampling, jax.random.fold_in(rng, b), mode=mode,
                           answer_tokens=answer_tokens, **kw) for b in budgets]
    out[mode] = [r["accuracy"] for r in runs]
    out[f"{mode}_thinking_tokens"] = [r["mean_thinking_tokens"] for r in runs]
  return out


_N_LABELS = {"oracle_best_of_n": "best-of-N, oracle verifier (pass@N)",
             "prm_best_of_n": "best-of-N, PRM", "confidence_best_of_n": "best-of-N, confidence",
             "majority": "majority vote", "pass@1": "pass@1"}
_BUDGET_LABELS = {"cap": "cap (forced </think>)", "force": "exact budget (Wait extension)"}


def plot_scaling(n_curves: Optional[dict], budget_curves: Optional[dict], path: str,
                 title: str = "") -> None:
  """Writes a PNG: accuracy vs N (log2 axis) and accuracy vs thinking budget, side by side."""
  # A bare Figure (no pyplot): the caller's matplotlib backend is left alone.
  from matplotlib.figure import Figure

  panels = [c for c in (n_curves, budget_curves) if c]
  if not panels:
    raise ValueError("plot_scaling needs at least one of n_curves / budget_curves")
  fig = Figure(figsize=(6 * len(panels), 4.2))
  axes = fig.subplots(1, len(panels), squeeze=False)
  axes = list(axes[0])
  if n_curves:
    ax = axes.pop(0)
    for key, label in _N_LABELS.items():
      if key in n_curves:
        ax.plot(n_curves["n"], n_curves[key], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(n_curves["n"], [str(n) for n in n_curves["n"]])
    ax.set_xlabel("N (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy vs N")
  if budget_curves:
    ax = axes.pop(0)
    for key, label in _BUDGET_LABELS.items():
      if key in budget_curves:
        ax.plot(budget_curves["budget"], budget_curves[key], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budget_curves["budget"], [str(b) for b in budget_curves["budget"]])
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy vs thinking budget")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  fig.savefig(tmp, dpi=120, format="png")
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- equal-token comparison


def concat_samples(a: Samples, b: Samples) -> Samples:
  """The samples of `a` then those of `b`, per problem."""
  return Samples([x + y for x, y in zip(a.ids, b.ids)], [x + y for x, y in zip(a.texts, b.texts)],
                 np.concatenate([a.lengths, b.lengths], 1),
                 np.concatenate([a.mean_logprob, b.mean_logprob], 1))


def tokens_of_first(samples: Samples, n: int) -> float:
  """Mean generated tokens per problem of the first n samples of every problem."""
  return float(samples.lengths[:, :n].sum(axis=1).mean())


def sample_to_budget(policy: Policy, problems: Sequence[Problem], tokens_per_problem: float,
                     sampling: SamplingConfig, rng: jax.Array, max_n: int = 256) -> Samples:
  """Completions of every problem, drawn in chunks (chunk c keyed fold_in(rng, c)) until their
  mean generated tokens per problem reach `tokens_per_problem`, or max_n per problem."""
  if max_n < 1:
    raise ValueError(f"max_n must be >= 1, got {max_n}")
  samples, chunk = None, 0
  n = max(1, min(max_n, math.ceil(tokens_per_problem / sampling.max_new_tokens)))
  while True:
    new = policy.sample(problems, sampling.replace(n=n), jax.random.fold_in(rng, chunk))
    samples = new if samples is None else concat_samples(samples, new)
    chunk += 1
    spent = tokens_of_first(samples, samples.n)
    if spent >= tokens_per_problem or samples.n >= max_n:
      return samples
    per_sample = max(float(samples.lengths.mean()), 1.0)
    n = max(1, min(max_n - samples.n, math.ceil((tokens_per_problem - spent) / per_sample)))


def matched_n(samples: Samples, tokens_per_problem: float) -> int:
  """The N whose first-N mean generated tokens per problem is closest to `tokens_per_problem`
  (ties: the smaller N)."""
  gaps = [abs(tokens_of_first(samples, n) - tokens_per_problem) for n in range(1, samples.n + 1)]
  return int(np.argmin(gaps)) + 1


def _entry(correct, tokens, **extra) -> dict:
  """Accuracy with its 95% Wilson interval and mean tokens, from per-problem arrays."""
  correct = np.asarray(correct, bool)
  k, n = int(correct.sum()), len(correct)
  lo, hi = wilson_interval(k, n)
  return {"accuracy": k / n, "ci95": [lo, hi], "solved": k,
          "tokens_per_problem": float(np.mean(tokens)), **extra}


def compare_strategies(policy: Policy, prm, problems: Sequence[Problem], sampling: SamplingConfig,
                       rng: jax.Array, *, beam_width: int = 4, expansions: int = 4,
                       max_steps: Optional[int] = None, step_tokens: int = 32,
                       aggregate: str = "last", max_n: int = 256) -> dict:
  """PRM search against majority vote, best-of-N (PRM, confidence) and one sample at the search's
  generated tokens per problem (module docstring). The search samples at sampling.temperature with
  sampling.max_new_tokens per beam.

  Returns {'n_problems', 'matched_n', 'search' (its settings), 'strategies': {name: {'accuracy',
  'ci95', 'solved', 'tokens_per_problem', 'n'?, 'minus_prm_search'?: {'diff', 'ci95'}}}, 'oracle': {'oracle_pass@N', 'oracle_beam_pass'}
  (upper bounds, same fields), 'curve': {'n', 'tokens_per_problem', 'majority', 'best_of_n_prm',
  'best_of_n_confidence'} over N = 1, 2, 4, ... up to the pool size}."""
  if prm is None:
    raise ValueError("comparing strategies needs a PRM (for the search and PRM-scored best-of-N)")
  settings = dict(beam_width=beam_width, expansions=expansions, max_steps=max_steps,
                  step_tokens=step_tokens, max_new_tokens=sampling.max_new_tokens,
                  temperature=sampling.temperature)
  search = prm_search(policy, prm, problems, jax.random.fold_in(rng, 0), **settings)
  search_tokens = np.asarray(search["generated_tokens"])
  budget = float(search_tokens.mean())
  pool = sample_to_budget(policy, problems, budget, sampling, jax.random.fold_in(rng, 1), max_n)
  n = matched_n(pool, budget)
  correct = correctness(problems, pool)
  scores = {v: verifier_scores(v, problems, pool, prm, aggregate) for v in ("prm", "confidence")}
  rows = np.arange(len(problems))

  def majority(k):
    return [majority_correct(p, r[:k]) for p, r in zip(problems, pool.texts)]

  def best(v, k):
    return correct[rows, select_best(scores[v][:, :k])]

  tokens = pool.lengths[:, :n].sum(axis=1)
  solved = {"prm_search": np.asarray(search["correct"], bool), "majority": majority(n),
            "best_of_n_prm": best("prm", n), "best_of_n_confidence": best("confidence", n),
            "single_sample": correct[:, 0]}
  strategies = {"prm_search": _entry(solved["prm_search"], search_tokens)}
  for key in ("majority", "best_of_n_prm", "best_of_n_confidence", "single_sample"):
    one = key == "single_sample"
    strategies[key] = _entry(solved[key], pool.lengths[:, 0] if one else tokens, n=1 if one else n,
                             minus_prm_search=paired_difference(solved[key], solved["prm_search"]))
  oracle = {f"oracle_pass@{n}": _entry(correct[:, :n].any(axis=1), tokens, n=n),
            "oracle_beam_pass": _entry([any(c) for c in search["beam_correct"]],
                                                search_tokens)}
  ns = sorted(set(powers_of_two(pool.n)) | {n})
  curve = {"n": ns, "tokens_per_problem": [tokens_of_first(pool, k) for k in ns],
           "majority": [float(np.mean(majority(k))) for k in ns],
           "best_of_n_prm": [float(best("prm", k).mean()) for k in ns],
           "best_of_n_confidence": [float(best("confidence", k).mean()) for k in ns]}
  return {"n_problems": len(problems), "matched_n": n, "pool_n": pool.n,
          "search": {**settings, "aggregate": aggregate}, "strategies": strategies,
          "oracle": oracle, "curve": curve}


_COMPARE_LABELS = {"prm_search": "PRM search", "majority": "majority vote",
                   "best_of_n_prm": "best-of-N, PRM", "best_of_n_confidence": "best-of-N, confidence",
                   "single_sample": "one sample"}


def format_comparison(result: dict) -> str:
  """The comparison as a fixed-width table: strategies, then the oracle upper bounds."""
  header = (f"{'strategy':<28}{'N':>5}{'tokens/problem':>16}{'accuracy':>10}{'95% CI':>16}"
            f"{'minus search [95% CI]':>28}")
  lines = [header, "-" * len(header)]

  def row(label, e):
    n = str(e.get("n", "-"))
    ci = f"[{100 * e['ci95'][0]:.1f}, {100 * e['ci95'][1]:.1f}]"
    d = e.get("minus_prm_search")
    vs = (f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
          if d else "-")
    lines.append(f"{label:<28}{n:>5}{e['tokens_per_problem']:>16.1f}"
                 f"{100 * e['accuracy']:>9.1f}%{ci:>16}{vs:>28}")

  for key, e in result["strategies"].items():
    row(_COMPARE_LABELS.get(key, key), e)
  lines.append("upper bounds (use the reference answers; not strategies):")
  for key, e in result["oracle"].items():
    row(key.replace("_", " ", 1) if key.startswith("oracle_pass") else "oracle any final beam", e)
  lines.append(f"{result['n_problems']} problems; N matched to the search's mean generated "
               f"tokens per problem; accuracies and differences in points.")
  return "\n".join(lines)
