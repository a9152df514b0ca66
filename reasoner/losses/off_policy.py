"""Off-policy GRPO for asynchronous actor-learner training: decoupled PPO-clip with a truncated
importance weight.

In async RL the rollouts of step t were sampled by a behaviour policy pi_behav (a snapshot of
the learner up to `max_staleness` versions old), while the learner is at pi_prox (its params at
the start of step t, whose log-probs it recomputes just as the synchronous stage does). Per
response token y_t with group advantage A:

  r_t = pi_theta(y_t) / pi_prox(y_t)                                (the PPO ratio, as in GRPO)
  w_t = min(pi_prox(y_t) / pi_behav(y_t), c)                        (constant: no gradient)
  loss_t = w_t * max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)) + beta * KL_t

aggregated by `aggregate` like GRPO. The clip keeps each update in a trust region around the
proximal policy, not around the stale sampler, so staleness does not eat into the clip range;
w_t corrects the sampling distribution (E_behav[w r A] = E_prox[r A] without truncation), and
truncating at c >= 1 bounds its variance at the price of a bias toward pi_behav on tokens the
learner now likes much more. When pi_behav == pi_prox, w_t = 1 and this is `grpo_objective`
exactly. The KL penalty is estimated per token on the behaviour samples, unweighted, as the
synchronous stage does across its epochs.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import masked_mean
from reasoner.losses.grpo import GRPOConfig, grpo_objective
from reasoner.losses.logprobs import sequence_logprobs
from reasoner.model import ModelConfig


def _log_is_ratio(prox_logp: jax.Array, behav_logp: jax.Array) -> jax.Array:
  """log(pi_prox / pi_behav) per token, float32."""
  return prox_logp.astype(jnp.float32) - behav_logp.astype(jnp.float32)


def truncated_is_weights(prox_logp: jax.Array, behav_logp: jax.Array, is_clip: float) -> jax.Array:
  """min(pi_prox / pi_behav, is_clip) per token, [b, t] -> [b, t] float32, no gradient."""
  return jax.lax.stop_gradient(jnp.minimum(jnp.exp(_log_is_ratio(prox_logp, behav_logp)), is_clip))


def off_policy_grpo_objective(logp: jax.Array, prox_logp: jax.Array, behav_logp: jax.Array,
                              ref_logp: Optional[jax.Array], advantages: jax.Array,
                              mask: jax.Array, config: GRPOConfig, is_clip: float,
                              entropy: Optional[jax.Array] = None):
  """The loss of the module docstring. logp / prox_logp / behav_logp / ref_logp / mask: [b, t],
  advantages: [b]. Returns (loss, metrics): `grpo_objective`'s plus the importance weights'."""
  if not is_clip >= 1.0:
    raise ValueError(f"is_clip must be >= 1 (1 = never up-weight a token), got {is_clip}")
  w = truncated_is_weights(prox_logp, behav_logp, is_clip)
  loss, metrics = grpo_objective(logp, prox_logp, ref_logp, advantages, mask, config,
                                 entropy=entropy, pg_weights=w)
  m = mask.astype(jnp.float32)
  log_w = _log_is_ratio(prox_logp, behav_logp)
  metrics = dict(metrics)
  metrics.update({
      "is_weight_mean": masked_mean(w, m),
      "is_truncated_frac": masked_mean((log_w > jnp.log(is_clip)).astype(jnp.float32), m),
      # k3 estimate of KL(pi_behav || pi_prox) from the behaviour samples: how stale they are.
      "behaviour_kl": masked_mean(jnp.exp(log_w) - 1.0 - log_w, m),
  })
  return loss, jax.lax.stop_gradient(metrics)


def off_policy_grpo_loss(params, batch: Mapping[str, Any], rng: jax.Array, *,
                         model_cfg: ModelConfig, config: GRPOConfig, is_clip: float):
  """`grpo_loss` with the importance correction. batch: as `grpo_loss` (old_logprobs = the
  proximal policy's) plus behaviour_logprobs [b, t] from the sampler. Without behaviour_logprobs
  the rows were sampled by the proximal policy (weights 1); without old_logprobs either, by the
  params being differentiated (one update on fresh rows: ratio 1, as `grpo_loss`)."""
  del rng
  if "advantages" not in batch:
    raise KeyError(f"off-policy GRPO batch is missing 'advantages'; it has {sorted(batch)}")
  if "behaviour_logprobs" in batch and "old_logprobs" not in batch:
    raise KeyError("off-policy GRPO batch has behaviour_logprobs but no old_logprobs (the "
                   "proximal policy's log-probs the importance weights compare them with)")
  logp, entropy = sequence_logprobs(params, model_cfg, batch, packed=False)
  prox = batch.get("old_logprobs")
  prox = jax.lax.stop_gradient(logp) if prox is None else prox
  return off_policy_grpo_objective(logp, prox, batch.get("behaviour_logprobs", prox),
                                   batch.get("ref_logprobs"), batch["advantages"],
                                   batch["loss_mask"], config, is_clip, entropy=entropy)
