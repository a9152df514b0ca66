"""Bad input to the launcher ends with one clear line, and a failed start leaves nothing that a
corrected rerun would silently reuse."""

import json
import os
import subprocess
import sys

import pytest

from configs.pipeline import PIPELINE_PRESETS, get_config
from reasoner.pipeline.run import Pipeline, build_tokenizer
from reasoner.tokenizer import trained_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "launch.main", *args], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=300)


def test_unknown_preset_is_one_line(tmp_path):
  proc = _launch("--config=configs/pipeline.py:no_such_preset", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      "error: unknown pipeline preset 'no_such_preset'; available: "
      + ", ".join(PIPELINE_PRESETS)]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_workdir_that_is_a_file_is_one_line(tmp_path, below):
  (tmp_path / "afile").write_text("not a folder")
  workdir = tmp_path / "afile" / below if below else tmp_path / "afile"
  proc = _launch("--config=configs/pipeline.py:tiny", f"--workdir={workdir}")
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      f"error: --workdir {workdir}: {tmp_path / 'afile'} is a file, not a directory"]
  assert (tmp_path / "afile").read_text() == "not a folder"


def test_unknown_config_field_is_one_line(tmp_path):
  proc = _launch("--config=configs/pipeline.py:tiny", f"--workdir={tmp_path}",
                 "--config.grpo.no_such_field=1")
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      "error: --config.grpo.no_such_field: the config has no field 'no_such_field'"]


def test_missing_config_file_is_one_line(tmp_path):
  proc = _launch("--config=configs/no_such_file.py:tiny", f"--workdir={tmp_path}")
  assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
  assert "no_such_file.py" in proc.stderr and "Traceback" not in proc.stderr


def _small(vocab_size, model_vocab=512):
  cfg = get_config("tiny")
  cfg.tokenizer.vocab_size = vocab_size
  cfg.model.vocab_size = model_vocab
  return cfg


def test_a_failed_start_does_not_leave_a_tokenizer_for_another_config(tmp_path):
  workdir = str(tmp_path)
  # The first start fails after training its tokenizer (the model's vocab is too small).
  with pytest.raises(ValueError, match="smaller than the tokenizer"):
    Pipeline(_small(400, model_vocab=64), workdir)
  tok_dir = os.path.join(workdir, "tokenizer")
  with open(os.path.join(tok_dir, trained_for.SETTINGS_FILE)) as f:
    assert json.load(f)["vocab_size"] == 400
  first = build_tokenizer(_small(400), workdir)  # same settings: reused
  assert first.vocab_size > 360
  # The corrected rerun asks for another tokenizer: it is trained anew, not reused.
  second = build_tokenizer(_small(360), workdir)
  assert second.vocab_size <= 360 < first.vocab_size
  with open(os.path.join(tok_dir, trained_for.SETTINGS_FILE)) as f:
    assert json.load(f)["vocab_size"] == 360
  # A tokenizer without its settings (a run killed while saving it) is not trusted either.
  os.remove(os.path.join(tok_dir, trained_for.SETTINGS_FILE))
  assert not trained_for.reusable(tok_dir, {"vocab_size": 360}, in_use=False)
  trained_for.discard(tok_dir)  # what the pipeline's writer does before training anew
  assert not os.path.exists(tok_dir)


def test_a_tokenizer_in_use_by_models_is_never_swapped(tmp_path):
  tok_dir = tmp_path / "tokenizer"
  tok_dir.mkdir()
  (tok_dir / "tokenizer.model").write_bytes(b"x")
  trained_for.record(str(tok_dir), {"vocab_size": 512, "seed": 0})
  assert trained_for.reusable(str(tok_dir), {"vocab_size": 512, "seed": 0}, in_use=True)
  with pytest.raises(ValueError, match=r"vocab_size differ.*new --workdir"):
    trained_for.reusable(str(tok_dir), {"vocab_size": 256, "seed": 0}, in_use=True)
  assert (tok_dir / "tokenizer.model").exists()
  os.remove(tok_dir / trained_for.SETTINGS_FILE)  # from before settings were recorded
  assert trained_for.reusable(str(tok_dir), {"vocab_size": 256, "seed": 0}, in_use=True)


def test_agentic_launcher_has_the_same_one_line_errors(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  (tmp_path / "afile").write_text("x")
  for args, line in (
      (["--config=configs/agentic.py:no_such_preset", f"--workdir={tmp_path / 'w'}"],
       "error: unknown"),
      (["--config=configs/agentic.py:tiny", f"--workdir={tmp_path / 'afile'}"],
       f"error: --workdir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file")):
    proc = subprocess.run([sys.executable, "-m", "launch.agentic", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(line), proc.stderr
