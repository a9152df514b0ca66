"""Memory plan of a pipeline config: will every stage's programs fit the named hardware?

Each stage's jitted programs are built exactly as the stages build them (their loss functions,
optimiser, shardings and batch layouts), from abstract shapes only (`jax.ShapeDtypeStruct`s with
shardings; parameters and optimiser state come from `jax.eval_shape`, nothing is allocated),
then lowered and compiled for `config.mesh` over `config.hardware.devices` devices. XLA's
`memory_analysis()` of each executable gives per-device bytes of

  arguments, outputs, aliased (outputs written in place of donated arguments), temporaries

and the program's peak estimate is arguments + temporaries + outputs - aliased.

A stage also keeps buffers alive beside a program that are not its arguments ("resident"):
  every stage   (full fine-tune) the params it was started from (the caller holds them;
                `init_train_state` copies them into the state), which are also GRPO's KL
                reference; under LoRA the state holds the frozen base itself, no copy;
  GRPO's log-prob pass and rollouts   the train state's optimiser state;
  distill       the teacher's params.
The sampler (`Engine.run`) prefills on the params it is given and decodes on a copy of them
made before its loop (`prepare_params`: unstacked, in the compute dtype), alive until it returns:
its prefill rows also count the decode copy, its decode rows the params it was given (GRPO: the
policy being trained), as resident beside what the stage keeps.
A program fits when its peak is at most `config.hardware.budget_gib` (the share of a device we
plan a program for) and peak + resident at most the device's `memory_gib` (include_resident=False
checks the peak alone).

Programs (`PROGRAMS`):
  sft            SFT train step, sft.batch_size x sft.seq_len
  grpo           one GRPO update on a minibatch (see `grpo_batch`)
  grpo_logprobs  the old / reference log-prob forward over a whole GRPO batch
  distill        distillation train step (the student), distill.batch_size x distill.seq_len;
                 on-policy (distill.method): prompts_per_step x samples_per_prompt rows of
                 grpo.max_prompt_tokens + distill.max_new_tokens, with the teacher's scores
  dpo            DPO train step: chosen + rejected rows, reference log-probs, replay rows
  sample         the rollout engine: prefill of one sampler call's prompts into the KV pool
                 and a decode chunk over its slots, reported as two rows: GRPO's call
                 (prompts_per_step x group_size rows, or grpo.rollout_rows) as sample/prefill and
                 sample/decode, then (`sampler_calls`) each other enabled stage's call that GRPO's
                 does not cover as sample[STAGE]/prefill and sample[STAGE]/decode
The weights are planned in the dtype the runner holds them in (`planned_model_config`).

The numbers are XLA's for the backend that compiles them (CPU when simulating a TPU slice): its
buffer assignment and fusion differ from the TPU compiler's, so treat them as an estimate.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasoner import sharding
from reasoner.losses.sft import sft_loss
from reasoner.model import decoder, lora
from reasoner.model.config import ModelConfig
from reasoner.pipeline.config_check import r1_zero_config, resolve_stages, validate_config
from reasoner.pipeline.run import trained_weights_dtype
from reasoner.stages.models import config_model
from reasoner.sampling import SamplingConfig
from reasoner.sampling import engine as rollout_engine
from reasoner.sampling import paged
from reasoner.stages import distill as distill_stage
from reasoner.stages import dpo as dpo_stage
from reasoner.stages import grpo as grpo_stage
from reasoner.stages.rollouts import verify_call_prompts
from reasoner.train import make_optimizer
from reasoner.train.state import TrainState, train_state_shardings
from reasoner.train.step import (batch_shardings, jit_step, micro_batches_for, micro_batches_of,
                                 train_step_fn)

PROGRAMS = ("sft", "grpo", "grpo_logprobs", "distill", "dpo", "sample")
GIB = 1024 ** 3
_ROW_KEYS = ("tokens", "positions", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
  """Per-device memory of one compiled program (bytes)."""
  name: str
  rows: int
  tokens: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  resident_bytes: int = 0  # live beside the program, not its arguments (module docstring)
  compile_s: float = 0.0
  micro_batches: int = 1  # a train step's micro-batches (the stage's tokens_per_device)

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def total_bytes(self) -> int:
    return self.peak_bytes + self.resident_bytes


def check_hardware(config) -> None:
  """Raises ValueError naming the config.hardware field that is not a positive number (devices
  a whole count >= 1, memory_gib > 0, budget_gib > 0 when given: it has no 0 = 'use memory';
  leave it out for that)."""
  if "hardware" not in config:
    raise ValueError("the config has no `hardware` block (name, devices, memory_gib, budget_gib)")
  hw = config.hardware
  for key in ("devices", "memory_gib", "budget_gib"):
    value = hw.get(key, None)
    if value is None and key == "budget_gib":
      continue
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      raise ValueError(f"config.hardware.{key} must be positive, got {value!r}")
  if int(hw.devices) != hw.devices:
    raise ValueError(f"config.hardware.devices must be a whole number, got {hw.devices!r}")


def budget_bytes(config) -> int:
  """config.hardware.budget_gib (memory_gib when left out) in bytes."""
  hw = config.hardware
  gib = hw.get("budget_gib", None)
  return int(float(hw.memory_gib if gib is None else gib) * GIB)


def memory_bytes(config) -> int:
  """config.hardware.memory_gib (the device's memory) in bytes."""
  return int(float(config.hardware.memory_gib) * GIB)


def fits(plan: ProgramPlan, budget: int, include_resident: bool = True,
         memory: Optional[int] = None) -> bool:
  """The program's own peak within `budget`, and (include_resident) with what the stage keeps
  beside it, within the device's `memory` (default: the budget too)."""
  memory = budget if memory is None else memory
  return plan.peak_bytes <= budget and (not include_resident or plan.total_bytes <= memory)


# ---- abstract inputs ------------------------------------------------------------------------
def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs / arrays with NamedShardings
  (the largest shard: shards may differ by a padded remainder)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
  return total


def _with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_params(model_cfg: ModelConfig, mesh: Mesh) -> Any:
  """The decoder's parameters as ShapeDtypeStructs placed by `sharding.param_shardings`."""
  params = jax.eval_shape(lambda: decoder.init_params(model_cfg, jax.random.PRNGKey(0)))
  return _with_shardings(params, sharding.param_shardings(model_cfg, mesh))


def abstract_train_state(optimizer, params: Any, mesh: Mesh) -> tuple[TrainState, TrainState]:
  """(TrainState of ShapeDtypeStructs, its shardings) for abstract `params`."""
  shardings = train_state_shardings(optimizer, params, jax.tree.map(lambda x: x.sharding, params),
                                    mesh)
  state = jax.eval_shape(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                              opt_state=optimizer.init(p)), params)
  return _with_shardings(state, shardings), shardings


