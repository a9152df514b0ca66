"""What every stage needs: config, mesh, tokenizer, model shape, data, metrics sink, paths.

Names used throughout the stages: `config` is the pipeline ConfigDict (configs/pipeline.py),
`model_cfg` a ModelConfig, and a stage's own block of the config is named after the stage
(`config.grpo` read as `grpo_cfg`, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from reasoner import sharding
from reasoner.data.datasets import load_gsm8k, load_jsonl_problems
from reasoner.data.problem import Problem
from reasoner.data.tasks import SPLITS, mixture, split_of_key
from reasoner.io import join, makedirs
from reasoner.io.metrics_log import MetricsWriter
from reasoner.model.config import ModelConfig
from reasoner.sampling import SamplingConfig
from reasoner.sampling.rollouts import Rollouts, sample_rollouts
from reasoner.tokenizer import R1_ZERO_INSTRUCTION, format_prompt
from reasoner.tokenizer.base import Tokenizer


def stable_seed(*parts) -> int:
  """A 31-bit seed from any printable parts (stable across runs and Python versions)."""
  return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


@dataclasses.dataclass
class StageContext:
  """One stage's view of the run. `model_cfg` is the shape of the model the stage starts from
  (what `params` passed to its `run` are); a stage that makes a model of another shape (a smaller
  distillation student) builds its own context with `for_model`."""

  config: ConfigDict  # the pipeline config (configs/pipeline.py)
  workdir: str
  mesh: Optional[jax.sharding.Mesh]  # None: one device, no sharding
  model_cfg: ModelConfig
  tokenizer: Tokenizer
  writer: Optional[MetricsWriter]  # None: metrics are not written (notebooks, tools)

  def for_model(self, model_cfg: ModelConfig) -> "StageContext":
    """This context for a model of shape `model_cfg`."""
    return dataclasses.replace(self, model_cfg=model_cfg)

  @property
  def template(self) -> str:
    return self.config.tokenizer.template

  def stage_dir(self, stage: str) -> str:
    return makedirs(join(self.workdir, "stages", stage))

  def final_dir(self, stage: str) -> str:
    return join(self.workdir, "stages", stage, "final")

  @property
  def param_shardings(self):
    return sharding.param_shardings(self.model_cfg, self.mesh)

  # ---- text <-> tokens -------------------------------------------------------------------
  def prompt_text(self, question: str) -> str:
    """`question` in config.tokenizer.template; in R1-Zero mode (config.r1_zero) with
    R1_ZERO_INSTRUCTION as the template's system text (every stage and the evaluation encode
    through here, so they all see the same prompt)."""
    system = R1_ZERO_INSTRUCTION if self.config.get("r1_zero", False) else None
    return format_prompt(question, self.template, system=system)

  def encode_prompt(self, question: str) -> list[int]:
    return self.tokenizer.encode(self.prompt_text(question))

  def encode_response(self, text: str) -> list[int]:
    return self.tokenizer.encode(text) + [self.tokenizer.eos_id]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids))

  def sample(self, params, prompts: Sequence[list[int]], sampling: SamplingConfig,
             rng: jax.Array, batch_rows: int = 0) -> Rollouts:
    """`sample_rollouts` with this context's model, tokenizer and mesh."""
    return sample_rollouts(params, self.model_cfg, self.tokenizer, prompts, sampling, rng,
                           mesh=self.mesh, batch_rows=batch_rows)

  # ---- problems ----------------------------------------------------------------------------
  def problems(self, split: str, n: int, *seed_parts) -> list[Problem]:
    """`n` problems of `split` (train, validation or test), deterministic in (config.seed,
    seed_parts)."""
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = self.config.data
    seed = stable_seed(self.config.seed, split, *seed_parts)
    if d.source == "procedural":
      tasks = [t.strip() for t in d.tasks.split(",") if t.strip()]
      return mixture(tasks, split, n, seed, d.difficulty)
    pool = _real_problems(d.source, d.path, split)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if n < len(pool) else rng.permutation(len(pool))
    return [pool[i] for i in idx]


_POOLS: dict = {}


def _real_problems(source: str, path: str, split: str) -> list[Problem]:
  """A real source's problems of `split`. GSM8K: its test split is test; its train split is cut
  by a hash of the question into validation (10%) and train. JSONL: the file's last 10% (at
  least one line) is test, the 10% before it validation, the rest train."""
  key = (source, path, split)
  if key not in _POOLS:
    if source == "gsm8k":
      if split == "test":
        _POOLS[key] = load_gsm8k("test", data_dir=path or None)
      else:
        rows = load_gsm8k("train", data_dir=path or None)
        _POOLS[key] = [p for p in rows
                       if split_of_key(p.prompt, test_fraction=0.0) == split]
    else:
      rows = load_jsonl_problems(path)
      if len(rows) < 3:
        raise ValueError(f"{path}: {len(rows)} problem(s); a JSONL source needs at least 3 (train, "
                         "validation and test take 80/10/10% of the lines)")
      cut = max(1, len(rows) // 10)
      parts = {"train": rows[:-2 * cut], "validation": rows[-2 * cut:-cut], "test": rows[-cut:]}
      _POOLS[key] = parts[split]
    if not _POOLS[key]:
      raise ValueError(f"no {split} problems in data source {source!r} ({path or 'default location'})")
  return _POOLS[key]


def held_out_problems(ctx: StageContext, n: Optional[int] = None,
                      split: Optional[str] = None) -> list[Problem]:
  """The evaluation problems: `n` (default eval.n_problems) of `split` (default eval.split:
  "test" for the reported numbers, "validation" for choosing settings)."""
  return ctx.problems(split or ctx.config.eval.split, n or ctx.config.eval.n_problems, "eval")
