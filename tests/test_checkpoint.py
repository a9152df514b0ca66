"""Orbax training checkpoints and model directories: round trips, sharding, atomicity, errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reasoner import sharding
from reasoner.checkpoint import CheckpointManager, load_model, save_model
from reasoner.model import get_config, init_params
from reasoner.tokenizer import train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = get_config("tiny", vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                 head_dim=8, d_ff=64, max_seq_len=64)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _assert_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module")
def state(mesh):
  params = sharding.sharded_init(CFG, jax.random.PRNGKey(0), mesh)
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments and count
  return params, opt_state


def test_checkpoint_round_trip_sharded(tmp_path, mesh, state):
  params, opt_state = state
  with CheckpointManager(tmp_path / "ckpt") as mgr:
    assert mgr.latest_step() is None
    assert mgr.save(7, params, opt_state, rng=jax.random.key(42), metadata={"loss": 1.5, "tag": "x"})
    assert not mgr.save(7, params, opt_state)  # an existing step is not rewritten
    mgr.wait()
    assert mgr.latest_step() == 7
    out = mgr.restore(params_target=_abstract(params), opt_state_target=_abstract(opt_state))
  assert out["step"] == 7 and out["metadata"] == {"loss": 1.5, "tag": "x"}
  _assert_equal(out["params"], params)
  _assert_equal(out["opt_state"], opt_state)  # same tree structure (optax namedtuples) too
  for got, want in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(params)):
    assert got.sharding == want.sharding
  assert jax.dtypes.issubdtype(out["rng"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(out["rng"]), jax.random.key_data(jax.random.key(42)))
  np.testing.assert_array_equal(jax.random.normal(out["rng"], (3,)),
                                jax.random.normal(jax.random.key(42), (3,)))


def test_checkpoint_restores_onto_another_mesh(tmp_path, state):
  params, _ = state
  with CheckpointManager(tmp_path / "ckpt") as mgr:
    mgr.save(1, params, rng=jax.random.PRNGKey(5))
    mgr.wait()
    other = sharding.make_mesh(data=1, fsdp=8, tensor=1)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params,
                          sharding.param_shardings(CFG, other))
    out = mgr.restore(1, params_target=target)
  _assert_equal(out["params"], params)
  assert out["params"]["embed"].sharding.mesh.shape["fsdp"] == 8
  assert out["opt_state"] is None and out["metadata"] == {}
  np.testing.assert_array_equal(out["rng"], jax.random.PRNGKey(5))  # raw uint32 key stays raw


def test_checkpoint_keeps_last_two_and_errors(tmp_path):
  params = {"w": np.arange(4.0, dtype=np.float32)}
  with CheckpointManager(tmp_path / "ckpt", max_to_keep=2) as mgr:
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
      mgr.restore()
    for step in (1, 2, 3):
      mgr.save(step, {"w": params["w"] * step})
    mgr.wait()
    assert mgr.all_steps() == [2, 3]
    with pytest.raises(FileNotFoundError, match=r"step 1 .*available: \[2, 3\]"):
      mgr.restore(1)
    np.testing.assert_array_equal(mgr.restore(2)["params"]["w"], params["w"] * 2)


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from reasoner.checkpoint import CheckpointManager
    from orbax.checkpoint._src.path import atomicity

    mgr = CheckpointManager({ckpt!r})
    mgr.save(1, {{"w": np.full((64, 64), 1.0, np.float32)}}, metadata={{"step": 1}})
    mgr.wait()

    async def die(*args, **kwargs):  # every file of step 2 is written; the rename never happens
      os.kill(os.getpid(), signal.SIGKILL)
    atomicity.AtomicRenameTemporaryPath.finalize = die
    mgr.save(2, {{"w": np.full((64, 64), 2.0, np.float32)}}, metadata={{"step": 2}})
    mgr.wait()
    print("not killed")
""")


def test_checkpoint_killed_mid_save_keeps_previous_step(tmp_path):
  ckpt = str(tmp_path / "ckpt")
  proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE.format(root=ROOT, ckpt=ckpt)],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == -9, proc.stdout + proc.stderr
  leftovers = [n for n in os.listdir(ckpt) if ".orbax-checkpoint-tmp" in n]
  assert leftovers and leftovers[0].startswith("2.")  # step 2 was half-done when killed
  with CheckpointManager(ckpt) as mgr:
    assert mgr.latest_step() == 1
    out = mgr.restore()
    assert out["step"] == 1 and out["metadata"] == {"step": 1}
    np.testing.assert_array_equal(out["params"]["w"], np.full((64, 64), 1.0, np.float32))
    assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckpt))  # cleaned up
    mgr.save(2, {"w": np.zeros((64, 64), np.float32)})  # and the run can carry on
    mgr.wait()
    assert mgr.latest_step() == 2


# ---- model directories --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  texts = [f"User: {a} + {b} = ?\nAssistant: <think>ok</think><answer>{a + b}</answer>"
           for a in range(40) for b in range(10)]
  return train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=128 + 256)


