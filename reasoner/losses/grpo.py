"""GRPO with the DAPO and Dr.GRPO variants.

Per prompt group of G samples, advantage A_i = (r_i - mean(r)) / std(r) (sample std; Dr.GRPO
drops the division). Every response token of sample i carries A_i. The token objective is
PPO-clip on the ratio rho = pi / pi_old with asymmetric bounds [1 - eps_low, 1 + eps_high]
(DAPO "clip-higher": eps_high = 0.28), plus beta * KL(pi || pi_ref) estimated per token:

  k1 = log pi - log pi_ref
  k3 = pi_ref / pi - log(pi_ref / pi) - 1      (GRPO paper; unbiased and >= 0)

Token losses are aggregated by `loss_agg`:
  seq_mean    mean over sequences of the mean over their tokens   (GRPO paper)
  token_mean  sum over all tokens / number of tokens              (DAPO)
  constant    sum over all tokens / (n_sequences * constant_norm) (Dr.GRPO; constant_norm =
              the maximum response length)

Several optimisation epochs over one batch of rollouts reuse the `old_logprobs` recorded
before the first update (see `reasoner.train.epochs`). Batches hold one sample per row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reasoner.losses.common import LOSS_WEIGHT, config_from, masked_mean
from reasoner.losses.logprobs import sequence_logprobs
from reasoner.model import ModelConfig

KL_ESTIMATORS = ("k1", "k3")
LOSS_AGGREGATIONS = ("seq_mean", "token_mean", "constant")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2  # DAPO clip-higher: 0.28
  beta: float = 0.04  # KL coefficient; 0 disables the reference model
  kl_estimator: str = "k3"
  loss_agg: str = "seq_mean"
  constant_norm: Optional[float] = None  # required by loss_agg='constant'
  scale_by_std: bool = True  # False for Dr.GRPO
  # Entropy bonus: loss -= entropy_coef x token entropy (aggregated like the rest); negative
  # values penalise entropy (entropy minimisation, which sharpens the policy toward its mode).
  entropy_coef: float = 0.0

  def __post_init__(self):
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"unknown kl_estimator {self.kl_estimator!r}; expected one of {KL_ESTIMATORS}")
    if self.loss_agg not in LOSS_AGGREGATIONS:
      raise ValueError(f"unknown loss_agg {self.loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")
    if self.loss_agg == "constant" and not (self.constant_norm and self.constant_norm > 0):
      raise ValueError("loss_agg='constant' needs a positive constant_norm (the max response length)")
    if self.epsilon_low < 0 or self.epsilon_high < 0 or self.beta < 0:
      raise ValueError(f"epsilon_low, epsilon_high and beta must be >= 0, got "
                       f"{self.epsilon_low}, {self.epsilon_high}, {self.beta}")

  @classmethod
  def from_dict(cls, d) -> "GRPOConfig":
    return config_from(cls, d)


def group_advantages(rewards, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-6) -> jax.Array:
  """rewards [n] (prompt-major: a group is `group_size` contiguous rows) -> advantages [n].

  (r - group mean) / (group sample std (ddof=1) + eps), or r - mean without `scale_by_std`.
  A group whose rewards are all equal gets exactly 0.
  """
  r = jnp.asarray(rewards, jnp.float32)
  if r.ndim != 1 or r.shape[0] % group_size:
    raise ValueError(f"rewards must be [n] with n a multiple of group_size={group_size}, "
                     f"got shape {r.shape}")
  g = r.reshape(-1, group_size)
  mean = jnp.mean(g, axis=1, keepdims=True)
  flat = (jnp.max(g, axis=1, keepdims=True) == jnp.min(g, axis=1, keepdims=True))
  adv = g - mean
  if scale_by_std:
    ddof = 1 if group_size > 1 else 0
    std = jnp.sqrt(jnp.sum(adv * adv, axis=1, keepdims=True) / (group_size - ddof))
    adv = adv / (std + eps)
  return jnp.where(flat, 0.0, adv).reshape(-1)


def filter_zero_variance_groups(rewards, group_size: int) -> np.ndarray:
  """DAPO dynamic sampling: bool keep mask [n], False for every row of a group whose
  rewards are all equal (it has zero advantage and so no gradient)."""
  r = np.asarray(rewards)
  if r.ndim != 1 or r.shape[0] % group_size:
    raise ValueError(f"rewards must be [n] with n a multiple of group_size={group_size}, "
                     f"got shape {r.shape}")
  g = r.reshape(-1, group_size)
  varied = g.max(axis=1) != g.min(axis=1)
  return np.repeat(varied, group_size)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(pi || pi_ref) from samples of pi. [b, t] -> [b, t]."""
  if estimator == "k1":
    return logp - ref_logp
  if estimator == "k3":
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0
  raise ValueError(f"unknown kl_estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def aggregate(token_loss: jax.Array, mask: jax.Array, loss_agg: str,
              constant_norm: Optional[float] = None) -> jax.Array:
  """Reduces a [b, t] token loss to a scalar (see the module docstring)."""
  if loss_agg == "token_mean":
    return masked_mean(token_loss, mask)
  if loss_agg == "seq_mean":
    per_seq = masked_mean(token_loss, mask, axis=1)
    has_tokens = (jnp.sum(mask, axis=1) > 0).astype(jnp.float32)
    return jnp.sum(per_seq * has_tokens) / jnp.maximum(jnp.sum(has_tokens), 1.0)
  if loss_agg == "constant":
    return jnp.sum(token_loss * mask) / (token_loss.shape[0] * constant_norm)
  raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")


