"""Helpers the config files share: blocks built from the dataclass that owns them."""

import dataclasses

from ml_collections import ConfigDict

from reasoner.train.optim import OptimConfig


def dataclass_block(cls, **overrides) -> ConfigDict:
  """A config block holding every field of the dataclass `cls`: its defaults (their one home,
  with their documentation) and the preset's `overrides`. The code builds `cls` from the block,
  so a misspelt or invalid field fails validation with the dataclass's own message."""
  values = {f.name: f.default for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
  values.update(overrides)
  return ConfigDict(values)


def optim_block(lr, steps, warmup=0, clip=1.0, wd=0.0, accum=1, schedule="cosine") -> ConfigDict:
  """AdamW after global-norm clipping (reasoner.train.optim.OptimConfig): peak rate `lr`, linear
  warmup over `warmup` updates, then `schedule` (constant | cosine | linear) over `steps`."""
  return dataclass_block(OptimConfig, learning_rate=lr, warmup_steps=warmup, total_steps=steps,
                         schedule=schedule, weight_decay=wd, grad_clip=clip, grad_accum_steps=accum)