def test_model_dir_round_trip_sharded(tmp_path, mesh, state, tokenizer):
  params, _ = state
  save_model(tmp_path / "m", params, CFG, tokenizer=tokenizer, metadata={"stage": "sft"})
  assert sorted(os.listdir(tmp_path)) == ["m"]  # no temp dir left behind
  assert sorted(os.listdir(tmp_path / "m")) == ["metadata.json", "model_config.json", "params",
                                                "tokenizer"]
  got, cfg, tok, meta = load_model(tmp_path / "m", mesh=mesh)
  assert cfg == CFG and meta == {"stage": "sft"}
  _assert_equal(got, params)
  want = sharding.param_shardings(CFG, mesh)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.sharding == w
  text = "User: 3 + 4 = ?"
  assert tok.encode(text) == tokenizer.encode(text) and tok.eos_id == tokenizer.eos_id


def test_model_dir_without_mesh_and_overwrite(tmp_path):
  p1 = init_params(CFG, jax.random.PRNGKey(1))
  p2 = init_params(CFG, jax.random.PRNGKey(2))
  save_model(tmp_path / "m", p1, CFG)
  save_model(tmp_path / "m", p2, CFG, metadata={"v": 2})
  assert sorted(os.listdir(tmp_path)) == ["m"]
  got, cfg, tok, meta = load_model(str(tmp_path / "m"))
  _assert_equal(got, p2)
  assert tok is None and meta == {"v": 2}
  assert got["embed"].sharding.device_set == {jax.local_devices()[0]}


def test_relative_paths_work(tmp_path, monkeypatch, state):
  # The README runs with --workdir=runs/tiny: checkpoints and model dirs under a relative path.
  params, opt_state = state
  monkeypatch.chdir(tmp_path)
  mgr = CheckpointManager(os.path.join("rel", "ckpt"), async_save=False)
  assert mgr.save(3, params, opt_state)
  got = mgr.restore(params_target=_abstract(params), opt_state_target=_abstract(opt_state))
  mgr.close()
  _assert_equal(got["params"], params)
  assert os.path.isdir(tmp_path / "rel" / "ckpt" / "3")
  save_model(os.path.join("rel", "model"), params, CFG)
  loaded, _, _, _ = load_model(os.path.join("rel", "model"))
  _assert_equal(loaded, params)


def test_model_dir_failed_save_leaves_old_model(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  p1 = init_params(CFG, jax.random.PRNGKey(1))
  save_model(tmp_path / "m", p1, CFG, metadata={"v": 1})

  def boom(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
  with pytest.raises(OSError, match="disk full"):
    save_model(tmp_path / "m", init_params(CFG, jax.random.PRNGKey(2)), CFG, metadata={"v": 2})
  monkeypatch.undo()
  got, _, _, meta = load_model(tmp_path / "m")
  assert meta == {"v": 1}
  _assert_equal(got, p1)
  assert any(".tmp-" in n for n in os.listdir(tmp_path))  # what a killed save leaves
  save_model(tmp_path / "m", p1, CFG)  # the next save clears it
  assert sorted(os.listdir(tmp_path)) == ["m"]


def test_model_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"model directory .*nowhere does not exist"):
    load_model(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty is not a model directory: no model_config.json"):
    load_model(tmp_path / "empty")
  save_model(tmp_path / "m", init_params(CFG, jax.random.PRNGKey(0)), CFG)
  cfg_path = tmp_path / "m" / "model_config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg_path.write_text(json.dumps({**cfg, "d_ff": 48}))
  with pytest.raises(ValueError, match=r"params: param \['layers'\]\['w_down'\] has shape \(2, 64, 32\), "
                                       r"model_config.json implies \(2, 48, 32\)"):
    load_model(tmp_path / "m")
  cfg_path.write_text(json.dumps({**cfg, "n_layer": 3}))
  with pytest.raises(ValueError, match=r"model_config.json: unknown model config field\(s\) \['n_layer'\]"):
    load_model(tmp_path / "m")
  cfg_path.write_text(json.dumps({**cfg, "tie_embeddings": False}))
  with pytest.raises(ValueError, match=r"missing \[\"\['lm_head'\]\"\]"):
    load_model(tmp_path / "m")


@pytest.mark.parametrize("tie", [True, False])
def test_grow_vocab_keeps_existing_logits(tie):
  from reasoner.checkpoint import grow_vocab
  from reasoner.model import forward
  cfg = CFG.replace(tie_embeddings=tie)
  params = init_params(cfg, jax.random.PRNGKey(3))
  grown, grown_cfg = grow_vocab(params, cfg, 200)
  assert grown_cfg == cfg.replace(vocab_size=200)
  assert grown["embed"].shape == (200, 32)
  np.testing.assert_allclose(grown["embed"][150], np.asarray(params["embed"]).mean(0), rtol=1e-6)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 128, (2, 8)))
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  old, _ = forward(params, tokens, pos, cfg)
  new, _ = forward(jax.tree.map(jnp.asarray, grown), tokens, pos, grown_cfg)
  np.testing.assert_allclose(new[..., :128], old, atol=1e-5)
  with pytest.raises(ValueError, match="cannot shrink"):
    grow_vocab(params, cfg, 64)
