"""Stage 3 (M2 -> M3): rejection sampling and distillation.

The teacher (M2) samples N completions per training problem; only verified-correct,
well-formatted ones are kept (deduplicated), and the student is fine-tuned on them with the
same response-only cross-entropy as SFT. The student starts from M1 by default
(`distill.init_from`), or is a smaller model (`distill.student`, a model preset) trained from
scratch on the kept samples.
"""

from __future__ import annotations

import jax

from reasoner.pipeline.evaluate import check_completion
from reasoner.rewards.format import format_reward
from reasoner.sampling import SamplingConfig
from reasoner.stages.context import StageContext
from reasoner.stages.rollouts import sample_rollouts
from reasoner.stages.supervised import run_supervised


def rejection_sample(ctx: StageContext, teacher_params, problems, n: int, temperature: float,
                     max_new_tokens: int, rng: jax.Array, chunk: int = 64):
  """Returns (kept (prompt_ids, completion_ids) pairs, stats). Keeps correct + well-formatted."""
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=n)
  kept, seen, total, correct = [], set(), 0, 0
  for i in range(0, len(problems), chunk):
    batch = problems[i:i + chunk]
    prompts = [ctx.encode_prompt(p.prompt) for p in batch]
    ro = sample_rollouts(teacher_params, ctx, prompts, sampling, jax.random.fold_in(rng, i))
    for j, text in enumerate(ro.texts):
      problem = batch[j // n]
      total += 1
      if not (ro.done[j] and check_completion(problem, text) and format_reward(text) == 1.0):
        continue
      correct += 1
      key = (problem.prompt, text)
      if key not in seen:
        seen.add(key)
        kept.append((ro.prompt_ids[j], ro.completion_ids[j]))
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
