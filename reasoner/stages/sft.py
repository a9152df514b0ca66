"""Stage 1 (M0 -> M1): SFT on reference solutions in the <think>/<answer> format."""

from __future__ import annotations

import jax

from reasoner.stages.context import StageContext
from reasoner.stages.supervised import run_supervised


def sft_examples(ctx: StageContext, problems) -> list[tuple[list[int], list[int]]]:
  return [(ctx.encode_prompt(p.prompt), ctx.encode_response(p.solution)) for p in problems]


def run_sft(ctx: StageContext, params, rng: jax.Array):
  sft_cfg = ctx.config.sft
  problems = ctx.problems("train", sft_cfg.n_examples, "sft")
  return run_supervised(ctx, "sft", params, sft_examples(ctx, problems), sft_cfg, rng)
