"""Test-time compute: step checking and corruption, majority vote, best-of-N, budget forcing, the
PRM (training, held-out ranking, save/load), PRM-guided beam search and the launch.evaluate CLI."""

import json
import os
import random
import subprocess
import sys

import jax
import numpy as np
import pytest

from reasoner.data.problem import Problem
from reasoner.data.tasks import TASKS, get_task, mixture
from reasoner.model import get_config, init_params
from reasoner.verify.answers import extract_answer
from reasoner.sampling import SamplingConfig
from reasoner.tokenizer import format_prompt, train_sentencepiece
from reasoner.tts import (Policy, Samples, beam_search, best_of_n, best_of_n_metrics,
                          budget_forcing, budget_sampling, check_step, corrupt_step,
                          correctness, has_prm, labelled_thinkings, load_prm, majority_accuracy,
                          majority_vote, prm_metrics, prm_objective, prm_search, save_prm,
                          select_best, split_steps, step_examples, step_labels, thinking_lengths,
                          thinking_text, train_prm, verifier_scores)
from reasoner.tts.sweep import (accuracy_vs_n, compare_strategies, format_comparison, matched_n,
                                paired_difference, powers_of_two, tokens_of_first,
                                wilson_interval)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_NAMES = "arithmetic,linear_equation"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  probs = mixture(TASK_NAMES.split(","), "train", 300, 0, 1)
  texts = [format_prompt(p.prompt) + p.solution for p in probs]
  return train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=384)


@pytest.fixture(scope="module")
def model_cfg(tokenizer):
  return get_config("tiny", vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    head_dim=8, d_ff=64, max_seq_len=128)


@pytest.fixture(scope="module")
def policy(tokenizer, model_cfg):
  params = init_params(model_cfg, jax.random.PRNGKey(0))
  return Policy(params, model_cfg, tokenizer, batch_size=64)


@pytest.fixture(scope="module")
def problems():
  return mixture(TASK_NAMES.split(","), "test", 4, 3, 1)


@pytest.fixture(scope="module")
def prm(policy):
  train = mixture(TASK_NAMES.split(","), "train", 240, 11, 1)
  return train_prm(policy.params, policy.cfg, policy.tokenizer, train, 150)


def _samples(texts):
  """Samples for hand-made completions [P][n] (ids and confidences are dummies)."""
  p, n = len(texts), len(texts[0])
  return Samples([[[0]] * n] * p, texts, np.ones((p, n), np.int32),
                 np.zeros((p, n), np.float32))


def _completion(answer, thinking="1+1=2."):
  return f"<think>{thinking}</think><answer>{answer}</answer>"


# ----------------------------------------------------------------------------- steps


def test_split_and_check_steps():
  assert split_steps("23+45=68. 68-7=61.") == ["23+45=68.", " 68-7=61."]
  assert split_steps("2.5+1=3.5. x") == ["2.5+1=3.5.", " x"]  # a decimal point ends no step
  assert check_step("23+45=68.") is True
  assert check_step(" 23+45=69.") is False
  assert check_step("8x-3x=5x.") is True and check_step("8x-3x=6x.") is False
  assert check_step("5x=68+27=95.") is True and check_step("5x=68+27=96.") is False
  assert check_step("x=-23/(-4)=23/4.") is True and check_step("x=-23/(-4)=23/5.") is False
  assert check_step("x=95/5=19.") is True
  assert check_step("5x=95.") is None  # the equation being solved, no arithmetic to check
  assert check_step("so the answer is ten.") is None
  assert check_step("7/0=1.") is None and check_step("2**3=8.") is None
  assert thinking_text("<think>a. b.</think><answer>1</answer>") == "a. b."


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reference_steps_check_and_corruptions_fail(task):
  rng = random.Random(0)
  for p in get_task(task).generate("train", 40, 0, 2):
    steps = split_steps(thinking_text(p.solution))
    assert all(check_step(s) is not False for s in steps), p.solution
    for s in steps:
      bad = corrupt_step(s, rng)
      if check_step(s) is True:
        assert bad is not None and bad != s and check_step(bad) is False


