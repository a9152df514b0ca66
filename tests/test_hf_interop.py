"""Hugging Face interop against transformers: logits parity both ways, exact round trips, errors, CLIs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasoner.checkpoint import load_model
from reasoner.checkpoint.hf_io import export_hf, import_hf
from reasoner.model import ModelConfig, forward, init_params
from tests.hf_fixtures import LLAMA3_SCALING, make_hf_model, torch_logits, write_hf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 24
TOKENS = np.random.RandomState(0).randint(0, 128, (2, T))


def our_logits(params, cfg):
  params = jax.tree.map(jnp.asarray, params)
  logits, _ = forward(params, jnp.asarray(TOKENS), jnp.broadcast_to(jnp.arange(T), (2, T)), cfg)
  return np.asarray(logits)


def max_diff(a, b):
  return float(np.max(np.abs(a - b)))


def _tree_equal(a, b):
  return (jax.tree.structure(a) == jax.tree.structure(b) and
          all(np.array_equal(np.asarray(x), np.asarray(y)) and np.asarray(x).dtype == np.asarray(y).dtype
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


CASES = {
    "llama": ("llama", {}, None),
    "llama3_rope": ("llama", dict(rope_scaling=LLAMA3_SCALING, rope_theta=500000.0), None),
    "qwen2_tied_sharded": ("qwen2", dict(tie_word_embeddings=True), "20KB"),
    "qwen2_untied": ("qwen2", dict(tie_word_embeddings=False), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_transformers(tmp_path, case):
  arch, overrides, shard = CASES[case]
  model = make_hf_model(arch, **overrides)
  model.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
  assert os.path.exists(tmp_path / "model.safetensors.index.json") == bool(shard)
  params, cfg = import_hf(tmp_path)
  assert cfg.arch == arch and cfg.qkv_bias == (arch == "qwen2")
  assert cfg.tie_embeddings == bool(overrides.get("tie_word_embeddings", False))
  assert ("lm_head" in params) != cfg.tie_embeddings
  ref = torch_logits(model, TOKENS)
  assert max_diff(our_logits(params, cfg), ref) < 1e-4
  if cfg.rope_scaling:  # the scaling is really exercised by these positions
    assert cfg.rope_scaling["original_max_position_embeddings"] == 8
    assert max_diff(our_logits(params, cfg.replace(rope_scaling=None)), ref) > 1e-3


def _random_params(cfg, seed=1):
  """init_params with norms and biases moved off 1 / 0 so a mix-up would show."""
  p = init_params(cfg, jax.random.PRNGKey(seed))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 100), 8))
  lay = dict(p["layers"])
  for k in ("attn_norm", "mlp_norm", "bq", "bk", "bv"):
    if k in lay:
      lay[k] = lay[k] + 0.2 * jax.random.normal(next(keys), lay[k].shape)
  return {**p, "layers": lay, "final_norm": p["final_norm"] + 0.2 * jax.random.normal(next(keys), p["final_norm"].shape)}


EXPORT_CFGS = {
    "llama3": ModelConfig(arch="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
                          n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64, rope_theta=500000.0,
                          rope_scaling={k: v for k, v in LLAMA3_SCALING.items() if k != "rope_type"},
                          norm_eps=1e-5),
    "llama_bias": ModelConfig(arch="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
                              n_kv_heads=2, head_dim=8, d_ff=96, max_seq_len=64, qkv_bias=True),
    "qwen2_tied": ModelConfig(arch="qwen2", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
                              n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64,
                              rope_theta=1e6, qkv_bias=True, tie_embeddings=True),
    "qwen2_nobias": ModelConfig(arch="qwen2", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
                                n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64),
}


@pytest.mark.parametrize("name", list(EXPORT_CFGS))
def test_export_matches_transformers_and_round_trips(tmp_path, name):
  import torch
  from transformers import AutoModelForCausalLM
  cfg = EXPORT_CFGS[name]
  params = _random_params(cfg)
  small_shards = name == "qwen2_tied"
  export_hf(params, cfg, tmp_path / "hf", max_shard_bytes=40_000 if small_shards else 2**31)
  files = os.listdir(tmp_path / "hf")
  assert ("model.safetensors.index.json" in files) == small_shards
  assert sum(f.endswith(".safetensors") for f in files) > 1 if small_shards else "model.safetensors" in files
  model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
  assert type(model).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[cfg.arch]
  assert max_diff(our_logits(params, cfg), torch_logits(model, TOKENS)) < 1e-4
  back, back_cfg = import_hf(tmp_path / "hf")
  if cfg.arch == "qwen2" and not cfg.qkv_bias:  # Qwen2 always has biases: they come back as zeros
    assert back_cfg == cfg.replace(qkv_bias=True)
    assert all(not np.any(back["layers"].pop(k)) for k in ("bq", "bk", "bv"))
  else:
    assert back_cfg == cfg
  assert _tree_equal(back, jax.tree.map(np.asarray, params))


def test_export_bfloat16_and_import_dtype(tmp_path):
  cfg = EXPORT_CFGS["llama3"]
  params = _random_params(cfg)
  export_hf(params, cfg, tmp_path / "hf", dtype="bfloat16")
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["torch_dtype"] == "bfloat16" and hf["architectures"] == ["LlamaForCausalLM"]
  back, back_cfg = import_hf(tmp_path / "hf", dtype="bfloat16")
  assert back_cfg.param_dtype == "bfloat16"
  assert _tree_equal(back, jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16)), params))
  back32, _ = import_hf(tmp_path / "hf")
  assert back32["embed"].dtype == np.float32


def test_export_with_sentencepiece_tokenizer_loads_in_transformers(tmp_path):
  from transformers import AutoTokenizer
  from reasoner.tokenizer import load_tokenizer, train_sentencepiece
  tok = train_sentencepiece([f"{a} + {b} = {a + b} <think>ok</think>" for a in range(30) for b in range(5)],
                            tmp_path / "tok", vocab_size=300)
  # A llama config: transformers 5 AutoTokenizer always rebuilds a byte-level Qwen2Tokenizer for
  # model_type qwen2 (PreTrainedTokenizerFast.from_pretrained still reads the folder as written).
  cfg = EXPORT_CFGS["llama3"].replace(vocab_size=384)
  export_hf(init_params(cfg, jax.random.PRNGKey(0)), cfg, tmp_path / "hf", tokenizer=tok)
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)
  text = "12 + 7 = 19 <think>carry</think><answer>19</answer>\n"
  ours = load_tokenizer(tmp_path / "hf")
  assert type(ours) is type(tok) and ours.encode(text) == tok.encode(text)
  ref = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert ref(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
  assert ref.decode(tok.encode(text)) == text
  assert (ref.eos_token_id, ref.pad_token_id, ref.bos_token_id) == (tok.eos_id, tok.pad_id, tok.bos_id)


# ---- errors -------------------------------------------------------------------------------------

@pytest.fixture
def hf_dir(tmp_path):
  make_hf_model("llama").save_pretrained(tmp_path / "hf")
  return tmp_path / "hf"


def test_import_errors(hf_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json in"):
    import_hf(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    import_hf(tmp_path / "missing")
  cfg_path = hf_dir / "config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg_path.write_text(json.dumps({**cfg, "model_type": "gpt2"}))
  with pytest.raises(ValueError, match=rf"unsupported architecture 'gpt2' in {hf_dir}/config.json; "
                                       r"supported: llama, qwen2"):
    import_hf(hf_dir)
  cfg_path.write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}))
  with pytest.raises(ValueError, match="unsupported rope scaling 'yarn'"):
    import_hf(hf_dir)
  cfg_path.write_text(json.dumps({**cfg, "intermediate_size": 80}))
  with pytest.raises(ValueError, match=r"tensor model.layers.0.mlp.gate_proj.weight in .*model.safetensors "
                                       r"has shape \(96, 64\); .*config.json implies \(80, 64\)"):
    import_hf(hf_dir)
  cfg_path.write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
  with pytest.raises(ValueError, match=r"missing tensor model.layers.2.input_layernorm.weight in .*model.safetensors"):
    import_hf(hf_dir)
  cfg_path.write_text(json.dumps(cfg))
  os.remove(hf_dir / "model.safetensors")
  with pytest.raises(FileNotFoundError, match=r"no model.safetensors or model.safetensors.index.json in"):
    import_hf(hf_dir)


def test_import_missing_shard(tmp_path):
  make_hf_model("qwen2").save_pretrained(tmp_path, max_shard_size="20KB")
  shard = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
  os.remove(tmp_path / shard)
  with pytest.raises(FileNotFoundError, match=rf"{shard} \(listed in .*model.safetensors.index.json\) does not exist"):
    import_hf(tmp_path)


def test_export_refuses_non_empty_and_is_atomic(tmp_path, monkeypatch):
  from reasoner.checkpoint import hf_io
  cfg = EXPORT_CFGS["qwen2_tied"]
  params = init_params(cfg, jax.random.PRNGKey(0))
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
    export_hf(params, cfg, out)
  assert os.listdir(out) == ["keep.txt"]

  calls = []
  real_save = hf_io.save_file
  def flaky_save(tensors, path, metadata=None):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    real_save(tensors, path, metadata=metadata)
  monkeypatch.setattr(hf_io, "save_file", flaky_save)
  with pytest.raises(OSError, match="disk full"):
    export_hf(params, cfg, out, overwrite=True, max_shard_bytes=40_000)
  assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["keep.txt"]
  with pytest.raises(OSError, match="disk full"):
    calls.clear()
    export_hf(params, cfg, tmp_path / "fresh", max_shard_bytes=40_000)
  assert sorted(os.listdir(tmp_path)) == ["out"]
  monkeypatch.undo()
  export_hf(params, cfg, out, overwrite=True)
  assert "keep.txt" not in os.listdir(out) and "config.json" in os.listdir(out)
  with pytest.raises(ValueError, match="do not match"):
    export_hf(params, cfg.replace(d_ff=32), tmp_path / "x")


# ---- command lines ------------------------------------------------------------------------------

def _cli(module, *args):
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=ROOT, env=env, timeout=300)


def test_cli_import_then_export(tmp_path):
  import torch
  from transformers import AutoModelForCausalLM
  model = make_hf_model("qwen2", tie_word_embeddings=True)
  model.save_pretrained(tmp_path / "hf")
  write_hf_tokenizer(str(tmp_path / "hf"))
  proc = _cli("launch.import_hf", f"--hf_dir={tmp_path / 'hf'}", f"--out={tmp_path / 'model'}")
  assert proc.returncode == 0, proc.stderr
  assert "imported qwen2" in proc.stdout
  params, cfg, tok, meta = load_model(tmp_path / "model")
  assert cfg.vocab_size == 128 and tok.token_id("<think>") == 14 and meta["source"] == "hf"
  assert max_diff(our_logits(params, cfg), torch_logits(model, TOKENS)) < 1e-4

  proc = _cli("launch.export_hf", f"--checkpoint={tmp_path / 'model'}", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stderr
  again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
  assert max_diff(torch_logits(again, TOKENS), torch_logits(model, TOKENS)) < 1e-5
  assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == tok.eos_id

  proc = _cli("launch.export_hf", f"--checkpoint={tmp_path / 'model'}", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
  assert "exists and is not empty; pass --overwrite" in proc.stderr


@pytest.mark.parametrize("module,args,message", [
    ("launch.import_hf", ["--out=/tmp/x"], "--hf_dir"),
    ("launch.import_hf", ["--hf_dir=/nonexistent/dir", "--out=/tmp/x"], "/nonexistent/dir does not exist"),
    ("launch.export_hf", ["--checkpoint=/tmp/x", "--out=/tmp/y", "--dtype=int8"], "dtype"),
    ("launch.export_hf", ["--checkpoint=/nonexistent/m", "--out=/tmp/y"], "/nonexistent/m does not exist"),
])
def test_cli_bad_input_is_one_line_error(module, args, message):
  proc = _cli(module, *args)
  assert proc.returncode == 1
  err = proc.stderr.strip()
  assert err.startswith("error: ") and "\n" not in err and message in err and "Traceback" not in err
