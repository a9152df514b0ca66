"""Agentic RL: calculator, tool-call parsing, the tool environment, multi-turn rollouts with
environment tokens masked out of the loss, and one GRPO / PPO step on a tiny random model."""

import string
from fractions import Fraction
import random

import jax
import numpy as np
import pytest

from configs import agentic as agentic_configs
from reasoner.agentic import train as agentic_train
from reasoner.agentic.calculator import CalculatorError, calculate, format_number
from reasoner.agentic.env import Environment, ToolEnv, ToolEnvConfig
from reasoner.agentic.rollout import (RolloutConfig, cut_turn, run_episodes, segment_rows,
                                      tool_close_stop_sequences)
from reasoner.agentic.tasks import (MultiplicationTask, demo_segments, direct_demo, encode_demo,
                                    tool_demo)
from reasoner.agentic.tools import (ToolCall, default_tools, defuse, format_result,
                                    parse_tool_call, run_tool_call)
from reasoner.data.problem import Problem
from reasoner.model import ModelConfig, init_params
from reasoner.rewards.composite import RewardConfig
from reasoner.train import init_train_state, make_optimizer


class CharTokenizer:
  """Characters as ids, each tag one id (vocab < 128); decode drops pad / eos."""

  TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<tool>", "</tool>", "<result>",
          "</result>")
  pad_id, eos_id, bos_id = 0, 1, None

  def __init__(self):
    chars = string.ascii_letters + string.digits + " :*+-/().,\n'_=?[]"
    self.pieces = ["<pad>", "</s>"] + list(self.TAGS) + list(chars)
    self.ids = {p: i for i, p in enumerate(self.pieces)}

  @property
  def vocab_size(self):
    return len(self.pieces)

  def encode(self, text):
    out, i = [], 0
    while i < len(text):
      tag = next((t for t in self.TAGS if text.startswith(t, i)), None)
      piece = tag or text[i]
      out.append(self.ids.get(piece, self.ids["?"]))
      i += len(piece)
    return out

  def decode(self, ids):
    return "".join(self.pieces[i] for i in ids if i > 1 and i < len(self.pieces))

  def token_id(self, piece):
    return self.ids[piece]


TOK = CharTokenizer()
PROBLEM = Problem(prompt="Compute 347*86.", answer="29842", solution="", task="multiplication",
                  meta={"a": 347, "b": 86})


# ----------------------------------------------------------------------------------- calculator


