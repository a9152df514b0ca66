"""The models the stages hand each other: `WORKDIR/stages/NAME/final` model directories.

Model names are the stage names, except M0 ("m0"), which pre-training makes or `config.init`
gives. LoRA (config.model.lora_rank > 0): the lora_* fields and the frozen base's param_dtype
come from the pipeline config onto every model loaded from disk.
"""

from __future__ import annotations


from ml_collections import ConfigDict

from reasoner.io import exists, join
from reasoner.checkpoint import load_model, read_model_config, save_model
from reasoner.model.config import ModelConfig
from reasoner.stages.context import StageContext

_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


def config_model(config: ConfigDict) -> ModelConfig:
  """The ModelConfig `config.model` describes (its `preset` name dropped)."""
  return ModelConfig.from_dict({k: v for k, v in config.model.to_dict().items() if k != "preset"})


def training_model_config(model_cfg: ModelConfig, config: ConfigDict) -> ModelConfig:
  """`model_cfg` with the pipeline's LoRA fields (config.model.lora_*) and, under LoRA, its
  param_dtype (the frozen base's storage dtype); unchanged for lora_rank 0 and default fields."""
  fields = {k: config.model[k] for k in _LORA_FIELDS if k in config.model}
  if fields.get("lora_rank") and "param_dtype" in config.model:
    fields["param_dtype"] = config.model.param_dtype
  return model_cfg.replace(**fields)


def has_model(ctx: StageContext, name: str) -> bool:
  return exists(join(ctx.final_dir(name), "model_config.json"))


def save_stage_model(ctx: StageContext, name: str, params, model_cfg: ModelConfig) -> None:
  # Every process calls this: orbax coordinates multi-host writes itself.
  save_model(ctx.final_dir(name), params, model_cfg, tokenizer=ctx.tokenizer,
             metadata={"stage": name, "seed": ctx.config.seed})


def load_stage_model(ctx: StageContext, name: str):
  """(params, model_cfg) of the model stage `name` left, sharded over ctx.mesh."""
  if not has_model(ctx, name):
    raise FileNotFoundError(f"stage needs the {name} model at {ctx.final_dir(name)}; "
                            f"run --config.stages={name} first (or the whole pipeline)")
  return load_model_dir(ctx, ctx.final_dir(name))


def load_model_dir(ctx: StageContext, path: str):
  """(params, model_cfg) of the model directory `path`, sharded over ctx.mesh, with the
  pipeline's LoRA fields (`training_model_config`)."""
  model_cfg = training_model_config(read_model_config(path), ctx.config)
  dtype = model_cfg.param_dtype if model_cfg.lora_rank else None
  params, _, _, _ = load_model(path, mesh=ctx.mesh, dtype=dtype)
  return params, model_cfg


def stage_model_config(ctx: StageContext, name: str) -> ModelConfig:
  """The ModelConfig of the model stage `name` left (read from its directory, no weights)."""
  return training_model_config(read_model_config(ctx.final_dir(name)), ctx.config)