def test_step_labels_are_cumulative():
  assert step_labels(["1+1=2.", " 2+2=5.", " 5+1=6.", " ok."]) == [True, False, False, False]
  out = labelled_thinkings("13*6=78. 78-45=33. 33+6=39.", random.Random(0), n_corrupt=3)
  assert out[0][1] == [True, True, True]
  assert len(out) == 4
  for steps, labels in out[1:]:
    j = labels.index(False)
    assert check_step(steps[j]) is False and all(labels[:j]) and not any(labels[j:])


# ----------------------------------------------------------------------------- majority / best-of-N


def test_majority_vote_picks_the_most_common_answer():
  p = Problem("Compute 3+4.", "7", "", "arithmetic", {})
  assert majority_accuracy([p], _samples([[_completion(5), _completion(7), _completion(7)]])) == 1.0
  assert majority_accuracy([p], _samples([[_completion(5), _completion(5), _completion(7)]])) == 0.0
  # A tie goes to the answer seen first; a sample without an answer does not vote.
  assert majority_accuracy([p], _samples([[_completion(7), _completion(5), "<think>"]])) == 1.0
  assert majority_accuracy([p], _samples([[_completion(5), _completion(7), "<think>"]])) == 0.0


def test_best_of_n_metrics_and_selection():
  rng = np.random.default_rng(0)
  correct = rng.random((50, 4)) < 0.3
  oracle = best_of_n_metrics(correct, correct.astype(float))
  assert oracle["accuracy"] == pytest.approx(correct.any(axis=1).mean()) == oracle["pass@4"]
  assert oracle["accuracy"] >= oracle["pass@1"] == pytest.approx(correct.mean())
  worst = best_of_n_metrics(correct, -correct.astype(float))
  assert worst["accuracy"] == pytest.approx(correct.all(axis=1).mean())
  assert select_best(np.array([[0.2, 0.9, 0.9], [1.0, 1.0, 0.0]])).tolist() == [1, 0]
  with pytest.raises(ValueError, match="scores must be"):
    select_best(np.zeros((3, 0)))


def test_verifier_scores_on_known_answers():
  p = Problem("Compute 3+4.", "7", "", "arithmetic", {})
  s = _samples([[_completion(5), _completion(7)]])
  assert verifier_scores("oracle", [p], s).tolist() == [[0.0, 1.0]]
  # The most confident sample has no answer: confidence picks the answered one.
  s = _samples([["<think>7+0=7.", _completion(5), _completion(7)]])
  s.mean_logprob[:] = [[-0.1, -2.0, -1.0]]
  assert select_best(verifier_scores("confidence", [p], s)).tolist() == [2]
  with pytest.raises(ValueError, match="unknown verifier"):
    verifier_scores("oracel", [p], s)
  with pytest.raises(ValueError, match="needs a trained PRM"):
    verifier_scores("prm", [p], s)


def test_strategies_on_tiny_random_model(policy, problems, monkeypatch):
  import zlib
  bon_module = sys.modules["reasoner.tts.best_of_n"]  # the package's `best_of_n` is the function
  # A random model solves nothing: a deterministic coin stands in for the checker so best-of-N
  # has something to select.
  monkeypatch.setattr(bon_module, "is_correct",
                      lambda p, t: zlib.crc32(t.encode()) % 3 == 0)
  sampling = SamplingConfig(max_new_tokens=16, temperature=1.0)
  rng = jax.random.PRNGKey(1)
  samples = policy.sample(problems, sampling.replace(n=4), rng)
  assert samples.lengths.shape == (4, 4) and len(samples.texts[3]) == 4
  assert np.all(samples.mean_logprob <= 0)
  out = best_of_n(policy, problems, 4, sampling, rng, verifier="oracle", samples=samples)
  correct = correctness(problems, samples)
  assert out["accuracy"] == pytest.approx(correct.any(axis=1).mean()) == out["pass@4"]
  assert out["accuracy"] >= out["pass@1"]
  assert len(out["completions"]) == 4
  conf = best_of_n(policy, problems, 4, sampling, rng, samples=samples)  # default: confidence
  assert conf["verifier"] == "confidence"
  answered = np.array([[extract_answer(t) is not None for t in r] for r in samples.texts])
  assert conf["chosen"] == np.argmax(np.where(answered, samples.mean_logprob, -1e9), 1).tolist()
  assert 0.0 <= majority_vote(policy, problems, 4, sampling, rng, samples=samples)["accuracy"] <= 1
  # Same rng, same config: the n sweep reuses the very samples, so its curves are nested.
  curves = accuracy_vs_n(policy, problems, [1, 2, 4], sampling, rng)
  assert curves["oracle_best_of_n"][-1] == pytest.approx(out["accuracy"])
  assert curves["oracle_best_of_n"] == sorted(curves["oracle_best_of_n"])
  assert powers_of_two(8) == [1, 2, 4, 8] and powers_of_two(6) == [1, 2, 4, 6]


