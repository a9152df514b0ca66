"""Training checkpoints: params, optimiser state, RNG key and JSON metadata per step, via Orbax.

Orbax writes each step into `STEP.orbax-checkpoint-tmp-*` and renames it to `STEP` only once
every item is on disk, so a run killed mid-save leaves the previous step as the latest one (the
unfinished temp dir is ignored, and removed when the next manager opens the directory).
Sharded arrays are saved shard by shard from every process; restoring onto
`jax.ShapeDtypeStruct`s with shardings places them directly on the current mesh.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

_ITEMS = ("params", "opt_state", "rng")


def checkpoint_path(directory) -> epath.Path:
  """`directory` as an epath.Path Orbax accepts: local paths made absolute, URLs (gs://) kept."""
  text = str(directory)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def _is_typed_key(rng) -> bool:
  return isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)


class CheckpointManager:
  """Keeps the last `max_to_keep` steps under `directory`."""

  def __init__(self, directory, max_to_keep: int = 2, async_save: bool = True):
    self.directory = checkpoint_path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=async_save)
    self._mgr = ocp.CheckpointManager(self.directory, options=options)
    # Orbax removes unfinished steps (`STEP.orbax-checkpoint-tmp-*`) in the background and only
    # waits for that before its next save; wait here so an opened directory is already clean
    # (a restore right after a crash otherwise races the cleanup on a loaded machine).
    await_cleanup = getattr(self._mgr, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()

  def save(self, step: int, params: Any, opt_state: Any = None, rng: Optional[jax.Array] = None,
           metadata: Optional[dict] = None, force: bool = False) -> bool:
    """Starts saving `step` (returns once arrays are copied off the devices; call `wait()` to
    block until it is on disk). Every process must call it. Returns False if `step` exists."""
    if step in self._mgr.all_steps():
      return False
    items = {"params": ocp.args.StandardSave(params)}
    info = {"user": metadata or {}, "rng_typed": False, "rng_impl": None}
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    if rng is not None:
      if _is_typed_key(rng):
        info.update(rng_typed=True, rng_impl=str(jax.random.key_impl(rng)))
        rng = jax.random.key_data(rng)
      items["rng"] = ocp.args.StandardSave({"key_data": rng})
    items["metadata"] = ocp.args.JsonSave(info)
    return bool(self._mgr.save(int(step), args=ocp.args.Composite(**items), force=force))

  def latest_step(self) -> Optional[int]:
    """The newest finished step, or None."""
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def restore(self, step: Optional[int] = None, params_target: Any = None,
              opt_state_target: Any = None) -> dict:
    """Restores `step` (default: the latest).

    Targets are pytrees of arrays or `jax.ShapeDtypeStruct`s (with `.sharding`) that say the
    structure, dtype and placement; without one an item comes back as saved (plain dicts and
    lists, the shardings it was saved with). Returns {step, params, opt_state, rng, metadata};
    items that were not saved are None.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
    if step not in self._mgr.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available: {self.all_steps()}")
    step_dir = self.directory / str(step)
    targets = {"params": params_target, "opt_state": opt_state_target, "rng": None}
    items = {name: ocp.args.StandardRestore(targets[name])
             for name in _ITEMS if (step_dir / name).exists()}
    items["metadata"] = ocp.args.JsonRestore()
    out = self._mgr.restore(int(step), args=ocp.args.Composite(**items))
    info = out["metadata"] or {}
    rng = out["rng"]["key_data"] if "rng" in items else None
    if rng is not None and info.get("rng_typed"):
      rng = jax.random.wrap_key_data(rng, impl=info["rng_impl"])
    return {"step": int(step), "params": out["params"],
            "opt_state": out["opt_state"] if "opt_state" in items else None,
            "rng": rng, "metadata": info.get("user", {})}

  def saved_shapes(self, step: int, item: str = "params") -> Any:
    """The pytree of shapes (tuples) `item` was saved with at `step`, read from its metadata."""
    meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / item).item_metadata
    tree = getattr(meta, "tree", meta)
    return jax.tree.map(lambda m: tuple(m.shape), tree)

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
