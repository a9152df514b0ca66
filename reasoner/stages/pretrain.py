"""Stage 0 (tiny preset only): pre-train M0 from scratch on a plain-text corpus of the tasks.

The corpus states each problem, its working and its answer in plain prose ("Question: ...
Working: ... The answer is ..."), never in the chat template or the `<think>`/`<answer>` tags,
so M0 knows the material but not the reasoning format that SFT will teach. With
`pretrain.tagged_fraction` > 0 that share of the documents (drawn by config.seed) are instead
the prompt in the chat template followed by the solution in the tags, standing in for the chat
transcripts and markup a real base model meets in pre-training: R1-Zero mode, which starts GRPO
from M0, can only reward the format once M0 writes it now and then (an M0 of prose only gives
every rollout reward 0). The default, 0, leaves the corpus as it was.

Pre-training from scratch trains every weight even when config.model.lora_rank > 0 (adapters on
a random base would learn nothing useful); the later stages then train adapters on M0.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.sharding import sharded_init
from reasoner.stages.context import StageContext, stable_seed
from reasoner.stages.supervised import run_supervised
from reasoner.tokenizer import format_prompt

_TAGS = re.compile(r"</?(think|answer)>")


def corpus_document(problem: Problem, tagged: bool = False, template: str = "plain") -> str:
  """Plain prose for one problem: question, working, answer (`tagged`: the prompt in `template`
  followed by the solution in the tags instead)."""
  if tagged:
    return format_prompt(problem.prompt, template) + problem.solution + "\n"
  think = re.search(r"<think>(.*?)</think>", problem.solution, re.S)
  working = _TAGS.sub("", think.group(1)).strip() if think else ""
  return f"Question: {problem.prompt}\nWorking: {working}\nThe answer is {problem.answer}.\n"


def corpus(ctx: StageContext, n: int) -> list[str]:
  problems = ctx.problems("train", n, "pretrain")
  fraction = float(ctx.config.pretrain.get("tagged_fraction", 0.0))
  draws = np.random.default_rng(stable_seed(ctx.config.seed, "tagged")).random(len(problems))
  return [corpus_document(p, bool(d < fraction), ctx.template) for p, d in zip(problems, draws)]


def run_pretrain(ctx: StageContext, params, rng: jax.Array):
  """M0: `params` (None: a fresh initialisation of ctx.model_cfg) trained on the corpus."""
  pretrain_cfg = ctx.config.pretrain
  ctx = ctx.for_model(ctx.model_cfg.replace(lora_rank=0))
  docs = corpus(ctx, pretrain_cfg.n_documents)
  examples = [([], ctx.tokenizer.encode(d) + [ctx.tokenizer.eos_id]) for d in docs]
  if params is None:
    params = sharded_init(ctx.model_cfg, jax.random.fold_in(rng, 0), ctx.mesh)
  return run_supervised(ctx, "pretrain", params, examples, pretrain_cfg, jax.random.fold_in(rng, 1))
