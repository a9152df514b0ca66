"""Stage 3 (M2 -> M3): rejection sampling and distillation.

The teacher (M2) samples N completions per training problem; only verified-correct,
well-formatted ones are kept (deduplicated), and the student is fine-tuned on them with the
same response-only cross-entropy as SFT. The student starts from M1 by default
(`distill.init_from`), or is a smaller model (`distill.student`, a model preset) trained from
scratch on the kept samples.
"""

from __future__ import annotations

import jax

from reasoner.sampling import SamplingConfig
from reasoner.stages.context import StageContext
from reasoner.stages.rollouts import sample_and_verify
from reasoner.stages.supervised import run_supervised


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


def student_config(config, teacher_cfg):
  """The student's ModelConfig: the `distill.student` preset with the teacher's vocabulary, or
  None for a student shaped like the teacher."""
  if not config.distill.student:
    return None
  from reasoner.model.config import get_config
  return get_config(config.distill.student, vocab_size=teacher_cfg.vocab_size)


def run_distill(ctx: StageContext, teacher_params, student_params, rng: jax.Array):
  cfg = ctx.config.distill
  problems = ctx.problems("train", cfg.n_problems, "distill")
  kept, stats = rejection_sample(ctx, teacher_params, problems, cfg.samples_per_problem,
                                 cfg.temperature, ctx.config.grpo.max_new_tokens,
                                 jax.random.fold_in(rng, 0))
  print(f"[distill] rejection sampling: {stats['correct']}/{stats['sampled']} correct "
        f"({100 * stats['accept_rate']:.1f}%), {stats['kept_unique']} unique kept", flush=True)
  ctx.writer.write("distill", 0, stats)
  return run_supervised(ctx, "distill", student_params, kept, cfg, jax.random.fold_in(rng, 1))
