"""A model directory: what one stage hands to the next (weights, shape, tokenizer, metadata).

  DIR/model_config.json   ModelConfig.to_dict()
  DIR/params/             the parameter pytree (Orbax; sharded arrays saved shard by shard);
                          with lora_rank > 0 it may carry LoRA adapters (layers/lora, see
                          reasoner.model.lora); the pipeline's stages save them merged
  DIR/tokenizer/          tokenizer.save(...) output (optional)
  DIR/metadata.json       free-form JSON (optional)

`save_model` writes everything into DIR.tmp-XXXX and renames it to DIR at the end, so DIR is
either absent, the old model, or the complete new one.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, SingleDeviceSharding

from reasoner.model import decoder
from reasoner.model.config import ModelConfig
from reasoner.checkpoint.orbax_checkpoint import checkpoint_path

CONFIG_FILE = "model_config.json"
METADATA_FILE = "metadata.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def _multihost() -> bool:
  return jax.process_count() > 1


def _sync(name: str) -> None:
  if _multihost():
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _shared_token() -> str:
  """A random suffix that every process agrees on."""
  token = secrets.randbits(31)
  if _multihost():
    from jax.experimental import multihost_utils
    import numpy as np
    token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
  return f"{token:08x}"


def save_model(directory, params: Any, model_cfg: ModelConfig, tokenizer=None,
               metadata: Optional[dict] = None) -> None:
  """Writes a model directory atomically (replacing an existing one). Every process calls it."""
  final = checkpoint_path(directory)
  tmp = final.parent / f"{final.name}.tmp-{_shared_token()}"
  primary = jax.process_index() == 0
  if primary:
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # left by a killed save
      stale.rmtree() if stale.is_dir() else stale.unlink()
    tmp.mkdir(parents=True)
    (tmp / CONFIG_FILE).write_text(json.dumps(model_cfg.to_dict(), indent=2))
    (tmp / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=2))
    if tokenizer is not None:
      tokenizer.save(tmp / TOKENIZER_DIR)
  _sync("save_model:tmp_ready")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(tmp / PARAMS_DIR, params)
  ckptr.wait_until_finished()
  ckptr.close()
  _sync("save_model:params_written")
  if primary:
    old = None
    if final.exists():
      old = final.parent / f"{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
      final.rename(old)
    tmp.rename(final)
    if old is not None:
      old.rmtree()
  _sync("save_model:done")


def read_model_config(directory) -> ModelConfig:
  d = checkpoint_path(directory)
  if not d.is_dir():
    raise FileNotFoundError(f"model directory {d} does not exist")
  path = d / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{d} is not a model directory: no {CONFIG_FILE}")
  try:
    return ModelConfig.from_dict(json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise ValueError(f"{path}: {e}") from None


def _saved_shapes(params_dir: epath.Path) -> dict:
  meta = ocp.StandardCheckpointer().metadata(params_dir).item_metadata
  tree = getattr(meta, "tree", meta)
  return jax.tree.map(lambda m: (tuple(m.shape), m.dtype), tree)


def _check_shapes(saved: dict, expected: dict, where: str) -> None:
  flat_saved = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(
      saved, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple))}
  flat_exp = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(
      expected, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x))}
  missing, extra = sorted(set(flat_exp) - set(flat_saved)), sorted(set(flat_saved) - set(flat_exp))
  if missing or extra:
    raise ValueError(f"{where}: parameters do not match {CONFIG_FILE}: missing {missing}, "
                     f"unexpected {extra}")
  for name, shape in flat_exp.items():
    if flat_saved[name][0] != tuple(shape):
      raise ValueError(f"{where}: param {name} has shape {flat_saved[name][0]}, "
                       f"{CONFIG_FILE} implies {tuple(shape)}")


def load_model(directory, mesh: Optional[Mesh] = None, rules=None, dtype: Optional[str] = None):
  """Reads a model directory.

  With `mesh`, parameters land sharded by `reasoner.sharding.param_shardings(cfg, mesh, rules)`
  (adapters, if saved, by `lora_shardings`); without, on the first local device. With `dtype`
  the weights are cast to it as they are read. Returns (params, model_cfg, tokenizer or None,
  metadata).
  """
  from reasoner.model import lora
  from reasoner import sharding
  from reasoner.tokenizer import load_tokenizer

  d = checkpoint_path(directory)
  cfg = read_model_config(d)
  params_dir = d / PARAMS_DIR
  if not params_dir.exists():
    raise FileNotFoundError(f"{d} has no {PARAMS_DIR}/ (incomplete model directory)")
  saved = _saved_shapes(params_dir)
  adapters = cfg.lora_rank > 0 and "lora" in saved.get("layers", {})
  expected = decoder.param_shapes(cfg)
  if adapters:
    expected = {**expected, "layers": {**expected["layers"], **lora.lora_shapes(cfg)["layers"]}}
  _check_shapes(saved, expected, str(params_dir))
  if mesh is not None:
    shardings = sharding.param_shardings(cfg, mesh, rules or sharding.DEFAULT_RULES)
    if adapters:
      extra = sharding.lora_shardings(cfg, mesh, rules or sharding.DEFAULT_RULES)
      shardings = {**shardings, "layers": {**shardings["layers"], **extra["layers"]}}
  else:
    dev = SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: dev, expected, is_leaf=lambda x: isinstance(x, tuple))
  if dtype is not None:
    saved = jax.tree.map(lambda sd: (sd[0], jax.numpy.dtype(dtype)), saved,
                         is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2
                         and isinstance(x[0], tuple))
  target = jax.tree.map(lambda sd, sh: jax.ShapeDtypeStruct(sd[0], sd[1], sharding=sh), saved,
                        shardings, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2
                        and isinstance(x[0], tuple))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(params_dir, target)
  tok = load_tokenizer(d / TOKENIZER_DIR) if (d / TOKENIZER_DIR).exists() else None
  meta_path = d / METADATA_FILE
  metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
  return params, cfg, tok, metadata
