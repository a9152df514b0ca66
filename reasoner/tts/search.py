"""Step-level beam search guided by a process reward model.

A step is generated text up to a token containing '.' (the step-end tokens of `reasoner.tts.prm`).
Each round, every unfinished beam is extended by `expansions` sampled steps; the candidates of a
problem (new extensions plus its already finished beams) are scored by the PRM (its last step's
score) and the `beam_width` best distinct ones are kept (finished beams without an answer last).
A beam is finished when it emits EOS or reaches `max_new_tokens`. All beams of all problems are
expanded in one batched `generate` call per round (padded to a fixed number of prompts, so every
round reuses one compiled program).

Generated tokens (`stats`, and prm_search's 'generated_tokens'): every token the sampler returned
for a real beam's expansion, kept or not, summed per problem: the search's cost on the same
scale as a sampled completion's length (`Samples.lengths`). The rows that only pad a call to its
fixed width, and the PRM's forward passes over the candidates, are not generated tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.rewards import is_correct
from reasoner.verify.answers import extract_answer
from reasoner.sampling import SamplingConfig
from reasoner.tts.policy import Policy, period_token_ids


@dataclasses.dataclass
class Beam:
  """A partial (or finished) completion: generated ids, its PRM score, whether it is finished."""

  ids: tuple
  score: float = 0.0
  done: bool = False


def _finished(ids: Sequence[int], eos_id: int, max_new: int) -> bool:
  return (len(ids) > 0 and ids[-1] == eos_id) or len(ids) >= max_new


def _score(prm, policy: Policy, items) -> None:
  """Sets the PRM score of each (problem, prompt ids, Beam) in `items`."""
  if not items:
    return
  texts = [policy.tokenizer.decode(list(b.ids)) for _, _, b in items]
  scores = prm.score([p for p, _, _ in items], texts, "last")
  for (_, _, b), s in zip(items, scores):
    b.score = float(s)


def beam_search(policy: Policy, prm, problems: Sequence[Problem], rng: jax.Array, *,
                beam_width: int = 4, expansions: int = 4, max_steps: Optional[int] = None,
                step_tokens: int = 32, max_new_tokens: int = 128,
                temperature: float = 1.0, stats: Optional[dict] = None) -> list[list[Beam]]:
  """PRM-guided step-level beam search; returns, per problem, up to `beam_width` beams sorted by
  PRM score, best first (fewer only when fewer distinct candidates were found; finished beams
  without an extractable answer come after the others).

  A beam ends at EOS or after `max_new_tokens` generated tokens (capped so that prompt + beam +
  one step fits the model's max_seq_len). `max_steps` (default: no limit) bounds the rounds;
  beams still open after it are returned unfinished (done=False).

  `stats` (a dict, optional) receives 'generated_tokens': [P] int, the tokens generated for each
  problem over all rounds (the module docstring), and 'rounds'.
  """
  if min(beam_width, expansions, step_tokens, max_new_tokens) < 1 or (max_steps or 1) < 1:
    raise ValueError("beam_width, expansions, step_tokens, max_new_tokens and max_steps must "
                     "be >= 1")
  tok = policy.tokenizer
  eos = tok.eos_id
  prompts = policy.prompt_ids(problems)
  longest = max(len(p) for p in prompts)
  max_new_tokens = min(max_new_tokens, policy.cfg.max_seq_len - longest - step_tokens + 1)
  if max_new_tokens < 1:
    raise ValueError(f"prompts of {longest} tokens + a step of {step_tokens} tokens do not fit "
                     f"max_seq_len {policy.cfg.max_seq_len}")
  stops = tuple(i for i in period_token_ids(tok) if i != eos)
  step_cfg = SamplingConfig(max_new_tokens=step_tokens, temperature=temperature, n=expansions,
                            stop_token_ids=stops)
  beams = [[Beam(())] for _ in problems]
  spent = np.zeros(len(problems), np.int64)
  round_ = 0
  while max_steps is None or round_ < max_steps:
    live = [(i, b) for i, bs in enumerate(beams) for b in bs if not b.done]
    if not live:
      break
    rows = policy.generate([prompts[i] + list(b.ids) for i, b in live], step_cfg,
                           jax.random.fold_in(rng, round_),
                           min_prompts=len(problems) * beam_width)
    pools = [[b for b in bs if b.done] for bs in beams]
    new = []
    for k, (i, b) in enumerate(live):
      for j in range(expansions):
        step = rows[k * expansions + j][0]
        spent[i] += len(step)
        ids = (b.ids + tuple(step))[:max_new_tokens]
        cand = Beam(ids, done=_finished(ids, eos, max_new_tokens))
        pools[i].append(cand)
        new.append((problems[i], prompts[i], cand))
    _score(prm, policy, new)
    beams = [_top(pool, beam_width, tok) for pool in pools]
    round_ += 1
  if stats is not None:
    stats.update(generated_tokens=spent, rounds=round_)
  return beams


def _top(pool: Sequence[Beam], k: int, tokenizer) -> list[Beam]:
  """The k best distinct beams by score (stable: earlier beams win ties); finished beams without
  an extractable answer rank after all others."""
  def key(b: Beam):
    dud = b.done and extract_answer(tokenizer.decode(list(b.ids))) is None
    return (dud, -b.score)

  seen, out = set(), []
  for b in sorted(pool, key=key):
    if b.ids in seen:
      continue
    seen.add(b.ids)
    out.append(b)
    if len(out) == k:
      break
  return out


def prm_search(policy: Policy, prm, problems: Sequence[Problem], rng: jax.Array, **kw) -> dict:
  """Accuracy of the top beam of `beam_search` (kw: its options), with the oracle best of the
  final beams as an upper bound (an oracle figure, not a strategy's accuracy). Returns
  {'accuracy', 'beam_pass', 'correct' ([P] bool, the top beam's), 'beam_correct' ([P][beams]),
  'generated_tokens' ([P] int), 'mean_generated_tokens', 'completions', 'scores'}."""
  stats = {}
  beams = beam_search(policy, prm, problems, rng, stats=stats, **kw)
  texts = [[policy.tokenizer.decode(list(b.ids)) for b in bs] for bs in beams]
  correct = [[is_correct(p, t) for t in ts] for p, ts in zip(problems, texts)]
  return {"accuracy": float(np.mean([c[0] for c in correct])),
          "beam_pass": float(np.mean([any(c) for c in correct])),
          "correct": [bool(c[0]) for c in correct],
          "beam_correct": correct,
          "generated_tokens": stats["generated_tokens"].tolist(),
          "mean_generated_tokens": float(stats["generated_tokens"].mean()),
          "completions": [t[0] for t in texts],
          "scores": [[b.score for b in bs] for bs in beams]}
