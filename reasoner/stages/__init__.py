"""The pipeline's stages, one file each, and the table the pipeline walks.

Every stage is `run(ctx, params, rng) -> params`: it trains the model it is given (the final
model of its parent stage; `ctx.model_cfg` is that model's shape) and returns the trained
params, which the pipeline saves as the stage's final model. A new stage is one file with its
`run` and one line in `STAGES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax
from ml_collections import ConfigDict

from reasoner.model.config import ModelConfig
from reasoner.stages import distill, dpo, grpo, pretrain, replay_control, sft
from reasoner.stages.async_grpo import run_async_grpo
from reasoner.stages.context import StageContext, held_out_problems, stable_seed
from reasoner.stages.models import (config_model, has_model, load_stage_model, save_stage_model,
                                    training_model_config)

StageFn = Callable[[StageContext, Any, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class Stage:
  """A pipeline stage: `name` (its config block and `WORKDIR/stages/NAME`), `model` (the name
  of the model it produces), `parent` (the model it starts from, or a function of the config;
  None: it starts from nothing) and `run`. `output_config(ctx)` is the shape of the model `run`
  returns given the parent's context (default: the parent's shape). `config_blocks` are the
  config blocks it reads (default: its own, `config.NAME`). A `control` stage makes a model
  that only serves as a comparison: it runs when named in config.stages, or under "all" when
  config.controls is set."""

  name: str
  model: str
  parent: Union[str, Callable[[ConfigDict], str], None]
  run: StageFn
  output_config: Callable[[StageContext], ModelConfig] = lambda ctx: ctx.model_cfg
  config_blocks: tuple = ()
  control: bool = False

  @property
  def blocks(self) -> tuple:
    return self.config_blocks or (self.name,)

  def parent_model(self, config: ConfigDict):
    return self.parent(config) if callable(self.parent) else self.parent


def run_grpo(ctx: StageContext, params, rng: jax.Array):
  """The GRPO stage: synchronous, or actor-learner when config.grpo.async_rl.enabled."""
  run = run_async_grpo if ctx.config.grpo.async_rl.enabled else grpo.run_grpo
  return run(ctx, params, rng)


STAGES = (
    Stage("pretrain", "m0", None, pretrain.run_pretrain),
    Stage("sft", "sft", "m0", sft.run_sft),
    # R1-Zero: GRPO straight from M0.
    Stage("grpo", "grpo", lambda config: "m0" if config.r1_zero else "sft", run_grpo),
    Stage("distill", "distill", "grpo", distill.run_distill, distill.output_model_config),
    Stage("dpo", "dpo", "distill", dpo.run_dpo),
    # The control for GRPO's SFT replay term: M1 + the same replay updates, no RL.
    Stage(replay_control.NAME, replay_control.NAME, "sft", replay_control.run_replay_control,
          config_blocks=("grpo",), control=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
  for stage in STAGES:
    if stage.name == name:
      return stage
  raise ValueError(f"unknown stage {name!r}; valid: {', '.join(STAGE_NAMES)}")


__all__ = ["STAGES", "STAGE_NAMES", "Stage", "StageContext", "config_model", "get_stage",
           "has_model", "held_out_problems", "load_stage_model", "run_grpo", "save_stage_model",
           "stable_seed", "training_model_config"]