def row_batch(rows: int, tokens: int, keys: Sequence[str] = _ROW_KEYS) -> dict:
  """Abstract training rows [rows, tokens]: int32 ids / positions / segments, float32 mask."""
  dtype = lambda k: jnp.float32 if k in ("loss_mask",) or k.endswith("logprobs") else jnp.int32
  return {k: jax.ShapeDtypeStruct((rows, tokens), dtype(k)) for k in keys}


def _place(batch: Any, mesh: Mesh) -> Any:
  return _with_shardings(batch, batch_shardings(batch, mesh))


def _rng(mesh: Mesh):
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))


def grpo_batch(config, rows: int, tokens: int) -> dict:
  """The batch one GRPO update trains on (mirrors `grpo.make_learn`, synchronous stage): rows
  tokens / positions / segment_ids / loss_mask [rows, tokens] and advantages [rows], plus
  old_logprobs (several updates per batch), ref_logprobs (loss.beta > 0) and the replay
  sub-batch (replay_weight > 0)."""
  g = config.grpo
  keys = list(_ROW_KEYS)
  if grpo_stage.recomputes_old_logprobs(g):
    keys.append("old_logprobs")
  if g.loss.beta > 0:
    keys.append("ref_logprobs")
  batch = row_batch(rows, tokens, keys)
  batch["advantages"] = jax.ShapeDtypeStruct((rows,), jnp.float32)
  if g.replay_weight:
    batch["replay"] = row_batch(*grpo_stage.replay_shape(config))
  return batch


