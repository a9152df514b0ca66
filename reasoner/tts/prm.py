"""A process reward model: a small head on the decoder, read at the token that ends each
reasoning step, trained with binary cross-entropy on step labels.

Features at a step end (`step_features`, [D + 2]): the decoder's final hidden state there, the
step's mean token log-prob under the decoder, and the running minimum of that mean over the steps
so far. The head is {'w': [D + 2], 'b': []} (the PPO value head's layout); the score of a partial
solution is sigmoid(w . features + b) = P(no mistake so far). The log-prob features matter for
small models: a linear head on the hidden state alone learns little beyond "later steps are more
often wrong", while the trunk's surprise at a written result is a direct signal of a wrong one.

Labels come from the procedural tasks (`reasoner.tts.steps`): the reference thinking plus copies
with one step's result corrupted; label = "every step so far is exactly right".

Two ways to train (`train_prm(..., finetune_trunk=...)`):
  * frozen trunk (default): features are computed once (stop-gradient) and only the head is
    fitted (logistic regression with Adam on standardised features): seconds on a CPU;
  * fine-tuned trunk: the decoder and the head are trained together on the same loss.

A step-end token is a token whose text contains '.' (see `period_token_ids`), inside the thinking
(before `</think>`). A step's tokens are those after the previous step end (for the first step:
after the prompt) up to and including its own end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reasoner.data.problem import Problem
from reasoner.io import write_json
from reasoner.losses.common import LOSS_WEIGHT, masked_mean
from reasoner.losses.logprobs import sequence_stats
from reasoner.losses.ppo import init_value_head
from reasoner.model.config import ModelConfig
from reasoner.verify.answers import THINK_CLOSE
from reasoner.sampling import bucket
from reasoner.tokenizer import format_prompt
from reasoner.tts.policy import period_token_ids
from reasoner.tts.steps import labelled_thinkings, thinking_text

PRM_FILE = "prm.json"
HEAD_FILE = "head.npz"
TRUNK_DIR = "trunk"
_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)
AGGREGATES = ("last", "min", "prod")  # how step scores make one solution score
LOGPROB_FEATURES = 2  # step mean token log-prob, running min of it


def feature_size(cfg: ModelConfig) -> int:
  return cfg.d_model + LOGPROB_FEATURES


def init_prm_head(n_features: int) -> dict:
  """Zero-initialised head {'w': [n_features], 'b': []} float32 (the PPO value head's layout)."""
  return init_value_head(n_features)


def apply_prm_head(head, features: jax.Array) -> jax.Array:
  """features [..., F] -> logits [...] float32."""
  return (jnp.einsum("...f,f->...", features.astype(jnp.float32), head["w"].astype(jnp.float32))
          + head["b"].astype(jnp.float32))


def step_features(params, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                  ends: jax.Array, starts: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Features at the step ends of right-padded rows.

  tokens / positions / segment_ids: [b, t]; ends: [b, s] positions of the step-end tokens, in
  order; starts: [b, s] the position just before each step's first token (the previous end, or
  the last prompt token). Padded entries may hold anything (mask them). Returns [b, s, D + 2]
  float32: hidden state at the end, mean token log-prob of the step, running min of that mean.
  """
  out = sequence_stats(params, cfg, dict(tokens=tokens, positions=positions,
                                         segment_ids=segment_ids), return_hidden=True,
                       packed=False)
  logp, hidden = out["logp"], out["hidden"]
  total = jnp.cumsum(logp, axis=1)
  take = lambda x, i: jnp.take_along_axis(x, i, axis=1)
  mean = (take(total, ends) - take(total, starts)) / jnp.maximum(ends - starts, 1)
  running = jax.lax.cummin(mean, axis=1)  # padded entries sit after a row's real ones
  h = jnp.take_along_axis(hidden, ends[..., None], axis=1).astype(jnp.float32)
  return jnp.concatenate([h, mean[..., None], running[..., None]], axis=-1)


def prm_objective(logits: jax.Array, labels: jax.Array, mask: jax.Array):
  """Binary cross-entropy over the masked step ends. logits, labels, mask: [b, s].
  Returns (loss, metrics {'loss', 'accuracy', 'positive_rate'})."""
  labels = labels.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  loss = masked_mean(bce, mask)
  acc = masked_mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32), mask)
  return loss, {"loss": loss, "accuracy": acc, "positive_rate": masked_mean(labels, mask),
                LOSS_WEIGHT: jnp.sum(mask)}


def prm_loss(params, batch, rng, *, model_cfg: ModelConfig):
  """params {'model', 'head'}; batch (from `prm_batch`): tokens / positions / segment_ids [b, t],
  step_ends / step_starts / step_labels / step_mask [b, s]. Returns (loss, metrics)."""
  del rng
  feats = step_features(params["model"], batch["tokens"], batch["positions"],
                        batch["segment_ids"], batch["step_ends"], batch["step_starts"], model_cfg)
  logits = apply_prm_head(params["head"], feats)
  return prm_objective(logits, batch["step_labels"], batch["step_mask"])


# ------------------------------------------------------------------------------ step positions


def step_end_positions(completion_ids: Sequence[int], tokenizer) -> list[int]:
  """Indices (into `completion_ids`) of the step-end tokens inside the thinking."""
  periods = set(period_token_ids(tokenizer))
  think_end = tokenizer.token_id(THINK_CLOSE)
  out = []
  for i, t in enumerate(completion_ids):
    if t == think_end:
      break
    if t in periods:
      out.append(i)
  return out


@dataclasses.dataclass
class StepExample:
  """One labelled row: prompt + completion ids, the absolute positions of its step ends and
  their labels (a step end for every step of the thinking, in order)."""

  ids: list
  ends: list
  labels: list
  group: int = 0  # index of the problem it was made from (its reference comes first)
  start: int = 0  # position of the last prompt token

  @property
  def starts(self) -> list:
    """Position before each step's first token."""
    return [self.start] + list(self.ends[:-1])


def step_examples(problems: Sequence[Problem], tokenizer, *, template: str = "plain",
                  n_corrupt: int = 2, seed: int = 0) -> list[StepExample]:
  """The reference solution of each problem and up to `n_corrupt` corrupted copies, tokenised with
  one label per step end. Rows whose step ends do not line up one-to-one with the steps (a '.'
  inside a step, a tokenisation that merges two steps) are skipped."""
  rng = random.Random(seed)
  out = []
  for g, p in enumerate(problems):
    if not p.solution:
      continue
    prompt = tokenizer.encode(format_prompt(p.prompt, template))
    thinking = thinking_text(p.solution)
    tail = p.solution[p.solution.find(THINK_CLOSE):] if THINK_CLOSE in p.solution else ""
    for steps, labels in labelled_thinkings(thinking, rng, n_corrupt):
      if not steps:
        continue
      completion = tokenizer.encode("<think>" + "".join(steps) + tail) + [tokenizer.eos_id]
      ends = step_end_positions(completion, tokenizer)
      n_full = sum(1 for s in steps if s.rstrip().endswith("."))
      if len(ends) != n_full or n_full == 0:
        continue
      out.append(StepExample(prompt + completion, [len(prompt) + e for e in ends],
                             [bool(l) for l in labels[:n_full]], g, len(prompt) - 1))
  return out


def prm_batch(examples: Sequence[StepExample], seq_len: int, n_steps: int, pad_id: int) -> dict:
  """Right-padded rows: tokens / positions / segment_ids [n, seq_len] and step_ends / step_starts
  / step_labels / step_mask [n, n_steps]. Step ends at or beyond seq_len (and steps beyond
  n_steps) are dropped."""
  n = len(examples)
  tokens = np.full((n, seq_len), pad_id, np.int32)
  seg = np.zeros((n, seq_len), np.int32)
  ends = np.zeros((n, n_steps), np.int32)
  starts = np.zeros((n, n_steps), np.int32)
  labels = np.zeros((n, n_steps), np.float32)
  mask = np.zeros((n, n_steps), np.float32)
  for i, ex in enumerate(examples):
    ids = ex.ids[:seq_len]
    tokens[i, :len(ids)] = ids
    seg[i, :len(ids)] = 1
    k = sum(1 for e in ex.ends[:n_steps] if e < seq_len)
    ends[i, :k], starts[i, :k] = ex.ends[:k], ex.starts[:k]
    labels[i, :k], mask[i, :k] = ex.labels[:k], 1.0
  positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
  return {"tokens": tokens, "positions": positions, "segment_ids": seg, "step_ends": ends,
          "step_starts": starts, "step_labels": labels, "step_mask": mask}


# ------------------------------------------------------------------------------ features


@functools.lru_cache(maxsize=16)
def _features_fn(cfg_json: str):
  cfg = ModelConfig.from_dict(json.loads(cfg_json))
  return jax.jit(functools.partial(step_features, cfg=cfg))


def features_at(params, cfg: ModelConfig, rows: Sequence[Sequence[int]],
                ends: Sequence[Sequence[int]], starts: Sequence[Sequence[int]], pad_id: int,
                batch_size: int = 64) -> list[np.ndarray]:
  """`step_features` of each row at its step ends: a list of [len(ends[i]), D + 2] arrays.

  Rows are right-padded to a bucket length and batched (batch sizes 4 / 16 / 64 / batch_size,
  step counts in multiples of 8) so that a run compiles only a few shapes."""
  fn = _features_fn(json.dumps(cfg.to_dict(), sort_keys=True))
  width = bucket(max(len(r) for r in rows), _BUCKETS)
  if width > cfg.max_seq_len:
    raise ValueError(f"a row of {max(len(r) for r in rows)} tokens exceeds the model's "
                     f"max_seq_len ({cfg.max_seq_len})")
  # Keep the [rows, width, vocab] logits of one batch near 2^28 floats.
  batch_size = max(1, min(batch_size, (1 << 28) // (width * cfg.vocab_size)))
  n_steps = -(-max(1, max(len(e) for e in ends)) // 8) * 8
  out = []
  for s in range(0, len(rows), batch_size):
    chunk = rows[s:s + batch_size]
    b = batch_size if len(rows) > batch_size else min(bucket(len(chunk), (4, 16, 64)), batch_size)
    b = max(b, len(chunk))
    tokens = np.full((b, width), pad_id, np.int32)
    seg = np.zeros((b, width), np.int32)
    where = np.zeros((b, n_steps), np.int32)
    before = np.zeros((b, n_steps), np.int32)
    for i, (r, e, st) in enumerate(zip(chunk, ends[s:s + batch_size], starts[s:s + batch_size])):
      tokens[i, :len(r)] = r
      seg[i, :len(r)] = 1
      where[i, :len(e)] = e
      before[i, :len(st)] = st
    seg[len(chunk):, 0] = 1  # dummy rows
    positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
    f = np.asarray(fn(params, tokens, positions, seg, where, before))
    out.extend(f[i, :len(e)] for i, e in enumerate(ends[s:s + batch_size]))
  return out


# ------------------------------------------------------------------------------ the model


@dataclasses.dataclass
class PRM:
  """A trained process reward model: decoder `trunk` params + `cfg`, the head, the tokenizer and
  prompt template it was trained with. `history`: training losses."""

  trunk: Any
  cfg: ModelConfig
  head: dict
  tokenizer: Any
  template: str = "plain"
  finetuned: bool = False
  history: list = dataclasses.field(default_factory=list)

  def _probabilities(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
    w, b = np.asarray(self.head["w"], np.float32), float(self.head["b"])
    if w.shape != (feats[0].shape[-1],):
      raise ValueError(f"PRM head has {w.shape[0]} weights for {feats[0].shape[-1]} features")
    return [1.0 / (1.0 + np.exp(-(f @ w + b))) for f in feats]

  def step_scores_ids(self, prompts: Sequence[Sequence[int]],
                      completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """P(no mistake so far) at every step end of each completion ([n_steps] each); a completion
    without a step end gets one score, read at its last token (or the prompt's last token)."""
    rows, ends, starts = [], [], []
    for p, c in zip(prompts, completions):
      e = [len(p) + i for i in step_end_positions(c, self.tokenizer)] or [len(p) + len(c) - 1]
      rows.append(list(p) + list(c))
      ends.append(e)
      starts.append([len(p) - 1] + e[:-1])
    return self._probabilities(features_at(self.trunk, self.cfg, rows, ends, starts,
                                           self.tokenizer.pad_id))

  def example_scores(self, examples: Sequence[StepExample]) -> list[np.ndarray]:
    """Scores at each labelled example's step ends ([len(ex.ends)] each)."""
    return self._probabilities(features_at(
        self.trunk, self.cfg, [e.ids for e in examples], [e.ends for e in examples],
        [e.starts for e in examples], self.tokenizer.pad_id))

  def step_scores(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[np.ndarray]:
    """`step_scores_ids` of completion texts (e.g. "<think>23+45=68. 68-7=61.</think>...") for
    their problems, tokenised with this PRM's tokenizer and prompt template."""
    if len(problems) != len(completions):
      raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    prompts = [self.tokenizer.encode(format_prompt(p.prompt, self.template)) for p in problems]
    return self.step_scores_ids(prompts, [self.tokenizer.encode(c) for c in completions])

  def score(self, problems: Sequence[Problem], completions: Sequence[str],
            aggregate: str = "last") -> np.ndarray:
    """One score per completion: the last step's ('last'), the lowest ('min') or the product
    ('prod') of its step scores. [len(completions)] float32."""
    if aggregate not in AGGREGATES:
      raise ValueError(f"unknown PRM aggregate {aggregate!r}; expected one of {AGGREGATES}")
    if not len(completions):
      return np.zeros((0,), np.float32)
    per = self.step_scores(problems, completions)
    fn = {"last": lambda s: s[-1], "min": np.min, "prod": np.prod}[aggregate]
    return np.array([fn(s) for s in per], np.float32)



def _fit_head(feats: np.ndarray, labels: np.ndarray, steps: int, lr: float, l2: float):
  """Logistic regression on standardised features with Adam; returns (head, losses). The
  standardisation is folded into w and b so the head reads raw features."""
  mean, std = feats.mean(0), feats.std(0)
  std = np.maximum(std, 0.1 * std.mean() + 1e-6)  # near-constant dims would get huge weights
  x = jnp.asarray((feats - mean) / std)
  y = jnp.asarray(labels, jnp.float32)
  ones = jnp.ones_like(y)
  head = init_prm_head(feats.shape[1])
  opt = optax.adam(lr)

  def loss_fn(h):
    loss, _ = prm_objective(apply_prm_head(h, x), y, ones)
    return loss + l2 * jnp.sum(h["w"] ** 2), loss

  @jax.jit
  def step(h, s):
    (_, loss), g = jax.value_and_grad(loss_fn, has_aux=True)(h)
    upd, s = opt.update(g, s, h)
    return optax.apply_updates(h, upd), s, loss

  state, losses = opt.init(head), []
  for _ in range(steps):
    head, state, loss = step(head, state)
    losses.append(float(loss))
  w = np.asarray(head["w"]) / std
  b = float(head["b"]) - float(np.sum(w * mean))
  return {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}, losses


def train_prm(params, model_cfg: ModelConfig, tokenizer, problems: Sequence[Problem], steps: int, *,
              template: str = "plain", finetune_trunk: bool = False, learning_rate: float = 0.05,
              batch_size: int = 32, n_corrupt: int = 2, l2: float = 1e-3, seed: int = 0,
              seq_len: Optional[int] = None) -> PRM:
  """Trains a PRM on step-labelled versions of `problems`' reference solutions.

  params / model_cfg: the decoder used as the trunk (usually the policy being evaluated).
  steps: Adam steps. Frozen trunk: full-batch steps on the precomputed features (learning_rate
  ~0.05). finetune_trunk: minibatch steps of `batch_size` rows through the whole decoder (use a
  small learning_rate, ~1e-4 .. 1e-3). Returns a PRM whose `history` holds the training losses.
  """
  if steps < 1:
    raise ValueError(f"train_prm needs steps >= 1, got {steps}")
  examples = step_examples(problems, tokenizer, template=template, n_corrupt=n_corrupt, seed=seed)
  if not examples:
    raise ValueError("train_prm: no problem has a reference solution with checkable steps "
                     "(use the procedural tasks: arithmetic, linear_equation, ...)")
  labels = np.concatenate([np.asarray(e.labels, np.float32) for e in examples])
  if labels.min() == labels.max():
    raise ValueError("train_prm: all step labels are equal; need both correct and corrupted steps")
  if not finetune_trunk:
    feats = features_at(params, model_cfg, [e.ids for e in examples], [e.ends for e in examples],
                        [e.starts for e in examples], tokenizer.pad_id)
    head, losses = _fit_head(np.concatenate(feats), labels, steps, learning_rate, l2)
    return PRM(params, model_cfg, head, tokenizer, template, False, losses)

  seq_len = seq_len or bucket(max(len(e.ids) for e in examples), _BUCKETS)
  seq_len = min(seq_len, model_cfg.max_seq_len)
  opt = optax.adam(learning_rate)
  n_steps = -(-max(len(e.ends) for e in examples) // 8) * 8
  trainable = {"model": params, "head": init_prm_head(feature_size(model_cfg))}
  state = opt.init(trainable)

  @jax.jit
  def step_fn(p, s, batch):
    (loss, _), g = jax.value_and_grad(prm_loss, has_aux=True)(p, batch, None, model_cfg=model_cfg)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss

  rng, losses = np.random.default_rng(seed), []
  bs = min(batch_size, len(examples))
  for _ in range(steps):
    pick = rng.choice(len(examples), size=bs, replace=False)
    batch = prm_batch([examples[i] for i in pick], seq_len, n_steps, tokenizer.pad_id)
    trainable, state, loss = step_fn(trainable, state, batch)
    losses.append(float(loss))
  return PRM(trainable["model"], model_cfg, trainable["head"], tokenizer, template, True, losses)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
  """P(a random positive scores above a random negative), ties counting one half."""
  pos, neg = np.asarray(pos, np.float64), np.sort(np.asarray(neg, np.float64))
  if not len(pos) or not len(neg):
    return float("nan")
  below = np.searchsorted(neg, pos, side="left")
  ties = np.searchsorted(neg, pos, side="right") - below
  return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def prm_metrics(prm: PRM, problems: Sequence[Problem], n_corrupt: int = 2, seed: int = 1) -> dict:
  """How well `prm` tells right from wrong steps on step-labelled versions of `problems` (use
  held-out ones).

  step_accuracy: score > 0.5 agrees with the label; auc: a correct step outscores a wrong one;
  paired_win_rate: at the corrupted step, the reference prefix outscores the corrupted prefix of
  the same problem (isolates the error itself from priors such as the step's position).
  """
  examples = step_examples(problems, prm.tokenizer, template=prm.template, n_corrupt=n_corrupt,
                           seed=seed)
  if not examples:
    raise ValueError("prm_metrics: no problem has step-labelled solutions")
  scores = prm.example_scores(examples)
  s = np.concatenate(scores)
  y = np.concatenate([np.asarray(e.labels, bool) for e in examples])
  reference, wins = {}, []
  for e, sc in zip(examples, scores):
    if all(e.labels):
      reference[e.group] = sc
    elif e.group in reference:
      j = e.labels.index(False)
      if j < len(reference[e.group]):
        wins.append(reference[e.group][j] > sc[j])
  return {"step_accuracy": float(np.mean((s > 0.5) == y)), "auc": auc(s[y], s[~y]),
          "paired_win_rate": float(np.mean(wins)) if wins else float("nan"),
          "n_steps": int(len(y)), "n_pairs": len(wins)}


# ------------------------------------------------------------------------------ saving


def save_prm(directory: str, prm: PRM, trunk_dir: Optional[str] = None) -> None:
  """Writes DIR/head.npz and DIR/prm.json (written last: its presence marks a complete PRM).

  The trunk is saved as a model directory DIR/trunk, unless `trunk_dir` names an existing model
  directory holding the same (frozen) trunk, which is then only referenced.
  """
  from reasoner.checkpoint import save_model
  if trunk_dir is not None and prm.finetuned:
    raise ValueError("a fine-tuned PRM trunk must be saved with the PRM (trunk_dir=None)")
  os.makedirs(directory, exist_ok=True)
  if trunk_dir is None:
    save_model(os.path.join(directory, TRUNK_DIR), prm.trunk, prm.cfg, tokenizer=prm.tokenizer)
  np.savez(os.path.join(directory, HEAD_FILE), w=np.asarray(prm.head["w"]),
           b=np.asarray(prm.head["b"]))
  meta = {"trunk": TRUNK_DIR if trunk_dir is None else os.path.abspath(trunk_dir),
          "template": prm.template, "finetuned": prm.finetuned, "d_model": prm.cfg.d_model,
          "final_loss": prm.history[-1] if prm.history else None}
  write_json(os.path.join(directory, PRM_FILE), meta)


def has_prm(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, PRM_FILE))


def load_prm(directory: str, mesh=None) -> PRM:
  """Reads a PRM written by `save_prm`."""
  from reasoner.checkpoint import load_model
  if not has_prm(directory):
    raise FileNotFoundError(f"no PRM in {directory}: expected {PRM_FILE} (train one with "
                            f"train_prm / launch.evaluate --train_prm)")
  meta = json.load(open(os.path.join(directory, PRM_FILE)))
  trunk = meta["trunk"]
  trunk = trunk if os.path.isabs(trunk) else os.path.join(directory, trunk)
  params, cfg, tokenizer, _ = load_model(trunk, mesh=mesh)
  if tokenizer is None:
    raise FileNotFoundError(f"the PRM trunk {trunk} has no tokenizer/")
  head = np.load(os.path.join(directory, HEAD_FILE))
  if head["w"].shape != (feature_size(cfg),):
    raise ValueError(f"{directory}/{HEAD_FILE}: head w has shape {head['w'].shape}, the trunk "
                     f"gives {feature_size(cfg)} features (d_model + {LOGPROB_FEATURES})")
  return PRM(params, cfg, {"w": jnp.asarray(head["w"]), "b": jnp.asarray(head["b"])}, tokenizer,
             meta.get("template", "plain"), bool(meta.get("finetuned", False)))
