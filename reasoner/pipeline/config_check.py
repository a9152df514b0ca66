"""Validation of a pipeline config: one clear error for an unknown or inconsistent field.

Blocks that a dataclass owns (the model, the losses, the reward, the optimisers) are checked by
building that dataclass, so its own checks and choices are the only ones. R1-Zero mode's
overrides (config.r1_zero_overrides) are applied here too (`r1_zero_config`).
"""

from __future__ import annotations

from ml_collections import ConfigDict

from reasoner.data.tasks import TASKS
from reasoner.losses.dpo import DPOConfig
from reasoner.losses.grpo import GRPOConfig
from reasoner.model.config import ModelConfig
from reasoner.pipeline.eval_source import parse_eval_source
from reasoner.rewards.composite import RewardConfig
from reasoner.stages import STAGES as STAGE_TABLE
from reasoner.stages import STAGE_NAMES as STAGES
from reasoner.stages.distill import INIT_MODELS, METHODS as DISTILL_METHODS, ON_POLICY_LOSSES
from reasoner.train.optim import as_optim_config

# Blocks built into a dataclass by the stage that reads them.
_DATACLASS_BLOCKS = {
    "grpo.loss": GRPOConfig.from_dict,
    "grpo.reward": RewardConfig.from_config,
    "dpo.loss": DPOConfig.from_dict,
    **{f"{stage}.optim": as_optim_config for stage in ("pretrain", "sft", "grpo", "distill", "dpo")},
}
_CHOICES = {
    "data.source": ("procedural", "gsm8k", "jsonl"),
    "distill.init_from": tuple(INIT_MODELS),
    "eval.split": ("test", "validation"),
    "distill.method": DISTILL_METHODS,
    "distill.on_policy.loss": ON_POLICY_LOSSES,
    "tokenizer.kind": ("sentencepiece", "from_init", "dir"),
}
_POSITIVE = (
    "pretrain.steps", "pretrain.batch_size", "pretrain.seq_len",
    "sft.steps", "sft.batch_size", "sft.seq_len",
    "grpo.steps", "grpo.prompts_per_step", "grpo.max_new_tokens", "grpo.epochs", "grpo.minibatches",
    "grpo.replay_batch_size", "grpo.replay_seq_len", "grpo.replay_problems",
    "distill.steps", "distill.batch_size", "distill.samples_per_problem", "distill.max_new_tokens",
    "distill.on_policy.prompts_per_step", "distill.on_policy.samples_per_prompt",
    "distill.on_policy.temperature",
    "dpo.steps", "dpo.batch_size", "dpo.max_new_tokens", "dpo.samples_per_problem",
    "eval.n_problems", "eval.k", "eval.max_new_tokens",
    "log_every", "checkpoint_every", "max_skipped_steps")


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _overrides(node, prefix: str = ""):
  """(dotted field, value) of every leaf of a nested overrides block."""
  for key, value in node.items():
    name = f"{prefix}.{key}" if prefix else key
    if isinstance(value, (dict, ConfigDict)):
      yield from _overrides(value, name)
    else:
      yield name, value


def r1_zero_config(config, log=None):
  """The config a run uses: `config` itself, or in R1-Zero mode (config.r1_zero) a copy with
  the fields of config.r1_zero_overrides set (configs/pipeline.py says which and why); `log`
  gets one line per field that changes. Applying it twice changes nothing more."""
  if not config.get("r1_zero", False) or not config.get("r1_zero_overrides"):
    return config
  out = ConfigDict(config.to_dict())
  for name, value in _overrides(config.r1_zero_overrides):
    *path, leaf = name.split(".")
    node = out
    for part in path:
      if part not in node:
        raise ValueError(f"config.r1_zero_overrides.{name}: config.{'.'.join(path)} does not exist")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"config.r1_zero_overrides.{name}: config.{name} does not exist")
    if node[leaf] != value:
      if log is not None:
        log(f"[r1_zero] {name}: {node[leaf]!r} -> {value!r}")
      node[leaf] = value
  return out


