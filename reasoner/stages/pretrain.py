"""Stage 0 (tiny preset only): pre-train M0 from scratch on a plain-text corpus of the tasks.

The corpus states each problem, its working and its answer in plain prose ("Question: ...
Working: ... The answer is ..."), never in the chat template or the `<think>`/`<answer>` tags,
so M0 knows the material but not the reasoning format that SFT will teach.

Pre-training from scratch trains every weight even when config.model.lora_rank > 0 (adapters on
a random base would learn nothing useful); the later stages then train adapters on M0.
"""

from __future__ import annotations

import re

import jax

from reasoner.data.problem import Problem
from reasoner.sharding import sharded_init
from reasoner.stages.context import StageContext
from reasoner.stages.supervised import run_supervised

_TAGS = re.compile(r"</?(think|answer)>")


def corpus_document(problem: Problem) -> str:
  """Plain prose for one problem: question, working, answer."""
  think = re.search(r"<think>(.*?)</think>", problem.solution, re.S)
  working = _TAGS.sub("", think.group(1)).strip() if think else ""
  return f"Question: {problem.prompt}\nWorking: {working}\nThe answer is {problem.answer}.\n"


def corpus(ctx: StageContext, n: int) -> list[str]:
  return [corpus_document(p) for p in ctx.problems("train", n, "pretrain")]


def run_pretrain(ctx: StageContext, params, rng: jax.Array):
  """M0: `params` (None: a fresh initialisation of ctx.model_cfg) trained on the corpus."""
  pretrain_cfg = ctx.config.pretrain
  ctx = ctx.for_model(ctx.model_cfg.replace(lora_rank=0))
  docs = corpus(ctx, pretrain_cfg.n_documents)
  examples = [([], ctx.tokenizer.encode(d) + [ctx.tokenizer.eos_id]) for d in docs]
  if params is None:
    params = sharded_init(ctx.model_cfg, jax.random.fold_in(rng, 0), ctx.mesh)
  return run_supervised(ctx, "pretrain", params, examples, pretrain_cfg, jax.random.fold_in(rng, 1))
