"""Supervised fine-tuning: token cross-entropy on response tokens only.

Packed rows work unchanged: the decoder attends within segments and `loss_mask` marks the
response tokens of every segment (see `reasoner.train.packing`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from reasoner.losses.common import LOSS_WEIGHT, masked_mean
from reasoner.losses.logprobs import sequence_stats
from reasoner.model import ModelConfig


def sft_objective(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean negative log-likelihood over masked tokens. logp, mask: [b, t]."""
  return -masked_mean(logp, mask)


def sft_loss(params, batch: Mapping[str, Any], rng: jax.Array, *, model_cfg: ModelConfig):
  """batch: tokens / positions / segment_ids / loss_mask [b, t].

  Returns (loss, metrics) with metrics loss, accuracy (greedy next-token accuracy on the
  masked tokens), n_tokens and the loss weight (the loss tokens).
  """
  del rng
  mask = batch["loss_mask"].astype(jnp.float32)
  stats = sequence_stats(params, model_cfg, batch, argmax=True, nll_mask=mask)
  loss = stats["nll"]  # sft_objective(logp, mask), fused with its gradient when chunked
  correct = (stats["argmax"] == batch["tokens"]).astype(jnp.float32)
  metrics = {"loss": loss, "accuracy": masked_mean(correct, mask), "n_tokens": jnp.sum(mask),
             LOSS_WEIGHT: jnp.sum(mask)}
  return loss, jax.lax.stop_gradient(metrics)
