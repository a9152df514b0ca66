"""Hugging Face interop: Llama / Qwen2 safetensors folders <-> our stacked parameter pytree.

HF stores one [out, in] matrix per layer (`model.layers.{i}.self_attn.q_proj.weight` is
[H*Dh, D]); we stack layers and split heads (`layers/wq` is [L, D, H, Dh]). Both use the
half-split rotary convention, so q/k need only a transpose and a reshape, no permutation.
No torch needed: tensors are read lazily with `safetensors.safe_open(framework="numpy")`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from safetensors import safe_open
from safetensors.numpy import save_file

from reasoner.model import decoder
from reasoner.model.config import ModelConfig

SUPPORTED = ("llama", "qwen2")
_ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Our per-layer name -> (HF suffix under model.layers.{i}., kind). kind says how to reshape.
_LAYER_MAP = {
    "attn_norm": ("input_layernorm.weight", "vec"),
    "mlp_norm": ("post_attention_layernorm.weight", "vec"),
    "wq": ("self_attn.q_proj.weight", "in_heads"),
    "wk": ("self_attn.k_proj.weight", "in_heads"),
    "wv": ("self_attn.v_proj.weight", "in_heads"),
    "wo": ("self_attn.o_proj.weight", "heads_out"),
    "bq": ("self_attn.q_proj.bias", "bias"),
    "bk": ("self_attn.k_proj.bias", "bias"),
    "bv": ("self_attn.v_proj.bias", "bias"),
    "w_gate": ("mlp.gate_proj.weight", "linear"),
    "w_up": ("mlp.up_proj.weight", "linear"),
    "w_down": ("mlp.down_proj.weight", "linear"),
}
_O_BIAS = "self_attn.o_proj.bias"  # Llama with attention_bias=True; must be zero for us


# ---- per-tensor layout conversion ---------------------------------------------------------------

def _hf_shape(kind: str, ours: tuple) -> tuple:
  """HF shape of one layer's tensor, given our per-layer shape (without the L axis)."""
  if kind == "in_heads":  # ours [D, H, Dh] -> HF [H*Dh, D]
    return (ours[1] * ours[2], ours[0])
  if kind == "heads_out":  # ours [H, Dh, D] -> HF [D, H*Dh]
    return (ours[2], ours[0] * ours[1])
  if kind == "bias":  # ours [H, Dh] -> HF [H*Dh]
    return (ours[0] * ours[1],)
  if kind == "linear":  # ours [in, out] -> HF [out, in]
    return (ours[1], ours[0])
  return ours


def _from_hf(kind: str, x: np.ndarray, ours: tuple) -> np.ndarray:
  if kind in ("in_heads", "heads_out", "linear"):
    return x.T.reshape(ours)
  return x.reshape(ours)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "in_heads":
    return x.reshape(x.shape[0], -1).T
  if kind == "heads_out":
    return x.reshape(-1, x.shape[-1]).T
  if kind == "linear":
    return x.T
  if kind == "bias":
    return x.reshape(-1)
  return x


# ---- config.json ----------------------------------------------------------------------------

def _rope(hf: dict, where: str) -> tuple[float, Optional[dict]]:
  """(rope_theta, Llama 3 scaling or None) from v5 `rope_parameters` or v4 `rope_theta`/`rope_scaling`."""
  params = hf.get("rope_parameters")
  if isinstance(params, dict) and "rope_theta" not in params and params:
    raise ValueError(f"per-layer-type rope_parameters in {where} are not supported")
  if params:
    theta, scaling = params["rope_theta"], params
  else:
    theta, scaling = hf.get("rope_theta", 10000.0), hf.get("rope_scaling")
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
  if kind in (None, "default"):
    return float(theta), None
  if kind != "llama3":
    raise ValueError(f"unsupported rope scaling {kind!r} in {where}; supported: default, llama3")
  keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
  missing = [k for k in keys if k not in scaling]
  if missing:
    raise ValueError(f"llama3 rope scaling in {where} lacks {missing}")
  return float(theta), {k: (int(scaling[k]) if k.startswith("original") else float(scaling[k]))
                        for k in keys}


def config_from_hf(hf: dict, where: str = "config.json", dtype: str = "float32") -> ModelConfig:
  """ModelConfig for an HF Llama / Qwen2 config dict (`where` names it in errors)."""
  arch = hf.get("model_type")
  if arch not in SUPPORTED:
    raise ValueError(f"unsupported architecture {arch!r} in {where}; supported: {', '.join(SUPPORTED)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} in {where}; only silu")
  if hf.get("mlp_bias"):
    raise ValueError(f"mlp_bias=true in {where} is not supported")
  if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
    raise ValueError(f"sliding-window attention in {where} is not supported")
  try:
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    theta, scaling = _rope(hf, where)
    return ModelConfig(
        arch=arch, vocab_size=int(hf["vocab_size"]), d_model=d,
        n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or d // heads), d_ff=int(hf["intermediate_size"]),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)), rope_theta=theta,
        rope_scaling=scaling, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=arch == "qwen2" or bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype, param_dtype=dtype,
        init_std=float(hf.get("initializer_range", 0.02)))
  except KeyError as e:
    raise ValueError(f"{where} lacks required field {e.args[0]!r}") from None


