"""The agentic run, end to end and resumable: tokenizer -> SFT on tool demos -> GRPO or PPO ->
evaluation of each model with its tools and with every tool call answered by an error.

WORKDIR/tokenizer, WORKDIR/stages/{sft,grpo|ppo}/final (model directories), their step
checkpoints, metrics.jsonl and WORKDIR/agentic_report.json. A rerun skips what is finished.
"""

from __future__ import annotations

import json
import os
import time

import jax

from reasoner import sharding
from reasoner.agentic.tasks import tokenizer_corpus
from reasoner.agentic.train import (demo_rows, evaluate_agent, make_task, run_agentic_grpo,
                                    run_agentic_ppo, run_agentic_sft, train_problems)
from reasoner.checkpoint import load_model, save_model
from reasoner.model.config import ModelConfig
from reasoner.io import MetricsWriter, write_json
from reasoner.stages.context import stable_seed
from reasoner.tokenizer import load_tokenizer, padded_vocab_size, train_sentencepiece, trained_for

ALGOS = ("grpo", "ppo")


def build_tokenizer(config, workdir: str):
  path = os.path.join(workdir, "tokenizer")
  settings = {"vocab_size": config.tokenizer.vocab_size, "n_problems": config.tokenizer.n_problems,
              "template": config.env.template, "task": config.task.to_dict(), "seed": config.seed}
  stages = os.path.join(workdir, "stages")
  if trained_for.reusable(path, settings, os.path.isdir(stages) and any(os.listdir(stages))):
    return load_tokenizer(path)
  problems = train_problems(make_task(config), config, config.tokenizer.n_problems, "tokenizer")
  tokenizer = train_sentencepiece(tokenizer_corpus(problems, config.env.template), path,
                                  vocab_size=config.tokenizer.vocab_size)
  trained_for.record(path, settings)
  return tokenizer


def build_model_config(config, tokenizer) -> ModelConfig:
  fields = config.model.to_dict()
  if not fields.get("vocab_size"):
    fields["vocab_size"] = padded_vocab_size(tokenizer.vocab_size)
  model_cfg = ModelConfig.from_dict(fields)
  if model_cfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the "
                     f"tokenizer's {tokenizer.vocab_size} tokens")
  need = config.rollout.max_len + config.rollout.max_new_tokens
  if model_cfg.max_seq_len < need:
    raise ValueError(f"config.model.max_seq_len={model_cfg.max_seq_len} < rollout.max_len + "
                     f"rollout.max_new_tokens = {need}")
  return model_cfg


def _cached_json(path: str, compute):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = compute()
  write_json(path, value)
  return value


EVAL_MODES = (("with_tools", True, True), ("without_tools", False, True),
              ("with_tools_sampled", True, False), ("without_tools_sampled", False, False))


def format_report(report: dict) -> str:
  """One line per model and tool setting: greedy accuracy / tool use, then the same sampled."""
  head = (f"{'model':<6} {'tools':<8} {'greedy acc':>10} {'tool use':>9} {'sampled acc':>11} "
          f"{'tool use':>9} {'format':>7}")
  lines = [head, "-" * len(head)]
  for name, evals in report.items():
    for mode in ("with", "without"):
      g, s = evals[f"{mode}_tools"], evals[f"{mode}_tools_sampled"]
      lines.append(f"{name:<6} {mode:<8} {100 * g['accuracy']:>9.1f}% {100 * g['tool_use_rate']:>8.1f}% "
                   f"{100 * s['accuracy']:>10.1f}% {100 * s['tool_use_rate']:>8.1f}% "
                   f"{100 * g['format']:>6.1f}%")
  return "\n".join(lines)


def run_agentic(config, workdir: str) -> dict:
  """Runs (or resumes) the whole agentic experiment; returns {model: {with_tools, without_tools}}."""
  if config.algo not in ALGOS:
    raise ValueError(f"unknown config.algo {config.algo!r}; expected one of {ALGOS}")
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  tokenizer = build_tokenizer(config, workdir)
  model_cfg = build_model_config(config, tokenizer)
  writer = MetricsWriter(workdir)
  rng = jax.random.PRNGKey(config.seed)
  task = make_task(config)
  stage_dir = lambda name: os.path.join(workdir, "stages", name)
  final = lambda name: os.path.join(stage_dir(name), "final")
  has = lambda name: os.path.exists(os.path.join(final(name), "model_config.json"))
  timings = {}

  def stage(name, parent_params, train):
    if has(name):
      return load_model(final(name), mesh=mesh)[0]
    start = time.time()
    os.makedirs(stage_dir(name), exist_ok=True)
    params = train(parent_params)
    save_model(final(name), params, model_cfg, tokenizer=tokenizer,
               metadata={"stage": name, "seed": config.seed, "agentic": True})
    timings[name] = time.time() - start
    return params

  def sft(_):
    params = sharding.sharded_init(model_cfg, jax.random.fold_in(rng, 0), mesh)
    return run_agentic_sft(params, model_cfg, demo_rows(task, tokenizer, config), config,
                           jax.random.fold_in(rng, 1), stage_dir=stage_dir("sft"), writer=writer,
                           mesh=mesh)

  def rl(params):
    run = run_agentic_grpo if config.algo == "grpo" else run_agentic_ppo
    return run(params, model_cfg, tokenizer, config, jax.random.fold_in(rng, 2),
               stage_dir=stage_dir(config.algo), writer=writer, mesh=mesh)

  test = task.generate("test", config.eval.n_problems, stable_seed(config.seed, "agentic_eval"))
  report = {}
  params = None
  for name, train in (("sft", sft), (config.algo, rl)):
    params = stage(name, params, train)
    report[name] = {}
    for mode, enabled, greedy in EVAL_MODES:
      path = os.path.join(stage_dir(name), f"eval_{mode}.json")
      report[name][mode] = _cached_json(path, lambda: evaluate_agent(
          params, model_cfg, tokenizer, test, config, jax.random.fold_in(rng, 3),
          tools_enabled=enabled, greedy=greedy, mesh=mesh))
      m = report[name][mode]
      print(f"[eval] {name} {mode}: accuracy={100 * m['accuracy']:.1f}% "
            f"tool_use={100 * m['tool_use_rate']:.1f}% format={100 * m['format']:.1f}%", flush=True)
  writer.close()
  write_json(os.path.join(workdir, "agentic_report.json"), {
      "report": report, "algo": config.algo, "seed": config.seed, "stage_seconds": timings,
      "total_seconds": time.time() - t0})
  print("\n" + format_report(report), flush=True)
  return report