# ----------------------------------------------------------------------------- budget forcing


def test_budget_sampling_config():
  base = SamplingConfig(max_new_tokens=64, greedy=True)
  cap = budget_sampling(base, 8, think_end_id=5, answer_tokens=10)
  assert (cap.max_thinking_tokens, cap.min_thinking_tokens, cap.max_new_tokens) == (8, 0, 19)
  force = budget_sampling(base, 8, 5, "force", wait_ids=(9, 10))
  assert force.min_thinking_tokens == 8 == force.max_thinking_tokens and force.wait_token_ids == (9, 10)
  with pytest.raises(ValueError, match="needs wait_ids"):
    budget_sampling(base, 8, 5, "force")
  with pytest.raises(ValueError, match="unknown budget mode"):
    budget_sampling(base, 8, 5, "soft")
  assert thinking_lengths([[1, 2, 5, 3], [1, 1]], 5).tolist() == [2, 2]


def test_budget_forcing_caps_and_extends_thinking(policy, problems):
  """A model that always wants to close its thinking: 'cap' lets it (0 thinking tokens), 'force'
  replaces each early `</think>` by Wait tokens until exactly the budget."""
  think_end = policy.think_end_id
  params = jax.tree.map(lambda x: x, policy.params)
  # Hidden dim 0 is a large positive constant; the output row of `</think>` reads it.
  params["embed"] = params["embed"].at[:, 0].set(1.0)
  if "lm_head" in params:
    params["lm_head"] = params["lm_head"].at[0, think_end].set(100.0)
  else:  # tied embeddings
    params["embed"] = params["embed"].at[think_end, 0].set(100.0)
  eager = Policy(params, policy.cfg, policy.tokenizer)
  greedy = SamplingConfig(max_new_tokens=32, greedy=True)
  rng = jax.random.PRNGKey(0)
  cap = budget_forcing(eager, problems, 6, greedy, rng, mode="cap", answer_tokens=4)
  assert cap["mean_thinking_tokens"] == 0 and cap["forced_rate"] == 0
  force = budget_forcing(eager, problems, 6, greedy, rng, mode="force", answer_tokens=4)
  assert force["mean_thinking_tokens"] == 6 and force["forced_rate"] == 1
  assert all("Wait" in c for c in force["completions"])
  # The random model never closes on its own: the cap forces `</think>` at the budget.
  plain = budget_forcing(policy, problems, 6, greedy, rng, mode="cap", answer_tokens=4)
  assert plain["mean_thinking_tokens"] == 6 and plain["forced_rate"] == 1


# ----------------------------------------------------------------------------- PRM


def test_prm_objective_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5)).astype(np.float32)
  labels = (rng.random((3, 5)) < 0.5).astype(np.float32)
  mask = (rng.random((3, 5)) < 0.6).astype(np.float32)
  loss, m = prm_objective(logits, labels, mask)
  p = 1 / (1 + np.exp(-logits))
  ref = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  assert float(loss) == pytest.approx((ref * mask).sum() / mask.sum(), rel=1e-5)
  assert float(m["accuracy"]) == pytest.approx((((logits > 0) == (labels > 0.5)) * mask).sum() / mask.sum())


