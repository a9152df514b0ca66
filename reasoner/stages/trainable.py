"""What a training stage trains: every weight, or LoRA adapters on a frozen base.

With `ctx.model_cfg.lora_rank` > 0 a stage runs "LoRA per stage":
  state     TrainState.params = fresh adapters ({"layers": {"lora": ...}}, float32, optimiser
            state for them only); TrainState.frozen = the weights the stage starts from, stored
            in `model_cfg.param_dtype` (bfloat16 for the 7B / 8B presets) and never donated or copied.
  forward   losses and rollouts run `model_params(state)` = base + adapters.
  reference adapters off = `state.frozen` itself (the stage's starting model): the GRPO KL and
            DPO reference, with no second copy of the weights.
  hand-on   the stage ends with `merge_lora` (W + scale a b in float32, stored in W's dtype), so
            the next stage starts from plain params and adds fresh adapters; model directories
            and the HF export never see adapters.
  resume    `train_loop` checkpoints state.params (the adapters) and the optimiser state; the
            base is the stage's input (the parent stage's final model on disk, re-read on a
            rerun), so a killed stage resumes by restoring its adapters onto the same base.
With lora_rank 0 everything here is the full fine-tuning path, unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasoner import sharding
from reasoner.model import lora
from reasoner.stages.context import StageContext, stable_seed
from reasoner.train import init_train_state
from reasoner.train.state import TrainState, model_params
from reasoner.io.log import log


def uses_lora(ctx: StageContext) -> bool:
  return ctx.model_cfg.lora_rank > 0


def train_shardings(ctx: StageContext):
  """Shardings of what the optimiser trains: the adapters under LoRA, else every weight."""
  if ctx.mesh is None:
    return None
  if uses_lora(ctx):
    return sharding.lora_shardings(ctx.model_cfg, ctx.mesh)
  return ctx.param_shardings


def frozen_base(ctx: StageContext, params):
  """The stage's input as a LoRA base: adapters it may carry folded in, weights cast to
  model_cfg.param_dtype (no copy when they already are)."""
  model_cfg = ctx.model_cfg
  if lora.has_lora(params):
    params = lora.merge_lora(params, model_cfg)
  dt = jnp.dtype(model_cfg.param_dtype)
  return jax.tree.map(lambda x: x if x.dtype == dt else x.astype(dt), params)


def init_stage_state(ctx: StageContext, stage: str, params, optimizer) -> TrainState:
  """The stage's TrainState at step 0 (module docstring). Adapters are initialised directly
  into their shards from a seed of (config.seed, stage)."""
  if not uses_lora(ctx):
    return init_train_state(params, optimizer, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  model_cfg = ctx.model_cfg
  base = frozen_base(ctx, params)
  rng = jax.random.PRNGKey(stable_seed(ctx.config.seed, stage, "lora"))
  shardings = train_shardings(ctx)
  adapters = jax.jit(lambda r: lora.init_lora(model_cfg, r), out_shardings=shardings)(rng)
  n_base = sum(x.size for x in jax.tree.leaves(base))
  log(f"[{stage}] LoRA rank {model_cfg.lora_rank} (alpha {model_cfg.lora_alpha:g}) on "
      f"{','.join(lora.lora_targets(model_cfg))}: training {lora.lora_param_count(model_cfg):,} adapter "
      f"params on a frozen {model_cfg.param_dtype} base of {n_base:,}")
  return init_train_state(adapters, optimizer, mesh=ctx.mesh, param_shardings=shardings,
                          frozen=base, frozen_shardings=None if ctx.mesh is None
                          else ctx.param_shardings)


def policy_params(state: TrainState):
  """The weights the current policy runs with (base + adapters under LoRA)."""
  return model_params(state)


def reference_params(state: TrainState):
  """The stage's starting model under LoRA (the frozen base: adapters off), else None."""
  return state.frozen


def stage_result(ctx: StageContext, state: TrainState):
  """What the stage hands on: the trained params, with LoRA adapters merged into the base."""
  if state.frozen is None:
    return state.params
  merge = lambda p: lora.merge_lora(p, ctx.model_cfg)
  if ctx.mesh is None:
    return jax.jit(merge)(model_params(state))
  return jax.jit(merge, out_shardings=ctx.param_shardings)(model_params(state))
