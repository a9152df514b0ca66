"""Two processes on localhost (CPU collectives over gloo) run one GRPO step together."""

import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)
SCRIPT = os.path.join(HERE, "multihost_grpo_step.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(script: str, workdir, n: int = 2) -> list[str]:
  """Runs `script PROCESS_ID N PORT WORKDIR` as n processes; returns their outputs."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, script, str(i), str(n), str(port), str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(n)]
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=500)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"{os.path.basename(script)} timed out")
    outs.append(out)
    assert p.returncode == 0, out[-3000:]
  return outs


def _results(outs) -> list[dict]:
  return [json.loads(line[len("RESULT "):]) for out in outs for line in out.splitlines()
          if line.startswith("RESULT ")]


def test_two_process_grpo_step(tmp_path):
  outs = _run_processes(SCRIPT, tmp_path)
  results = _results(outs)
  assert len(results) == 2
  assert all(r["devices"] == 4 for r in results)
  # Both processes see the same global update and the same metrics.
  assert results[0]["param_delta"] == pytest.approx(results[1]["param_delta"], rel=1e-6)
  assert results[0]["reward"] == results[1]["reward"]
  assert results[0]["param_delta"] > 0
  assert results[0]["loss"] is not None and abs(results[0]["loss"]) < 1e3


def test_two_process_pipeline_writes_each_file_once(tmp_path):
  """Two processes run pre-training and SFT on one workdir: process 0 alone prints and writes the
  run's files (one metrics row per logged step, one eval.json per model, the report), and both
  end with the same SFT params."""
  outs = _run_processes(os.path.join(HERE, "multihost_pipeline.py"), tmp_path)
  results = _results(outs)
  assert len(results) == 2 and all(r["devices"] == 4 for r in results)
  assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
  assert results[0]["sft_pass1"] == results[1]["sft_pass1"]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  keys = [(r["stage"], r["step"]) for r in rows]
  assert sorted(keys) == sorted(set(keys)) and ("sft", 4) in keys and ("pretrain", 4) in keys
  assert sum("[sft] step 4/4" in out for out in outs) == 1  # progress printed by process 0 only
  assert sum("[eval] sft" in out for out in outs) == 1
  for name in ("m0", "sft"):
    assert (tmp_path / "stages" / name / "eval.json").exists()
    assert (tmp_path / "stages" / name / "fingerprint.json").exists()
  assert (tmp_path / "report.json").exists()
  assert not list(tmp_path.rglob("*.tmp"))