def aggregate_weight(mask: jax.Array, loss_agg: str) -> jax.Array:
  """How many units `aggregate` averages over (its micro-batch weight, `LOSS_WEIGHT`): the loss
  tokens (token_mean), the sequences with tokens (seq_mean), all rows (constant)."""
  if loss_agg == "token_mean":
    return jnp.sum(mask)
  if loss_agg == "seq_mean":
    return jnp.sum((jnp.sum(mask, axis=1) > 0).astype(jnp.float32))
  if loss_agg == "constant":
    return jnp.asarray(mask.shape[0], jnp.float32)
  raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")


def grpo_objective(logp: jax.Array, old_logp: Optional[jax.Array], ref_logp: Optional[jax.Array],
                   advantages: jax.Array, mask: jax.Array, config: GRPOConfig,
                   entropy: Optional[jax.Array] = None, pg_weights: Optional[jax.Array] = None):
  """The GRPO loss from per-token log-probs (the model-free core).

  logp: [b, t] under the current policy (differentiated); old_logp: [b, t] from the policy
  that sampled (None: on-policy, ratio 1); ref_logp: [b, t] under the frozen reference (may
  be None when beta == 0); advantages: [b]; mask: [b, t] response tokens; pg_weights: optional
  [b, t] constant weights on the clipped policy-gradient term (the truncated importance weights
  of `reasoner.losses.off_policy`; the KL term is not weighted).
  Returns (loss, metrics).
  """
  mask = mask.astype(jnp.float32)
  if old_logp is None:
    old_logp = jax.lax.stop_gradient(logp)
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  adv = advantages.astype(jnp.float32)[:, None]
  lo, hi = 1.0 - config.epsilon_low, 1.0 + config.epsilon_high
  pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, lo, hi))
  if pg_weights is not None:
    pg = pg * jax.lax.stop_gradient(pg_weights.astype(jnp.float32))
  if config.beta > 0:
    if ref_logp is None:
      raise ValueError("GRPO with beta > 0 needs ref_logprobs (or set beta=0)")
    kl = kl_penalty(logp, ref_logp, config.kl_estimator)
  else:
    kl = jnp.zeros_like(logp) if ref_logp is None else kl_penalty(logp, ref_logp,
                                                                   config.kl_estimator)
  token_loss = pg + config.beta * kl
  if config.entropy_coef:
    if entropy is None:
      raise ValueError("GRPO with entropy_coef != 0 needs the per-token entropy")
    token_loss = token_loss - config.entropy_coef * entropy
  agg = lambda x: aggregate(x, mask, config.loss_agg, config.constant_norm)
  loss = agg(token_loss)
  clip_low = ((adv < 0) & (ratio < lo)).astype(jnp.float32)
  clip_high = ((adv > 0) & (ratio > hi)).astype(jnp.float32)
  metrics = {
      "loss": loss,
      "pg_loss": agg(pg),
      "kl": masked_mean(kl, mask),
      "clip_frac_low": masked_mean(clip_low, mask),
      "clip_frac_high": masked_mean(clip_high, mask),
      "clip_frac": masked_mean(clip_low + clip_high, mask),
      "ratio_mean": masked_mean(ratio, mask),
      # k3 estimate of KL(pi_old || pi) from samples of pi_old.
      "approx_kl": masked_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, mask),
      "n_tokens": jnp.sum(mask),
      LOSS_WEIGHT: aggregate_weight(mask, config.loss_agg),
  }
  if entropy is not None:
    metrics["entropy"] = masked_mean(entropy, mask)
  return loss, jax.lax.stop_gradient(metrics)


def grpo_loss(params, batch: Mapping[str, Any], rng: jax.Array, *, model_cfg: ModelConfig,
              config: GRPOConfig):
  """batch: tokens / positions / segment_ids / loss_mask [b, t], advantages [b],
  old_logprobs [b, t] (optional: on-policy if absent), ref_logprobs [b, t] (needed when
  beta > 0; computed by the caller with the frozen reference via `sequence_logprobs`). Each row
  is one sequence (prompt + completion, padding either side, as `rollout_rows` builds them), so
  on a GPU the forward may run cuDNN's fused attention (`sequence_stats(packed=False)`)."""
  del rng
  if "advantages" not in batch:
    raise KeyError(f"GRPO batch is missing 'advantages'; it has {sorted(batch)}")
  logp, entropy = sequence_logprobs(params, model_cfg, batch, packed=False)
  return grpo_objective(logp, batch.get("old_logprobs"), batch.get("ref_logprobs"),
                        batch["advantages"], batch["loss_mask"], config, entropy=entropy)
