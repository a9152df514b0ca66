"""Validation of a pipeline config: one clear error for an unknown or inconsistent field."""

from __future__ import annotations

from reasoner.data.tasks import TASKS
from reasoner.model.config import ModelConfig
from reasoner.stages import STAGE_NAMES as STAGES
_CHOICES = {
    "data.source": ("procedural", "gsm8k", "jsonl"),
    "grpo.loss.loss_agg": ("seq_mean", "token_mean", "constant"),
    "grpo.loss.kl_estimator": ("k1", "k3"),
    "dpo.loss_type": ("sigmoid", "ipo"),
    "distill.init_from": ("sft", "pretrain", "grpo"),
    "tokenizer.kind": ("sentencepiece", "from_init", "dir"),
}
_POSITIVE = ("pretrain.steps", "pretrain.batch_size", "pretrain.seq_len", "sft.steps", "sft.batch_size",
             "sft.seq_len", "grpo.steps", "grpo.prompts_per_step", "grpo.max_new_tokens", "grpo.epochs",
             "grpo.minibatches", "grpo.replay_batch_size", "grpo.replay_problems", "distill.steps",
             "distill.batch_size", "distill.samples_per_problem", "dpo.steps", "dpo.batch_size",
             "eval.n_problems", "eval.k", "eval.max_new_tokens", "log_every", "checkpoint_every")


def _get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  return node


def resolve_stages(cfg) -> list[str]:
  """The stages to run, in pipeline order."""
  raw = str(cfg.stages).strip()
  names = list(STAGES) if raw in ("all", "") else [s.strip() for s in raw.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages: unknown stage(s) {unknown}; valid: {', '.join(STAGES)} or 'all'")
  if cfg.r1_zero:
    names = [s for s in names if s != "sft"]
  if cfg.init != "pretrain":
    names = [s for s in names if s != "pretrain"]
  return [s for s in STAGES if s in names]


def validate_config(cfg) -> None:
  """Raises ValueError naming the offending field."""
  resolve_stages(cfg)
  for key, choices in _CHOICES.items():
    if _get(cfg, key) not in choices:
      raise ValueError(f"config.{key}={_get(cfg, key)!r} is not one of {choices}")
  for key in _POSITIVE:
    if _get(cfg, key) <= 0:
      raise ValueError(f"config.{key} must be positive, got {_get(cfg, key)}")
  if cfg.grpo.group_size < 2:
    raise ValueError(f"config.grpo.group_size must be >= 2 for group-normalised advantages, got {cfg.grpo.group_size}")
  if cfg.grpo.prompts_per_step * cfg.grpo.group_size % cfg.grpo.minibatches:
    raise ValueError("config.grpo.minibatches must divide prompts_per_step * group_size")
  if not 0 <= cfg.grpo.loss.epsilon_low < 1 or cfg.grpo.loss.epsilon_high < 0:
    raise ValueError("config.grpo.loss.epsilon_low must be in [0, 1) and epsilon_high >= 0")
  if cfg.grpo.replay_weight < 0:
    raise ValueError(f"config.grpo.replay_weight must be >= 0 (0 = no replay), "
                     f"got {cfg.grpo.replay_weight}")
  _check_async_rl(cfg.grpo.async_rl)
  if cfg.data.source == "procedural":
    tasks = [t.strip() for t in cfg.data.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if not tasks or bad:
      raise ValueError(f"config.data.tasks: unknown task(s) {bad or tasks}; available: {', '.join(sorted(TASKS))}")
  if cfg.data.source == "jsonl" and not cfg.data.path:
    raise ValueError("config.data.source='jsonl' needs config.data.path")
  if cfg.init not in ("pretrain",) and not cfg.init:
    raise ValueError("config.init must be 'pretrain' or the path of a model directory / Hugging Face folder")
  model = {k: v for k, v in cfg.model.to_dict().items() if k != "preset"}
  ModelConfig.from_dict(model)  # unknown or inconsistent model fields raise here


def _check_async_rl(a) -> None:
  for key in ("max_staleness", "actor_devices"):
    if a[key] < 0:
      raise ValueError(f"config.grpo.async_rl.{key} must be >= 0, got {a[key]}")
  if not a.is_clip >= 1.0:
    raise ValueError(f"config.grpo.async_rl.is_clip must be >= 1 (the importance weight's "
                     f"truncation; 1 never up-weights a token), got {a.is_clip}")
