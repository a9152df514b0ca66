"""Verifiable rewards on top of the answer verifier (`reasoner.verify`): format / language /
length, the sandboxed code reward, the composite reward and the one answer check (`is_correct`)."""

from reasoner.rewards.composite import COMPONENTS, RewardConfig, compute_rewards, is_correct
from reasoner.rewards.format import (cost_penalty, format_reward, language_consistency_reward,
                                     length_penalty)
from reasoner.rewards.safety import reward_hack_flags, safety_penalty
from reasoner.rewards.isolation import SandboxUnavailable
from reasoner.rewards.sandbox import SandboxResult, code_reward, extract_code, run_many, run_python
from reasoner.verify.answers import (answer_block, answers_equal, extract_answer, math_accuracy,
                                     normalize_answer)
