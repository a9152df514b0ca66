"""Multi-turn rollouts: the model and an environment take turns, and the episodes become rows.

One rollout runs N episodes side by side (one `Environment` each, prompt-major when a problem
is repeated for a GRPO group). Each turn:

  generate   the model continues every unfinished episode's context (`reasoner.sampling.generate`,
             stopping at EOS or the `</tool>` tokens), one call for all N rows so shapes stay fixed
  cut        a turn ends at the first `</tool>` in its decoded text (whatever the tokenization),
             else at EOS, else at the token budget; later tokens are dropped
  step       env.step(turn text) -> (observation, reward, done, info)
  append     the turn's tokens (written by the model) and the observation's tokens (written by the
             environment) are appended to the context

until every episode is done, `max_turns` turns have run, or the context would exceed `max_len`
(`truncated`). An episode is a list of segments (token ids, written_by_model); its row is their
concatenation with loss_mask 1 exactly on model-written tokens (prompt and environment tokens are
0), in the shared batch layout, so `grpo_loss` / `ppo_loss` apply unchanged. Its reward is the
sum of its step rewards (an episode cut off before its environment ended it gets no final
reward); `token_rewards` puts each step's reward on the last token of that turn (what PPO's GAE
consumes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from reasoner.agentic.env import Environment
from reasoner.agentic.tools import TOOL_CLOSE
from reasoner.data.problem import Problem
from reasoner.losses.common import config_from
from reasoner.sampling import SamplingConfig, generate

Segment = tuple[list[int], bool]  # (token ids, written by the model)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  max_turns: int = 4  # model turns per episode (a hard cap on top of the environment's own)
  max_new_tokens: int = 32  # per model turn
  max_len: int = 128  # prompt + every turn and observation; also the width of the rows
  temperature: float = 1.0
  top_p: float = 1.0
  greedy: bool = False

  def __post_init__(self):
    if self.max_turns < 1 or self.max_new_tokens < 1 or self.max_len < 2:
      raise ValueError(f"need max_turns >= 1, max_new_tokens >= 1 and max_len >= 2, got "
                       f"{self.max_turns}, {self.max_new_tokens}, {self.max_len}")

  @classmethod
  def from_dict(cls, d) -> "RolloutConfig":
    return config_from(cls, d)


@dataclasses.dataclass
class Episode:
  problem: Problem
  segments: list[Segment]
  step_rewards: list[float] = dataclasses.field(default_factory=list)  # one per model turn
  infos: list[dict] = dataclasses.field(default_factory=list)  # env info per model turn
  texts: list[str] = dataclasses.field(default_factory=list)  # decoded model turns
  done: bool = False
  truncated: bool = False

  @property
  def tokens(self) -> list[int]:
    return [t for ids, _ in self.segments for t in ids]

  @property
  def reward(self) -> float:
    return float(sum(self.step_rewards))

  @property
  def n_model_tokens(self) -> int:
    return sum(len(ids) for ids, by_model in self.segments if by_model)

  @property
  def final_info(self) -> dict:
    return self.infos[-1] if self.infos and self.done else {}


@dataclasses.dataclass
class AgentRollouts:
  episodes: list[Episode]
  batch: dict  # tokens / positions / segment_ids / loss_mask [N, max_len]
  rewards: np.ndarray  # [N] episode returns
  token_rewards: np.ndarray  # [N, max_len] step rewards on the last token of their turn
  metrics: dict


def segment_rows(episodes: Sequence[Sequence[Segment]], width: int, pad_id: int) -> dict:
  """Right-padded rows [N, width]: tokens, positions, segment_ids (1, pad 0) and loss_mask (1 on
  model-written tokens). A row longer than `width` raises ValueError."""
  n = len(episodes)
  batch = {"tokens": np.full((n, width), pad_id, np.int32),
           "positions": np.zeros((n, width), np.int32),
           "segment_ids": np.zeros((n, width), np.int32),
           "loss_mask": np.zeros((n, width), np.float32)}
  for i, segments in enumerate(episodes):
    start = 0
    for ids, by_model in segments:
      end = start + len(ids)
      if end > width:
        raise ValueError(f"episode {i} has more than width={width} tokens")
      batch["tokens"][i, start:end] = ids
      batch["loss_mask"][i, start:end] = 1.0 if by_model else 0.0
      start = end
    batch["segment_ids"][i, :start] = 1
    batch["positions"][i, :start] = np.arange(start)
    batch["loss_mask"][i, 0] = 0.0  # nothing predicts the first token
  return batch


def turn_reward_positions(segments: Sequence[Segment]) -> list[int]:
  """Row index of the last token of each model turn (-1 for a turn with no tokens)."""
  out, start = [], 0
  for ids, by_model in segments:
    if by_model:
      out.append(start + len(ids) - 1 if ids else -1)
    start += len(ids)
  return out


def cut_turn(ids: Sequence[int], eos_id: int, decode: Callable[[list[int]], str]) -> list[int]:
  """A generated turn cut after the first token that completes `</tool>`, else after EOS."""
  ids = [int(t) for t in ids]
  if eos_id in ids:
    ids = ids[:ids.index(eos_id) + 1]
  if TOOL_CLOSE in decode(ids):
    for k in range(1, len(ids) + 1):
      if TOOL_CLOSE in decode(ids[:k]):
        return ids[:k]
  return ids


def tool_close_stop_sequences(tokenizer, before: str = "0123456789)]}'\" ") -> tuple:
  """Token suffixes that end a `</tool>` as the tokenizer writes it after each character of
  `before` (e.g. '</' 'tool' '>' and ')</' 'tool' '>'): the sampler's stop sequences. Only an
  early stop: `cut_turn` finds the tag in the text whatever the tokens."""
  seqs = []
  for c in [""] + list(before):
    ids = tokenizer.encode(c + TOOL_CLOSE)
    for k in range(len(ids) - 1, -1, -1):
      if TOOL_CLOSE in tokenizer.decode(ids[k:]):
        if tuple(ids[k:]) not in seqs:
          seqs.append(tuple(ids[k:]))
        break
  return tuple(seqs)


def _sampling(config: RolloutConfig, stop_sequences: tuple) -> SamplingConfig:
  return SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                        top_p=config.top_p, greedy=config.greedy, n=1,
                        stop_sequences=stop_sequences)


def run_episodes(params, model_cfg, tokenizer, problems: Sequence[Problem],
                 make_env: Callable[[], Environment], config: Any, rng: jax.Array, *,
                 mesh=None, generate_fn: Optional[Callable] = None) -> AgentRollouts:
  """Plays one episode per problem (repeat problems for groups); see the module docstring.

  generate_fn: defaults to `reasoner.sampling.generate`; any function with its signature and
  an output with `tokens [rows, max_new]` and `lengths [rows]` works (tests inject scripts).
  """
  config = RolloutConfig.from_dict(config)
  generate_fn = generate if generate_fn is None else generate_fn
  eos, pad = tokenizer.eos_id, tokenizer.pad_id
  decode = lambda ids: tokenizer.decode(list(ids))
  sampling = _sampling(config, tool_close_stop_sequences(tokenizer))
  envs = [make_env() for _ in problems]
  episodes = []
  for i, (env, problem) in enumerate(zip(envs, problems)):
    prompt = tokenizer.encode(env.reset(problem))
    if len(prompt) + 1 > config.max_len:
      raise ValueError(f"prompt of problem {i} has {len(prompt)} tokens; max_len={config.max_len} "
                       "leaves no room for a reply")
    episodes.append(Episode(problem, [(prompt, False)]))
  contexts = [ep.tokens for ep in episodes]
  for turn in range(config.max_turns):
    active = [i for i, ep in enumerate(episodes) if not ep.done]
    if not active:
      break
    # Every row is generated each turn (finished ones from a one-token dummy) so the sampler
    # sees one batch size and compiles once per prompt-length bucket.
    prompts = [contexts[i] if not episodes[i].done else [eos] for i in range(len(episodes))]
    out = generate_fn(params, model_cfg, prompts, sampling, jax.random.fold_in(rng, turn),
                      pad_id=pad, eos_id=eos, mesh=mesh)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for i in active:
      ep, room = episodes[i], config.max_len - len(contexts[i])
      ids = cut_turn(tokens[i, :int(lengths[i])], eos, decode)[:room]
      text = decode(ids)
      observation, reward, done, info = envs[i].step(text)
      ep.segments.append((ids, True))
      ep.texts.append(text)
      ep.step_rewards.append(float(reward))
      ep.infos.append(dict(info))
      contexts[i] = contexts[i] + ids
      if done:
        ep.done, ep.truncated = True, bool(info.get("truncated", False))
        continue
      obs_ids = tokenizer.encode(observation) if observation else []
      if len(contexts[i]) + len(obs_ids) >= config.max_len:
        ep.truncated = True  # no room for the observation and a reply: stop here
        ep.done = True
        continue
      if obs_ids:
        ep.segments.append((obs_ids, False))
        contexts[i] = contexts[i] + obs_ids
  for ep in episodes:
    if not ep.done:
      ep.truncated = ep.done = True
  return _collect(episodes, config.max_len, pad)


def _collect(episodes: list[Episode], width: int, pad_id: int) -> AgentRollouts:
  batch = segment_rows([ep.segments for ep in episodes], width, pad_id)
  token_rewards = np.zeros((len(episodes), width), np.float32)
  for i, ep in enumerate(episodes):
    for pos, r in zip(turn_reward_positions(ep.segments), ep.step_rewards):
      if pos >= 0:
        token_rewards[i, pos] += r
  rewards = np.asarray([ep.reward for ep in episodes], np.float32)
  return AgentRollouts(episodes, batch, rewards, token_rewards, episode_metrics(episodes))


def episode_metrics(episodes: Sequence[Episode]) -> dict:
  """Means over episodes: reward, accuracy, format, tool calls / errors, turns, lengths."""
  finals = [ep.final_info for ep in episodes]
  calls = [sum(1 for info in ep.infos if info.get("tool") is not None or info.get("error"))
           for ep in episodes]
  errors = [sum(1 for info in ep.infos if info.get("error")) for ep in episodes]
  parts = [f.get("components", {}) for f in finals]
  mean = lambda xs: float(np.mean(xs)) if len(xs) else 0.0
  return {
      "reward": mean([ep.reward for ep in episodes]),
      "accuracy": mean([bool(f.get("correct", False)) for f in finals]),
      "format": mean([p.get("format", 0.0) for p in parts]),
      "tool_calls": mean(calls),
      "tool_use_rate": mean([c > 0 for c in calls]),
      "tool_errors": mean(errors),
      "turns": mean([len(ep.infos) for ep in episodes]),
      "truncated": mean([ep.truncated for ep in episodes]),
      "model_tokens": mean([ep.n_model_tokens for ep in episodes]),
      "length": mean([len(ep.tokens) for ep in episodes]),
  }
