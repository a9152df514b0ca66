"""Test-time compute: best-of-N with a verifier or reward model, majority vote, budget forcing,
and process-reward-model-guided step-level beam search (CLI: `python -m launch.evaluate`)."""

from reasoner.tts.best_of_n import (VERIFIERS, best_of_n, best_of_n_metrics, correctness,
                                    select_best, verifier_scores)
from reasoner.tts.budget import BUDGET_MODES, budget_forcing, budget_sampling, thinking_lengths
from reasoner.tts.majority import majority_accuracy, majority_vote
from reasoner.tts.policy import Policy, Samples, period_token_ids
from reasoner.tts.prm import (AGGREGATES, PRM, StepExample, apply_prm_head, has_prm, init_prm_head,
                              load_prm, prm_batch, prm_loss, prm_metrics, prm_objective, save_prm,
                              step_examples, train_prm)
from reasoner.tts.search import Beam, beam_search, prm_search
from reasoner.tts.steps import (check_step, corrupt_step, labelled_thinkings, split_steps,
                                step_labels, thinking_text)
from reasoner.tts.sweep import (accuracy_vs_budget, accuracy_vs_n, compare_strategies,
                                format_comparison, paired_difference, plot_scaling, powers_of_two,
                                wilson_interval)

__all__ = [
    "AGGREGATES", "BUDGET_MODES", "Beam", "PRM", "Policy", "Samples", "StepExample", "VERIFIERS",
    "accuracy_vs_budget", "accuracy_vs_n", "apply_prm_head", "beam_search", "best_of_n",
    "best_of_n_metrics", "budget_forcing", "budget_sampling", "check_step", "compare_strategies",
    "correctness", "format_comparison",
    "corrupt_step", "has_prm", "init_prm_head", "labelled_thinkings", "load_prm",
    "majority_accuracy", "majority_vote", "paired_difference", "period_token_ids", "plot_scaling", "powers_of_two",
    "prm_batch", "prm_loss", "prm_metrics", "prm_objective", "prm_search", "save_prm", "select_best",
    "split_steps", "step_examples", "step_labels", "thinking_lengths", "thinking_text",
    "train_prm", "verifier_scores", "wilson_interval",
]