def test_step_examples_align_labels_with_period_tokens(tokenizer):
  probs = mixture(TASK_NAMES.split(","), "train", 20, 0, 1)
  examples = step_examples(probs, tokenizer, n_corrupt=1)
  assert len(examples) >= 30
  for e in examples:
    for end in e.ends:
      assert "." in tokenizer.decode([e.ids[end]])
    assert len(e.ends) == len(e.labels) >= 1
    # The first step starts right after the prompt; the tokens of all steps tile the thinking.
    assert tokenizer.decode(e.ids[:e.start + 1]).endswith("Assistant:")
    think = tokenizer.decode(e.ids[e.start + 1:e.ends[-1] + 1])
    assert think == "<think>" + "".join(split_steps(thinking_text(think)))
  assert any(not all(e.labels) for e in examples) and any(all(e.labels) for e in examples)


def test_step_features_match_a_numpy_reference(policy):
  """Hidden state at each step end, the step's mean token log-prob, and its running minimum."""
  from reasoner.model import forward
  from reasoner.tts.prm import features_at
  probs = mixture(TASK_NAMES.split(","), "train", 3, 2, 1)
  examples = step_examples(probs, policy.tokenizer, n_corrupt=0)
  ex = max(examples, key=lambda e: len(e.ends))
  assert len(ex.ends) >= 2
  (feats,) = features_at(policy.params, policy.cfg, [ex.ids], [ex.ends], [ex.starts],
                         policy.tokenizer.pad_id)
  ids = np.asarray(ex.ids)[None]
  logits, _, hidden = forward(policy.params, ids, np.arange(ids.shape[1])[None], policy.cfg,
                              return_hidden=True)
  logits = np.asarray(logits[0], np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  tok_lp = np.array([0.0] + [logp[t - 1, ex.ids[t]] for t in range(1, len(ex.ids))])
  means = [tok_lp[a + 1:b + 1].mean() for a, b in zip(ex.starts, ex.ends)]
  d = policy.cfg.d_model
  np.testing.assert_allclose(feats[:, :d], np.asarray(hidden[0])[ex.ends], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(feats[:, d], means, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(feats[:, d + 1], np.minimum.accumulate(means), rtol=1e-4, atol=1e-5)


def test_prm_trains_and_ranks_held_out_steps(prm, policy, tmp_path):
  """Frozen trunk, head only. The loss must fall, and on held-out problems correct steps must
  outrank corrupted ones. (On a random trunk this is mostly the step-position prior; the paired
  comparison at the corrupted step needs a trained trunk, whose log-probs flag wrong results.)"""
  assert prm.history[-1] < prm.history[0] - 0.02
  held_out = mixture(TASK_NAMES.split(","), "test", 80, 5, 1)
  m = prm_metrics(prm, held_out)
  assert m["n_steps"] > 100 and m["auc"] > 0.6, m
  save_prm(str(tmp_path / "prm"), prm)
  assert has_prm(str(tmp_path / "prm"))
  loaded = load_prm(str(tmp_path / "prm"))
  texts = [p.solution for p in held_out[:4]]
  np.testing.assert_allclose(loaded.score(held_out[:4], texts), prm.score(held_out[:4], texts),
                             rtol=1e-5)
  per_step = prm.step_scores(held_out[:4], texts)
  assert [len(s) for s in per_step] == [len(split_steps(thinking_text(t))) for t in texts]
  assert np.all(prm.score(held_out[:4], texts, "min") <= prm.score(held_out[:4], texts, "last"))
  with pytest.raises(FileNotFoundError, match="no PRM"):
    load_prm(str(tmp_path / "missing"))


def test_prm_finetuned_trunk_loss_decreases(policy):
  train = mixture(TASK_NAMES.split(","), "train", 32, 4, 1)
  prm = train_prm(policy.params, policy.cfg, policy.tokenizer, train, 12, finetune_trunk=True,
                  learning_rate=3e-3, batch_size=16)
  assert prm.finetuned and np.mean(prm.history[-3:]) < np.mean(prm.history[:3])
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         prm.trunk, policy.params)
  assert any(jax.tree.leaves(changed))


# ----------------------------------------------------------------------------- search


def test_beam_search_returns_beams_in_score_order(policy, prm, problems):
  kw = dict(beam_width=3, expansions=3, step_tokens=6, max_new_tokens=18)
  beams = beam_search(policy, prm, problems, jax.random.PRNGKey(2), **kw)
  assert len(beams) == len(problems)
  for bs in beams:
    assert len(bs) == 3
    scores = [b.score for b in bs]
    assert scores == sorted(scores, reverse=True)
    assert all(b.done and 1 <= len(b.ids) <= 18 for b in bs)
    assert len({b.ids for b in bs}) == 3
  # Scores are the PRM's own scores of the returned texts.
  texts = [policy.tokenizer.decode(list(b.ids)) for b in beams[0]]
  np.testing.assert_allclose([b.score for b in beams[0]],
                             prm.score([problems[0]] * 3, texts), rtol=1e-4)
  out = prm_search(policy, prm, problems, jax.random.PRNGKey(2), **kw)
  assert out["completions"] == [policy.tokenizer.decode(list(bs[0].ids)) for bs in beams]
  assert 0.0 <= out["accuracy"] <= out["beam_pass"] <= 1.0
  with pytest.raises(ValueError, match="must be >= 1"):
    beam_search(policy, prm, problems, jax.random.PRNGKey(2), beam_width=0)


def test_beam_search_counts_every_generated_token(policy, problems):
  """A scripted policy: round 0 expands the empty beam into [EOS] (1 token, a finished beam
  without an answer) and [11, 11, 11]; round 1 expands the one live beam into two 3-token steps,
  which reach max_new_tokens=6. Per problem: 1 + 3 + 3 + 3 = 10 generated tokens, 2 rounds."""
  eos = policy.tokenizer.eos_id
  calls = []

  class Scripted(Policy):
    def generate(self, prompts, sampling, rng, min_prompts=0):
      calls.append(len(prompts))
      rows = []
      for _ in prompts:
        for j in range(sampling.n):
          ids = [eos] if (j == 0 and len(calls) == 1) else [10 + j] * 3
          rows.append((ids, np.zeros(len(ids), bool), np.zeros(len(ids), np.float32)))
      return rows

  class LengthPRM:
    def score(self, probs, texts, aggregate="last"):
      return np.array([len(t) for t in texts], np.float32)  # longer texts first

  scripted = Scripted(policy.params, policy.cfg, policy.tokenizer, batch_size=64)
  stats = {}
  beams = beam_search(scripted, LengthPRM(), problems[:2], jax.random.PRNGKey(0), beam_width=2,
                      expansions=2, step_tokens=3, max_new_tokens=6, stats=stats)
  assert calls == [2, 2]  # one live beam per problem in each round
  assert stats["generated_tokens"].tolist() == [10, 10] and stats["rounds"] == 2
  assert [[(len(b.ids), b.done) for b in bs] for bs in beams] == [[(6, True)] * 2] * 2
  calls.clear()
  out = prm_search(scripted, LengthPRM(), problems[:2], jax.random.PRNGKey(0), beam_width=2,
                   expansions=2, step_tokens=3, max_new_tokens=6)
  assert out["generated_tokens"] == [10, 10] and out["mean_generated_tokens"] == 10.0


def test_wilson_interval_matches_hand_computed_values():
  # 8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71674, half-width 0.22658.
  lo, hi = wilson_interval(8, 10)
  assert (lo, hi) == (pytest.approx(0.49016, abs=1e-5), pytest.approx(0.94332, abs=1e-5))
  # 0 of 10: [0, z^2 / (n + z^2)] = [0, 0.27753].
  assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
  assert wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), pytest.approx(1.0))
  # 50 of 100: 0.5 -+ 1.96 * 0.05 / (1 + 0.0384) (+ a z^2/4n^2 term) = [0.40383, 0.59617].
  assert wilson_interval(50, 100) == (pytest.approx(0.40383, abs=1e-5),
                                      pytest.approx(0.59617, abs=1e-5))
  with pytest.raises(ValueError):
    wilson_interval(3, 2)