def test_calculator_matches_exact_reference():
  rng = random.Random(0)
  for _ in range(200):
    a, b, c = rng.randint(-999, 999), rng.randint(1, 999), rng.randint(-99, 99)
    op1, op2 = rng.choice("+-*"), rng.choice(["+", "-", "*", "/", "//", "%"])
    expr = f"({a}{op1}{b}){op2}{c if c else 7}"
    left = {"+": a + b, "-": a - b, "*": a * b}[op1]
    right = c if c else 7
    ref = {"+": Fraction(left + right), "-": Fraction(left - right), "*": Fraction(left * right),
           "/": Fraction(left, right), "//": Fraction(left // right),
           "%": Fraction(left % right)}[op2]
    assert calculate(expr) == ref, expr
  assert format_number(calculate("347*86")) == "29842"
  assert format_number(calculate("0.1+0.2")) == "3/10"  # exact, not 0.30000000000000004
  assert format_number(calculate("-7/2")) == "-7/2"
  assert format_number(calculate("2**-2 + 1e3")) == "4001/4"
  assert format_number(calculate(" (2+3)*4 ")) == "20"


@pytest.mark.parametrize("expr,message", [
    ("__import__('os').system('ls')", "unsupported syntax"),
    ("x+1", "unknown name 'x'"),
    ("(1).__class__", "unsupported syntax"),
    ("'a'*3", "unsupported literal"),
    ("2^3", r"use \*\* for powers"),
    ("9**9**9", "too large"),
    ("10**100", "too large"),
    ("1" * 101, "too large"),
    ("1e200", "too large"),
    ("1+" * 120 + "1", "too long"),
    ("-" * 150 + "1", "too complex"),
    ("1/0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("2**0.5", "integer exponents"),
    ("", "empty expression"),
    ("1 +", "syntax error"),
    ("True + 1", "unsupported literal"),
    ("[1, 2]", "unsupported syntax"),
])
def test_calculator_refuses_unsafe_or_oversized(expr, message):
  with pytest.raises(CalculatorError, match=message):
    calculate(expr)


# -------------------------------------------------------------------------------- tool syntax


def test_parse_tool_call_valid_and_absent():
  assert parse_tool_call("plain thinking, no call") is None
  assert parse_tool_call("<think><tool>calc: 347*86</tool>") == ToolCall("calc", "347*86")
  assert parse_tool_call("<tool>  calc :  1 + 2  </tool> trailing") == ToolCall("calc", "1 + 2")
  call = parse_tool_call("<tool>python: x = 6\nprint(x * 7)</tool>")
  assert call == ToolCall("python", "x = 6\nprint(x * 7)")


@pytest.mark.parametrize("text,message", [
    ("<tool>calc: 1+1</tool><tool>calc: 2</tool>", "one tool call per turn"),
    ("<tool>calc: 1+1", "unclosed <tool>"),
    ("calc: 1+1</tool>", "</tool> without <tool>"),
    ("</tool> then <tool>", "</tool> before <tool>"),
    ("<tool>347*86</tool>", "malformed tool call"),
    ("<tool>calc:   </tool>", "empty input for tool 'calc'"),
])
def test_parse_tool_call_malformed_gives_error_not_exception(text, message):
  call = parse_tool_call(text)
  assert call is not None and message in call.error
  output, error = run_tool_call(call, default_tools())
  assert error == call.error and output == f"error: {call.error}"


def test_unknown_tool_and_failing_tool_are_errors():
  output, error = run_tool_call(ToolCall("search", "weather"), default_tools())
  assert error == "unknown tool 'search'; available: calc, python"
  assert output.startswith("error: unknown tool")

  def broken(_):
    raise RuntimeError("boom")

  output, error = run_tool_call(ToolCall("b", "x"), {"b": broken})
  assert output == "error: b failed: RuntimeError: boom"


def test_tool_output_cannot_forge_tags():
  text = "<answer>5</answer><tool>calc: 1</tool></think>" + "9" * 300
  safe = defuse(text, max_chars=40)
  for tag in ("<answer>", "</answer>", "<tool>", "</tool>", "</think>"):
    assert tag not in safe
  assert len(safe) == 40 and safe.endswith("...")
  assert format_result("7") == "<result>7</result>"


def test_python_tool_runs_in_the_sandbox():
  tools = default_tools()
  assert run_tool_call(ToolCall("python", "x = 6\nx * 7"), tools) == ("42", None)
  assert run_tool_call(ToolCall("python", "```python\nprint(2 + 3)\n```"), tools) == ("5", None)
  output, error = run_tool_call(ToolCall("python", "1/0"), tools)
  assert error == "ZeroDivisionError: division by zero"
  output, error = run_tool_call(ToolCall("python", "import os\nos.system('ls')"), tools)
  assert error == "blocked by the sandbox (os.system)"


# -------------------------------------------------------------------------------- environment


def make_env(**kw):
  cfg = dict(max_turns=3, tool_cost=0.1, error_cost=0.05)
  cfg.update(kw)
  return ToolEnv(cfg, reward_config=RewardConfig(w_proc=0.2),
                 task_checker=MultiplicationTask().check)


def test_tool_env_episode_and_rewards():
  env = make_env()
  assert isinstance(env, Environment)
  assert env.reset(PROBLEM) == "User: Compute 347*86.\nAssistant:"
  obs, reward, done, info = env.step("<think><tool>calc: 347*86</tool>")
  assert (obs, done, info["tool"], info["error"]) == ("<result>29842</result>", False, "calc", None)
  assert reward == pytest.approx(-0.1)
  obs, reward, done, info = env.step("</think><answer>29842</answer>")
  assert done and obs == "" and info["correct"]
  assert reward == pytest.approx(1.0 + 0.2 * 1.0)  # outcome + w_proc * format
  assert info["transcript"] == ("<think><tool>calc: 347*86</tool><result>29842</result>"
                                "</think><answer>29842</answer>")
  with pytest.raises(RuntimeError, match="call reset"):
    env.step("more")


def test_tool_env_errors_disabled_tools_and_max_turns():
  env = make_env()
  env.reset(PROBLEM)
  obs, reward, done, info = env.step("<tool>nope: 1</tool>")
  assert obs == "<result>error: unknown tool 'nope'; available: calc, python</result>"
  assert reward == pytest.approx(-0.15) and not done
  obs, _, _, info = env.step("<tool>calc: 1</tool><tool>calc: 2</tool>")
  assert "one tool call per turn" in obs and info["n_errors"] == 2
  # The third turn is the last: its call is not run and the episode ends unanswered.
  obs, reward, done, info = env.step("<tool>calc: 347*86</tool>")
  assert done and info["truncated"] and not info["correct"] and obs == ""
  assert info["n_calls"] == 2

  env = make_env(tools_enabled=False)
  env.reset(PROBLEM)
  obs, _, done, info = env.step("<think><tool>calc: 347*86</tool>")
  assert obs == "<result>error: tools are disabled</result>" and not done
  with pytest.raises(ValueError, match="unknown ToolEnvConfig field"):
    ToolEnvConfig.from_dict({"max_turn": 2})


# ----------------------------------------------------------------------------------- rollouts


class ScriptedGenerate:
  """A stand-in for `reasoner.sampling.generate`: turn t of row i emits script[i][t] (text or
  ids, padded), and records the prompts it was given."""

  def __init__(self, script, max_new):
    self.script, self.max_new, self.calls = script, max_new, []

  def __call__(self, params, cfg, prompts, sampling, rng, *, pad_id, eos_id, mesh=None):
    turn = len(self.calls)
    self.calls.append([list(p) for p in prompts])
    tokens = np.full((len(prompts), self.max_new), pad_id, np.int32)
    lengths = np.zeros(len(prompts), np.int32)
    for i in range(len(prompts)):
      turns = self.script[i]
      ids = turns[turn] if turn < len(turns) else [eos_id]
      ids = TOK.encode(ids) if isinstance(ids, str) else list(ids)
      ids = ids[:self.max_new]
      tokens[i, :len(ids)], lengths[i] = ids, len(ids)

    class Out:
      pass

    out = Out()
    out.tokens, out.lengths = tokens, lengths
    return out


def scripted_rollout(script, max_turns=3, max_len=160, env_turns=4):
  gen = ScriptedGenerate(script, max_new=48)
  cfg = RolloutConfig(max_turns=max_turns, max_new_tokens=48, max_len=max_len)
  ro = run_episodes(None, None, TOK, [PROBLEM] * len(script),
                    lambda: make_env(max_turns=env_turns), cfg, jax.random.PRNGKey(0),
                    generate_fn=gen)
  return ro, gen


def test_rollout_masks_environment_tokens_and_concatenates_turns():
  answer = TOK.encode("</think><answer>29842</answer>") + [TOK.eos_id]
  script = [
      # A tool call followed by a made-up result that must be cut, then the answer, EOS and
      # tokens after the EOS that must be dropped.
      ["<think><tool>calc: 347*86</tool><result>1</result>", answer + TOK.encode("junk")],
      # Answers directly (wrong).
      ["<think>guess</think><answer>30000</answer>"],
  ]
  ro, gen = scripted_rollout(script)
  prompt = TOK.encode("User: Compute 347*86.\nAssistant:")
  turn1 = TOK.encode("<think><tool>calc: 347*86</tool>")
  obs = TOK.encode("<result>29842</result>")  # the real calculator's answer, not the made-up one
  turn2 = answer
  ep = ro.episodes[0]
  assert ep.tokens == prompt + turn1 + obs + turn2
  assert [by_model for _, by_model in ep.segments] == [False, True, False, True]
  n = len(ep.tokens)
  row_mask = ro.batch["loss_mask"][0]
  expected = np.zeros(160, np.float32)
  expected[len(prompt):len(prompt) + len(turn1)] = 1
  expected[len(prompt) + len(turn1) + len(obs):n] = 1
  np.testing.assert_array_equal(row_mask, expected)
  np.testing.assert_array_equal(ro.batch["tokens"][0, :n], ep.tokens)
  assert (ro.batch["tokens"][0, n:] == TOK.pad_id).all()
  np.testing.assert_array_equal(ro.batch["segment_ids"][0], (np.arange(160) < n).astype(np.int32))
  np.testing.assert_array_equal(ro.batch["positions"][0, :n], np.arange(n))
  # The model saw the environment's tokens in its context on turn 2; the finished episode was
  # replaced by a one-token dummy prompt so the batch size stayed fixed.
  assert gen.calls[1][0] == prompt + turn1 + obs
  assert gen.calls[1][1] == [TOK.eos_id] and len(gen.calls) == 2
  # Rewards: correct after one call (1 + 0.2 format - 0.1 tool cost); wrong direct answer.
  np.testing.assert_allclose(ro.rewards, [1.2 - 0.1, 0.2], atol=1e-6)
  last1, last2 = len(prompt) + len(turn1) - 1, n - 1
  assert ro.token_rewards[0, last1] == pytest.approx(-0.1)
  assert ro.token_rewards[0, last2] == pytest.approx(1.2)
  assert np.count_nonzero(ro.token_rewards[0]) == 2
  assert ro.metrics["accuracy"] == 0.5 and ro.metrics["tool_use_rate"] == 0.5


def test_cut_turn_at_tool_close_and_eos():
  ids = TOK.encode("<tool>calc: 1</tool><result>") + [TOK.eos_id]
  assert TOK.decode(cut_turn(ids, TOK.eos_id, TOK.decode)) == "<tool>calc: 1</tool>"
  ids = TOK.encode("<answer>3</answer>") + [TOK.eos_id] + TOK.encode("<tool>calc: 1</tool>")
  assert cut_turn(ids, TOK.eos_id, TOK.decode) == TOK.encode("<answer>3</answer>") + [TOK.eos_id]
  assert tool_close_stop_sequences(TOK) == ((TOK.token_id("</tool>"),),)


def test_rollout_respects_max_turns_and_length_budget():
  always_call = [["<tool>calc: 1+1</tool>"] * 10]
  ro, gen = scripted_rollout(always_call, max_turns=2, env_turns=10)
  ep = ro.episodes[0]
  assert len(gen.calls) == 2 and len(ep.infos) == 2
  assert [m for _, m in ep.segments] == [False, True, False, True, False]
  assert ep.truncated and ep.reward == pytest.approx(-0.2)  # two tool costs, no outcome
  # The environment's own max_turns ends the episode first.
  ro, gen = scripted_rollout(always_call, max_turns=5, env_turns=3)
  assert len(ro.episodes[0].infos) == 3 and ro.episodes[0].final_info["truncated"]
  # A small max_len stops the episode before the row overflows.
  ro, _ = scripted_rollout(always_call, max_turns=5, max_len=60, env_turns=10)
  ep = ro.episodes[0]
  assert ep.truncated and len(ep.tokens) <= 60
  assert ro.batch["tokens"].shape == (1, 60)
  with pytest.raises(ValueError, match="leaves no room"):
    scripted_rollout(always_call, max_len=20)


# ------------------------------------------------------------------------------ task and demos


def test_multiplication_task_and_demos():
  task = MultiplicationTask((3, 3), (2, 2))
  train, test = task.generate("train", 50, seed=1), task.generate("test", 20, seed=1)
  assert not {p.meta["key"] for p in train} & {p.meta["key"] for p in test}
  for p in train:
    assert int(p.answer) == p.meta["a"] * p.meta["b"] and 100 <= p.meta["a"] <= 999
    assert task.check(p, f"<think>x</think><answer>{p.answer}</answer>")
    assert not task.check(p, f"<think>x</think><answer>{int(p.answer) + 1}</answer>")
  demo = tool_demo(PROBLEM)
  assert [t for t, _ in demo] == ["<think><tool>calc: 347*86</tool>", "<result>29842</result>",
                                  "</think><answer>29842</answer>"]
  assert [m for _, m in demo] == [True, False, True]
  segs = encode_demo(PROBLEM, demo, TOK)
  assert segs[-1][0][-1] == TOK.eos_id and [m for _, m in segs] == [False, True, False, True]
  rows = segment_rows([segs, encode_demo(PROBLEM, direct_demo(PROBLEM), TOK)], 96, TOK.pad_id)
  obs_start = len(segs[0][0]) + len(segs[1][0])
  assert rows["loss_mask"][0, obs_start:obs_start + len(segs[2][0])].sum() == 0
  assert rows["loss_mask"][0].sum() == len(segs[1][0]) + len(segs[3][0])
  mix = demo_segments(train, tool_fraction=0.5, seed=0)
  n_tool = sum(len(d) == 3 for d in mix)
  assert 10 < n_tool < 40


def test_config_presets():
  cfg = agentic_configs.get_config("tiny")
  RolloutConfig.from_dict(cfg.rollout), ToolEnvConfig.from_dict(cfg.env)
  RewardConfig.from_config(cfg.reward)
  with pytest.raises(ValueError, match="unknown agentic preset 'small'"):
    agentic_configs.get_config("small")


# ------------------------------------------------------------------------- GRPO and PPO steps


def tiny_setup():
  cfg = agentic_configs.get_config("tiny")
  cfg.rollout.update(dict(max_turns=2, max_new_tokens=8, max_len=64))
  cfg.grpo.update(dict(prompts_per_step=2, group_size=2))
  cfg.ppo.update(dict(episodes_per_step=4, epochs=1, minibatches=2))
  model_cfg = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64, max_seq_len=128)
  return cfg, model_cfg, init_params(model_cfg, jax.random.PRNGKey(0))


def changed(a, b):
  return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_grpo_step_on_scripted_episodes():
  cfg, model_cfg, params = tiny_setup()
  task = agentic_train.make_task(cfg)
  problems = agentic_train.train_problems(task, cfg, 2, "grpo", 0)
  script = []
  for p in problems:  # per group: one correct tool-using episode, one wrong direct answer
    a, b = p.meta["a"], p.meta["b"]
    script += [[f"<think><tool>calc: {a}*{b}</tool>", f"</think><answer>{p.answer}</answer>"],
               ["<think>hm</think><answer>1</answer>"]]
  gen = ScriptedGenerate(script, max_new=24)
  optimizer = make_optimizer(cfg.grpo.optim)
  before = jax.tree.map(np.asarray, params)
  state = init_train_state(params, optimizer)
  step_fn = agentic_train.make_grpo_step(model_cfg, TOK, task, cfg, optimizer, generate_fn=gen)
  state, metrics = step_fn(state, 0, jax.random.PRNGKey(1))
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  assert metrics["rollout/accuracy"] == 0.5 and metrics["groups_kept"] == 1.0
  assert changed(before, state.params)


def test_one_ppo_step_with_the_real_sampler():
  cfg, model_cfg, params = tiny_setup()
  task = agentic_train.make_task(cfg)
  optimizer = make_optimizer(cfg.ppo.optim)
  state = init_train_state(agentic_train.ppo_params(params, model_cfg), optimizer)
  before = jax.tree.map(np.asarray, state.params)
  step_fn = agentic_train.make_ppo_step(model_cfg, TOK, task, cfg, optimizer)
  # A key whose episodes earn some reward under both samplers (with none, nothing is updated).
  state, metrics = step_fn(state, 0, jax.random.PRNGKey(3))
  for key in ("loss", "pg_loss", "vf_loss"):
    assert np.isfinite(metrics[key]), key
  assert changed(before["value_head"], state.params["value_head"])
  assert changed(before["model"], state.params["model"])
