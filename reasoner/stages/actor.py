"""A rollout actor on its own thread: versioned policy snapshots and bounded staleness.

The learner owns the policy and publishes a snapshot after every step (version v = number of
steps completed). The actor produces the data of steps first, first + 1, ... in order, step s
with policy version max(s - max_staleness, first): the oldest the bound allows, so which
snapshot produced which step depends only on `max_staleness`, never on thread timing, and a run
is reproducible. With max_staleness = k the actor works on step s + k while the learner trains
on step s; it blocks until the version it needs is published, so it never runs more than k
steps ahead, and at most max(k, 1) finished steps wait in the queue. k = 0 is the synchronous
schedule (generate, then train, in turn).

Snapshots are copies placed by `place` (default: a copy on the same devices; or a transfer to
the actor's own devices), so a learner step that donates its params never frees the ones the
actor is sampling with. A snapshot is dropped once no later step needs it (at most k + 1 live).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Optional

import jax


@dataclasses.dataclass
class ActorOutput:
  step: int
  version: int  # the policy version that produced `data`
  data: Any
  busy_s: float  # actor time spent producing it
  learner_wait_s: float = 0.0  # learner time blocked in `get` for it


@dataclasses.dataclass
class _Failure:
  step: int
  error: BaseException


def copy_to(shardings=None) -> Callable[[Any], Any]:
  """A `place` function: a fresh copy of a pytree of arrays (onto `shardings` if given)."""
  return lambda tree: jax.device_put(tree, shardings, may_alias=False)


class PolicyActor:
  """Runs `produce(params, step)` for steps [first, end) on a thread, under bounded staleness."""

  def __init__(self, produce: Callable[[Any, int], Any], max_staleness: int,
               place: Optional[Callable[[Any], Any]] = None, poll_s: float = 0.05):
    if int(max_staleness) != max_staleness or max_staleness < 0:
      raise ValueError(f"max_staleness must be an integer >= 0, got {max_staleness}")
    self.max_staleness = int(max_staleness)
    self._produce = produce
    self._place = place or copy_to()
    self._poll = poll_s
    self._cond = threading.Condition()
    self._snapshots: dict[int, Any] = {}
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.max_staleness))
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._first = self._end = 0
    self._clock_lock = threading.Lock()
    self._clock = {"busy": 0.0, "blocked": 0.0}
    self._state, self._since = "idle", time.perf_counter()

  @property
  def started(self) -> bool:
    return self._thread is not None

  def version_for(self, step: int) -> int:
    """The policy version that samples step `step`."""
    return max(step - self.max_staleness, self._first)

  def start(self, params, first_step: int, end_step: int):
    """Starts producing steps [first_step, end_step); `params` is version first_step."""
    if self.started:
      raise RuntimeError("the actor was already started")
    self._first, self._end = int(first_step), int(end_step)
    self._snapshots = {self._first: self._place(params)}
    self._thread = threading.Thread(target=self._run, name="policy-actor", daemon=True)
    self._thread.start()

  def publish(self, version: int, params):
    """Learner: `params` after `version` steps. Copied only if some later step samples with it."""
    if version <= self._first or version + self.max_staleness >= self._end:
      return
    snapshot = self._place(params)
    with self._cond:
      self._snapshots[version] = snapshot
      self._cond.notify_all()

  def get(self, step: int) -> ActorOutput:
    """Learner: blocks for the output of `step` (steps come in order); re-raises actor errors."""
    t0 = time.perf_counter()
    while True:
      try:
        out = self._queue.get(timeout=self._poll)
        break
      except queue.Empty:
        if self._thread is None or not self._thread.is_alive():
          if self._queue.empty():
            raise RuntimeError(f"the rollout actor is not running; no output for step {step}")
    if isinstance(out, _Failure):
      raise RuntimeError(f"the rollout actor failed at step {out.step}: {out.error!r}") from out.error
    if out.step != step:
      raise RuntimeError(f"the learner asked for step {step} but the actor produced step {out.step}")
    out.learner_wait_s = time.perf_counter() - t0
    return out

  def clock(self) -> tuple[float, float]:
    """(busy, blocked) seconds of the actor thread so far, the current stretch included: busy
    producing, blocked waiting for its policy version or for room in the queue."""
    with self._clock_lock:
      total = dict(self._clock)
      if self._state in total:
        total[self._state] += time.perf_counter() - self._since
    return total["busy"], total["blocked"]

  def close(self):
    """Stops the thread (after the output it is producing) and drops its snapshots."""
    self._stop.set()
    with self._cond:
      self._cond.notify_all()
    if self._thread is not None:
      while self._thread.is_alive():
        self._drain()
        self._thread.join(self._poll)
    self._drain()
    self._snapshots = {}

  # ---- the actor thread ------------------------------------------------------------------------
  def _enter(self, state: str):
    with self._clock_lock:
      now = time.perf_counter()
      if self._state in self._clock:
        self._clock[self._state] += now - self._since
      self._state, self._since = state, now

  def _drain(self):
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=self._poll)
        return True
      except queue.Full:
        continue
    return False

  def _run(self):
    step = self._first
    try:
      for step in range(self._first, self._end):
        version = self.version_for(step)
        self._enter("blocked")
        with self._cond:
          while version not in self._snapshots and not self._stop.is_set():
            self._cond.wait(self._poll)
          if self._stop.is_set():
            return
          params = self._snapshots[version]
          for old in [v for v in self._snapshots if v < version]:
            del self._snapshots[old]
        self._enter("busy")
        t0 = time.perf_counter()
        data = self._produce(params, step)
        del params
        busy = time.perf_counter() - t0
        self._enter("blocked")
        if not self._put(ActorOutput(step, version, data, busy_s=busy)):
          return
    except BaseException as e:  # handed to the learner, which re-raises it
      self._put(_Failure(step, e))
    finally:
      self._enter("idle")
