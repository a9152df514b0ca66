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

import dataclasses
import json
import os
import time

import jax

from reasoner import sharding
from reasoner.checkpoint import load_model, read_model_config, save_model
from reasoner.model.config import ModelConfig
from reasoner.pipeline import report as report_lib
from reasoner.pipeline.config_check import resolve_stages, validate_config
from reasoner.pipeline.evaluate import evaluate
from reasoner.pipeline.metrics_log import MetricsWriter
from reasoner.stages.context import StageContext, held_out_problems
from reasoner.tokenizer import load_tokenizer, train_sentencepiece, trained_for

# Which model each stage starts from.
_PARENT = {"sft": "m0", "grpo": "sft", "distill": "grpo", "dpo": "distill"}


def _log(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def build_tokenizer(cfg, workdir: str):
  tok_dir = os.path.join(workdir, "tokenizer")
  kind = cfg.tokenizer.kind
  if kind == "dir":
    return load_tokenizer(cfg.tokenizer.path)
  if kind == "from_init":
    path = os.path.join(cfg.init, "tokenizer") if os.path.isdir(os.path.join(cfg.init, "tokenizer")) else cfg.init
    return load_tokenizer(path)
  settings = {"vocab_size": cfg.tokenizer.vocab_size, "template": cfg.tokenizer.template,
              "tasks": cfg.data.tasks, "difficulty": cfg.data.difficulty, "seed": cfg.seed}
  stages = os.path.join(workdir, "stages")
  in_use = os.path.isdir(stages) and any(os.listdir(stages))
  if trained_for.reusable(tok_dir, settings, in_use):
    return load_tokenizer(tok_dir)
  from reasoner.stages.pretrain import corpus_document
  from reasoner.stages.context import stable_seed
  from reasoner.data.tasks import mixture
  from reasoner.tokenizer import format_prompt
  tasks = [t.strip() for t in cfg.data.tasks.split(",") if t.strip()]
  probs = mixture(tasks, "train", 4000, stable_seed(cfg.seed, "tokenizer"), cfg.data.difficulty)
  texts = [corpus_document(p) for p in probs] + [format_prompt(p.prompt, cfg.tokenizer.template) + p.solution for p in probs]
  _log(f"[tokenizer] training SentencePiece (vocab {cfg.tokenizer.vocab_size}) on {len(texts)} texts")
  tokenizer = train_sentencepiece(texts, tok_dir, vocab_size=cfg.tokenizer.vocab_size)
  trained_for.record(tok_dir, settings)
  return tokenizer


def config_model(cfg) -> ModelConfig:
  """The ModelConfig `config.model` describes (its `preset` name dropped)."""
  return ModelConfig.from_dict({k: v for k, v in cfg.model.to_dict().items() if k != "preset"})


def build_model_config(cfg, tokenizer) -> ModelConfig:
  model_cfg = config_model(cfg)
  if model_cfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size} tokens")
  return model_cfg


_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


def training_model_config(model_cfg: ModelConfig, cfg) -> ModelConfig:
  """`model_cfg` with the pipeline's LoRA fields (config.model.lora_*) and, under LoRA, its
  param_dtype (the frozen base's storage dtype); unchanged for lora_rank 0 and default fields."""
  fields = {k: cfg.model[k] for k in _LORA_FIELDS if k in cfg.model}
  if fields.get("lora_rank") and "param_dtype" in cfg.model:
    fields["param_dtype"] = cfg.model.param_dtype
  return model_cfg.replace(**fields)


def _load_initial(cfg, mesh, tokenizer):
  """M0 from a model directory or a Hugging Face folder, its vocab grown to fit `tokenizer`."""
  from reasoner.checkpoint import grow_vocab
  from reasoner.checkpoint.hf_io import import_hf
  from reasoner.tokenizer.base import padded_vocab_size
  path = cfg.init
  # Under LoRA the weights are a frozen base, read straight into its storage dtype.
  dtype = cfg.model.get("param_dtype") if cfg.model.get("lora_rank") else None
  if os.path.exists(os.path.join(path, "model_config.json")):
    params, model_cfg, _, _ = load_model(path, dtype=dtype)
  else:
    params, model_cfg = import_hf(path, **({"dtype": dtype} if dtype else {}))
  model_cfg = training_model_config(model_cfg.replace(dtype=cfg.model.dtype, remat=cfg.model.remat),
                                    cfg)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    _log(f"[init] growing the vocabulary {model_cfg.vocab_size} -> "
         f"{padded_vocab_size(tokenizer.vocab_size)} for the reasoning tags")
    params, model_cfg = grow_vocab(params, model_cfg, padded_vocab_size(tokenizer.vocab_size))
  return sharding.shard_params(params, model_cfg, mesh), model_cfg


