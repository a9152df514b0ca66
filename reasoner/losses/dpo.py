"""Direct preference optimisation (sigmoid / IPO, optional label smoothing).

With h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)):
  sigmoid: -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)   (DPO; ls = label smoothing)
  ipo:     (h - 1 / (2 beta))^2                                        (IPO)
Implicit rewards are beta * (log pi - log pi_ref) of each response.
With nll_weight > 0 the loss adds nll_weight x the chosen responses' mean per-token negative
log-likelihood (RPO / iterative RPO): DPO alone may push the chosen log-probs down along with the
rejected ones; the NLL term holds them up.

Batch: `chosen` and `rejected`, each a sequence batch (tokens / positions / segment_ids /
loss_mask [b, t], one response per row, same t), plus `ref_chosen_logps` / `ref_rejected_logps`
[b] from `response_logps` with the reference params, unless `ref_params` is passed to the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import LOSS_WEIGHT, config_from
from reasoner.losses.logprobs import sequence_logprobs
from reasoner.losses.sft import sft_objective
from reasoner.model import ModelConfig

LOSS_TYPES = ("sigmoid", "ipo")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  beta: float = 0.1
  loss_type: str = "sigmoid"
  label_smoothing: float = 0.0  # conservative DPO: assumed probability that a label is flipped
  length_normalize: bool = False  # mean instead of sum of token log-probs (TRL does this for IPO)
  nll_weight: float = 0.0  # weight of the chosen responses' per-token NLL (RPO); 0 = plain DPO

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"unknown DPO loss_type {self.loss_type!r}; expected one of {LOSS_TYPES}")
    if self.beta <= 0:
      raise ValueError(f"DPO beta must be positive, got {self.beta}")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
    if self.nll_weight < 0:
      raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")

  @classmethod
  def from_dict(cls, d) -> "DPOConfig":
    return config_from(cls, d)


def dpo_objective(chosen_logps: jax.Array, rejected_logps: jax.Array,
                  ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, config: DPOConfig):
  """The DPO loss from response log-probs [b] (the model-free core). Returns (loss, metrics)."""
  chosen_ratio = chosen_logps - ref_chosen_logps
  rejected_ratio = rejected_logps - ref_rejected_logps
  h = chosen_ratio - rejected_ratio
  if config.loss_type == "sigmoid":
    ls = config.label_smoothing
    losses = (-(1.0 - ls) * jax.nn.log_sigmoid(config.beta * h)
              - ls * jax.nn.log_sigmoid(-config.beta * h))
  else:
    losses = (h - 1.0 / (2.0 * config.beta)) ** 2
  loss = jnp.mean(losses)
  chosen_reward = config.beta * chosen_ratio
  rejected_reward = config.beta * rejected_ratio
  metrics = {
      "loss": loss,
      "reward_accuracy": jnp.mean((chosen_reward > rejected_reward).astype(jnp.float32)),
      "reward_margin": jnp.mean(chosen_reward - rejected_reward),
      "chosen_reward": jnp.mean(chosen_reward),
      "rejected_reward": jnp.mean(rejected_reward),
      "chosen_logps": jnp.mean(chosen_logps),
      "rejected_logps": jnp.mean(rejected_logps),
      LOSS_WEIGHT: jnp.asarray(losses.shape[0], jnp.float32),  # a mean over pairs
  }
  return loss, jax.lax.stop_gradient(metrics)


def _stack(chosen: Mapping[str, Any], rejected: Mapping[str, Any]) -> dict:
  keys = ("tokens", "positions", "segment_ids", "loss_mask")
  missing = [k for k in keys if k not in chosen or k not in rejected]
  if missing:
    raise KeyError(f"DPO chosen/rejected batches are missing {missing}")
  if chosen["tokens"].shape != rejected["tokens"].shape:
    raise ValueError(f"chosen {chosen['tokens'].shape} and rejected {rejected['tokens'].shape} "
                     "must have the same [batch, seq] shape (pad both to one length)")
  return {k: jnp.concatenate([jnp.asarray(chosen[k]), jnp.asarray(rejected[k])]) for k in keys}


def response_logps(params, cfg: ModelConfig, batch: Mapping[str, Any],
                   length_normalize: bool = False, extra: Optional[Mapping[str, Any]] = None):
  """Log-probs of chosen and rejected responses in one [2b, t] forward: ([b], [b]). With `extra`
  rows (a sequence batch of the same width, e.g. replayed SFT data) they ride the same forward
  and their per-token log-probs [n, t] come back third: one backward pass then gives one
  parameter gradient, not one per loss term."""
  both = _stack(batch["chosen"], batch["rejected"])
  rows = both
  if extra is not None:
    if extra["tokens"].shape[1] != both["tokens"].shape[1]:
      raise ValueError(f"extra rows {extra['tokens'].shape} must be as wide as the pairs "
                       f"{both['tokens'].shape}")
    rows = {k: jnp.concatenate([both[k], jnp.asarray(extra[k]).astype(both[k].dtype)])
            for k in both}
  # Pairs are one sequence per row; extra rows may be packed SFT rows.
  logp, _ = sequence_logprobs(params, cfg, rows, entropy=False, packed=extra is not None)
  n = both["tokens"].shape[0]
  mask = both["loss_mask"].astype(jnp.float32)
  seq = jnp.sum(logp[:n] * mask, axis=1)
  if length_normalize:
    seq = seq / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  b = batch["chosen"]["tokens"].shape[0]
  return (seq[:b], seq[b:]) if extra is None else (seq[:b], seq[b:], logp[n:])


def dpo_loss(params, batch: Mapping[str, Any], rng: jax.Array, *, model_cfg: ModelConfig,
             config: DPOConfig, ref_params=None, replay: Optional[Mapping[str, Any]] = None,
             replay_weight: float = 0.0):
  """DPO on a batch of preference pairs (see the module docstring). Returns (loss, metrics).
  With `replay` rows (tokens / positions / segment_ids / loss_mask, as wide as the pairs) and
  replay_weight > 0, adds replay_weight x their SFT loss (metric replay_loss), computed in the
  same forward pass as the pairs."""
  del rng
  if replay is not None and replay_weight > 0:
    chosen, rejected, replay_logp = response_logps(params, model_cfg, batch,
                                                   config.length_normalize, extra=replay)
  else:
    replay = None
    chosen, rejected = response_logps(params, model_cfg, batch, config.length_normalize)
  if ref_params is not None:
    ref_c, ref_r = response_logps(ref_params, model_cfg, batch, config.length_normalize)
    ref_c, ref_r = jax.lax.stop_gradient(ref_c), jax.lax.stop_gradient(ref_r)
  else:
    if "ref_chosen_logps" not in batch or "ref_rejected_logps" not in batch:
      raise KeyError("DPO batch needs 'ref_chosen_logps' and 'ref_rejected_logps' "
                     "(or pass ref_params to compute them in the step)")
    ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
  loss, metrics = dpo_objective(chosen, rejected, ref_c, ref_r, config)
  if config.nll_weight:
    n = jnp.maximum(jnp.sum(batch["chosen"]["loss_mask"].astype(jnp.float32), axis=1), 1.0)
    nll = -jnp.mean(chosen if config.length_normalize else chosen / n)
    loss = loss + config.nll_weight * nll
    metrics = {**metrics, "chosen_nll": nll, "loss": loss}
  if replay is not None:
    replay_loss = sft_objective(replay_logp, jnp.asarray(replay["loss_mask"]).astype(jnp.float32))
    loss = loss + replay_weight * replay_loss
    metrics = {**metrics, "replay_loss": jax.lax.stop_gradient(replay_loss), "loss": loss}
  return loss, metrics
