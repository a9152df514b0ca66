"""A device mesh with named axes (data, fsdp, tensor) built from config."""

from __future__ import annotations

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
