"""The optimiser: AdamW behind global-norm clipping, a warmup + decay schedule, and
gradient accumulation via optax.MultiSteps.

The learning rate is injected as a hyperparameter, so the optimiser state records the rate
of the latest update (`learning_rate_of`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from reasoner.losses.common import config_from

SCHEDULES = ("constant", "cosine", "linear")
# Parameters that get no weight decay: norms and biases (by leaf name).
NO_DECAY = ("bq", "bk", "bv", "b", "bias")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-5
  warmup_steps: int = 0
  total_steps: int = 1000  # optimiser updates (after accumulation) for the decay schedules
  schedule: str = "cosine"
  min_lr_ratio: float = 0.0  # final rate of cosine / linear decay, relative to learning_rate
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0  # max global norm; <= 0 disables clipping
  grad_accum_steps: int = 1

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
    if self.grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
    if self.warmup_steps < 0 or self.total_steps < 1:
      raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got "
                       f"{self.warmup_steps}, {self.total_steps}")


def as_optim_config(optim_cfg: Any) -> OptimConfig:
  """OptimConfig from itself, a dict, an ml_collections ConfigDict or a dataclass."""
  return config_from(OptimConfig, optim_cfg)


def make_schedule(optim_cfg: Any) -> optax.Schedule:
  """Linear warmup (update n < warmup_steps uses learning_rate * (n + 1) / warmup_steps), then
  constant / cosine / linear decay to min_lr_ratio * learning_rate over the remaining
  total_steps - warmup_steps updates."""
  optim_cfg = as_optim_config(optim_cfg)
  lr, warmup = optim_cfg.learning_rate, optim_cfg.warmup_steps
  decay_steps = max(optim_cfg.total_steps - warmup, 1)
  if optim_cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif optim_cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=optim_cfg.min_lr_ratio)
  else:
    main = optax.linear_schedule(lr, lr * optim_cfg.min_lr_ratio, decay_steps)
  if warmup == 0:
    return main

  def schedule(step):
    step = jnp.asarray(step)
    warm = lr * jnp.minimum((step + 1) / warmup, 1.0)
    return jnp.where(step < warmup, warm, main(jnp.maximum(step - warmup, 0)))

  return schedule


def decay_mask(params) -> Any:
  """True for every leaf that gets weight decay (not norms, not biases)."""
  def keep(path, _):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
    return not (name.endswith("norm") or name in NO_DECAY)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim_cfg: Any) -> optax.GradientTransformation:
  """clip_by_global_norm -> adamw(schedule, decoupled weight decay on matrices), wrapped in
  optax.MultiSteps when grad_accum_steps > 1 (the mean of k micro-batch gradients is applied
  every k-th call)."""
  optim_cfg = as_optim_config(optim_cfg)
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=make_schedule(optim_cfg), b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
      weight_decay=optim_cfg.weight_decay, mask=decay_mask)
  parts = ([optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip > 0 else []) + [adamw]
  opt = optax.chain(*parts)
  if optim_cfg.grad_accum_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=optim_cfg.grad_accum_steps).gradient_transformation()
  return opt


def learning_rate_of(opt_state) -> jax.Array:
  """The learning rate of the latest update, found in the optimiser state (NaN if absent)."""
  found = []

  def visit(node):
    if isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)):
      if "learning_rate" in node.hyperparams:
        found.append(node.hyperparams["learning_rate"])
      return
    if isinstance(node, dict):
      for v in node.values():
        visit(v)
    elif isinstance(node, (tuple, list)):
      for v in node:
        visit(v)

  visit(opt_state)
  return jnp.asarray(found[0], jnp.float32) if found else jnp.asarray(jnp.nan, jnp.float32)
