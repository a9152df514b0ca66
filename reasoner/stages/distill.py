"""Stage 3 (M2 -> M3): distillation of the teacher (M2, the params the stage is given).

`distill.method` picks how:
  "rejection" (default): the teacher samples N completions per training problem; only
    verified-correct, well-formatted ones are kept (deduplicated), and the student is fine-tuned
    on them with the same response-only cross-entropy as SFT. The student starts from M1 by
    default (`distill.init_from`; in R1-Zero mode from M0, as there is no M1), or is a smaller
    model (`distill.student`, a model preset) trained from scratch on the kept samples.
  "on_policy": every step the student samples `on_policy.samples_per_prompt` completions for
    `on_policy.prompts_per_step` training problems, the teacher scores those very tokens (its
    per-token log-probs, or with `on_policy.loss="full"` its whole next-token distributions),
    and the student takes one update of the reverse KL to the teacher on its own samples
    (`reasoner.losses.distill`). The student must be able to sample something worth scoring,
    so it starts from the `distill.init_from` model; a `distill.student` preset (a fresh model)
    is refused by the config check. It shares the teacher's tokenizer and vocabulary.
`output_model_config` tells the pipeline which shape the stage returns.
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import jax
import numpy as np
from ml_collections import ConfigDict

from reasoner.losses.distill import full_reverse_kl_loss, on_policy_distill_loss
from reasoner.losses.logprobs import model_logits
from reasoner.model.config import ModelConfig, get_config
from reasoner.rewards import is_correct
from reasoner.sampling import SamplingConfig
from reasoner.sharding import sharded_init, to_host
from reasoner.stages.context import StageContext
from reasoner.stages.grpo import logprob_fn, row_width
from reasoner.stages.loop import train_loop
from reasoner.stages.models import load_stage_model, stage_model_config
from reasoner.stages.rollouts import VERIFY_CHUNK, rollout_rows, sample_and_verify
from reasoner.stages.supervised import run_supervised
from reasoner.stages.trainable import init_stage_state, policy_params, stage_result, train_shardings
from reasoner.train import make_eval_fn, make_optimizer, make_train_step
from reasoner.io.log import log

# distill.method: how the student learns from the teacher (module docstring).
METHODS = ("rejection", "on_policy")
# distill.on_policy.loss: "sampled" = the reverse KL estimated on the sampled tokens (the teacher's
# log-probs of them); "full" = the exact per-position reverse KL against the teacher's whole
# next-token distributions ([rows, t, vocab] on the host: small vocabularies only).
ON_POLICY_LOSSES = ("sampled", "full")


def rejection_sample(ctx: StageContext, teacher_params, problems, n: int, temperature: float,
                     max_new_tokens: int, rng: jax.Array, chunk: int = VERIFY_CHUNK,
                     batch_rows: int = 0):
  """Returns (kept (prompt_ids, completion_ids) pairs, stats): the verified samples
  (`sample_and_verify`, sampler calls of at most `batch_rows` rows), each distinct (problem,
  completion) once."""
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=n)
  kept, seen, total, correct = [], set(), 0, 0
  for v in sample_and_verify(ctx, teacher_params, problems, sampling, rng, chunk, batch_rows):
    total += len(v.ok)
    for ids, text, ok in zip(v.completion_ids, v.texts, v.ok):
      correct += ok
      if ok and (v.problem.prompt, text) not in seen:
        seen.add((v.problem.prompt, text))
        kept.append((v.prompt_ids, ids))
  stats = {"sampled": total, "correct": correct, "kept_unique": len(kept),
           "accept_rate": correct / max(1, total)}
  return kept, stats


# distill.init_from -> the model the student starts from.
INIT_MODELS = {"sft": "sft", "pretrain": "m0", "grpo": "grpo"}


def student_config(config: ConfigDict, teacher_cfg: ModelConfig) -> Optional[ModelConfig]:
  """The student's ModelConfig: the `distill.student` preset with the teacher's vocabulary, or
  None for a student shaped like the teacher."""
  if not config.distill.student:
    return None
  return get_config(config.distill.student, vocab_size=teacher_cfg.vocab_size)


def output_model_config(ctx: StageContext) -> ModelConfig:
  """The shape of the model `run_distill` returns, given the teacher's context: the
  `distill.student` preset, or the `distill.init_from` model's shape (the teacher's, unless the
  teacher came from elsewhere: `distill.teacher`)."""
  preset = student_config(ctx.config, ctx.model_cfg)
  if preset is not None:
    return preset
  return stage_model_config(ctx, INIT_MODELS[ctx.config.distill.init_from])


def initial_student(ctx: StageContext, rng: jax.Array):
  """(params, context) of the student before distillation: a fresh `distill.student` model, or
  the `distill.init_from` stage's model."""
  student_cfg = student_config(ctx.config, ctx.model_cfg)
  if student_cfg is not None:
    return sharded_init(student_cfg, jax.random.fold_in(rng, 7), ctx.mesh), ctx.for_model(student_cfg)
  params, init_cfg = load_stage_model(ctx, INIT_MODELS[ctx.config.distill.init_from])
  if init_cfg.vocab_size != ctx.model_cfg.vocab_size:
    raise ValueError(f"the student ({ctx.config.distill.init_from}, vocabulary {init_cfg.vocab_size}) "
                     f"and the teacher (vocabulary {ctx.model_cfg.vocab_size}) must share a "
                     "tokenizer and vocabulary")
  return params, ctx.for_model(init_cfg)


