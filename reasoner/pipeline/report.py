"""The per-stage results table (report.json, a printed table) and training curves as PNG."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from reasoner.io import write_bytes, write_json

# Rows in table order; the controls (config.controls) sit between M1 and M2, which they are
# read against: M1 at its best validation temperature, and M1 + GRPO's SFT replay updates alone.
STAGE_MODELS = (("m0", "M0 base"), ("sft", "M1 SFT"), ("sft@best_t", "M1 @ best T"),
                ("replay_control", "M1 + replay"), ("grpo", "M2 GRPO"),
                ("distill", "M3 distilled"), ("dpo", "M4 DPO"))
COLUMNS = ("pass@1", "maj@k", "pass@k", "greedy_acc", "format_rate", "mean_length", "pref_acc",
           "reward_acc")
# The second evaluation set's (config.eval.source) columns, shown when a model has them.
SOURCE_COLUMNS = ("ood/pass@1", "ood/greedy_acc")
# The GRPO stage's training curves (its metrics rows: the mean reward, the share of well-formatted
# rollouts, their accuracy, their mean length in tokens), plotted and summarised in the report.
GRPO_CURVES = ("reward", "reward/format", "reward/r_out", "response_length")
CURVE_LABELS = {"reward/format": "format rate", "reward/r_out": "accuracy",
                "response_length": "response length"}


def _value(metrics: Mapping, col: str):
  if col in ("maj@k", "pass@k"):
    key = next((k for k in metrics if k.startswith(col[:-1]) and k != "pass@1"), None)
    return metrics.get(key) if key else None
  return metrics.get(col)


def format_table(report: Mapping[str, Mapping]) -> str:
  """A fixed-width table, one row per evaluated model, in pipeline order (with the columns of
  config.eval.source's set when a model has them, and a line naming that source)."""
  rows = [(label, report[name]) for name, label in STAGE_MODELS if name in report]
  columns = COLUMNS + tuple(c for c in SOURCE_COLUMNS if any(c in m for _, m in rows))
  header = f"{'model':<14}" + "".join(f"{c.replace('_acc', ''):>12}" if c.startswith("ood/")
                                      else f"{c:>12}" for c in columns)
  lines = [header, "-" * len(header)]
  for label, m in rows:
    cells = []
    for c in columns:
      v = _value(m, c)
      if v is None:
        cells.append(f"{'-':>12}")
      elif c == "mean_length":
        cells.append(f"{v:>12.1f}")
      else:
        cells.append(f"{100 * v:>11.1f}%")
    lines.append(f"{label:<14}" + "".join(cells))
  sources = sorted({m["eval_source"] for _, m in rows if m.get("eval_source")})
  if sources:
    lines.append(f"ood/: config.eval.source = {', '.join(sources)}")
  return "\n".join(lines)


def write_report(path: str, report: Mapping, extra: Mapping = ()) -> None:
  write_json(path, {"models": report, **dict(extra)}, default=float)


def plot_curves(rows: Sequence[Mapping], keys: Sequence[str], path: str, title: str) -> bool:
  """Plots metric `keys` against step from metrics rows; returns False if nothing to plot."""
  series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}
  series = {k: v for k, v in series.items() if v}
  if not series:
    return False
  # A bare Figure (no pyplot): the caller's matplotlib backend, e.g. a notebook's inline one,
  # is left alone.
  from matplotlib.figure import Figure
  fig = Figure(figsize=(4.5 * len(series), 3.2))
  axes = fig.subplots(1, len(series), squeeze=False)
  for ax, (k, pts) in zip(axes[0], series.items()):
    xs, ys = zip(*pts)
    ax.plot(xs, ys)
    ax.set_xlabel("step")
    ax.set_title(CURVE_LABELS.get(k, k))
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, dpi=90, format="png")
  write_bytes(path, buf.getvalue())
  return True


def curve_summary(rows: Sequence[Mapping], keys: Sequence[str]) -> dict:
  """{key: {"first", "last", "first_step", "last_step"}} of each of `keys` over metrics `rows`
  (the first and last rows that log it); {} when none does."""
  out = {}
  for k in keys:
    pts = [(r["step"], float(r[k])) for r in rows if k in r]
    if pts:
      out[k] = {"first": pts[0][1], "last": pts[-1][1], "first_step": pts[0][0],
                "last_step": pts[-1][0]}
  return out


def format_curve_summary(stage: str, summary: Mapping[str, Mapping]) -> str:
  """One line: each curve's first -> last logged value, e.g. "grpo (steps 2 -> 60): reward
  0.01 -> 0.35, format rate 0.0% -> 41.2%, ..." (rates and accuracy in percent)."""
  steps = next(iter(summary.values()))
  parts = []
  for k, v in summary.items():
    percent = k in ("reward/format", "reward/r_out")
    show = lambda x: f"{100 * x:.1f}%" if percent else (f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}")
    parts.append(f"{CURVE_LABELS.get(k, k)} {show(v['first'])} -> {show(v['last'])}")
  return f"{stage} (steps {steps['first_step']} -> {steps['last_step']}): " + ", ".join(parts)
