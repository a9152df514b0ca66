"""Rollout engine: continuous batching over a paged KV cache (device side in `paged`).

A fixed number of decode slots run `steps_per_sync` decode steps per compiled call; between
calls the host collects the rows that finished, frees their pages, admits waiting prompts into
the free slots (one batched prefill per call, all n samples of a prompt sharing its pages) and
allocates the pages the live rows will write during the next call. Shapes are static: the slot
count, the page pool and page tables, the admission batch (bucketed to powers of two) and, on
the XLA path, the list of live pages the attention reads (`paged.Entries`, padded to a power of
two) pick among a few compiled programs.

Scheduling policy: first come, first served, a whole group (the n samples of a prompt) at a
time. A group is admitted when n slots are free and the pool can cover the group's worst case
(prompt + max_new_tokens for every sample, the prompt's full pages counted once); pages are then
taken from the pool only as the rows grow, and released (reference counted: a shared prompt page
when its last sample ends) as rows finish. The reservation means an admitted row never waits for
a page, so there is no preemption.

Tail compaction (`EngineConfig.compact_min_steps`): once nothing waits and at most a quarter of
the slots are busy, the busy rows (their slot state, page tables and, dense, their pages) move
into the first slots of a narrower program, the smallest power of two that holds them, so a long
row's last steps no longer compute every empty slot. Rows keep their keys and budgets, so this
changes no sample.

Group sharing: the samples of a prompt point their page tables at the prompt's full pages. The
prompt's partially filled last page (if any) is copied once for each sample after the first,
since every sample writes its own tokens into it: at most one page per sample is copied.

Layout (`EngineConfig.layout`, `resolve_layout`): the pages above, or "dense", one page per slot
as long as a row's whole cache, pinned to its slot and read in place (no gather). "auto" runs a
call that fits in one wave of slots on a backend without the Pallas kernel dense (nothing
waits, so there is nothing to reorder, and the gather is what the paged attention costs on XLA)
and everything else paged. The scheduling and the random streams are the same in both, so the
layout changes the speed and not the samples (up to float rounding in the attention).

`generate` has the signature and results of `reasoner.sampling.generate`: rows are
prompt-major, and row i*n + j samples with the key fold_in(rng, i*n + j) whatever slot it runs
in, so results do not depend on the slot count or the order of admission.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reasoner.model.config import ModelConfig
from reasoner.sampling import decode_model, paged, sampler
from reasoner.sampling.config import SamplingConfig
from reasoner.sampling.sampler import SampleOutput, _check_prompts, bucket
from reasoner.sharding import batch_shards, to_host


def _host_rows(arr: jax.Array, rows: np.ndarray) -> np.ndarray:
  """arr[rows] on the host; on several processes (a global array no process holds whole) the
  array is gathered first, so every process gets the same rows."""
  if arr.is_fully_addressable:
    return np.asarray(jax.device_get(arr[jnp.asarray(rows)]))
  return to_host(arr)[rows]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """slots: decode rows run together; page_size: cache positions per page; num_pages: pool size
  (0 = enough for every slot's worst case, the static sampler's cache at batch = slots);
  steps_per_sync: decode steps per compiled call (host round trip). 256 slots by default: a
  pipeline call of up to 256 rows (an evaluation chunk, a GRPO step of the tiny preset) then
  decodes in one wave, as the static sampler would (on CPU, 64 slots took 1.3x as long on 256
  uniform rows); callers that pass more rows than slots get the continuous batching."""

  slots: int = 256
  page_size: int = 32
  num_pages: int = 0
  steps_per_sync: int = 16
  # How the KV cache is laid out (`resolve_layout`): "paged" (pages of page_size from a shared
  # pool; the Pallas kernel on TPU for a bfloat16 pool, the XLA gather elsewhere), "dense" (one
  # page per slot, as long as a row's cache, read in place) or "auto" (paged unless every row of
  # the call fits in one wave of slots on a backend without the Pallas kernel, where dense is the
  # faster layout and holds no more memory: BUILD_NOTES "Rollout engine").
  layout: str = "auto"
  # Tail compaction (`Engine.run`): when no prompt waits and at most a quarter of the slots are
  # busy, the busy rows move into a program of fewer slots (the smallest power of two that holds
  # them; a dense pool moves with them), so a long-tail row's last steps stop paying for the
  # empty slots. Done only while some busy row may still decode at least this many steps (each
  # new width compiles once per process, which short calls would not win back); 0 = never.
  compact_min_steps: int = 128

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"EngineConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")
    for name in ("slots", "page_size", "steps_per_sync"):
      if getattr(self, name) < 1:
        raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.compact_min_steps < 0:
      raise ValueError(f"EngineConfig.compact_min_steps must be >= 0 (0 = never), got "
                       f"{self.compact_min_steps}")


LAYOUTS = ("auto", "paged", "dense")


def resolve_layout(layout: str, rows: int, slots: int, dtype, fits_dense: bool = True) -> str:
  """The attention implementation (`paged.IMPLS`) a call of `rows` rows runs on `slots` slots,
  with a pool of `dtype` (`paged.attention_impl`).

  "auto" is dense when the call is one wave (rows <= slots: no row ever waits for a slot, so
  continuous batching has nothing to reorder) and the pool may hold every slot's worst case
  (`fits_dense`), except where the Pallas paged kernel runs (TPU, bfloat16 pool), which is the
  point there. Otherwise it is paged. Why: on XLA:CPU the paged attention's gather of the live
  pages costs about 3-5x the in-place read per cached position (BUILD_NOTES), which only pays when
  rows come and go (the live positions are then far fewer than the slots' worst case); in one wave
  the dense pool is the size of the default paged pool, and the engine's scheduling, per-row keys
  and budgets are the same either way, so the choice changes the speed and not the results'
  distribution.
  """
  paged_impl = paged.attention_impl(dtype)
  if layout == "paged":
    return paged_impl
  if layout == "dense":
    return "dense"
  if paged_impl == "pallas" or rows > slots or not fits_dense:
    return paged_impl
  return "dense"


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """One run's cache geometry: implementation, positions per page, pages per slot, pool size."""

  impl: str
  page_size: int
  max_pages: int
  num_pages: int


@dataclasses.dataclass
class EngineStats:
  """What one `Engine.run` did: compiled calls, decode steps, pages."""

  decode_calls: int = 0
  decode_steps: int = 0
  slot_steps: int = 0  # slots computed over all decode steps (busy or not)
  compactions: int = 0  # times the busy rows moved into fewer slots
  admit_calls: int = 0
  pool_pages: int = 0
  peak_pages: int = 0  # most pages in use at once
  end_pages: int = 0  # pages still in use after the run (0: every page was freed)
  page_bytes: int = 0  # bytes of one page over all layers (keys + values)
  layout: str = ""  # the attention implementation the run used (paged.IMPLS)

  @property
  def pool_bytes(self) -> int:
    return self.pool_pages * self.page_bytes

  @property
  def peak_bytes(self) -> int:
    return self.peak_pages * self.page_bytes


def _pow2_at_least(x: int, cap: int) -> int:
  p = 1
  while p < x:
    p *= 2
  return min(p, cap)


@functools.lru_cache(maxsize=64)
def _programs(cfg_json: str, sampling: SamplingConfig, pad_id: int, eos_id: int, steps: int,
              impl: str, mesh):
  cfg = ModelConfig.from_dict(json.loads(cfg_json))
  admit = jax.jit(functools.partial(paged.admit, cfg=cfg, n=sampling.n, pad_id=pad_id,
                                    no_wait=len(sampling.wait_token_ids), impl=impl, mesh=mesh),
                  donate_argnums=(1, 2, 3))
  chunk = jax.jit(functools.partial(paged.decode_chunk, cfg=cfg, sampling=sampling, pad_id=pad_id,
                                    eos_id=eos_id, steps=steps, impl=impl),
                  donate_argnums=(1, 2, 3))
  prep = jax.jit(functools.partial(decode_model.prepare_params, cfg=cfg))
  return admit, chunk, prep


class Engine:
  """Host-side scheduler of one model / sampling config (see the module docstring)."""

  def __init__(self, cfg: ModelConfig, sampling: SamplingConfig, *, pad_id: int, eos_id: int,
               engine: EngineConfig = EngineConfig(), max_prompt_len: Optional[int] = None,
               mesh=None):
    self.cfg, self.sampling, self.ecfg, self.mesh = cfg, sampling, engine, mesh
    self.pad_id, self.eos_id = int(pad_id), int(eos_id)
    ps = engine.page_size
    longest = max_prompt_len or max(sampling.prompt_buckets)
    self.max_pages = -(-(bucket(longest, sampling.prompt_buckets) + sampling.max_new_tokens) // ps)
    # Row counts placed on the mesh (slots, admission batches) are multiples of its batch shards.
    self._shards = batch_shards(mesh)
    self.slots = self._whole_shards(engine.slots)
    if self.slots < sampling.n:
      raise ValueError(f"slots ({self.slots}) must hold a whole group (n = {sampling.n})")
    self.num_pages = engine.num_pages or self.slots * self.max_pages
    self._cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)

  def _whole_shards(self, rows: int) -> int:
    return -(-rows // self._shards) * self._shards

  def geometry(self, rows: int) -> _Geometry:
    """The cache geometry of a call of `rows` rows (`resolve_layout`)."""
    ps = self.ecfg.page_size
    impl = resolve_layout(self.ecfg.layout, rows, self.slots, self.cfg.dtype,
                          fits_dense=self.num_pages >= self.slots * self.max_pages)
    if impl == "dense":  # page s = slot s's whole cache
      return _Geometry(impl, self.max_pages * ps, 1, self.slots)
    return _Geometry(impl, ps, self.max_pages, self.num_pages)

  def programs(self, impl: str):
    """(admit, decode_chunk, prepare_params): the jitted programs of layout `impl`."""
    return _programs(self._cfg_json, self.sampling, self.pad_id, self.eos_id,
                     self.ecfg.steps_per_sync, impl, self.mesh)

  def admission_shape(self, geo: _Geometry, prompts: int, longest: int) -> tuple[int, int]:
    """(A, width): the admission batch of `prompts` prompts of at most `longest` tokens (A
    padded to a power of two, at most slots / n, a multiple of the batch shards)."""
    n, S = self.sampling.n, self.slots
    width = bucket(longest, self.sampling.prompt_buckets)
    if geo.impl != "dense":  # whole pages (a dense page is longer than any prompt)
      width = -(-width // geo.page_size) * geo.page_size
    return self._whole_shards(_pow2_at_least(prompts, max(1, S // n))), width

  def page_sharding(self, impl: str, shape):
    """Where one layer's pool lives: split over kv heads (`tensor`), whole on the batch axes (a
    slot may read any page); a dense pool's pages are the slots' rows, split over the batch axes
    as the slots are. None without a mesh."""
    if self.mesh is None:
      return None
    from jax.sharding import NamedSharding
    from reasoner import sharding
    names = {"pallas": ("kv_heads", None, None, None), "xla": (None, "kv_heads", None, None),
             "dense": ("batch", "kv_heads", None, None)}[impl]
    return NamedSharding(self.mesh, sharding.logical_to_spec(names, self.mesh, shape=shape))

  def row_sharding(self, shape):
    """Where per-row host inputs (slots' state, prompts, page tables) live; None without a mesh."""
    if self.mesh is None:
      return None
    from reasoner import sharding
    return sharding.batch_sharding(len(shape), self.mesh, batch_size=shape[0])

  # -- placement --------------------------------------------------------------------------------

  def _place_pages(self, pages, impl: str):
    if self.mesh is None:
      return pages
    return tuple(jax.device_put(p, self.page_sharding(impl, p.shape)) for p in pages)

  def _place_rows(self, x):
    if self.mesh is None:
      return x
    return jax.device_put(x, self.row_sharding(np.shape(x)))

  # -- the loop ---------------------------------------------------------------------------------

  def run(self, params, prompts: Sequence[Sequence[int]], rng: jax.Array,
          limits: Optional[Sequence[int]] = None) -> tuple[SampleOutput, EngineStats]:
    """Samples n completions per prompt. limits: optional per-row budgets of new tokens
    ([len(prompts) * n], each <= max_new_tokens; a row that reaches its budget ends like one that
    reaches max_new_tokens). Returns (outputs, stats)."""
    cfg, sc = self.cfg, self.sampling
    n, m, S = sc.n, sc.max_new_tokens, self.slots
    prompts = _check_prompts(prompts, cfg, sc)
    geo = self.geometry(len(prompts) * n)
    ps, dense = geo.page_size, geo.impl == "dense"
    admit_fn, chunk_fn, prep_fn = self.programs(geo.impl)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    rng = jnp.asarray(rng, jnp.uint32)
    row_keys = np.asarray(jax.vmap(lambda i: jax.random.fold_in(rng, i))(
        jnp.arange(len(prompts) * n)))
    rows_total = len(prompts) * n
    limits = (np.full((rows_total,), m, np.int32) if limits is None
              else np.asarray(limits, np.int32).reshape(rows_total))
    if (limits < 1).any() or (limits > m).any():
      raise ValueError(f"limits must lie in [1, max_new_tokens = {m}]")
    num_pages = geo.num_pages
    worst = max(self._group_pages(len(p), ps) for p in prompts)
    if worst > num_pages:
      raise ValueError(f"a group needs {worst} pages; the pool has {num_pages}")

    steps = self.ecfg.steps_per_sync
    stats = EngineStats(pool_pages=num_pages, page_bytes=ps * paged.kv_bytes_per_token(cfg),
                        layout=geo.impl)
    dparams = prep_fn(params)
    k_pages, v_pages = paged.init_pages(cfg, num_pages, ps, geo.impl)
    k_pages, v_pages = self._place_pages(k_pages, geo.impl), self._place_pages(v_pages, geo.impl)
    slots = jax.tree.map(self._place_rows, paged.init_slots(S, cfg, sc, self.pad_id))

    # Host bookkeeping.
    table = np.zeros((S, geo.max_pages), np.int32)
    refs = np.zeros((num_pages,), np.int32)
    free_pages = list(range(num_pages - 1, -1, -1))
    reserved = 0  # pages promised to admitted rows and not yet taken
    slot_row = np.full((S,), -1, np.int64)  # output row of each slot (-1 = empty)
    slot_len = np.zeros((S,), np.int64)  # host view: prompt length + generated count
    slot_start = np.zeros((S,), np.int64)
    slot_owned = np.zeros((S,), np.int64)  # pages in the table (shared ones included)
    slot_reserve = np.zeros((S,), np.int64)  # unallocated pages still promised to the slot
    queue = collections.deque(range(len(prompts)))
    out = {k: np.zeros((len(prompts) * n, m), dt) for k, dt in
           (("tokens", np.int32), ("logprobs", np.float32), ("sample_logprobs", np.float32),
            ("injected", bool))}
    out["tokens"][:] = self.pad_id
    lengths = np.zeros((len(prompts) * n,), np.int32)
    done = np.zeros((len(prompts) * n,), bool)

    def take_page(slot=None):
      """A free page (dense: the page pinned to `slot`)."""
      nonlocal reserved
      if dense:
        free_pages.remove(slot)
        page = slot
      else:
        page = free_pages.pop()
      refs[page] = 1
      reserved -= 1
      return page

    def release(page):
      refs[page] -= 1
      if refs[page] == 0:
        free_pages.append(page)

    while queue or (slot_row >= 0).any():
      # Admit whole groups, first come first served, while slots and pages allow.
      empty = list(np.flatnonzero(slot_row < 0))
      batch = []
      while queue and len(empty) >= n * (len(batch) + 1):
        need = self._group_pages(len(prompts[queue[0]]), ps)
        if len(free_pages) - reserved < need:
          break
        reserved += need
        batch.append(queue.popleft())
      if batch:
        k_pages, v_pages, slots = self._admit(admit_fn, geo, params, k_pages, v_pages, slots,
                                              prompts, batch, empty, table, refs, row_keys,
                                              limits, take_page)
        stats.admit_calls += 1
        for a, i in enumerate(batch):
          full = len(prompts[i]) // ps
          own = -(-len(prompts[i]) // ps)
          for j in range(n):
            s = empty[a * n + j]
            slot_row[s] = i * n + j
            slot_len[s] = slot_start[s] = len(prompts[i])
            slot_owned[s] = own
            # This sample's share of the group's reservation: its own pages up to the worst case
            # (the prompt's full pages were counted once and are already taken).
            slot_reserve[s] = -(-(len(prompts[i]) + m) // ps) - full - (own - full)
      # Pages for the positions the next call may write: up to len + steps - 1 (the last
      # generated token is never fed).
      busy = slot_row >= 0
      for s in np.flatnonzero(busy):
        top = min(slot_len[s] + steps, slot_start[s] + m - 1)
        while slot_owned[s] * ps < top:
          table[s, slot_owned[s]] = take_page()
          slot_owned[s] += 1
          slot_reserve[s] -= 1
      stats.peak_pages = max(stats.peak_pages, num_pages - len(free_pages))
      k_pages, v_pages, slots = chunk_fn(dparams, k_pages, v_pages, slots,
                                         self._place_rows(table),
                                         self._entries(geo, table, slot_owned, busy))
      stats.decode_calls += 1
      stats.decode_steps += steps
      stats.slot_steps += steps * len(slot_row)
      live, count = to_host(slots.live), to_host(slots.count)
      slot_len = np.where(busy, slot_start + count, 0)
      finished = np.flatnonzero(busy & ~live)
      if len(finished):
        got = [_host_rows(a, finished) for a in (slots.tokens, slots.logprobs,
                                                 slots.sample_logprobs, slots.injected, slots.done)]
        for r, s in enumerate(finished):
          row = slot_row[s]
          for key, arr in zip(("tokens", "logprobs", "sample_logprobs", "injected"), got[:4]):
            out[key][row] = arr[r]
          lengths[row], done[row] = count[s], got[4][r]
          for p in table[s, :slot_owned[s]]:
            release(p)
          table[s] = 0
          reserved -= slot_reserve[s]
          slot_reserve[s] = slot_owned[s] = 0
          slot_row[s] = -1
      width = self._compact_width(slot_row, count, limits, queue)
      if width:
        # Tail compaction: the busy rows (and, dense, their pages) move to slots [0, width).
        keep = np.flatnonzero(slot_row >= 0)
        idx = np.concatenate([keep, np.flatnonzero(slot_row < 0)[:width - len(keep)]])
        slots = self._take_slots(slots, idx)
        table, slot_row, slot_len, slot_start, slot_owned, slot_reserve = (
            a[idx] for a in (table, slot_row, slot_len, slot_start, slot_owned, slot_reserve))
        if dense:  # page s is slot s's: the pool shrinks with the slots
          k_pages, v_pages = self._take_pages(k_pages, idx), self._take_pages(v_pages, idx)
          refs = refs[idx]
          free_pages[:] = [p for p in range(width - 1, -1, -1) if refs[p] == 0]
          num_pages = width
          table[:, 0] = np.arange(width)
        stats.compactions += 1
    stats.end_pages = num_pages - len(free_pages)
    result = SampleOutput(tokens=out["tokens"], logprobs=out["logprobs"],
                          sample_logprobs=out["sample_logprobs"], lengths=lengths, done=done,
                          injected=out["injected"],
                          prompt_lengths=np.repeat([len(p) for p in prompts], n).astype(np.int32))
    return result, stats

  def _compact_width(self, slot_row, count, limits, queue) -> int:
    """The slot count the busy rows move into now, or 0 for none (`EngineConfig.
    compact_min_steps`): only when nothing waits, at most a quarter of the slots are busy and a
    busy row may decode `compact_min_steps` more steps. A power of two (and a multiple of the
    mesh's batch shards)."""
    need = self.ecfg.compact_min_steps
    busy = np.flatnonzero(slot_row >= 0)
    if not need or queue or not len(busy):
      return 0
    if int((limits[slot_row[busy]] - count[busy]).max()) < need:
      return 0
    width = self._whole_shards(_pow2_at_least(len(busy), 1 << 40))
    return width if 4 * width <= len(slot_row) else 0

  def _take_slots(self, slots: paged.Slots, idx) -> paged.Slots:
    ix = jnp.asarray(idx, jnp.int32)
    return jax.tree.map(lambda a: self._place_rows(jnp.take(a, ix, axis=0)), slots)

  def _take_pages(self, pages, idx):
    ix = jnp.asarray(idx, jnp.int32)
    return self._place_pages(tuple(jnp.take(p, ix, axis=0) for p in pages), "dense")

  def _entries(self, geo: _Geometry, table, owned, busy) -> paged.Entries:
    """The (page, slot, first position) of every page of a busy slot, padded to a power of two
    (at least the slots) with entries of no slot."""
    ps, S = geo.page_size, table.shape[0]
    if geo.impl != "xla":  # the Pallas kernel reads the page table; dense reads the pool
      z = np.zeros((1,), np.int32)
      return paged.Entries(z, z, z)
    have = busy[:, None] & (np.arange(table.shape[1])[None] < owned[:, None])
    slot, col = np.nonzero(have)
    e = _pow2_at_least(max(len(slot), S), 1 << 40)
    page = np.zeros((e,), np.int32)
    slots = np.full((e,), S, np.int32)
    base = np.zeros((e,), np.int32)
    page[:len(slot)], slots[:len(slot)], base[:len(slot)] = table[slot, col], slot, col * ps
    return paged.Entries(page, slots, base)

  def _group_pages(self, prompt_len: int, ps: int) -> int:
    """Worst-case pages of a group: the prompt's full pages once, the rest per sample."""
    n = self.sampling.n
    full = prompt_len // ps
    return full + n * (-(-(prompt_len + self.sampling.max_new_tokens) // ps) - full)

  def _admit(self, admit_fn, geo: _Geometry, params, k_pages, v_pages, slots, prompts, batch,
             empty, table, refs, row_keys, limits, take_page):
    """Prefills the prompts `batch` (indices) into fresh pages and starts their samples in the
    first slots of `empty`; fills the host page table."""
    ps, n, S = geo.page_size, self.sampling.n, self.slots
    a, width = self.admission_shape(geo, len(batch), max(len(prompts[i]) for i in batch))
    tokens = np.full((a, width), self.pad_id, np.int32)
    lengths = np.ones((a,), np.int32)
    page_ids = np.full((a, -(-width // ps)), geo.num_pages, np.int32)
    copy_src = np.zeros((a * n,), np.int32)
    copy_dst = np.full((a * n,), geo.num_pages, np.int32)
    slot_ids = np.full((a * n,), S, np.int32)
    keys = np.zeros((a * n, 2), np.uint32)
    budgets = np.ones((a * n,), np.int32)
    for r, i in enumerate(batch):
      p = prompts[i]
      tokens[r, :len(p)] = p
      lengths[r] = len(p)
      full, own = len(p) // ps, -(-len(p) // ps)
      pages = [take_page(empty[r * n]) for _ in range(own)]  # (dense: own = 1)
      page_ids[r, :own] = pages
      for j in range(n):
        s = empty[r * n + j]
        slot_ids[r * n + j] = s
        keys[r * n + j] = row_keys[i * n + j]
        budgets[r * n + j] = limits[i * n + j]
        table[s, :full] = pages[:full]
        if own > full:  # the partial last page: the first sample keeps it, others get a copy
          if j == 0:
            table[s, full] = pages[full]
          else:
            dst = take_page(s)
            table[s, full] = dst
            copy_src[r * n + j], copy_dst[r * n + j] = pages[full], dst
      refs[pages[:full]] = n
    place = self._place_rows
    return admit_fn(params, k_pages, v_pages, slots, place(tokens), place(lengths),
                         place(page_ids), copy_src, copy_dst, slot_ids, keys, budgets)


def entries_capacity(slots: int, geo: _Geometry) -> int:
  """The longest `paged.Entries` list a run of `geo` (xla layout) can pass: every page of every
  slot, at most the pool, padded as `Engine._entries` pads."""
  return _pow2_at_least(max(min(slots * geo.max_pages, geo.num_pages), slots), 1 << 40)


def slots_for(rows: int) -> int:
  """Slots for a call of `rows` rows: a power of two up to 64, then a multiple of 64 (every
  slot computes each decode step, so 192 rows get 192 slots rather than 256; the rounding bounds
  the compiled variants across calls of similar sizes)."""
  rows = max(rows, 1)
  return _pow2_at_least(rows, 64) if rows <= 64 else -(-rows // 64) * 64


def generate_paged(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                   sampling: SamplingConfig, rng: jax.Array, *, pad_id: int, eos_id: int,
                   mesh=None, engine: Optional[EngineConfig] = None) -> SampleOutput:
  """`sampler.generate` on the rollout engine (same arguments and results). The slot count is
  the engine config's, or the call's row count rounded up (`slots_for`) when smaller (the pool
  then holds no more than the static sampler's cache of those rows)."""
  longest = max((len(p) for p in prompts), default=1)
  eng = engine_for(cfg, sampling, len(prompts) * sampling.n, longest, pad_id=pad_id,
                   eos_id=eos_id, mesh=mesh, engine=engine)
  return eng.run(params, prompts, rng)[0]


def engine_for(cfg: ModelConfig, sampling: SamplingConfig, rows: int, longest: int, *,
               pad_id: int, eos_id: int, mesh=None,
               engine: Optional[EngineConfig] = None) -> Engine:
  """The engine `generate_paged` runs a call of `rows` rows (prompts of at most `longest`
  tokens) on: the config's slots, or `slots_for(rows)` when fewer (and at least one group)."""
  ecfg = engine or EngineConfig()
  ecfg = dataclasses.replace(ecfg, slots=max(min(ecfg.slots, slots_for(rows)), sampling.n))
  return Engine(cfg, sampling, pad_id=pad_id, eos_id=eos_id, engine=ecfg, max_prompt_len=longest,
                mesh=mesh)


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
             rng: jax.Array, *, pad_id: int, eos_id: int, mesh=None) -> SampleOutput:
  """Samples `sampling.n` completions per prompt with the sampler `sampling.engine` names (the
  rollout engine by default, or the static sampler). Arguments and results: `sampler.generate`."""
  if sampling.engine == "static":
    return sampler.generate(params, cfg, prompts, sampling, rng, pad_id=pad_id, eos_id=eos_id,
                            mesh=mesh)
  return generate_paged(params, cfg, prompts, sampling, rng, pad_id=pad_id, eos_id=eos_id,
                        mesh=mesh)