def config_to_hf(cfg: ModelConfig, dtype: str = "float32", bos_id=None, eos_id=None,
                 pad_id=None) -> dict:
  """HF config.json for `cfg` (legacy rope_theta/rope_scaling keys, read by transformers 4 and 5)."""
  scaling = None
  if cfg.rope_scaling:
    scaling = {"rope_type": "llama3", **cfg.rope_scaling}
  hf = {
      "architectures": [_ARCH_CLASS[cfg.arch]], "model_type": cfg.arch,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": scaling,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
      "initializer_range": cfg.init_std, "use_cache": True,
      "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
      "torch_dtype": dtype,
  }
  if cfg.arch == "llama":
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False, pretraining_tp=1)
  else:
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
  return hf


# ---- tensor names ----------------------------------------------------------------------------

def _hf_tensors(cfg: ModelConfig, with_biases: bool) -> Iterator[tuple[str, tuple, Any]]:
  """(HF name, HF shape, how to get it from our params) for every tensor, in HF order.

  The getter is ("top", our_name, kind) or ("layer", our_name, kind, i) or ("zeros",).
  """
  shapes = decoder.param_shapes(cfg)
  lay = shapes["layers"]
  yield "model.embed_tokens.weight", shapes["embed"], ("top", "embed", "vec")
  for i in range(cfg.n_layers):
    for ours in ("attn_norm", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "mlp_norm", "w_gate",
                 "w_up", "w_down"):
      suffix, kind = _LAYER_MAP[ours]
      name = f"model.layers.{i}.{suffix}"
      if ours in lay:
        yield name, _hf_shape(kind, lay[ours][1:]), ("layer", ours, kind, i)
      elif kind == "bias" and with_biases:  # Qwen2 always has q/k/v biases
        n = cfg.n_heads if ours == "bq" else cfg.n_kv_heads
        yield name, (n * cfg.head_dim,), ("zeros",)
      if ours == "wo" and cfg.arch == "llama" and cfg.qkv_bias:
        yield f"model.layers.{i}.{_O_BIAS}", (cfg.d_model,), ("zeros",)
  yield "model.norm.weight", shapes["final_norm"], ("top", "final_norm", "vec")
  if not cfg.tie_embeddings:
    yield "lm_head.weight", shapes["lm_head"][::-1], ("top", "lm_head", "linear")


# ---- import ----------------------------------------------------------------------------------

def _weight_files(d: epath.Path) -> dict[str, str]:
  """HF tensor name -> file name, from the index or the single safetensors file."""
  if (d / INDEX_FILE).exists():
    try:
      weight_map = json.loads((d / INDEX_FILE).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{d / INDEX_FILE} is not a valid safetensors index: {e}") from None
    for f in sorted(set(weight_map.values())):
      if not (d / f).exists():
        raise FileNotFoundError(f"{d / f} (listed in {d / INDEX_FILE}) does not exist")
    return weight_map
  if (d / SINGLE_FILE).exists():
    with safe_open(str(d / SINGLE_FILE), framework="numpy") as f:
      return {k: SINGLE_FILE for k in f.keys()}
  raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {d}")


def read_hf_config(hf_dir) -> tuple[dict, epath.Path]:
  d = epath.Path(hf_dir)
  if not d.is_dir():
    raise FileNotFoundError(f"Hugging Face model directory {d} does not exist")
  path = d / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"no config.json in {d}")
  try:
    return json.loads(path.read_text()), path
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None


def import_hf(hf_dir, dtype: str = "float32") -> tuple[dict, ModelConfig]:
  """Reads an HF Llama / Qwen2 folder into (params as host NumPy arrays in `dtype`, ModelConfig).

  Shards are read tensor by tensor, so peak memory is about the converted params plus one tensor.
  """
  hf, cfg_path = read_hf_config(hf_dir)
  d = cfg_path.parent
  cfg = config_from_hf(hf, str(cfg_path), dtype)
  np_dtype = jnp.dtype(dtype)
  weight_map = _weight_files(d)
  handles: dict[str, Any] = {}

  def open_file(fname):
    if fname not in handles:
      handles[fname] = safe_open(str(d / fname), framework="numpy")
    return handles[fname]

  plan = list(_hf_tensors(cfg, with_biases=cfg.qkv_bias))
  # Check names and shapes of everything before reading any data.
  for name, shape, _ in plan:
    if name not in weight_map:
      where = d / INDEX_FILE if (d / INDEX_FILE).exists() else d / SINGLE_FILE
      raise ValueError(f"missing tensor {name} in {where}")
    got = tuple(open_file(weight_map[name]).get_slice(name).get_shape())
    if got != tuple(shape):
      raise ValueError(f"tensor {name} in {d / weight_map[name]} has shape {got}; "
                       f"{cfg_path} implies {tuple(shape)}")

  shapes = decoder.param_shapes(cfg)
  params: dict[str, Any] = {"layers": {k: np.empty(s, np_dtype) for k, s in shapes["layers"].items()}}
  for name, _, how in plan:
    x = open_file(weight_map[name]).get_tensor(name)
    if how[0] == "zeros":  # the Llama o_proj bias, which our decoder does not have
      if np.any(x != 0):
        raise ValueError(f"tensor {name} in {d / weight_map[name]} is non-zero; "
                         "o_proj biases are not supported")
      continue
    if how[0] == "top":
      _, ours, kind = how
      params[ours] = _from_hf(kind, x, shapes[ours]).astype(np_dtype)
    else:
      _, ours, kind, i = how
      params["layers"][ours][i] = _from_hf(kind, x, shapes["layers"][ours][1:]).astype(np_dtype)
  handles.clear()
  return params, cfg