def dpo_batch(config) -> dict:
  """The batch one DPO step trains on (mirrors `dpo.run_dpo`)."""
  b, t = int(config.dpo.batch_size), int(config.dpo.seq_len)
  pairs = {"chosen": row_batch(b, t), "rejected": row_batch(b, t),
           "ref_chosen_logps": jax.ShapeDtypeStruct((b,), jnp.float32),
           "ref_rejected_logps": jax.ShapeDtypeStruct((b,), jnp.float32)}
  return {"pairs": pairs, "replay": row_batch(b, t)}


# ---- compile and measure --------------------------------------------------------------------
def memory_of(compiled) -> dict:
  """argument / output / alias / temp bytes of a compiled executable (per device)."""
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError("this backend's compiler gives no memory analysis")
  return dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
              alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes))


def _measure(name: str, rows: int, tokens: int, lowered_fn: Callable, resident: int,
             log: Callable[[str], None], micro_batches: int = 1) -> tuple[ProgramPlan, Any]:
  log(f"[plan] compiling {name} ({rows} x {tokens}) ...")
  t0 = time.perf_counter()
  compiled = lowered_fn().compile()
  plan = ProgramPlan(name=name, rows=rows, tokens=tokens, resident_bytes=resident,
                     compile_s=time.perf_counter() - t0, micro_batches=micro_batches,
                     **memory_of(compiled))
  log(f"[plan]   {name}: peak {plan.peak_bytes / GIB:.2f} GiB per device "
      f"({plan.compile_s:.1f} s)")
  return plan, compiled


def plan_mesh(config, devices: Optional[Sequence[jax.Device]] = None, n_devices: Optional[int] = None) -> Mesh:
  """config.mesh over the first `n_devices` (default config.hardware.devices) of `devices`
  (default jax.devices()); a clear error when the process has too few."""
  devices = list(jax.devices() if devices is None else devices)
  n = int(n_devices or config.hardware.devices)
  if len(devices) < n:
    raise ValueError(f"planning for {n} devices ({config.hardware.name}) needs {n} JAX devices, "
                     f"this process has {len(devices)}; run `python -m launch.plan` (it sets the "
                     f"CPU device count) or set XLA_FLAGS=--xla_force_host_platform_device_count={n}")
  m = config.mesh
  return sharding.make_mesh(int(m.data), int(m.fsdp), int(m.tensor), devices=devices[:n])


def abstract_stage_state(optimizer, model_cfg: ModelConfig, mesh: Mesh):
  """(TrainState, its shardings) of a stage as `stages.trainable.init_stage_state` builds it:
  every weight trained, or (lora_rank > 0) adapters trained beside the frozen base."""
  params = abstract_params(model_cfg, mesh)
  if not model_cfg.lora_rank:
    return abstract_train_state(optimizer, params, mesh)
  adapters = _with_shardings(jax.eval_shape(lambda: lora.init_lora(model_cfg, jax.random.PRNGKey(0))),
                             sharding.lora_shardings(model_cfg, mesh))
  state, state_sh = abstract_train_state(optimizer, adapters, mesh)
  return (state.replace(frozen=params),
          state_sh.replace(frozen=jax.tree.map(lambda x: x.sharding, params)))


def _train_step(name, rows, tokens, model_cfg, stage_cfg, loss_fn, batch, mesh, resident, log):
  """The stage's train step as `make_train_step` builds it: micro-batches from the stage's
  tokens_per_device, traced under the mesh (activation constraints, per-device chunking)."""
  optimizer = make_optimizer(stage_cfg.optim)
  state, state_sh = abstract_stage_state(optimizer, model_cfg, mesh)
  batch = _place(batch, mesh)
  micro = micro_batches_of(batch, int(stage_cfg.tokens_per_device), mesh)
  step = jit_step(train_step_fn(loss_fn, optimizer, micro), state_sh, batch, mesh)
  lowered = lambda: step.lower(state.replace(frozen=None), state.frozen, batch, _rng(mesh))
  return _measure(name, rows, tokens, lowered, resident, log, micro)[0]


