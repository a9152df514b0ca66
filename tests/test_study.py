"""Seeds and confidence intervals: the statistics against independent references, and
`launch.study` end to end on the smoke preset."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from reasoner.pipeline import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_t_interval_against_scipy_and_by_hand():
  scipy_stats = pytest.importorskip("scipy.stats")
  for df in (*range(1, 40), 60, 200, 10_000):
    assert study.t_critical(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3)
  values = [0.41, 0.38, 0.44]
  mean, half = study.mean_ci(values)
  sd = math.sqrt(sum((v - np.mean(values)) ** 2 for v in values) / 2)
  assert mean == pytest.approx(np.mean(values))
  assert half == pytest.approx(4.303 * sd / math.sqrt(3), rel=1e-6)
  lo, hi = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
  assert (mean - half, mean + half) == pytest.approx((lo, hi), rel=1e-3)
  assert math.isnan(study.mean_ci([0.5])[1])
  with pytest.raises(ValueError):
    study.t_critical(0)


def test_unbiased_pass_at_k():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 20))
    c, k = int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))
    assert study.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
  assert study.pass_at_k(4, 0, 4) == 0.0 and study.pass_at_k(4, 1, 4) == 1.0
  with pytest.raises(ValueError):
    study.pass_at_k(3, 4, 1)


def test_aggregate_and_table():
  reports = [{"models": {"sft": {"pass@1": p, "maj@4": m, "pass@4": 0.6, "greedy_acc": g},
                         "grpo": {"pass@1": p + 0.1, "maj@4": m, "pass@4": 0.7, "greedy_acc": g}}}
             for p, m, g in ((0.30, 0.37, 0.44), (0.32, 0.35, 0.40), (0.28, 0.39, 0.46))]
  summary = study.aggregate(reports)
  assert list(summary) == ["sft", "grpo"]
  assert summary["sft"]["pass@1"]["values"] == [0.30, 0.32, 0.28]
  assert summary["grpo"]["pass@1"]["mean"] == pytest.approx(0.40)
  assert summary["sft"]["maj@k"]["mean"] == pytest.approx(0.37)
  assert summary["sft"]["pass@k"]["ci95"] == pytest.approx(0.0)
  table = study.format_study(summary, 3)
  assert "M1 SFT" in table and "30.0% +- 5.0" in table and "3 seeds" in table


def test_study_launcher_runs_every_seed_and_summarises(tmp_path):
  cmd = [sys.executable, "-m", "launch.study", "--config=configs/pipeline.py:tiny_smoke",
         f"--workdir={tmp_path}", "--seeds=2", "--parallel=2", "--config.stages=pretrain,sft",
         "--config.pretrain.steps=4", "--config.pretrain.n_documents=200", "--config.sft.steps=4",
         "--config.sft.n_examples=64", "--config.eval.n_problems=8", "--config.eval.k=2",
         "--config.eval.max_new_tokens=16", "--config.eval.control_temperatures=0.5,1.0"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "XLA_FLAGS": ""})
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  reports = [json.load(open(tmp_path / f"seed_{s}" / "report.json")) for s in (0, 1)]
  assert [r["seed"] for r in reports] == [0, 1]
  saved = json.load(open(tmp_path / "study.json"))
  assert saved["seeds"] == [0, 1]
  sft = saved["summary"]["sft"]
  values = [r["models"]["sft"]["pass@1"] for r in reports]
  assert sft["pass@1"]["values"] == values and sft["pass@1"]["mean"] == pytest.approx(np.mean(values))
  assert "2 seeds, mean +- 95% CI" in out.stdout and "M1 SFT" in out.stdout
  # The best-temperature control: the temperature with the best validation pass@1 (ties: the
  # lower), evaluated on the same test problems as M1.
  for r in reports:
    best = r["models"]["sft@best_t"]
    sweep = {float(t): v for t, v in best["validation_pass_at_1"].items()}
    assert set(sweep) == {0.5, 1.0}
    assert best["temperature"] == min(t for t in sweep if sweep[t] == max(sweep.values()))
    assert best["n_problems"] == r["models"]["sft"]["n_problems"] == 8
    assert best["greedy_acc"] == r["models"]["sft"]["greedy_acc"]  # greedy has no temperature
  assert "M1 @ best T" in out.stdout and "sft@best_t" in saved["summary"]

  bad = subprocess.run([*cmd[:5], "--seeds=1"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "XLA_FLAGS": ""})
  assert bad.returncode == 1 and "at least 2" in bad.stderr and "Traceback" not in bad.stderr


def test_paired_gains_and_verdicts():
  models = lambda m1, m2, ctrl: {"sft": {"pass@1": m1, "greedy_acc": 0.4},
                                 "grpo": {"pass@1": m2, "greedy_acc": 0.4},
                                 "replay_control": {"pass@1": ctrl, "greedy_acc": 0.45}}
  reports = [{"models": models(*v)} for v in ((0.30, 0.40, 0.39), (0.20, 0.31, 0.33),
                                              (0.25, 0.36, 0.34))]
  g = study.gains(reports)
  assert list(g) == ["grpo-sft", "grpo-replay_control"]  # no run has the other models
  assert g["grpo-sft"]["pass@1"]["values"] == pytest.approx([0.10, 0.11, 0.11])
  diffs = [0.01, -0.02, 0.02]
  assert g["grpo-replay_control"]["pass@1"]["values"] == pytest.approx(diffs)
  sd = np.std(diffs, ddof=1)
  assert g["grpo-replay_control"]["pass@1"]["ci95"] == pytest.approx(4.303 * sd / math.sqrt(3))
  assert g["grpo-replay_control"]["greedy_acc"]["mean"] == pytest.approx(-0.05)
  assert study.verdict(10.7, 1.4) == "gain" and study.verdict(0.3, 5.0) == "within noise"
  assert study.verdict(-3.0, 1.0) == "loss" and "no interval" in study.verdict(1.0, float("nan"))
  text = study.format_gains(g)
  assert "M2 GRPO - M1 SFT" in text and "pass@1 +10.7" in text and "(gain)" in text
  assert "M2 GRPO - M1 + replay" in text and "(within noise)" in text
