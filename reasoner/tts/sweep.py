"""Accuracy against the number of samples N and against the thinking budget, and their plot.

The N sweep samples max(ns) completions per problem once and evaluates every N on the first N
samples of each problem (nested subsets, so curves are comparable across N).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax

from reasoner.data.problem import Problem
from reasoner.sampling import SamplingConfig
from reasoner.tts.best_of_n import best_of_n_metrics, correctness, verifier_scores
from reasoner.tts.budget import budget_forcing
from reasoner.tts.majority import majority_accuracy
from reasoner.tts.policy import Policy


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