def run_distill(ctx: StageContext, teacher_params, rng: jax.Array):
  """M2 -> M3 (`ctx` is the teacher's): rejection sampling from the teacher and SFT of the
  student, or on-policy distillation (`distill.method`)."""
  distill_cfg = ctx.config.distill
  if distill_cfg.method == "on_policy":
    return run_on_policy_distill(ctx, teacher_params, rng)
  student_params, student_ctx = initial_student(ctx, rng)
  problems = ctx.problems("train", distill_cfg.n_problems, "distill")
  kept, stats = rejection_sample(ctx, teacher_params, problems, distill_cfg.samples_per_problem,
                                 distill_cfg.temperature, distill_cfg.max_new_tokens,
                                 jax.random.fold_in(rng, 0),
                                 batch_rows=int(distill_cfg.get("rollout_rows", 0)))
  log(f"[distill] rejection sampling: {stats['correct']}/{stats['sampled']} correct "
      f"({100 * stats['accept_rate']:.1f}%), {stats['kept_unique']} unique kept")
  if ctx.writer is not None:
    ctx.writer.write("distill", 0, stats)
  if not kept:  # e.g. an R1-Zero teacher that never learnt the format: nothing to distil
    log(f"[distill] no verified samples to train on; M3 is the student's starting model "
        f"({distill_cfg.init_from}) unchanged")
    return student_params
  return run_supervised(student_ctx, "distill", student_params, kept, distill_cfg,
                        jax.random.fold_in(rng, 1))


def teacher_fn(ctx: StageContext, loss: str):
  """fn(teacher_params, rows) -> the rows' teacher entries for `distill.on_policy.loss` `loss`:
  {"teacher_logprobs": [rows, t]} ("sampled") or {"teacher_logits": [rows, t, V]} ("full"), on
  the host; one jitted forward pass within distill.tokens_per_device."""
  if loss == "full":
    key, fn = "teacher_logits", lambda p, b: model_logits(p, ctx.model_cfg, b)
  else:
    key, fn = "teacher_logprobs", logprob_fn(ctx.model_cfg)
  forward = make_eval_fn(fn, mesh=ctx.mesh, tokens_per_device=int(ctx.config.distill.tokens_per_device))
  return lambda teacher_params, rows: {key: to_host(forward(teacher_params, rows))}


def on_policy_loss_fn(loss: str, model_cfg: ModelConfig):
  """The student's loss(params, batch, rng) for `distill.on_policy.loss` `loss`."""
  fn = full_reverse_kl_loss if loss == "full" else on_policy_distill_loss
  return functools.partial(fn, model_cfg=model_cfg)


def make_on_policy_collect(ctx: StageContext, teacher_params):
  """collect(student_params, step, rng) -> (rows, metrics): step `step`'s training problems, the
  student's samples of them laid out as rows (loss on the sampled tokens) with the teacher's
  scores of those tokens, and the samples' metrics (accuracy by `is_correct`, length, done rate)."""
  distill_cfg = ctx.config.distill
  opd = distill_cfg.on_policy
  n = int(opd.samples_per_prompt)
  sampling = SamplingConfig(max_new_tokens=distill_cfg.max_new_tokens, temperature=opd.temperature,
                            n=n)
  score = teacher_fn(ctx, opd.loss)

  def collect(params, step: int, rng: jax.Array):
    t0 = time.perf_counter()
    problems = ctx.problems("train", opd.prompts_per_step, "distill", step)
    ro = ctx.sample(params, [ctx.encode_prompt(p.prompt) for p in problems], sampling,
                    jax.random.fold_in(rng, 0))
    width = row_width(max(len(p) + len(c) for p, c in zip(ro.prompt_ids, ro.completion_ids)))
    rows = rollout_rows(ro.prompt_ids, ro.completion_ids, width, ctx.tokenizer.pad_id, ro.injected)
    t_teacher = time.perf_counter()
    rows.update(score(teacher_params, rows))
    correct = [is_correct(problems[i // n], text) for i, text in enumerate(ro.texts)]
    metrics = {"accuracy": float(np.mean(correct)), "response_length": float(ro.lengths.mean()),
               "done_rate": float(ro.done.mean()), "sampled_tokens": float(ro.lengths.sum()),
               "time/rollout_s": t_teacher - t0,
               "time/teacher_s": time.perf_counter() - t_teacher}
    return rows, metrics

  return collect


def run_on_policy_distill(ctx: StageContext, teacher_params, rng: jax.Array):
  """On-policy distillation (module docstring): `distill.steps` steps of sample (student), score
  (teacher), one update of the student (`distill.optim`) in the shared resumable loop."""
  distill_cfg = ctx.config.distill
  student_params, student_ctx = initial_student(ctx, rng)
  optimizer = make_optimizer(distill_cfg.optim)
  state = init_stage_state(student_ctx, "distill", student_params, optimizer)
  del student_params
  train_step = make_train_step(on_policy_loss_fn(distill_cfg.on_policy.loss, student_ctx.model_cfg),
                               optimizer, mesh=student_ctx.mesh,
                               param_shardings=train_shardings(student_ctx),
                               tokens_per_device=int(distill_cfg.tokens_per_device))
  collect = make_on_policy_collect(student_ctx, teacher_params)

  def step_fn(state, step, rng):
    rows, sample_metrics = collect(policy_params(state), step, rng)
    state, metrics = train_step(state, rows, jax.random.fold_in(rng, 1))
    return state, {**metrics, **sample_metrics}

  state = train_loop("distill", state, step_fn, distill_cfg.steps,
                     stage_dir=student_ctx.stage_dir("distill"), writer=ctx.writer, rng=rng,
                     log_every=ctx.config.log_every, checkpoint_every=ctx.config.checkpoint_every,
                     max_skipped=ctx.config.max_skipped_steps)
  return stage_result(student_ctx, state)
