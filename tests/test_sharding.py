"""Mesh construction, logical-axis rules, and the sharded forward on 8 forced CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from reasoner import sharding
from reasoner.model import ModelConfig, forward, init_params

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                  d_ff=96, max_seq_len=64, qkv_bias=True)


def test_eight_devices_available():
  assert len(jax.devices()) == 8


def test_mesh_shape_resolution_and_errors():
  assert sharding.mesh_shape(8, data=2, fsdp=-1, tensor=2) == (2, 2, 2)
  assert sharding.mesh_shape(8, data=-1, fsdp=1) == (8, 1, 1)
  with pytest.raises(ValueError, match="does not match the 8 available devices"):
    sharding.mesh_shape(8, data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    sharding.mesh_shape(8, data=-1, fsdp=-1)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_rules_drop_axes_that_do_not_divide():
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  # 2 kv heads cannot be split 4 ways: replicated; 8 heads can.
  assert sharding.logical_to_spec(("embed", "kv_heads"), mesh, shape=(64, 2)) == P("fsdp", None)
  assert sharding.logical_to_spec(("embed", "heads"), mesh, shape=(64, 8)) == P("fsdp", "tensor")
  with pytest.raises(ValueError, match="no sharding rule for logical axis 'bogus'"):
    sharding.logical_to_spec(("bogus",), mesh)


def test_param_shardings_follow_rules():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sh = sharding.param_shardings(CFG, mesh)
  assert sh["layers"]["wq"].spec == P(None, "fsdp", "tensor", None)
  assert sh["layers"]["w_down"].spec == P(None, "tensor", "fsdp")
  assert sh["embed"].spec == P("tensor", "fsdp")


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4), (2, 1, 4)])
def test_sharded_forward_equals_unsharded(shape):
  mesh = sharding.make_mesh(*shape)
  rng = jax.random.PRNGKey(0)
  params = sharding.sharded_init(CFG, rng, mesh)
  ref_params = jax.device_put(init_params(CFG, rng), jax.devices()[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7), params, ref_params)

  tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (8, 12), 0, CFG.vocab_size))
  positions = np.broadcast_to(np.arange(12), (8, 12)).copy()
  ref, _ = jax.jit(lambda p, t, q: forward(p, t, q, CFG))(ref_params, tokens, positions)

  batch = sharding.shard_batch({"tokens": tokens, "positions": positions}, mesh)
  fn = jax.jit(lambda p, b: forward(p, b["tokens"], b["positions"], CFG)[0],
               in_shardings=(sharding.param_shardings(CFG, mesh),
                             {"tokens": sharding.batch_sharding(2, mesh), "positions": sharding.batch_sharding(2, mesh)}),
               out_shardings=sharding.batch_sharding(3, mesh))
  out = fn(params, batch)
  assert out.sharding.spec == sharding.batch_spec(3, mesh)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


# ---- one XLA:CPU device per core ----------------------------------------------------------------

_CPU_DEVICES = """
import jax
from reasoner import sharding
assert sharding.use_cpu_devices({n}) == {n}
assert len(jax.devices()) == {n}, jax.devices()
assert sharding.use_cpu_devices({n}) == {n}  # the same count again is fine
try:
  sharding.use_cpu_devices({n} + 1)
except RuntimeError as e:
  print("ERROR", e)
"""


def test_use_cpu_devices_sets_the_count_and_refuses_after_init():
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # The inherited XLA_FLAGS ask for 8 devices; use_cpu_devices overrides them.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
  proc = subprocess.run([sys.executable, "-c", _CPU_DEVICES.format(n=3)], capture_output=True,
                        text=True, cwd=root, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "ERROR use_cpu_devices(4) must be called before JAX initialises its backends" in proc.stdout
  assert "already has 3 CPU devices" in proc.stdout


def test_cpu_cores_uses_the_affinity_mask_or_the_cpu_count(monkeypatch):
  import os
  assert sharding.cpu_cores() == len(os.sched_getaffinity(0))
  monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
  monkeypatch.setattr(os, "cpu_count", lambda: 6)
  assert sharding.cpu_cores() == 6
  monkeypatch.setattr(os, "cpu_count", lambda: None)
  assert sharding.cpu_cores() == 1
