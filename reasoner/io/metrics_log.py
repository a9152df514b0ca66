"""Metrics sinks at the edge of the loops: JSONL, TensorBoard and a progress line with ETA."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping, Optional

import numpy as np

from etils import epath

from reasoner.io.files import exists, is_local, join, makedirs, write_text
from reasoner.io.log import is_writer


def _scalar(v) -> Optional[float]:
  try:
    arr = np.asarray(v)
  except Exception:
    return None
  if arr.size != 1 or not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
    return None
  return float(arr.reshape(()))


class MetricsWriter:
  """Appends `{"stage", "step", ...}` lines to DIR/metrics.jsonl and scalars to TensorBoard.
  On several processes only process 0 writes (`reasoner.io.log`); every process can read."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = join(workdir, "metrics.jsonl")
    self._writer = is_writer()
    if self._writer:
      makedirs(workdir)
    self._tb = None
    # TensorBoard event files are written where the run is local; the JSONL goes everywhere.
    if tensorboard and self._writer and is_local(workdir):
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard output is optional; JSONL is always written
        self._tb = None

  def write(self, stage: str, step: int, metrics: Mapping[str, object]) -> dict:
    row = {"stage": stage, "step": int(step), "time": time.time()}
    for k, v in metrics.items():
      s = _scalar(v)
      if s is not None:
        row[k] = s
    if self._writer:
      line = json.dumps(row) + "\n"
      if is_local(self.path):
        with open(self.path, "a") as f:
          f.write(line)
      else:  # object stores cannot append: the file is rewritten whole (atomically)
        old = epath.Path(self.path).read_text() if exists(self.path) else ""
        write_text(self.path, old + line)
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("stage", "step", "time"):
          self._tb.add_scalar(f"{stage}/{k}", v, step)
    return row

  def read(self, stage: Optional[str] = None) -> list[dict]:
    if not exists(self.path):
      return []
    rows = [json.loads(line) for line in epath.Path(self.path).read_text().splitlines()
            if line.strip()]
    return [r for r in rows if stage is None or r["stage"] == stage]

  def close(self):
    if self._tb is not None:
      self._tb.close()


# The metrics a progress line shows first (when present), so it stays short and the same shape
# over hours; every metric still goes to metrics.jsonl and TensorBoard.
PROGRESS_KEYS = ("loss", "reward", "reward/r_out", "accuracy", "reward_accuracy", "response_length",
                 "grad_norm", "learning_rate", "tokens_per_s", "time/step_s", "mem/in_use_gib",
                 "logprob_gap/max", "skipped_steps")
PROGRESS_MAX = 10


def format_duration(seconds: float) -> str:
  """12.4s, 3m05s or 2h03m."""
  if seconds != seconds:  # NaN
    return "?"
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes}m{secs:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


def progress_items(metrics: Mapping[str, object], limit: int = PROGRESS_MAX) -> list:
  """(name, value) of the scalars to show: PROGRESS_KEYS first, then the rest by name."""
  scalars = {k: _scalar(v) for k, v in dict(metrics).items() if not k.startswith("_")}
  scalars = {k: v for k, v in scalars.items() if v is not None}
  ordered = [k for k in PROGRESS_KEYS if k in scalars] + sorted(k for k in scalars
                                                                  if k not in PROGRESS_KEYS)
  return [(k, scalars[k]) for k in ordered[:limit]]


class Progress:
  """Prints `[stage] step 12/60 (20%) k=v ... | 3.1s elapsed, ETA 12.4s` every `every` steps:
  at most PROGRESS_MAX metrics (PROGRESS_KEYS first), durations as 12.4s / 3m05s / 2h03m."""

  def __init__(self, stage: str, total: int, start: int = 0, every: int = 10, stream=None):
    self.stage, self.total, self.start, self.every = stage, total, start, max(1, every)
    self.t0 = time.time()
    self.stream = stream or sys.stdout

  def update(self, step: int, metrics: Mapping[str, object] = (), force: bool = False):
    done = step - self.start
    if not force and step % self.every and step != self.total:
      return
    elapsed = time.time() - self.t0
    eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
    shown = " ".join(f"{k}={v:.4g}" for k, v in progress_items(metrics))
    pct = 100.0 * step / max(1, self.total)
    if not is_writer():
      return
    print(f"[{self.stage}] step {step}/{self.total} ({pct:.0f}%) {shown} | "
          f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)}", file=self.stream,
          flush=True)