def test_paired_difference_matches_hand_computed_values():
  # 10 problems: both solve 3, only a solves 3, only b solves 1. diff = 0.3 - 0.1 = 0.2,
  # var = (0.3 + 0.1 - 0.2^2) / 10 = 0.036, half-width 1.96 * 0.18974 = 0.37188.
  a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
  b = np.array([1, 1, 1, 0, 0, 0, 1, 0, 0, 0], bool)
  d = paired_difference(a, b)
  assert d["diff"] == pytest.approx(0.2)
  assert d["ci95"] == [pytest.approx(-0.17188, abs=1e-5), pytest.approx(0.57188, abs=1e-5)]
  assert paired_difference(a, a) == {"diff": 0.0, "ci95": [0.0, 0.0]}  # no discordant problem
  with pytest.raises(ValueError):
    paired_difference(a, b[:5])


def test_launcher_default_verifier_is_not_the_oracle():
  from launch.evaluate import default_verifier, label_oracle
  assert default_verifier(None, prm_given=False) == "confidence"
  assert default_verifier(None, prm_given=True) == "prm"
  assert default_verifier("oracle", prm_given=True) == "oracle"  # only when asked for
  labelled = label_oracle({"accuracy": 0.75, "pass@1": 0.25, "verifier": "oracle"}, 8)
  assert labelled == {"oracle_pass@8": 0.75, "pass@1": 0.25, "verifier": "oracle"}


