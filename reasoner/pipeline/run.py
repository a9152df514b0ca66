"""The four-stage pipeline, end to end, resumable.

M0 (pre-trained here, or loaded) -> SFT (M1) -> GRPO (M2) -> rejection-sampling distillation
(M3) -> DPO (M4). Each finished stage leaves `WORKDIR/stages/NAME/final` (a model directory) and
`eval.json`; a rerun skips finished stages and resumes an unfinished one from its last
checkpoint. Results go to WORKDIR/report.json, a printed table and PNG curves.

LoRA (config.model.lora_rank > 0): every stage after pre-training trains fresh adapters on the
model it starts from, frozen in config.model.param_dtype, and saves them merged into the weights
(`reasoner/stages/trainable.py`), so each `final` directory holds plain params. The lora_* fields
and that param_dtype come from the pipeline config onto every model loaded from disk.
"""

from __future__ import annotations

import time
from typing import Optional

import jax
from etils import epath
from ml_collections import ConfigDict

from reasoner import sharding
from reasoner.checkpoint import load_model, read_model_config
from reasoner.io import (MetricsWriter, barrier, exists, is_writer, join, log, makedirs, read_json,
                         write_json)
from reasoner.model.config import ModelConfig
from reasoner.pipeline import report as report_lib
from reasoner.pipeline.config_check import (control_temperatures, r1_zero_config, resolve_stages,
                                            validate_config)
from reasoner.pipeline.eval_source import PREFIX as EVAL_SOURCE_PREFIX
from reasoner.pipeline.eval_source import eval_source_problems
from reasoner.pipeline.evaluate import evaluate, prefixed
from reasoner.pipeline.fingerprint import check_fingerprint, eval_file
from reasoner.stages import (STAGES, Stage, StageContext, config_model, has_model,
                             held_out_problems, load_stage_model, save_stage_model, stable_seed,
                             training_model_config)
from reasoner.stages.dpo import held_out_pairs, preference_metrics
from reasoner.stages.models import load_model_dir
from reasoner.stages.pretrain import corpus_document
from reasoner.tokenizer import format_prompt, load_tokenizer, train_sentencepiece, trained_for
from reasoner.data.tasks import mixture


# The report's row of the best-temperature control (M1 at its best validation temperature).
BEST_T_ROW = "sft@best_t"


def build_tokenizer(config: ConfigDict, workdir: str):
  tok_dir = join(workdir, "tokenizer")
  kind = config.tokenizer.kind
  if kind == "dir":
    return load_tokenizer(config.tokenizer.path)
  if kind == "from_init":
    init_tok = join(config.init, "tokenizer")
    return load_tokenizer(init_tok if exists(init_tok) else config.init)
  # The settings the tokenizer is trained for: a rerun with others retrains it (or, once models
  # of this workdir use it, refuses).
  settings = {"vocab_size": config.tokenizer.vocab_size, "template": config.tokenizer.template,
              "tasks": config.data.tasks, "difficulty": config.data.difficulty,
              "seed": config.seed}
  stages = join(workdir, "stages")
  in_use = exists(stages) and any(True for _ in epath.Path(stages).iterdir())
  reuse = trained_for.reusable(tok_dir, settings, in_use)  # every process decides (or raises)
  barrier("tokenizer checked")
  if not reuse and is_writer():
    trained_for.discard(tok_dir)
    tasks = [t.strip() for t in config.data.tasks.split(",") if t.strip()]
    probs = mixture(tasks, "train", 4000, stable_seed(config.seed, "tokenizer"),
                    config.data.difficulty)
    texts = ([corpus_document(p) for p in probs]
             + [format_prompt(p.prompt, config.tokenizer.template) + p.solution for p in probs])
    log(f"[tokenizer] training SentencePiece (vocab {config.tokenizer.vocab_size}) on "
        f"{len(texts)} texts")
    train_sentencepiece(texts, tok_dir, vocab_size=config.tokenizer.vocab_size)
    trained_for.record(tok_dir, settings)
  barrier("tokenizer")  # the other processes load what process 0 trained
  return load_tokenizer(tok_dir)


def build_model_config(config: ConfigDict, tokenizer) -> ModelConfig:
  model_cfg = config_model(config)
  if model_cfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size} tokens")
  return model_cfg


HF_IMPORT_DTYPE = "float32"  # `import_hf`'s default: a full fine-tune's weights from an HF folder


