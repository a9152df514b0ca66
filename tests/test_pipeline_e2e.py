"""The pipeline end to end on a very small model: every stage wired, report written, and a
SIGKILLed run resumes from its checkpoint without redoing finished stages."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs.pipeline import tiny_smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smoke preset with fewer steps and problems still: these tests check the wiring, the files
# and resuming, not what the model learns.
SMALL = [
    "--config.pretrain.steps=6", "--config.pretrain.n_documents=300",
    "--config.sft.steps=8", "--config.sft.n_examples=64",
    "--config.grpo.steps=2", "--config.grpo.prompts_per_step=4", "--config.grpo.max_new_tokens=24",
    "--config.eval.n_problems=8", "--config.eval.k=2", "--config.eval.max_new_tokens=24",
    "--config.checkpoint_every=2",
]


def small_config(stages: str):
  cfg = tiny_smoke()
  for arg in SMALL:
    key, value = arg[len("--config."):].split("=")
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  cfg.stages = stages
  return cfg


def _run(workdir, *extra, timeout=600):
  cmd = [sys.executable, "-m", "launch.main", "--config=configs/pipeline.py:tiny_smoke",
         f"--workdir={workdir}", *SMALL, *extra]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "XLA_FLAGS": ""})


def test_all_stages_wired_end_to_end(tmp_path, monkeypatch, capsys):
  """A random-ish model rarely solves anything, so the verifier is replaced by a deterministic
  coin (half the samples 'pass') to exercise rejection sampling and DPO pair building."""
  import zlib

  from reasoner.pipeline.run import run_pipeline
  from reasoner.stages import rollouts

  coin = lambda problem, text: zlib.crc32(text.encode()) % 2 == 0
  monkeypatch.setattr(rollouts, "is_correct", coin)
  monkeypatch.setattr(rollouts, "format_reward", lambda text: 1.0)
  cfg = small_config("all")
  cfg.grpo.loss.beta = 0.04
  cfg.distill.n_problems, cfg.distill.steps, cfg.distill.batch_size = 8, 2, 8
  cfg.dpo.n_problems, cfg.dpo.steps, cfg.dpo.batch_size = 16, 2, 4
  cfg.dpo.temperature = 1.5
  report = run_pipeline(cfg, str(tmp_path))
  assert list(report) == ["m0", "sft", "grpo", "distill", "dpo"]
  for name, metrics in report.items():
    for key in ("pass@1", "maj@2", "pass@2", "greedy_acc", "format_rate", "mean_length"):
      assert 0.0 <= metrics[key] <= (24 if key == "mean_length" else 1.0), (name, key)
    assert metrics["pass@2"] >= metrics["pass@1"] - 1e-9
  assert "pref_acc" in report["dpo"] and "pref_acc" in report["distill"]
  assert report["distill"]["reward_acc"] == 0.5  # M3 is its own reference: every margin is 0
  assert 0.0 <= report["dpo"]["reward_acc"] <= 1.0
  saved = json.load(open(tmp_path / "report.json"))
  assert saved["seed"] == 0 and set(saved["models"]) == set(report)
  out = capsys.readouterr().out
  assert "M4 DPO" in out and "pass@1" in out and "ETA" in out
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert {r["stage"] for r in rows} >= {"pretrain", "sft", "grpo", "distill", "dpo"}
  assert any("reward" in r for r in rows if r["stage"] == "grpo")
  assert (tmp_path / "grpo_curves.png").exists()
  for name in report:
    if name != "m0":
      assert (tmp_path / "stages" / name / "final" / "model_config.json").exists()

  # Distillation into a smaller student: a one-layer run (sharing the tokenizer) distils this
  # run's M2 into its own M1 (config.distill.teacher); M3 has the student's shape.
  import shutil
  from reasoner.checkpoint import read_model_config
  small = tmp_path / "small"
  shutil.copytree(tmp_path / "tokenizer", small / "tokenizer")
  cfg = small_config("pretrain,sft,distill")
  cfg.model.n_layers = 1
  cfg.distill.n_problems, cfg.distill.steps, cfg.distill.batch_size = 8, 2, 8
  cfg.distill.teacher = str(tmp_path / "stages" / "grpo" / "final")
  student = run_pipeline(cfg, str(small))
  assert list(student) == ["m0", "sft", "distill"]
  assert read_model_config(str(small / "stages" / "distill" / "final")).n_layers == 1
  assert read_model_config(str(tmp_path / "stages" / "grpo" / "final")).n_layers == 2
  assert "teacher: " + cfg.distill.teacher in capsys.readouterr().out
  cfg.distill.teacher = str(tmp_path / "nowhere")
  cfg.allow_config_change = True
  shutil.rmtree(small / "stages" / "distill")
  with pytest.raises(FileNotFoundError, match="config.distill.teacher=.*no model directory"):
    run_pipeline(cfg, str(small))


def test_sigkill_then_rerun_resumes(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.main", "--config=configs/pipeline.py:tiny_smoke",
         f"--workdir={workdir}", *SMALL, "--config.stages=pretrain,sft", "--config.sft.steps=40"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "XLA_FLAGS": ""})
  ckpt = workdir / "stages" / "sft" / "ckpt"
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if ckpt.exists() and any(p.name.isdigit() and int(p.name) >= 4 for p in ckpt.iterdir()):
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  m0_mtime = (workdir / "stages" / "m0" / "final" / "model_config.json").stat().st_mtime
  assert not (workdir / "stages" / "sft" / "final").exists()

  second = _run(workdir, "--config.stages=pretrain,sft", "--config.sft.steps=40")
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert "[sft] resumed from checkpoint step" in second.stdout
  assert "[pretrain]" not in second.stdout  # the finished stage is not redone
  assert (workdir / "stages" / "m0" / "final" / "model_config.json").stat().st_mtime == m0_mtime
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert max(r["step"] for r in rows if r["stage"] == "sft") == 40
  assert json.load(open(workdir / "report.json"))["models"]["sft"]["n_problems"] == 8


def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes_there(tmp_path):
  """A preempted TPU VM gets SIGTERM: the stage finishes its step, checkpoints it and exits 143;
  the same command resumes from exactly that step, nothing lost."""
  import re
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.main", "--config=configs/pipeline.py:tiny_smoke",
         f"--workdir={workdir}", *SMALL, "--config.stages=pretrain,sft", "--config.sft.steps=40",
         "--config.checkpoint_every=1000"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "XLA_FLAGS": ""})
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:  # SFT has logged a step: mid-stage
    if metrics.exists() and any('"sft"' in line for line in open(metrics)):
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run finished before it could be stopped"
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, out[-2000:]
  stopped = int(re.search(r"\[sft\] SIGTERM: checkpointed step (\d+)/40", out).group(1))
  assert 2 <= stopped < 40
  second = _run(workdir, "--config.stages=pretrain,sft", "--config.sft.steps=40")
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert f"[sft] resumed from checkpoint step {stopped}/40" in second.stdout
  # The finished stages were made with this config: another one is refused, by field name.
  stale = _run(workdir, "--config.stages=pretrain,sft", "--config.sft.steps=40",
               "--config.sft.optim.learning_rate=0.01")
  assert stale.returncode == 1 and "Traceback" not in stale.stderr
  assert "sft.optim.learning_rate: 0.003 -> 0.01" in stale.stderr


def test_clear_errors_for_bad_config_and_missing_stage(tmp_path):
  bad = _run(tmp_path / "a", "--config.stages=sft,gpro")
  assert bad.returncode == 1 and "unknown stage(s) ['gpro']" in bad.stderr
  assert "Traceback" not in bad.stderr
  typo = _run(tmp_path / "b", "--config.grpo.gropu_size=3")
  assert typo.returncode != 0 and "gropu_size" in typo.stderr
  missing = _run(tmp_path / "c", "--config.stages=grpo", "--config.init=" + str(tmp_path / "nowhere"))
  assert missing.returncode == 1 and "nowhere" in missing.stderr
