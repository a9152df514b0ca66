"""Stage 3 (M2 -> M3): rejection sampling and distillation.

The teacher (M2, the params the stage is given) samples N completions per training problem; only
verified-correct, well-formatted ones are kept (deduplicated), and the student is fine-tuned on
them with the same response-only cross-entropy as SFT. The student starts from M1 by default
(`distill.init_from`; in R1-Zero mode from M0, as there is no M1), or is a smaller model
(`distill.student`, a model preset) trained from scratch on the kept samples;
`output_model_config` tells the pipeline which shape it returns.
"""

from __future__ import annotations

from typing import Optional

import jax
from ml_collections import ConfigDict

from reasoner.model.config import ModelConfig, get_config
from reasoner.sampling import SamplingConfig
from reasoner.sharding import sharded_init
from reasoner.stages.context import StageContext
from reasoner.stages.models import load_stage_model
from reasoner.stages.rollouts import sample_and_verify
from reasoner.stages.supervised import run_supervised
from reasoner.io.log import log


def rejection_sample(ctx: StageContext, teacher_params, problems, n: int, temperature: float,
                     max_new_tokens: int, rng: jax.Array, chunk: int = 64):
  """Returns (kept (prompt_ids, completion_ids) pairs, stats): the verified samples
  (`sample_and_verify`), each distinct (problem, completion) once."""
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=n)
  kept, seen, total, correct = [], set(), 0, 0
  for v in sample_and_verify(ctx, teacher_params, problems, sampling, rng, chunk):
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
  """The shape of the model `run_distill` returns, given the teacher's context."""
  return student_config(ctx.config, ctx.model_cfg) or ctx.model_cfg


def initial_student(ctx: StageContext, rng: jax.Array):
  """(params, context) of the student before distillation: a fresh `distill.student` model, or
  the `distill.init_from` stage's model."""
  student_cfg = student_config(ctx.config, ctx.model_cfg)
  if student_cfg is not None:
    return sharded_init(student_cfg, jax.random.fold_in(rng, 7), ctx.mesh), ctx.for_model(student_cfg)
  params, _ = load_stage_model(ctx, INIT_MODELS[ctx.config.distill.init_from])
  return params, ctx


def run_distill(ctx: StageContext, teacher_params, rng: jax.Array):
  """M2 -> M3: rejection sampling from the teacher (`ctx` is the teacher's), SFT of the student."""
  distill_cfg = ctx.config.distill
  student_params, student_ctx = initial_student(ctx, rng)
  problems = ctx.problems("train", distill_cfg.n_problems, "distill")
  kept, stats = rejection_sample(ctx, teacher_params, problems, distill_cfg.samples_per_problem,
                                 distill_cfg.temperature, distill_cfg.max_new_tokens,
                                 jax.random.fold_in(rng, 0))
  log(f"[distill] rejection sampling: {stats['correct']}/{stats['sampled']} correct "
      f"({100 * stats['accept_rate']:.1f}%), {stats['kept_unique']} unique kept")
  if ctx.writer is not None:
    ctx.writer.write("distill", 0, stats)
  return run_supervised(student_ctx, "distill", student_params, kept, distill_cfg,
                        jax.random.fold_in(rng, 1))