def test_compare_strategies_at_equal_tokens(policy, prm, problems):
  sampling = SamplingConfig(max_new_tokens=18, temperature=1.0)
  out = compare_strategies(policy, prm, problems, sampling, jax.random.PRNGKey(5), beam_width=2,
                           expansions=2, step_tokens=6, max_n=16)
  s = out["strategies"]
  assert set(s) == {"prm_search", "majority", "best_of_n_prm", "best_of_n_confidence",
                    "single_sample"}
  n = out["matched_n"]
  assert 1 <= n <= out["pool_n"] <= 16 and out["n_problems"] == len(problems)
  search_tokens = s["prm_search"]["tokens_per_problem"]
  assert search_tokens >= 1
  for key in ("majority", "best_of_n_prm", "best_of_n_confidence"):
    assert s[key]["n"] == n and s[key]["tokens_per_problem"] == s["majority"]["tokens_per_problem"]
  for e in list(s.values()) + list(out["oracle"].values()):
    lo, hi = e["ci95"]
    assert 0.0 <= lo <= e["accuracy"] <= hi <= 1.0
    assert e["solved"] == round(e["accuracy"] * len(problems))
    assert (lo, hi) == wilson_interval(e["solved"], len(problems))
  for key in ("majority", "best_of_n_prm", "best_of_n_confidence", "single_sample"):
    assert s[key]["minus_prm_search"]["diff"] == pytest.approx(
        s[key]["accuracy"] - s["prm_search"]["accuracy"])
  assert "minus_prm_search" not in s["prm_search"]
  # The oracle figures are apart and labelled, and bound the strategies on the same samples.
  assert set(out["oracle"]) == {f"oracle_pass@{n}", "oracle_beam_pass"}
  assert out["oracle"][f"oracle_pass@{n}"]["accuracy"] >= max(
      s[k]["accuracy"] for k in ("majority", "best_of_n_prm", "best_of_n_confidence"))
  assert out["oracle"]["oracle_beam_pass"]["accuracy"] >= s["prm_search"]["accuracy"]
  assert n in out["curve"]["n"] and out["curve"]["n"][0] == 1
  assert out["curve"]["tokens_per_problem"] == sorted(out["curve"]["tokens_per_problem"])
  table = format_comparison(out)
  assert "PRM search" in table and f"oracle pass@{n}" in table and "95% CI" in table
  json.dumps(out)  # plain JSON types


