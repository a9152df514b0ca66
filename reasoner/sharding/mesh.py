"""A device mesh with named axes (data, fsdp, tensor) built from config."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(n_devices: int, data: int = 1, fsdp: int = -1, tensor: int = 1) -> tuple[int, int, int]:
  """Resolves one -1 entry so that data * fsdp * tensor == n_devices."""
  dims = [data, fsdp, tensor]
  if dims.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([d for d in dims if d != -1]))
  if any(d == 0 or d < -1 for d in dims):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {dims}")
  if -1 in dims:
    if n_devices % known:
      raise ValueError(f"{n_devices} devices cannot be split into mesh {dims}")
    dims[dims.index(-1)] = n_devices // known
  if int(np.prod(dims)) != n_devices:
    raise ValueError(f"mesh data={dims[0]} x fsdp={dims[1]} x tensor={dims[2]} = {int(np.prod(dims))} "
                     f"does not match the {n_devices} available devices")
  return tuple(dims)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(len(devices), data, fsdp, tensor)
  try:
    arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # non-TPU topologies: a plain reshape is as good as any
    arr = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(arr, MESH_AXES)


def mesh_from_config(cfg) -> Mesh:
  """`cfg` has fields data, fsdp, tensor (an ml_collections ConfigDict or any object)."""
  return make_mesh(int(cfg.data), int(cfg.fsdp), int(cfg.tensor))


def cpu_cores() -> int:
  """Cores this process may run on (its affinity mask where the OS has one, e.g. not macOS)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def use_cpu_devices(n: int = 0) -> int:
  """Splits the host CPU into `n` XLA devices (0: one per core this process may use).

  XLA:CPU runs most of the small ops of a small model's decode step on one thread, so one device
  uses about one core. With one device per core and the rows split over them (a `data` mesh),
  the rows run side by side: a batch-64 decode of the tiny preset is ~1.6x faster on 2 cores.
  Large matmuls already use every core, so a compute-bound model or a train step gains nothing
  and can lose (BUILD_NOTES.md, "Sampler throughput"). Only affects the CPU backend, and must run
  before JAX's backends are initialised (before the first `jax.devices()` or computation).
  Returns n.
  """
  n = int(n) if n and n > 0 else cpu_cores()
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized() and len(jax.devices("cpu")) == n:
      return n
    raise RuntimeError(f"use_cpu_devices({n}) must be called before JAX initialises its backends "
                       f"(this process already has {len(jax.devices('cpu'))} CPU devices); call it "
                       "right after `import jax`, before any computation") from e
  return n
