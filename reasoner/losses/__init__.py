"""Pure losses: (params, batch, rng, *, model_cfg, ...) -> (loss, metrics).

Each has a model-free core over per-token log-probs (`*_objective`) that the tests check
against NumPy, and a wrapper that runs the decoder.
"""

from reasoner.losses.common import LOSS_WEIGHT, masked_mean, masked_sum
from reasoner.losses.distill import (full_reverse_kl, full_reverse_kl_loss,
                                     on_policy_distill_loss, on_policy_distill_objective)
from reasoner.losses.dpo import DPOConfig, dpo_loss, dpo_objective, response_logps
from reasoner.losses.grpo import (GRPOConfig, filter_zero_variance_groups, group_advantages,
                                  grpo_loss, grpo_objective, kl_penalty)
from reasoner.losses.logprobs import sequence_logprobs, token_entropy, token_logprobs
from reasoner.losses.off_policy import (off_policy_grpo_loss, off_policy_grpo_objective,
                                        truncated_is_weights)
from reasoner.losses.ppo import (PPOConfig, apply_value_head, gae, init_value_head,
                                 ppo_forward, ppo_loss, ppo_objective)
from reasoner.losses.sft import sft_loss, sft_objective
