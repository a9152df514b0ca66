"""Agentic RL: a text environment with tools (calculator, sandboxed Python), multi-turn rollouts
whose environment tokens are masked out of the loss, and GRPO / PPO on them."""

from reasoner.agentic.calculator import CalculatorError, calculate, format_number
from reasoner.agentic.env import Environment, ToolEnv, ToolEnvConfig
from reasoner.agentic.rollout import (AgentRollouts, Episode, RolloutConfig, cut_turn, run_episodes,
                                      segment_rows)
from reasoner.agentic.tasks import MultiplicationTask, demo_segments, encode_demo, tokenizer_corpus
from reasoner.agentic.tools import (RESULT_CLOSE, RESULT_OPEN, TOOL_CLOSE, TOOL_OPEN, TOOL_TAGS,
                                    ToolCall, ToolError, calculator_tool, default_tools,
                                    format_call, format_result, parse_tool_call, python_tool,
                                    run_tool_call)
