"""launch/tpu/*.sh under DRY_RUN=1: every command they would run, printed, none run."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "DRY_RUN": "1", "NAME": "r1",
       "ZONE": "us-east5-b"}


def _dry(script: str, **env) -> list[list[str]]:
  """The commands `script` prints under DRY_RUN=1, as argument lists (a multi-line --command
  argument comes back as one argument of its own, unsplit)."""
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu", script)], env={**ENV, **env},
                       capture_output=True, text=True, timeout=60, cwd="/tmp")
  assert out.returncode == 0, out.stderr
  commands = []
  for line in out.stdout.splitlines():
    if line.split()[:1] not in (["gcloud"], ["gsutil"], ["tar"], ["mkdir"]):
      continue
    head, sep, command = line.partition(" $'--command=")  # bash's quoting of a multi-line arg
    commands.append(shlex.split(head) + ([f"--command={command}"] if sep else []))
  return commands


def test_create_run_logs_fetch_delete_walkthrough():
  create = _dry("create_vm.sh", ACCELERATOR="v5p-32", SPOT="1")
  assert create[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert {"r1", "--zone=us-east5-b", "--accelerator-type=v5p-32", "--spot"} <= set(create[0])
  assert any(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in c
             for c in create)

  run = _dry("run_pipeline.sh", WORKDIR="gs://bucket/run", CONFIG="configs/pipeline.py:qwen2_5_7b_gsm8k",
             EXTRA="--config.init=/mnt/qwen")
  (ssh,) = run
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh
  command = next(a for a in ssh if a.startswith("--command="))
  for part in ("python -m launch.main --multihost", "--config=configs/pipeline.py:qwen2_5_7b_gsm8k",
               "--workdir=gs://bucket/run", "--config.init=/mnt/qwen", "nohup", "reasoner_run.log"):
    assert part in command

  (logs,) = _dry("logs.sh")
  assert "--worker=0" in logs and "tail -n 200 -F ~/reasoner_run.log" in " ".join(logs)

  fetch = _dry("fetch.sh", WORKDIR="gs://bucket/run", OUT="/tmp/out")
  assert fetch[0] == ["mkdir", "-p", "/tmp/out"]
  assert any(c[0] == "gsutil" and "gs://bucket/run/report.json" in c for c in fetch)

  (delete,) = _dry("delete_vm.sh")
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "r1"]


@pytest.mark.parametrize("script,missing", [("create_vm.sh", "ZONE"), ("run_pipeline.sh", "WORKDIR"),
                                            ("delete_vm.sh", "ZONE")])
def test_missing_settings_are_named(script, missing):
  env = {k: v for k, v in ENV.items() if k != missing}
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu", script)], env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and f"set {missing}" in out.stderr and not out.stdout.strip()