def check_config(config) -> None:
  """What the runner checks before it starts (`validate_config`: ValueError naming the field)
  and `check_hardware`. An init not given yet (the real presets leave it to --config.init) is
  checked as a Hugging Face folder's."""
  check_hardware(config)
  if not config.get("init"):
    config = ml_collections.ConfigDict(config.to_dict())
    config.init = "<init>"
  validate_config(config)


def planned_model_config(config) -> ModelConfig:
  """config.model with param_dtype the dtype the runner holds the weights in
  (`run.trained_weights_dtype`: a full fine-tune from a Hugging Face folder trains float32
  weights whatever config.model.param_dtype says; under LoRA the base is stored in it)."""
  return config_model(config).replace(param_dtype=trained_weights_dtype(config))


@dataclasses.dataclass(frozen=True)
class SamplerCall:
  """One sampler call a stage makes: `prompts` prompts (of at most grpo.max_prompt_tokens
  tokens) x sampling.n samples; `holds` = per-device bytes the stage keeps alive beside the call
  besides the params it samples with; `policy_bytes` = those params (the sampler's argument)."""
  stage: str
  prompts: int
  sampling: SamplingConfig
  holds: int
  policy_bytes: int

  @property
  def rows(self) -> int:
    return self.prompts * self.sampling.n

  def covers(self, other: "SamplerCall") -> bool:
    """Whether planning this call bounds `other` (at least its rows, new tokens and bytes held)."""
    return (self.rows >= other.rows and self.sampling.max_new_tokens >= other.sampling.max_new_tokens
            and self.holds + self.policy_bytes >= other.holds + other.policy_bytes)


