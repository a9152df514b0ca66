"""PPO with a scalar value head and GAE, for multi-turn agentic rollouts.

A row is one trajectory: agent tokens (loss_mask = 1) interleaved with environment tokens
(loss_mask = 0, e.g. tool output). Only agent tokens are actions; GAE skips the environment
tokens, so the value after an agent turn bootstraps from the next agent token. Rewards sit on
agent tokens (put a turn's reward on its last token); rewards on masked tokens are ignored.

The value head reads the decoder's final hidden state. Values use the log-prob alignment:
values[:, t] = V(tokens < t) is the value of the state in which token t is chosen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import LOSS_WEIGHT, config_from, masked_mean, shift_right
from reasoner.losses.logprobs import continues_segment, sequence_stats
from reasoner.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  value_clip: Optional[float] = 0.2  # None: unclipped value loss
  vf_coef: float = 0.5
  ent_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  normalize_advantages: bool = True  # whiten advantages over the batch's action tokens

  def __post_init__(self):
    if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
      raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")

  @classmethod
  def from_dict(cls, d) -> "PPOConfig":
    return config_from(cls, d)


def init_value_head(d_model: int) -> dict:
  """Zero-initialised value head {'w': [d], 'b': []} (float32)."""
  return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def apply_value_head(value_head: Mapping[str, jax.Array], hidden: jax.Array,
                     segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """hidden [b, t, d] -> values [b, t] float32 in the log-prob alignment (values[:, 0] = 0)."""
  v = jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), value_head["w"].astype(jnp.float32))
  v = shift_right(v + value_head["b"].astype(jnp.float32))
  keep = continues_segment(segment_ids)
  return v if keep is None else v * keep


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float):
  """Generalised advantage estimation over the masked (action) tokens of each row.

  rewards, values, mask: [b, t]. Masked-out tokens are skipped (advantage and return 0);
  the episode ends after the last action token (bootstrap value 0).
  Returns (advantages [b, t], returns [b, t]) = (A, A + V).
  """
  rewards, values = rewards.astype(jnp.float32), values.astype(jnp.float32)
  active = mask.astype(bool)

  def step(carry, xs):
    next_value, next_adv = carry
    r, v, m = xs
    delta = r + gamma * next_value - v
    adv = delta + gamma * lam * next_adv
    carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv))
    return carry, jnp.where(m, adv, 0.0)

  zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
  _, adv_t = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, active.T), reverse=True)
  adv = adv_t.T
  return adv, jnp.where(active, adv + values, 0.0)


def whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
  """(x - mean) / (std + eps) over the masked entries; masked-out entries become 0."""
  mean = masked_mean(x, mask)
  var = masked_mean((x - mean) ** 2, mask)
  return (x - mean) / (jnp.sqrt(var) + eps) * mask


def ppo_objective(logp: jax.Array, old_logp: jax.Array, values: jax.Array,
                  old_values: jax.Array, advantages: jax.Array, returns: jax.Array,
                  mask: jax.Array, config: PPOConfig, entropy: Optional[jax.Array] = None):
  """Clipped policy loss + vf_coef * clipped value loss - ent_coef * entropy, token means.

  All arguments [b, t]; logp, values and entropy are differentiated. Returns (loss, metrics).
  """
  mask = mask.astype(jnp.float32)
  adv = whiten(advantages, mask) if config.normalize_advantages else advantages
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  lo, hi = 1.0 - config.epsilon_low, 1.0 + config.epsilon_high
  pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, lo, hi))
  pg_loss = masked_mean(pg, mask)
  vf = (values - returns) ** 2
  if config.value_clip is not None:
    clipped = old_values + jnp.clip(values - old_values, -config.value_clip, config.value_clip)
    vf_clipped = (clipped - returns) ** 2
    vf_clip_frac = masked_mean((vf_clipped > vf).astype(jnp.float32), mask)
    vf = jnp.maximum(vf, vf_clipped)
  else:
    vf_clip_frac = jnp.zeros(())
  vf_loss = 0.5 * masked_mean(vf, mask)
  ent = masked_mean(entropy, mask) if entropy is not None else jnp.zeros(())
  loss = pg_loss + config.vf_coef * vf_loss - config.ent_coef * ent
  clip = ((adv < 0) & (ratio < lo)) | ((adv > 0) & (ratio > hi))
  metrics = {
      "loss": loss, "pg_loss": pg_loss, "vf_loss": vf_loss, "entropy": ent,
      "clip_frac": masked_mean(clip.astype(jnp.float32), mask),
      "vf_clip_frac": vf_clip_frac,
      "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
      "value_mean": masked_mean(values, mask),
      "return_mean": masked_mean(returns, mask),
      LOSS_WEIGHT: jnp.sum(mask),
  }
  return loss, jax.lax.stop_gradient(metrics)


def ppo_forward(params: Mapping[str, Any], cfg: ModelConfig, batch: Mapping[str, Any]):
  """params {'model', 'value_head'} -> (logp, entropy, values), each [b, t] float32."""
  out = sequence_stats(params["model"], cfg, batch, entropy=True, return_hidden=True,
                       packed=False)
  return (out["logp"], out["entropy"],
          apply_value_head(params["value_head"], out["hidden"], batch.get("segment_ids")))


def ppo_loss(params: Mapping[str, Any], batch: Mapping[str, Any], rng: jax.Array, *,
             model_cfg: ModelConfig, config: PPOConfig):
  """params {'model', 'value_head'}; batch: tokens / positions / segment_ids / loss_mask,
  old_logprobs, old_values, advantages, returns [b, t] (from `ppo_forward` + `gae` before
  the first update)."""
  del rng
  missing = [k for k in ("old_logprobs", "old_values", "advantages", "returns") if k not in batch]
  if missing:
    raise KeyError(f"PPO batch is missing {missing}; compute them with ppo_forward and gae")
  logp, entropy, values = ppo_forward(params, model_cfg, batch)
  return ppo_objective(logp, batch["old_logprobs"], values, batch["old_values"],
                       batch["advantages"], batch["returns"], batch["loss_mask"], config,
                       entropy)
