"""Distillation from a teacher.

Off-policy (rejection-sampling) distillation is plain SFT on teacher samples that passed
verification: use `reasoner.losses.sft.sft_loss` on those samples; there is no separate loss.

On-policy distillation: the student samples the responses (the batch tokens); the teacher
scores every sampled token, and the student minimises the reverse KL
  KL(s || t) = E_{y ~ s}[log s(y) - log t(y)]
token by token. Its gradient is E_s[(log s - log t) grad log s], so the loss is a policy
gradient with per-token advantage A_t = -(log s(y_t) - log t(y_t)) (no gradient through A),
importance-weighted by s / s_sample when the sampler's log-probs are given. At the sampling
policy the loss value equals the reverse-KL estimate.

`full_reverse_kl_loss` uses the teacher's full next-token distributions [b, t, V] instead,
an exact per-position KL when those fit in memory.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import LOSS_WEIGHT, masked_mean, shift_right
from reasoner.losses.logprobs import continues_segment, model_logits, sequence_logprobs
from reasoner.model import ModelConfig


def on_policy_distill_objective(logp: jax.Array, teacher_logp: jax.Array, mask: jax.Array,
                                sample_logp: Optional[jax.Array] = None,
                                entropy: Optional[jax.Array] = None):
  """logp: student [b, t] (differentiated); teacher_logp: [b, t] of the same sampled tokens;
  sample_logp: [b, t] of the policy that sampled (None: the current student); mask [b, t].
  Returns (loss, metrics); loss = token mean of -A_t * s / s_sample."""
  mask = mask.astype(jnp.float32)
  teacher_logp = jax.lax.stop_gradient(teacher_logp)
  if sample_logp is None:
    sample_logp = jax.lax.stop_gradient(logp)
  advantage = -(sample_logp - teacher_logp)
  ratio = jnp.exp(logp - sample_logp)
  loss = masked_mean(-advantage * ratio, mask)
  metrics = {
      "loss": loss,
      "reverse_kl": masked_mean(jax.lax.stop_gradient(logp) - teacher_logp, mask),
      "teacher_logp": masked_mean(teacher_logp, mask),
      "student_logp": masked_mean(logp, mask),
      "n_tokens": jnp.sum(mask),
      LOSS_WEIGHT: jnp.sum(mask),
  }
  if entropy is not None:
    metrics["entropy"] = masked_mean(entropy, mask)
  return loss, jax.lax.stop_gradient(metrics)


def on_policy_distill_loss(params, batch: Mapping[str, Any], rng: jax.Array, *,
                           model_cfg: ModelConfig,
                           teacher_logprobs_fn: Optional[Callable[[Mapping[str, Any]], jax.Array]] = None):
  """batch: tokens / positions / segment_ids / loss_mask [b, t] sampled by the student,
  `teacher_logprobs` [b, t] (or `teacher_logprobs_fn(batch)` computes them in the step),
  optional `old_logprobs` [b, t] of the sampler for importance weighting."""
  del rng
  if teacher_logprobs_fn is not None:
    teacher = teacher_logprobs_fn(batch)
  elif "teacher_logprobs" in batch:
    teacher = batch["teacher_logprobs"]
  else:
    raise KeyError("on-policy distillation needs batch['teacher_logprobs'] or teacher_logprobs_fn")
  logp, entropy = sequence_logprobs(params, model_cfg, batch, packed=False)
  return on_policy_distill_objective(logp, teacher, batch["loss_mask"],
                                     batch.get("old_logprobs"), entropy)


def full_reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """Exact KL(s || t) of the next-token distributions, [b, t, V] x 2 -> [b, t] aligned like
  log-probs: out[:, t] compares the distributions that predict token t; out[:, 0] = 0."""
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} must have the same shape (same vocabulary)")
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  kl = shift_right(jnp.sum(jnp.exp(s) * (s - t), axis=-1))
  keep = continues_segment(segment_ids)
  return kl if keep is None else kl * keep


def full_reverse_kl_loss(params, batch: Mapping[str, Any], rng: jax.Array, *,
                         model_cfg: ModelConfig):
  """batch: a sequence batch + `teacher_logits` [b, t, V]. Token-mean exact reverse KL."""
  del rng
  logits = model_logits(params, model_cfg, batch)
  kl = full_reverse_kl(logits, jax.lax.stop_gradient(batch["teacher_logits"]),
                       batch.get("segment_ids"))
  mask = batch["loss_mask"].astype(jnp.float32)
  loss = masked_mean(kl, mask)
  value = jax.lax.stop_gradient(loss)
  return loss, {"loss": value, "reverse_kl": value, "n_tokens": jnp.sum(mask),
                LOSS_WEIGHT: jnp.sum(mask)}