class Pipeline:
  def __init__(self, cfg, workdir: str):
    validate_config(cfg)
    self.cfg, self.workdir = cfg, workdir
    os.makedirs(workdir, exist_ok=True)
    self.mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    self.tokenizer = build_tokenizer(cfg, workdir)
    self.writer = MetricsWriter(workdir)
    self.rng = jax.random.PRNGKey(cfg.seed)
    model_cfg = build_model_config(cfg, self.tokenizer) if cfg.init == "pretrain" else None
    self.ctx = StageContext(cfg, workdir, self.mesh, model_cfg, self.tokenizer, self.writer)
    self.report = {}
    self._eval_problems = None

  # ---- models on disk ----------------------------------------------------------------------
  def _final(self, name: str) -> str:
    return self.ctx.final_dir(name)

  def _has(self, name: str) -> bool:
    return os.path.exists(os.path.join(self._final(name), "model_config.json"))

  def _save(self, name: str, params, model_cfg):
    # Every process calls this: orbax coordinates multi-host writes itself.
    save_model(self._final(name), params, model_cfg, tokenizer=self.tokenizer,
               metadata={"stage": name, "seed": self.cfg.seed})

  def _load(self, name: str):
    if not self._has(name):
      raise FileNotFoundError(f"stage needs the {name} model at {self._final(name)}; "
                              f"run --config.stages={name} first (or the whole pipeline)")
    model_cfg = training_model_config(read_model_config(self._final(name)), self.cfg)
    dtype = model_cfg.param_dtype if model_cfg.lora_rank else None
    params, _, _, _ = load_model(self._final(name), mesh=self.mesh, dtype=dtype)
    return params, model_cfg

  # ---- evaluation ----------------------------------------------------------------------------
  def _evaluate(self, name: str, params, model_cfg, extra=None) -> dict:
    path = os.path.join(self.ctx.stage_dir(name), "eval.json")
    if os.path.exists(path):
      return json.load(open(path))
    e = self.cfg.eval
    if self._eval_problems is None:
      self._eval_problems = held_out_problems(self.ctx)
    ctx = dataclasses.replace(self.ctx, model_cfg=model_cfg)
    prompts = [ctx.encode_prompt(p.prompt) for p in self._eval_problems]
    t0 = time.time()
    metrics = evaluate(params, model_cfg, self.tokenizer, self._eval_problems, prompts, k=e.k,
                       temperature=e.temperature, max_new_tokens=e.max_new_tokens,
                       rng=jax.random.fold_in(self.rng, 999), mesh=self.mesh, batch_size=e.batch_size)
    metrics.update(extra or {})
    metrics["eval_seconds"] = time.time() - t0
    tmp = path + ".tmp"
    json.dump(metrics, open(tmp, "w"), indent=2)
    os.replace(tmp, path)
    _log(f"[eval] {name}: pass@1={100 * metrics['pass@1']:.1f}% greedy={100 * metrics['greedy_acc']:.1f}% "
         f"format={100 * metrics['format_rate']:.1f}% ({metrics['eval_seconds']:.0f}s)")
    return metrics

  # ---- stages --------------------------------------------------------------------------------
  def run(self) -> dict:
    cfg = self.cfg
    stages = resolve_stages(cfg)
    t_start = time.time()
    timings = {}
    # M0
    if cfg.init == "pretrain":
      if not self._has("m0"):
        if "pretrain" not in stages:
          raise FileNotFoundError(f"no M0 at {self._final('m0')}; include the pretrain stage")
        from reasoner.stages.pretrain import run_pretrain
        t0 = time.time()
        params = run_pretrain(self.ctx, jax.random.fold_in(self.rng, 0))
        self._save("m0", params, self.ctx.model_cfg)
        timings["pretrain"] = time.time() - t0
    elif not self._has("m0"):
      params, model_cfg = _load_initial(cfg, self.mesh, self.tokenizer)
      self._save("m0", params, model_cfg)
    m0_params, m0_cfg = self._load("m0")
    self.ctx = dataclasses.replace(self.ctx, model_cfg=m0_cfg)
    self.report["m0"] = self._evaluate("m0", m0_params, m0_cfg)
    del m0_params

    for name in ("sft", "grpo", "distill", "dpo"):
      if name not in stages and not self._has(name):
        continue
      if self._has(name):
        params, model_cfg = self._load(name)
      else:
        parent = "m0" if (name == "grpo" and cfg.r1_zero) else _PARENT[name]
        params, model_cfg = self._load(parent)
        self.ctx = dataclasses.replace(self.ctx, model_cfg=model_cfg)
        t0 = time.time()
        params = self._run_stage(name, params, jax.random.fold_in(self.rng, 1 + list(_PARENT).index(name)))
        model_cfg = self.ctx.model_cfg
        self._save(name, params, model_cfg)
        timings[name] = time.time() - t0
      extra = self._pref_metric(name, params) if name in ("distill", "dpo") and "dpo" in stages else {}
      self.report[name] = self._evaluate(name, params, model_cfg, extra)

    extra = {"seed": cfg.seed, "preset": cfg.preset, "stage_seconds": timings,
             "total_seconds": time.time() - t_start}
    if jax.process_index() == 0:
      report_lib.write_report(os.path.join(self.workdir, "report.json"), self.report, extra)
      self._plots()
      _log("\n" + report_lib.format_table(self.report))
      _log(f"\nreport: {os.path.join(self.workdir, 'report.json')}")
    self.writer.close()
    return self.report

  def _run_stage(self, name: str, params, rng):
    if name == "sft":
      from reasoner.stages.sft import run_sft
      return run_sft(self.ctx, params, rng)
    if name == "grpo" and self.cfg.grpo.async_rl.enabled:
      from reasoner.stages.async_grpo import run_async_grpo
      return run_async_grpo(self.ctx, params, rng)
    if name == "grpo":
      from reasoner.stages.grpo import run_grpo
      return run_grpo(self.ctx, params, rng)
    if name == "distill":
      from reasoner.stages.distill import run_distill, student_config
      d = self.cfg.distill
      teacher = params
      student_cfg = student_config(self.cfg, self.ctx.model_cfg)
      if student_cfg is not None:
        self.ctx = dataclasses.replace(self.ctx, model_cfg=student_cfg)
        student = sharding.sharded_init(student_cfg, jax.random.fold_in(rng, 7), self.mesh)
      else:
        student, _ = self._load({"sft": "sft", "pretrain": "m0", "grpo": "grpo"}[d.init_from])
      return run_distill(self.ctx, teacher, student, rng)
    from reasoner.stages.dpo import run_dpo
    return run_dpo(self.ctx, params, rng)

  def _pref_metric(self, name: str, params) -> dict:
    """Preference accuracy on held-out pairs sampled once from M3 (for the M3 and M4 rows)."""
    from reasoner.stages.dpo import held_out_pairs, preference_metrics
    path = os.path.join(self.ctx.stage_dir("dpo"), "heldout_pairs.json")
    m3, _ = self._load("distill")
    if not os.path.exists(path):
      pairs = held_out_pairs(self.ctx, m3, jax.random.fold_in(self.rng, 4242))
      json.dump(pairs, open(path + ".tmp", "w"))
      os.replace(path + ".tmp", path)
    pairs = [tuple(p) for p in json.load(open(path))]
    return {**preference_metrics(self.ctx, params, m3, pairs, self.cfg.dpo.seq_len),
            "n_pref_pairs": len(pairs)}

  def _plots(self):
    for stage, keys in (("grpo", ("reward", "reward/r_out", "response_length", "loss")),
                        ("pretrain", ("loss",)), ("sft", ("loss", "accuracy")),
                        ("distill", ("loss",)), ("dpo", ("loss", "reward_accuracy", "reward_margin"))):
      rows = [r for r in self.writer.read(stage) if r["step"] > 0]
      report_lib.plot_curves(rows, keys, os.path.join(self.workdir, f"{stage}_curves.png"), stage)


def run_pipeline(cfg, workdir: str) -> dict:
  return Pipeline(cfg, workdir).run()