def test_matched_n_picks_the_closest_token_count():
  lengths = np.array([[4, 4, 4, 4], [2, 2, 2, 2]], np.int32)  # 3 tokens per problem per sample
  pool = Samples([[[0]] * 4] * 2, [["x"] * 4] * 2, lengths, np.zeros((2, 4), np.float32))
  assert tokens_of_first(pool, 2) == 6.0
  assert matched_n(pool, 7.0) == 2 and matched_n(pool, 8.0) == 3 and matched_n(pool, 100) == 4
  assert matched_n(pool, 7.5) == 2  # a tie goes to the smaller N


# ----------------------------------------------------------------------------- CLI


def test_cli_end_to_end(policy, tmp_path):
  from reasoner.checkpoint import save_model
  save_model(str(tmp_path / "model"), policy.params, policy.cfg, tokenizer=policy.tokenizer)
  cmd = [sys.executable, "-m", "launch.evaluate", "--config=configs/pipeline.py:tiny",
         f"--model_dir={tmp_path / 'model'}", f"--config.data.tasks={TASK_NAMES}",
         "--config.eval.max_new_tokens=16", "--config.eval.batch_size=64",
         "--strategy=prm_search", "--train_prm", f"--prm_dir={tmp_path / 'prm'}", "--prm_steps=30",
         "--prm_problems=48", "--num_problems=3", "--n=2", "--beam_width=2", "--expansions=2",
         "--step_tokens=6", "--budgets=4,8", "--budget_modes=cap", f"--plot={tmp_path / 'out' / 'tts.png'}"]
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.load(open(tmp_path / "out" / "tts.json"))
  assert report["strategy"] == "prm_search" and report["n_problems"] == 3
  assert 0.0 <= report["result"]["accuracy"] <= 1.0
  assert report["n_sweep"]["n"] == [1, 2] and len(report["n_sweep"]["prm_best_of_n"]) == 2
  assert "oracle_best_of_n" not in report["n_sweep"] and len(report["n_sweep"]["oracle_pass@n"]) == 2
  assert report["budget_sweep"]["budget"] == [4, 8]
  assert report["budget_sweep"]["cap_thinking_tokens"] == [4.0, 8.0]
  assert open(tmp_path / "out" / "tts.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert has_prm(str(tmp_path / "prm"))
  # The comparison at equal tokens, with the PRM just saved, on a JSONL evaluation set
  # (config.eval.source) of 3 problems.
  jsonl = tmp_path / "eval.jsonl"
  jsonl.write_text("".join(json.dumps(dict(prompt=p.prompt, answer=p.answer, solution=p.solution,
                                           task=p.task)) + "\n"
                           for p in mixture(TASK_NAMES.split(","), "test", 3, 7, 1)))
  compare = cmd[:6] + ["--config.eval.max_new_tokens=12", "--config.eval.batch_size=64",
                       f"--config.eval.source=jsonl:{jsonl}", "--eval_set=source",
                       "--strategy=compare", f"--prm_dir={tmp_path / 'prm'}", "--beam_width=2",
                       "--expansions=2", "--step_tokens=6", "--max_n=8",
                       f"--output={tmp_path / 'compare.json'}"]
  run = subprocess.run(compare, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "PRM search" in run.stdout and "oracle pass@" in run.stdout, run.stdout
  report = json.load(open(tmp_path / "compare.json"))
  assert report["n_problems"] == 3 and report["eval_set"] == f"jsonl:{jsonl}"
  assert set(report["result"]["strategies"]) >= {"prm_search", "majority", "best_of_n_prm"}
  # A missing model directory is a one-line error.
  bad = subprocess.run(cmd[:4] + [f"--model_dir={tmp_path / 'nope'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env=env)
  assert bad.returncode == 1 and "does not exist" in bad.stderr
