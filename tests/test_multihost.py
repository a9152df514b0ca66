"""Two processes on localhost (CPU collectives over gloo) run one GRPO step together."""

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "multihost_grpo_step.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_grpo_step(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), "2", str(port), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("multi-host GRPO step timed out")
    outs.append(out)
    assert p.returncode == 0, out[-3000:]
  results = [json.loads(line[len("RESULT "):]) for out in outs for line in out.splitlines()
             if line.startswith("RESULT ")]
  assert len(results) == 2
  assert all(r["devices"] == 4 for r in results)
  # Both processes see the same global update and the same metrics.
  assert results[0]["param_delta"] == pytest.approx(results[1]["param_delta"], rel=1e-6)
  assert results[0]["reward"] == results[1]["reward"]
  assert results[0]["param_delta"] > 0
  assert results[0]["loss"] is not None and abs(results[0]["loss"]) < 1e3
