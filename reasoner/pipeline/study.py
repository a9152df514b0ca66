"""Several seeds of the pipeline, summarised: mean and 95% confidence interval per model and
metric, so a difference between two models can be told from seed noise.

The interval is Student's t over the per-seed values (n seeds, n - 1 degrees of freedom):
mean +- t_{0.975, n-1} * sd / sqrt(n). Within one seed, pass@k uses the unbiased estimator of
Chen et al. (2021), 1 - C(n - c, k) / C(n, k) for c correct of n samples, averaged over problems.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from reasoner.pipeline.report import STAGE_MODELS

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (beyond: the
# Cornish-Fisher expansion around the normal quantile, within 1e-3 of the exact value).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.960

# Metrics a study reports (those present in the runs' reports), and the order of the models.
METRICS = ("pass@1", "greedy_acc", "maj@k", "pass@k", "format_rate", "mean_length", "pref_acc",
           "reward_acc", "ood/pass@1", "ood/greedy_acc")  # ood/: config.eval.source's set
MODELS = tuple(name for name, _ in STAGE_MODELS)
_LABELS = dict(STAGE_MODELS)
# Paired differences reported with their own interval (per seed, model minus baseline): M2
# against M1 and against each control, so the RL gain is read against what the controls reach.
GAINS = (("grpo", "sft"), ("grpo", "sft@best_t"), ("grpo", "replay_control"), ("distill", "grpo"))
GAIN_METRICS = ("pass@1", "greedy_acc", "maj@k")


def t_critical(df: int) -> float:
  """t_{0.975, df}: the half-width factor of a two-sided 95% interval."""
  if df < 1:
    raise ValueError(f"a confidence interval needs at least 2 values (df >= 1), got df={df}")
  if df <= len(_T975):
    return _T975[df - 1]
  z = _Z975
  return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
  """(mean, half-width of the 95% t interval); half-width NaN for a single value."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    raise ValueError("mean_ci of no values")
  if x.size == 1:
    return float(x[0]), float("nan")
  return float(x.mean()), float(t_critical(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k for one problem with c correct of n samples (Chen et al. 2021)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _metric_value(metrics: Mapping, name: str):
  if name in ("maj@k", "pass@k"):  # the runs name them with their k (pass@1 is its own row)
    prefix = name[:-1]
    ks = [int(key[len(prefix):]) for key in metrics
          if key.startswith(prefix) and key[len(prefix):].isdigit() and int(key[len(prefix):]) > 1]
    return metrics[f"{prefix}{max(ks)}"] if ks else None
  return metrics.get(name)


def gains(reports: Sequence[Mapping]) -> dict:
  """{"A-B": {metric: {"mean", "ci95", "values"}}}: per-seed differences of model A minus model B
  (GAINS) over the runs that evaluated both; a paired interval, tighter than comparing the two
  models' own intervals when the seeds move them together."""
  out = {}
  for a, b in GAINS:
    pairs = [(r["models"][a], r["models"][b]) for r in reports
             if a in r.get("models", {}) and b in r.get("models", {})]
    row = {}
    for metric in GAIN_METRICS:
      diffs = [float(_metric_value(x, metric)) - float(_metric_value(y, metric)) for x, y in pairs
               if _metric_value(x, metric) is not None and _metric_value(y, metric) is not None]
      if diffs:
        mean, ci = mean_ci(diffs)
        row[metric] = {"mean": mean, "ci95": ci, "values": diffs}
    if row:
      out[f"{a}-{b}"] = row
  return out


def aggregate(reports: Sequence[Mapping]) -> dict:
  """{model: {metric: {"mean", "ci95", "values"}}} over the runs' report.json["models"]."""
  out = {}
  for model in MODELS:
    rows = [r["models"][model] for r in reports if model in r.get("models", {})]
    if not rows:
      continue
    out[model] = {}
    for metric in METRICS:
      values = [_metric_value(row, metric) for row in rows]
      values = [float(v) for v in values if v is not None and v == v]
      if values:
        mean, ci = mean_ci(values)
        out[model][metric] = {"mean": mean, "ci95": ci, "values": values}
  return out


def format_study(summary: Mapping, n_seeds: int) -> str:
  """A table of mean +- 95% half-width (percentages; mean_length in tokens)."""
  metrics = [m for m in METRICS if any(m in v for v in summary.values())]
  head = f"{'model':<14}" + "".join(f"{m:>18}" for m in metrics)
  lines = [f"{n_seeds} seeds, mean +- 95% CI (Student's t)", head, "-" * len(head)]
  for model, values in summary.items():
    cells = []
    for m in metrics:
      if m not in values:
        cells.append(f"{'-':>18}")
        continue
      scale, unit = (1.0, "") if m == "mean_length" else (100.0, "%")
      mean, ci = values[m]["mean"] * scale, values[m]["ci95"] * scale
      ci_text = "n/a" if ci != ci else f"{ci:.1f}"
      cells.append(f"{f'{mean:.1f}{unit} +- {ci_text}':>18}")
    lines.append(f"{_LABELS.get(model, model):<14}" + "".join(cells))
  return "\n".join(lines)


def verdict(mean: float, ci: float) -> str:
  """'gain', 'loss' or 'within noise' for a difference with a 95% half-width."""
  if ci != ci:
    return "one seed: no interval"
  if mean - ci > 0:
    return "gain"
  if mean + ci < 0:
    return "loss"
  return "within noise"


def format_gains(gain_summary: Mapping) -> str:
  """Lines 'M2 GRPO - M1 SFT   pass@1 +x.x +- y.y (gain)   ...' in percentage points."""
  lines = ["paired differences per seed, percentage points, mean +- 95% CI"]
  label = lambda key: " - ".join(_LABELS.get(m, m) for m in key.split("-", 1))
  width = max((len(label(key)) for key in gain_summary), default=0) + 3
  for key, row in gain_summary.items():
    cells = []
    for metric in GAIN_METRICS:
      if metric in row:
        mean, ci = 100 * row[metric]["mean"], 100 * row[metric]["ci95"]
        ci_text = "n/a" if ci != ci else f"{ci:.1f}"
        cells.append(f"{metric} {mean:+.1f} +- {ci_text} ({verdict(mean, ci)})")
    lines.append(f"{label(key):<{width}}" + "   ".join(cells))
  return "\n".join(lines)