def sampler_calls(config, model_cfg: ModelConfig, mesh: Mesh) -> list[SamplerCall]:
  """The largest sampler call of each stage that samples, GRPO's first (always planned), then
  those of the enabled stages (`resolve_stages`) that GRPO's or an earlier one does not cover:
    grpo      call_prompts(grpo) x group_size (grpo.rollout_rows), beside the train state
    distill   rejection: `verify_call_prompts` (distill.rollout_rows) x samples_per_problem
              with the teacher, beside the student's starting params;
              on_policy: on_policy.prompts_per_step x samples_per_prompt with the student's
              policy, beside its train state and the teacher
    dpo       `verify_call_prompts` (dpo.rollout_rows) x dpo.samples_per_problem (none with
              data.preferences_path)
    eval      every model: eval.batch_size // k prompts x eval.k, and greedy eval.batch_size x 1
              (at most eval.n_problems prompts)."""
  g, d, e = config.grpo, config.distill, config.eval
  params = abstract_params(model_cfg, mesh)
  param_bytes = per_device_bytes(params)
  state = abstract_stage_state(make_optimizer(g.optim), model_cfg, mesh)[0]
  policy = per_device_bytes(state.params) + per_device_bytes(state.frozen)
  start_copy = 0 if model_cfg.lora_rank else param_bytes  # the params the stage started from
  calls = [SamplerCall("grpo", grpo_stage.call_prompts(g), grpo_stage.rollout_sampling(g),
                       start_copy + per_device_bytes(state.opt_state), policy)]
  sampling = lambda new, t, n, greedy=False: SamplingConfig(max_new_tokens=int(new),
                                                            temperature=float(t), n=int(n),
                                                            greedy=greedy)
  stages = resolve_stages(config)
  more = []
  if "distill" in stages and d.method == "on_policy":
    o = d.on_policy
    dstate = abstract_stage_state(make_optimizer(d.optim), model_cfg, mesh)[0]
    more.append(SamplerCall("distill", int(o.prompts_per_step),
                            sampling(d.max_new_tokens, o.temperature, o.samples_per_prompt),
                            param_bytes + start_copy + per_device_bytes(dstate.opt_state),
                            per_device_bytes(dstate.params) + per_device_bytes(dstate.frozen)))
  elif "distill" in stages:
    student = distill_stage.student_config(config, model_cfg) or model_cfg
    more.append(SamplerCall("distill", verify_call_prompts(d.n_problems, d.samples_per_problem,
                                                           d.get("rollout_rows", 0)),
                            sampling(d.max_new_tokens, d.temperature, d.samples_per_problem),
                            per_device_bytes(abstract_params(student, mesh)), param_bytes))
  if "dpo" in stages and not config.data.get("preferences_path"):
    p = config.dpo
    more.append(SamplerCall("dpo", verify_call_prompts(p.n_problems, p.samples_per_problem,
                                                       p.get("rollout_rows", 0)),
                            sampling(p.max_new_tokens, p.temperature, p.samples_per_problem),
                            0, param_bytes))
  if stages:
    n, k, b = int(e.n_problems), int(e.k), int(e.batch_size)
    more.append(SamplerCall("eval", min(n, max(1, b // k)), sampling(e.max_new_tokens,
                                                                     e.temperature, k), 0, param_bytes))
    more.append(SamplerCall("eval", min(n, max(1, b)), sampling(e.max_new_tokens, 1.0, 1, True),
                            0, param_bytes))
  for call in more:
    if not any(c.covers(call) for c in calls):
      calls.append(call)
  return calls


def plan(config, programs: Optional[Sequence[str]] = None, *, mesh: Optional[Mesh] = None,
         grpo_rows: Optional[int] = None, grpo_tokens: Optional[int] = None,
         log: Callable[[str], None] = lambda msg: None) -> list[ProgramPlan]:
  """Compiles each of `programs` (default all of PROGRAMS) for `config` on `mesh` (default
  `plan_mesh(config)`) and returns their ProgramPlans ("sample" gives sample/prefill and
  sample/decode). `grpo_rows` / `grpo_tokens` override the GRPO update's minibatch rows and row
  width (the log-prob pass then covers grpo_rows x grpo.minibatches rows). `log` gets progress."""
  programs = list(PROGRAMS if programs is None else programs)
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown or not programs:
    raise ValueError(f"unknown program(s) {unknown or programs}; choose from {', '.join(PROGRAMS)}")
  for name, value in (("grpo_rows", grpo_rows), ("grpo_tokens", grpo_tokens)):
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
      raise ValueError(f"{name} must be a whole number >= 1 (None = the config's), got {value!r}")
  check_config(config)
  config = r1_zero_config(config)  # R1-Zero mode's settings (no replay rows)
  mesh = plan_mesh(config) if mesh is None else mesh
  model_cfg = planned_model_config(config)
  g = config.grpo
  train_rows = grpo_stage.max_train_rows(g, mesh)
  rows = int(grpo_stage.minibatch_rows(g, train_rows) if grpo_rows is None else grpo_rows)
  if grpo_rows is not None:
    train_rows = rows * int(g.minibatches)
  width = int(grpo_stage.row_width(int(g.max_prompt_tokens) + int(g.max_new_tokens))
              if grpo_tokens is None else grpo_tokens)
  if rows <= 0 or width <= 0:
    raise ValueError(f"GRPO rows and tokens must be positive, got {rows} x {width}")
  params = abstract_params(model_cfg, mesh)
  # Beside a train step, a full fine-tune keeps the params it started from; under LoRA the state
  # holds the base itself (no copy). Beside the log-prob pass and the sampler: the optimiser state.
  param_bytes = 0 if model_cfg.lora_rank else per_device_bytes(params)
  opt_bytes = per_device_bytes(abstract_stage_state(make_optimizer(g.optim), model_cfg, mesh)[0]
                               .opt_state)
  out = []
  # Trace what the named hardware runs, not XLA:CPU's variants (`decoder.compile_for`).
  target = "cpu" if str(config.hardware.name).lower().startswith("cpu") else "accelerator"
  with jax.set_mesh(mesh), decoder.compile_for(target):
    for name in programs:
      out.extend(_plan_program(name, config, model_cfg, mesh, params, rows, width, train_rows,
                               param_bytes, opt_bytes, log))
  return out


def _plan_program(name, config, model_cfg, mesh, params, rows, width, train_rows, param_bytes,
                opt_bytes, log) -> list[ProgramPlan]:
  """The plan rows of one program (two for "sample")."""
  g = config.grpo
  if name == "sft":
    s = config.sft
    return [_train_step("sft", s.batch_size, s.seq_len, model_cfg, s,
                        _sft(model_cfg), row_batch(s.batch_size, s.seq_len), mesh,
                        param_bytes, log)]
  if name == "grpo":
    loss = grpo_stage.update_loss_fn(g, grpo_stage.grpo_loss_fn(g, model_cfg), model_cfg)
    return [_train_step("grpo", rows, width, model_cfg, g, loss,
                        grpo_batch(config, rows, width), mesh, param_bytes, log)]
  if name == "grpo_logprobs":
    # One call of the pass: make_eval_fn runs the rows in calls within tokens_per_device.
    calls = micro_batches_for(train_rows, width, int(g.tokens_per_device), mesh)
    fn = jax.jit(grpo_stage.logprob_fn(model_cfg))
    batch = row_batch(train_rows // calls, width)
    batch["advantages"] = jax.ShapeDtypeStruct((train_rows // calls,), jnp.float32)
    batch = _place(batch, mesh)
    return [_measure("grpo_logprobs", train_rows // calls, width,
                     lambda: fn.lower(params, batch), param_bytes + opt_bytes, log)[0]]
  if name == "distill":
    d = config.distill
    student = distill_stage.student_config(config, model_cfg) or model_cfg
    # The teacher's params, and (full fine-tune) the student's starting copy.
    teacher_bytes = per_device_bytes(params)
    student_bytes = 0 if student.lora_rank else per_device_bytes(abstract_params(student, mesh))
    if d.method == "on_policy":
      o = d.on_policy
      n, t = int(o.prompts_per_step * o.samples_per_prompt), grpo_stage.row_width(
          int(g.max_prompt_tokens) + int(d.max_new_tokens))
      batch = row_batch(n, t)
      if o.loss == "full":
        batch["teacher_logits"] = jax.ShapeDtypeStruct((n, t, student.vocab_size), jnp.float32)
      else:
        batch["teacher_logprobs"] = jax.ShapeDtypeStruct((n, t), jnp.float32)
      return [_train_step("distill", n, t, student, d, distill_stage.on_policy_loss_fn(o.loss, student),
                          batch, mesh, teacher_bytes + student_bytes, log)]
    return [_train_step("distill", d.batch_size, d.seq_len, student, d,
                        _sft(student), row_batch(d.batch_size, d.seq_len), mesh,
                        teacher_bytes + student_bytes, log)]
  if name == "dpo":
    d = config.dpo
    return [_train_step("dpo", 2 * d.batch_size, d.seq_len, model_cfg, d,
                        dpo_stage.dpo_train_loss(d, model_cfg), dpo_batch(config), mesh,
                        param_bytes, log)]
  out = []
  for call in sampler_calls(config, model_cfg, mesh):
    out.extend(_plan_sample(config, call, model_cfg, params, mesh, log))
  return out


def _sft(model_cfg):
  return lambda p, b, r: sft_loss(p, b, r, model_cfg=model_cfg)


def _plan_sample(config, call: SamplerCall, model_cfg, params, mesh, log) -> list[ProgramPlan]:
  """The rollout engine's programs for one sampler call (what `engine.generate_paged` runs):
  the admission (prefill of the call's prompts into the pool) and one decode chunk, at the
  engine's slots and the layout it picks for the call. The pool and the slots' state are
  arguments of both (donated), so each program's peak holds the whole KV pool. Resident beside
  them: what the stage holds (`call.holds`), and (module docstring) the decode copy of the
  params beside the prefill, the params sampled with beside the decode chunk."""
  g = config.grpo
  sampling, prompts = call.sampling, call.prompts
  rows, longest = prompts * sampling.n, int(g.max_prompt_tokens)
  tag = "sample" if call.stage == "grpo" else f"sample[{call.stage}]"
  eng = rollout_engine.engine_for(model_cfg, sampling, rows, longest, pad_id=0, eos_id=1,
                                  mesh=mesh)
  geo = eng.geometry(rows)
  admit, chunk, prep = eng.programs(geo.impl)
  S, n = eng.slots, sampling.n

  def arg(shape, dtype, where=None):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

  k_shape, v_shape = paged.page_layout(geo.impl, geo.num_pages, geo.page_size,
                                       model_cfg.n_kv_heads, model_cfg.head_dim)
  dt = jnp.dtype(model_cfg.dtype)
  pools = tuple(tuple(arg(shape, dt, eng.page_sharding(geo.impl, shape))
                      for _ in range(model_cfg.n_layers)) for shape in (k_shape, v_shape))
  slots = jax.tree.map(lambda x: arg(x.shape, x.dtype, eng.row_sharding(x.shape)),
                       jax.eval_shape(lambda: paged.init_slots(S, model_cfg, sampling, 0)))
  a, width = eng.admission_shape(geo, prompts, longest)
  cols = -(-width // geo.page_size)
  row_args = (arg((a, width), jnp.int32, eng.row_sharding((a, width))),
              arg((a,), jnp.int32, eng.row_sharding((a,))),
              arg((a, cols), jnp.int32, eng.row_sharding((a, cols))))
  flat = [arg((a * n,), jnp.int32) for _ in range(3)] + [arg((a * n, 2), jnp.uint32),
                                                         arg((a * n,), jnp.int32)]
  prepared = prep.lower(params).compile()
  dparams = _with_shardings(jax.eval_shape(prep, params), prepared.output_shardings)
  # The prefill's params argument is the model's weights; the policy's beyond them (LoRA
  # adapters) and the decode copy are resident, as are the params themselves beside the decode.
  beyond = max(0, call.policy_bytes - per_device_bytes(params))
  plan_pre, _ = _measure(f"{tag}/prefill", a, width,
                         lambda: admit.lower(params, *pools, slots, *row_args, *flat),
                         call.holds + beyond + per_device_bytes(dparams), log)
  table = arg((S, geo.max_pages), jnp.int32, eng.row_sharding((S, geo.max_pages)))
  e = rollout_engine.entries_capacity(S, geo) if geo.impl == "xla" else 1
  entries = paged.Entries(*(arg((e,), jnp.int32) for _ in range(3)))
  plan_dec, _ = _measure(f"{tag}/decode", S, geo.max_pages * geo.page_size,
                         lambda: chunk.lower(dparams, *pools, slots, table, entries),
                         call.holds + call.policy_bytes, log)
  log(f"[plan]   {tag}: {call.stage}'s call of {prompts} x {sampling.n} rows, rollout engine, "
      f"{S} slots, {geo.impl} layout, pool {geo.num_pages} pages x {geo.page_size} positions")
  return [plan_pre, plan_dec]


# ---- report ---------------------------------------------------------------------------------
def format_table(plans: Sequence[ProgramPlan], config, include_resident: bool = True) -> str:
  """One row per program: shape, per-device GiB, the budget and whether it fits."""
  budget = budget_bytes(config)
  w = max([15] + [len(p.name) for p in plans])
  head = (f"{'program':<{w}} {'rows x tokens':>14} {'micro':>5} {'args':>8} {'temps':>8} "
          f"{'peak':>8} {'resident':>9} {'total':>8} {'budget':>8}  fits")
  lines = [head, "-" * len(head)]
  gib = lambda b: f"{b / GIB:8.2f}"
  for p in plans:
    ok = fits(p, budget, include_resident, memory_bytes(config))
    lines.append(f"{p.name:<{w}} {f'{p.rows} x {p.tokens}':>14} {p.micro_batches:5d} "
                 f"{gib(p.argument_bytes)} "
                 f"{gib(p.temp_bytes)} {gib(p.peak_bytes)} {p.resident_bytes / GIB:9.2f} "
                 f"{gib(p.total_bytes)} {gib(budget)}  {'yes' if ok else 'NO'}")
  return "\n".join(lines)


def verdict(plans: Sequence[ProgramPlan], config, include_resident: bool = True) -> str:
  """One line: does everything fit, and if not which programs do not."""
  hw = config.hardware
  budget = budget_bytes(config)
  bad = [p.name for p in plans if not fits(p, budget, include_resident, memory_bytes(config))]
  where = f"{hw.name} ({hw.devices} x {float(hw.memory_gib):g} GiB, budget {budget / GIB:g} GiB per device)"
  if not bad:
    return f"verdict: every planned program fits {where}"
  return f"verdict: does NOT fit {where}: {', '.join(bad)}"