def initial_weights_dtype(config: ConfigDict) -> Optional[str]:
  """The dtype `_load_initial` reads M0's weights in; None = as stored. Under LoRA the weights
  are a frozen base, read straight into config.model.param_dtype; a full fine-tune (lora_rank 0)
  keeps a model directory's saved dtype and imports a Hugging Face folder in HF_IMPORT_DTYPE,
  whatever config.model.param_dtype says."""
  if config.model.get("lora_rank"):
    return config.model.get("param_dtype")
  return None


def trained_weights_dtype(config: ConfigDict) -> str:
  """The dtype the stages after M0 hold the model's weights in (the frozen base under LoRA, else
  the trained weights), as the runner loads them: `initial_weights_dtype`, or for a full
  fine-tune config.model.param_dtype when pre-training makes M0, a model directory's saved
  param_dtype, or HF_IMPORT_DTYPE for a Hugging Face folder (or an init not given yet)."""
  dtype = initial_weights_dtype(config)
  if dtype:
    return str(dtype)
  if config.init == "pretrain":
    return str(config.model.param_dtype)
  if config.init and exists(join(config.init, "model_config.json")):
    return read_model_config(config.init).param_dtype
  return HF_IMPORT_DTYPE


def _load_initial(config: ConfigDict, mesh, tokenizer):
  """M0 from a model directory or a Hugging Face folder, its vocab grown to fit `tokenizer`."""
  from reasoner.checkpoint import grow_vocab
  from reasoner.checkpoint.hf_io import import_hf
  from reasoner.tokenizer.base import padded_vocab_size
  path = config.init
  dtype = initial_weights_dtype(config)
  if exists(join(path, "model_config.json")):
    params, model_cfg, _, _ = load_model(path, dtype=dtype)
  else:
    params, model_cfg = import_hf(path, **({"dtype": dtype} if dtype else {}))
  model_cfg = training_model_config(
      model_cfg.replace(dtype=config.model.dtype, remat=config.model.remat), config)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    log(f"[init] growing the vocabulary {model_cfg.vocab_size} -> "
         f"{padded_vocab_size(tokenizer.vocab_size)} for the reasoning tags")
    params, model_cfg = grow_vocab(params, model_cfg, padded_vocab_size(tokenizer.vocab_size))
  return sharding.shard_params(params, model_cfg, mesh), model_cfg


