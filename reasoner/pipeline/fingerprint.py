"""Which config a stage's results were made with, so a rerun never reuses stale ones.

Each model's directory (`WORKDIR/stages/MODEL/`) holds `fingerprint.json`: the config fields that
shape that model and its evaluation, flattened to dotted names. They are the run-wide fields
(seed, init, model, tokenizer, data), the blocks of the stage that makes the model and of
every stage its input came from (its parents, and for distillation the student's `init_from`
model), and `eval`, all as R1-Zero mode's overrides leave them (`r1_zero_config`). `r1_zero`
itself is a field of the models GRPO leads to (grpo, distill, dpo) only: M0 is the same model in
both modes, so an R1-Zero run reuses a normal run's M0 (its evaluation with the R1-Zero prompt
goes to a file of its own, `eval_file`). Fields that only say how or where to run (memory
budgets, the mesh, logging, checkpoint cadence, which stages to run, the hardware plan) are left
out, and so are the fields of the distillation method not chosen (`_unread_by_method`) and
eval.source: the second evaluation set shapes no model, and eval.json records the source it was
computed with, so a change re-runs only that set's evaluation (`Pipeline._evaluate`).

The pipeline writes the fingerprint when it first touches a model (before training it), and on
every later run compares it before reusing anything in that directory (a finished model, a step
checkpoint, eval.json): a difference stops the run with one line naming the changed fields,
unless `config.allow_config_change` says to go on (then the new fingerprint is recorded).
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from reasoner.io import is_writer, read_json, write_json
from reasoner.pipeline.config_check import r1_zero_config
from reasoner.stages import STAGES, Stage
from reasoner.stages.distill import INIT_MODELS

FILE = "fingerprint.json"
_RUN_WIDE = ("seed", "init", "model", "tokenizer", "data")
# Fields that fingerprints once had and no longer have: absent from the current fingerprint they
# are not a change (r1_zero was run-wide; M0 and SFT fingerprints written then still hold it).
_RETIRED = ("r1_zero",)
# Fields added since, with the value that means what their absence meant: a fingerprint written
# before they existed is read as having it.
_ADDED = {"pretrain.tagged_fraction": 0.0}
# Fields that do not change results: how and where the run executes.
_IGNORED = ("tokens_per_device", "rollout_rows", "max_prompt_tokens", "batch_size@eval",
            "actor_devices", "logits_chunk_mib", "remat", "source@eval")


def _flatten(node: Any, prefix: str) -> dict:
  if isinstance(node, ConfigDict):
    node = node.to_dict()
  if isinstance(node, dict):
    out = {}
    for k, v in node.items():
      out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: list(node) if isinstance(node, tuple) else node}


def _ignored(name: str) -> bool:
  leaf = name.rsplit(".", 1)[-1]
  return leaf in _IGNORED or (name.startswith("eval.") and f"{leaf}@eval" in _IGNORED)


def _stage_of_model(model: str) -> Stage:
  return next(s for s in STAGES if s.model == model)


def _lineage(config: ConfigDict, model: str) -> list[str]:
  """The stage blocks `model` depends on: its stage's and its inputs' (transitively)."""
  stage = _stage_of_model(model)
  if stage.parent is None:
    return ["pretrain"] if config.init == "pretrain" else []
  inputs = [stage.parent_model(config)]
  if stage.name == "distill" and not config.distill.student:
    inputs.append(INIT_MODELS[config.distill.init_from])
  blocks = list(stage.blocks)
  for m in inputs:
    blocks += [b for b in _lineage(config, m) if b not in blocks]
  return blocks


# The distill fields only rejection sampling reads (on-policy distillation reads the others).
_REJECTION_ONLY = ("n_problems", "samples_per_problem", "temperature", "batch_size", "seq_len")


def _unread_by_method(config: ConfigDict) -> tuple:
  """Dotted prefixes of the distill fields that config.distill.method does not read. Under
  "rejection" that is the on-policy block and `method` itself (at its default), so models made
  before on-policy distillation existed keep their fingerprints."""
  if config.distill.get("method", "rejection") == "rejection":
    return ("distill.method", "distill.on_policy.")
  return tuple(f"distill.{k}" for k in _REJECTION_ONLY)


def fingerprint(config: ConfigDict, model: str) -> dict:
  """{dotted field: value} of every field that shapes `model` and its evaluation."""
  config = r1_zero_config(config)
  lineage = _lineage(config, model)
  out = {"r1_zero": bool(config.r1_zero)} if "grpo" in lineage else {}
  for key in (*_RUN_WIDE, *lineage, "eval"):
    out.update(_flatten(config[key], key))
  unread = _unread_by_method(config)
  return {k: v for k, v in sorted(out.items())
          if not _ignored(k) and not any(k == u or k.startswith(u) for u in unread)}


def changed_fields(saved: dict, current: dict) -> list[str]:
  """'name: old -> new' for every field that differs (added / removed fields too)."""
  missing = object()
  out = []
  for k in sorted(set(saved) | set(current)):
    old, new = saved.get(k, missing), current.get(k, missing)
    if old != new:
      show = lambda v: "(absent)" if v is missing else repr(v)
      out.append(f"{k}: {show(old)} -> {show(new)}")
  return out


def eval_file(config: ConfigDict) -> str:
  """The name of a model's evaluation file in its directory: `eval.json`, or in R1-Zero mode
  `eval_r1_zero.json` (its prompts carry the R1-Zero instruction, so M0 scores differently)."""
  return "eval_r1_zero.json" if config.get("r1_zero", False) else "eval.json"


def check_fingerprint(config: ConfigDict, model: str, directory, log=print) -> None:
  """Compares (or first writes) `directory/fingerprint.json` for `model` (module docstring)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  path = epath.Path(directory) / FILE
  current = fingerprint(config, model)
  if path.exists():
    saved = {k: v for k, v in read_json(path).items() if k in current or k not in _RETIRED}
    saved = {**{k: v for k, v in _ADDED.items() if k in current}, **saved}
    changed = changed_fields(saved, current)
    if not changed:
      return
    shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
    if not config.get("allow_config_change", False):
      raise ValueError(f"the config changed since {model} was made in {directory}: {shown}. Use "
                       f"another --workdir, delete {directory}, or pass "
                       f"--config.allow_config_change=True to reuse it anyway")
    log(f"[config] {model}: reusing results made with another config ({shown})")
  if is_writer():
    write_json(path, current)