# ---- export ----------------------------------------------------------------------------------

def _host(x) -> np.ndarray:
  from reasoner.sharding import to_host
  return to_host(x)


def _tensor(params, how, np_dtype) -> np.ndarray:
  if how[0] == "top":
    _, ours, kind = how
    x = _host(params[ours])
  else:
    _, ours, kind, i = how
    x = _host(params["layers"][ours][i])  # slice on device: one layer crosses to the host
  return np.ascontiguousarray(_to_hf(kind, x).astype(np_dtype))


def _shard_plan(plan, itemsize: int, max_shard_bytes: int) -> list[list]:
  shards, size = [[]], 0
  for entry in plan:
    n = int(np.prod(entry[1])) * itemsize
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += n
  return shards


def write_hf_tokenizer(tokenizer, directory) -> None:
  """tokenizer.save(directory) plus, for SentencePiece, a tokenizer.json for transformers."""
  from reasoner.tokenizer import SentencePieceTokenizer
  d = epath.Path(directory)
  tokenizer.save(d)
  if isinstance(tokenizer, SentencePieceTokenizer):
    from reasoner.tokenizer.sentencepiece_to_hf import sentencepiece_to_hf_json
    try:
      (d / "tokenizer.json").write_text(sentencepiece_to_hf_json(tokenizer))
    except (ImportError, ValueError) as e:
      logging.warning("no tokenizer.json written (transformers will not load the tokenizer): %s", e)
      return
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def export_hf(params: Any, model_cfg: ModelConfig, out_dir, tokenizer=None,
              max_shard_bytes: int = 2 * 1024**3, dtype: str = "float32",
              overwrite: bool = False) -> None:
  """Writes an HF folder (config.json, safetensors shards + index, tokenizer files) that
  `transformers.AutoModelForCausalLM.from_pretrained` loads.

  Written into a temp dir next to `out_dir`, renamed at the end; a non-empty `out_dir` is
  refused unless `overwrite`. Every process calls it (sharded params are gathered one
  tensor at a time); process 0 writes. Params with LoRA adapters are exported merged
  (`reasoner.model.lora.merge_lora`): plain HF weights.
  """
  from reasoner.model import lora
  params = lora.merge_lora(params, model_cfg)
  if dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"export dtype must be float32, bfloat16 or float16, got {dtype!r}")
  out = epath.Path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
    raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
  expected = decoder.param_shapes(model_cfg)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  if jax.tree.structure(got, is_leaf=lambda x: isinstance(x, tuple)) != jax.tree.structure(
      expected, is_leaf=lambda x: isinstance(x, tuple)) or got != expected:
    raise ValueError("params do not match the model config's shapes")

  np_dtype = jnp.dtype(dtype)
  with_biases = model_cfg.arch == "qwen2" or model_cfg.qkv_bias
  plan = list(_hf_tensors(model_cfg, with_biases))
  shards = _shard_plan(plan, np_dtype.itemsize, max_shard_bytes)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  primary = jax.process_index() == 0
  tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
  try:
    if primary:
      tmp.mkdir(parents=True)
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
      tensors = {}
      for name, shape, how in shard:
        x = np.zeros(shape, np_dtype) if how[0] == "zeros" else _tensor(params, how, np_dtype)
        tensors[name] = x
        weight_map[name] = fname
        total += x.nbytes
      if primary:
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
      del tensors
    if not primary:
      return
    if len(shards) > 1:
      index = {"metadata": {"total_size": total}, "weight_map": weight_map}
      (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
    ids = {}
    if tokenizer is not None:
      write_hf_tokenizer(tokenizer, tmp)
      ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    (tmp / "config.json").write_text(json.dumps(config_to_hf(model_cfg, dtype, **ids), indent=2))
    if out.exists():
      old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
      out.rename(old)
      tmp.rename(out)
      old.rmtree()
    else:
      tmp.rename(out)
  finally:
    if primary and tmp.exists():
      tmp.rmtree()