class Pipeline:
  """Walks `reasoner.stages.STAGES`: each stage starts from its parent's final model, and each
  final model is evaluated once (eval.json); finished stages are skipped on a rerun."""

  def __init__(self, config: ConfigDict, workdir: str):
    config = r1_zero_config(config, log)  # R1-Zero mode's overrides (configs/pipeline.py)
    validate_config(config)
    self.config, self.workdir = config, workdir
    makedirs(workdir)
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    self.tokenizer = build_tokenizer(config, workdir)
    self.writer = MetricsWriter(workdir)
    self.rng = jax.random.PRNGKey(config.seed)
    # Only pre-training builds a model from config.model; every other stage starts from a model
    # on disk and gets a context of that model's shape (`_context_for`).
    model_cfg = (build_model_config(config, self.tokenizer) if config.init == "pretrain"
                 else config_model(config))
    self.ctx = StageContext(config, workdir, self.mesh, model_cfg, self.tokenizer, self.writer)
    self.report = {}
    self._eval_problems = None
    self._source_problems = (None, [])  # (config.eval.source, its problems), loaded once

  # ---- evaluation ----------------------------------------------------------------------------
  def _evaluate(self, model: str, params, model_cfg: ModelConfig, extra=None) -> dict:
    """eval.json of `model` (eval_r1_zero.json in R1-Zero mode: `eval_file`): the test split of
    config.data, plus config.eval.source's set under 'ood/' (reasoner/pipeline/eval_source.py).
    A cached one made with another eval.source keeps its test-split metrics and has only the
    second set redone."""
    path = join(self.ctx.stage_dir(model), eval_file(self.config))
    e = self.config.eval
    source = str(e.get("source", "") or "").strip()
    cached = read_json(path) if exists(path) else None
    if cached is not None and cached.get("eval_source", "") == source:
      return cached
    t0 = time.time()
    if cached is None:
      if self._eval_problems is None:
        self._eval_problems = held_out_problems(self.ctx)
      metrics = self._metrics(params, model_cfg, self._eval_problems, e.temperature)
      metrics.update(extra or {})
    else:
      metrics = {k: v for k, v in cached.items()
                 if not k.startswith(EVAL_SOURCE_PREFIX) and k != "eval_source"}
    if source:
      if self._source_problems[0] != source:
        self._source_problems = (source, eval_source_problems(self.config, e.n_problems))
      metrics.update(prefixed(self._metrics(params, model_cfg, self._source_problems[1],
                                            e.temperature, stream=1), EVAL_SOURCE_PREFIX))
      metrics["eval_source"] = source
    metrics["eval_seconds"] = metrics.get("eval_seconds", 0.0) + time.time() - t0
    if is_writer():
      write_json(path, metrics)
    ood = (f"; {source}: pass@1={100 * metrics[EVAL_SOURCE_PREFIX + 'pass@1']:.1f}% "
           f"greedy={100 * metrics[EVAL_SOURCE_PREFIX + 'greedy_acc']:.1f}%" if source else "")
    log(f"[eval] {model}: pass@1={100 * metrics['pass@1']:.1f}% "
         f"greedy={100 * metrics['greedy_acc']:.1f}% "
         f"format={100 * metrics['format_rate']:.1f}%{ood} ({metrics['eval_seconds']:.0f}s)")
    return metrics

  def _metrics(self, params, model_cfg: ModelConfig, problems, temperature: float,
               greedy: bool = True, stream: int = 0) -> dict:
    """`evaluate` on `problems` with config.eval's settings at `temperature`; `stream` picks the
    random stream (0: the test split's, also used by the controls, so equal settings give equal
    numbers; 1: the second evaluation set's)."""
    e = self.config.eval
    prompts = [self.ctx.encode_prompt(p.prompt) for p in problems]
    rng = jax.random.fold_in(self.rng, 999)
    return evaluate(params, model_cfg, self.tokenizer, problems, prompts, k=e.k,
                    temperature=temperature, max_new_tokens=e.max_new_tokens,
                    rng=jax.random.fold_in(rng, stream) if stream else rng, mesh=self.mesh,
                    batch_size=e.batch_size, greedy=greedy)

  def _best_temperature(self, model: str, params, model_cfg: ModelConfig) -> dict:
    """The best-temperature control: `model` sampled at each of eval.control_temperatures on
    validation problems, then evaluated like every model at the one with the best validation
    pass@1 (ties: the lowest). Same random streams as its plain evaluation, so at
    eval.temperature it reproduces that evaluation's numbers."""
    path = join(self.ctx.stage_dir(model), "eval_best_temperature.json")
    if exists(path):
      return read_json(path)
    temps = control_temperatures(self.config)
    validation = held_out_problems(self.ctx, split="validation")
    sweep = {t: self._metrics(params, model_cfg, validation, t, greedy=False)["pass@1"]
             for t in temps}
    best = max(temps, key=lambda t: (sweep[t], -t))
    if self._eval_problems is None:
      self._eval_problems = held_out_problems(self.ctx)
    metrics = self._metrics(params, model_cfg, self._eval_problems, best)
    metrics.update(temperature=best, validation_pass_at_1={str(t): v for t, v in sweep.items()})
    if is_writer():
      write_json(path, metrics)
    log(f"[eval] {model} at the best validation temperature {best:g} "
        f"({', '.join(f'T={t:g}: {100 * v:.1f}%' for t, v in sweep.items())}): "
        f"pass@1={100 * metrics['pass@1']:.1f}% greedy={100 * metrics['greedy_acc']:.1f}%")
    return metrics

  # ---- stages --------------------------------------------------------------------------------
  def run(self) -> dict:
    config = self.config
    selected = resolve_stages(config)
    t_start = time.time()
    timings = {}
    for index, stage in enumerate(STAGES):
      if has_model(self.ctx, stage.model) or stage.name in selected or (
          stage.parent is None and config.init != "pretrain"):
        # Before anything of the model's is reused (its final directory, eval.json, and the step
        # checkpoints of the stage making it, which the fingerprint predates).
        check_fingerprint(config, stage.model, self.ctx.stage_dir(stage.model), log)
      if has_model(self.ctx, stage.model):
        params, model_cfg = load_stage_model(self.ctx, stage.model)
      elif stage.parent is None and config.init != "pretrain":
        params, model_cfg = _load_initial(config, self.mesh, self.tokenizer)
        save_stage_model(self.ctx, stage.model, params, model_cfg)
      elif stage.name in selected:
        t0 = time.time()
        params, model_cfg = self._run_stage(stage, jax.random.fold_in(self.rng, index))
        save_stage_model(self.ctx, stage.model, params, model_cfg)
        timings[stage.name] = time.time() - t0
      elif stage.parent is None:
        raise FileNotFoundError(f"no M0 at {self.ctx.final_dir(stage.model)}; include the "
                                f"{stage.name} stage")
      else:
        continue
      extra = (self._pref_metric(params) if stage.name in ("distill", "dpo") and "dpo" in selected
               else {})
      self.report[stage.model] = self._evaluate(stage.model, params, model_cfg, extra)
      if stage.model == "sft" and config.controls:
        self.report[BEST_T_ROW] = self._best_temperature(stage.model, params, model_cfg)
      del params

    extra = {"seed": config.seed, "preset": config.preset, "stage_seconds": timings,
             "total_seconds": time.time() - t_start}
    if jax.process_index() == 0:
      grpo_curve = report_lib.curve_summary(
          [r for r in self.writer.read("grpo") if r["step"] > 0], report_lib.GRPO_CURVES)
      if grpo_curve:
        extra["grpo_curve"] = grpo_curve
      report_lib.write_report(join(self.workdir, "report.json"), self.report, extra)
      self._plots()
      log("\n" + report_lib.format_table(self.report))
      if grpo_curve:
        log(report_lib.format_curve_summary("grpo", grpo_curve))
      log(f"\nreport: {join(self.workdir, 'report.json')}")
    self.writer.close()
    return self.report

  def _run_stage(self, stage: Stage, rng: jax.Array):
    """Runs `stage` from its parent's final model; returns (params, their ModelConfig)."""
    parent = stage.parent_model(self.config)
    if parent is None:
      ctx, params = self.ctx, None
    else:
      teacher = str(self.config.distill.get("teacher", "") or "") if stage.name == "distill" else ""
      params, parent_cfg = (self._external_teacher(teacher) if teacher
                            else load_stage_model(self.ctx, parent))
      ctx = self.ctx.for_model(parent_cfg)
    return stage.run(ctx, params, rng), stage.output_config(ctx)

  def _external_teacher(self, path: str):
    """config.distill.teacher: the model directory at `path` (e.g. a larger run's M2) as the
    distillation teacher; it must use this run's tokenizer."""
    if not exists(join(path, "model_config.json")):
      raise FileNotFoundError(f"config.distill.teacher={path!r}: no model directory there "
                              "(expected model_config.json, e.g. WORKDIR/stages/grpo/final)")
    tok_dir = join(path, "tokenizer")
    if exists(tok_dir):
      theirs, ours = load_tokenizer(tok_dir), self.tokenizer
      same = theirs.vocab_size == ours.vocab_size and all(
          theirs.decode([i]) == ours.decode([i]) for i in range(ours.vocab_size))
      if not same:
        raise ValueError(f"config.distill.teacher={path!r} uses another tokenizer than this run's "
                         f"({join(self.workdir, 'tokenizer')}); copy its tokenizer/ into the "
                         "workdir before the first stage")
    log(f"[distill] teacher: {path}")
    return load_model_dir(self.ctx, path)

  def _pref_metric(self, params) -> dict:
    """Preference accuracy on held-out pairs sampled once from M3 (for the M3 and M4 rows)."""
    path = join(self.ctx.stage_dir("dpo"), "heldout_pairs.json")
    m3, m3_cfg = load_stage_model(self.ctx, "distill")
    m3_ctx = self.ctx.for_model(m3_cfg)
    if exists(path):
      pairs = [tuple(p) for p in read_json(path)]
    else:  # every process samples the same pairs; one writes them
      pairs = held_out_pairs(m3_ctx, m3, jax.random.fold_in(self.rng, 4242))
      if is_writer():
        write_json(path, pairs, indent=None)
    return {**preference_metrics(m3_ctx, params, m3, pairs, self.config.dpo.seq_len),
            "n_pref_pairs": len(pairs)}

  def _plots(self):
    for stage, keys in (("grpo", (*report_lib.GRPO_CURVES, "loss")),
                        ("pretrain", ("loss",)), ("sft", ("loss", "accuracy")),
                        ("distill", ("loss",)), ("dpo", ("loss", "reward_accuracy", "reward_margin"))):
      rows = [r for r in self.writer.read(stage) if r["step"] > 0]
      report_lib.plot_curves(rows, keys, join(self.workdir, f"{stage}_curves.png"), stage)


def run_pipeline(config: ConfigDict, workdir: str) -> dict:
  return Pipeline(config, workdir).run()
