"""Agentic RL with tools: SFT a tiny model on calculator demos, then GRPO (or PPO) on multi-turn
tool-use episodes of "Compute 347*86.", and evaluate it with and without its tools.

Usage:
  python -m launch.agentic --config=configs/agentic.py:tiny --workdir=runs/agentic
  python -m launch.agentic --config=configs/agentic.py:tiny --workdir=runs/agentic_ppo --config.algo=ppo

Every field can be overridden with --config.a.b=value.
"""

from ml_collections import ConfigDict

from configs.common import dataclass_block, optim_block as _optim
from reasoner.agentic.env import ToolEnvConfig
from reasoner.agentic.rollout import RolloutConfig
from reasoner.losses.grpo import GRPOConfig
from reasoner.losses.ppo import PPOConfig
from reasoner.rewards.composite import RewardConfig

AGENTIC_PRESETS = ("tiny",)


def tiny() -> ConfigDict:
  c = ConfigDict()
  c.preset = "tiny"
  c.seed = 0
  c.algo = "grpo"  # grpo | ppo
  # vocab_size 0: the tokenizer's vocabulary rounded up to a multiple of 128.
  c.model = ConfigDict(dict(arch="llama", vocab_size=0, d_model=128, n_layers=2, n_heads=4,
                            n_kv_heads=2, head_dim=32, d_ff=384, max_seq_len=256,
                            rope_theta=10000.0, tie_embeddings=True))
  c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.tokenizer = ConfigDict(dict(vocab_size=448, n_problems=2000))

  # Multiply a 3-digit by a 2-digit number (ranges of digit counts, inclusive).
  c.task = ConfigDict(dict(digits_a=(3, 3), digits_b=(2, 2)))
  # The environment (reasoner.agentic.env.ToolEnvConfig): 3 turns, a cost per tool call and per
  # failed call, tool output cut at 64 characters.
  c.env = dataclass_block(ToolEnvConfig, max_turns=3, tool_cost=0.02, error_cost=0.05,
                          max_output_chars=64)
  # reasoner.rewards.composite.RewardConfig: outcome + 0.2 * format - safety (tool costs in env).
  c.reward = dataclass_block(RewardConfig, w_proc=0.2)
  # reasoner.agentic.rollout.RolloutConfig (max_len is also the width of the training rows).
  c.rollout = dataclass_block(RolloutConfig, max_turns=3, max_new_tokens=24, max_len=64)

  # SFT from scratch on demos: tool_fraction of them call a tool (python_fraction of those use
  # the python tool instead of calc), the rest answer "in the head".
  c.sft = ConfigDict(dict(steps=400, batch_size=32, n_examples=3000, tool_fraction=0.7,
                          python_fraction=0.1, optim=_optim(3e-3, 400, warmup=20)))

  c.grpo = ConfigDict(dict(steps=25, prompts_per_step=16, group_size=8, epochs=1, minibatches=1,
                           dynamic_sampling=True))
  # reasoner.losses.grpo.GRPOConfig: DAPO's clip-higher and token-mean aggregation, no KL term.
  c.grpo.loss = dataclass_block(GRPOConfig, epsilon_high=0.28, beta=0.0, loss_agg="token_mean",
                                constant_norm=64.0)
  c.grpo.optim = _optim(5e-4, 25, warmup=2, schedule="constant")

  c.ppo = ConfigDict(dict(steps=25, episodes_per_step=64, epochs=2, minibatches=2))
  c.ppo.loss = dataclass_block(PPOConfig)  # reasoner.losses.ppo.PPOConfig's defaults
  c.ppo.optim = _optim(3e-4, 100, warmup=2, schedule="constant")

  c.eval = ConfigDict(dict(n_problems=200))
  c.log_every = 5
  c.checkpoint_every = 50
  return c


def get_config(preset: str = "tiny") -> ConfigDict:
  if preset == "tiny":
    return tiny()
  raise ValueError(f"unknown agentic preset {preset!r}; available: {', '.join(AGENTIC_PRESETS)}")