def resolve_stages(config) -> list[str]:
  """The stages to run, in pipeline order."""
  raw = str(config.stages).strip()
  if raw in ("all", ""):
    names = [s.name for s in STAGE_TABLE if not s.control or config.get("controls", False)]
  else:
    names = [s.strip() for s in raw.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages: unknown stage(s) {unknown}; valid: {', '.join(STAGES)} or 'all'")
  if raw in ("all", "") and (config.r1_zero or not config.grpo.replay_weight):
    names = [s for s in names if s != "replay_control"]  # no replay term to control for
  if config.r1_zero:
    names = [s for s in names if s != "sft"]
  if config.init != "pretrain":
    names = [s for s in names if s != "pretrain"]
  return [s for s in STAGES if s in names]


def control_temperatures(config: ConfigDict) -> list[float]:
  """config.eval.control_temperatures ("0.25,0.5,...") as floats; ValueError naming the field."""
  raw = str(config.eval.control_temperatures)
  try:
    temps = [float(t) for t in raw.split(",") if t.strip()]
  except ValueError:
    temps = []
  if not temps or any(not t > 0 for t in temps):
    raise ValueError(f"config.eval.control_temperatures={raw!r}: expected comma-separated "
                     "temperatures > 0, e.g. '0.5,1.0'")
  return temps


def validate_config(config) -> None:
  """Raises ValueError naming the offending field (of the config the run uses: R1-Zero mode's
  overrides applied)."""
  config = r1_zero_config(config)
  resolve_stages(config)
  control_temperatures(config)
  for key, choices in _CHOICES.items():
    if _get(config, key) not in choices:
      raise ValueError(f"config.{key}={_get(config, key)!r} is not one of {choices}")
  for key in _POSITIVE:
    if _get(config, key) <= 0:
      raise ValueError(f"config.{key} must be positive, got {_get(config, key)}")
  if config.grpo.group_size < 2:
    raise ValueError(f"config.grpo.group_size must be >= 2 for group-normalised advantages, got {config.grpo.group_size}")
  if config.grpo.prompts_per_step * config.grpo.group_size % config.grpo.minibatches:
    raise ValueError("config.grpo.minibatches must divide prompts_per_step * group_size")
  for key, build in _DATACLASS_BLOCKS.items():
    try:
      build(_get(config, key))
    except (TypeError, ValueError) as e:
      raise ValueError(f"config.{key}: {e}") from None
  for stage in ("pretrain", "sft", "grpo", "distill", "dpo"):
    budget = config[stage].get("tokens_per_device", 0)
    if budget < 0:
      raise ValueError(f"config.{stage}.tokens_per_device must be >= 0 (0 = no budget: whole "
                       f"batches at once), got {budget}")
    if config[stage].get("rollout_rows", 0) < 0:
      raise ValueError(f"config.{stage}.rollout_rows must be >= 0 (0 = the stage's default "
                       f"sampler call), got {config[stage].rollout_rows}")
  if not config.grpo.max_sampling_rounds >= 1:
    raise ValueError(f"config.grpo.max_sampling_rounds must be >= 1 (1 = no resampling), "
                     f"got {config.grpo.max_sampling_rounds}")
  if config.grpo.replay_weight < 0:
    raise ValueError(f"config.grpo.replay_weight must be >= 0 (0 = no replay), "
                     f"got {config.grpo.replay_weight}")
  if not 0.0 <= config.pretrain.get("tagged_fraction", 0.0) <= 1.0:
    raise ValueError(f"config.pretrain.tagged_fraction must be in [0, 1], "
                     f"got {config.pretrain.tagged_fraction}")
  if config.r1_zero:
    _check_r1_zero(config)
  _check_async_rl(config.grpo.async_rl)
  if config.distill.method == "on_policy" and config.distill.student:
    raise ValueError(f"config.distill.student={config.distill.student!r} needs "
                     f"config.distill.method='rejection': on-policy distillation samples from the "
                     f"student, so it starts from config.distill.init_from, not from scratch")
  if config.data.source == "procedural":
    tasks = [t.strip() for t in config.data.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if not tasks or bad:
      raise ValueError(f"config.data.tasks: unknown task(s) {bad or tasks}; available: {', '.join(sorted(TASKS))}")
  if config.data.source == "jsonl" and not config.data.path:
    raise ValueError("config.data.source='jsonl' needs config.data.path")
  parse_eval_source(config)  # raises naming config.eval.source
  if config.init not in ("pretrain",) and not config.init:
    raise ValueError("config.init must be 'pretrain' or the path of a model directory / Hugging Face folder")
  model = {k: v for k, v in config.model.to_dict().items() if k != "preset"}
  ModelConfig.from_dict(model)  # unknown or inconsistent model fields raise here


def _check_r1_zero(config) -> None:
  """R1-Zero trains without supervised data after M0: no replay of reference solutions, no M1."""
  for stage in ("grpo", "dpo"):
    weight = config[stage].replay_weight
    if weight:
      raise ValueError(f"config.{stage}.replay_weight={weight}: R1-Zero mode takes no replay (its "
                       f"SFT loss on reference solutions is SFT by another name); leave "
                       f"config.r1_zero_overrides.{stage}.replay_weight at 0")
  if config.distill.init_from == "sft":
    raise ValueError("config.distill.init_from='sft': R1-Zero mode makes no SFT model; the "
                     "student starts from 'pretrain' (M0, the default in R1-Zero mode) or 'grpo'")


def _check_async_rl(a) -> None:
  for key in ("max_staleness", "actor_devices"):
    if a[key] < 0:
      raise ValueError(f"config.grpo.async_rl.{key} must be >= 0, got {a[key]}")
  if not a.is_clip >= 1.0:
    raise ValueError(f"config.grpo.async_rl.is_clip must be >= 1 (the importance weight's "
                     f"truncation; 1 never up-weights a token), got {a.is_clip}")
