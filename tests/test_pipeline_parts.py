"""Pipeline pieces that need no training: config validation, rollout rows, report, metrics."""

import json

import numpy as np
import pytest

from configs import pipeline as pipeline_configs
from reasoner.pipeline import report as report_lib
from reasoner.model import ModelConfig
from reasoner.pipeline.config_check import resolve_stages, validate_config
from reasoner.io.metrics_log import MetricsWriter, Progress
from reasoner.stages.rollouts import rollout_rows
from reasoner.stages.supervised import epoch_batches


@pytest.mark.parametrize("preset", pipeline_configs.PIPELINE_PRESETS)
def test_every_preset_validates(preset):
  cfg = pipeline_configs.get_config(preset)
  if preset != "tiny":
    cfg.init = "/models/some-folder"
  validate_config(cfg)


def test_unknown_preset_and_bad_fields_are_named():
  with pytest.raises(ValueError, match="unknown pipeline preset 'tiyn'"):
    pipeline_configs.get_config("tiyn")
  cfg = pipeline_configs.get_config("tiny")
  cfg.stages = "sft,gpro"
  with pytest.raises(ValueError, match=r"unknown stage\(s\) \['gpro'\]"):
    validate_config(cfg)
  cfg = pipeline_configs.get_config("tiny")
  cfg.grpo.loss.loss_agg = "mean"
  with pytest.raises(ValueError, match="config.grpo.loss: unknown loss_agg 'mean'"):
    validate_config(cfg)
  # Blocks a dataclass owns are checked by building it: its own choices, ranges and field names.
  for key, value, message in (("dpo.loss.loss_type", "hinge", "config.dpo.loss: unknown DPO loss_type"),
                              ("sft.optim.schedule", "cosin", "config.sft.optim: unknown schedule"),
                              ("grpo.loss.epsilon_low", -0.1, "config.grpo.loss: epsilon_low"),
                              ("grpo.reward.w_proc", "x", None)):
    cfg = pipeline_configs.get_config("tiny")
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
      node = node[part]
    if message is None:  # the ConfigDict itself refuses a value of the wrong type
      with pytest.raises(TypeError):
        node[leaf] = value
      continue
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
      validate_config(cfg)
  cfg = pipeline_configs.get_config("tiny")
  cfg.grpo.group_size = 1
  with pytest.raises(ValueError, match="group_size must be >= 2"):
    validate_config(cfg)
  cfg = pipeline_configs.get_config("tiny")
  cfg.data.tasks = "arithmetic,sudoku"
  with pytest.raises(ValueError, match=r"unknown task\(s\) \['sudoku'\]"):
    validate_config(cfg)
  cfg = pipeline_configs.get_config("tiny")
  cfg.model.n_kv_heads = 3
  with pytest.raises(ValueError, match="multiple of n_kv_heads"):
    validate_config(cfg)
  with pytest.raises(AttributeError):  # typo'd fields do not exist on the ConfigDict
    pipeline_configs.get_config("tiny").grpo.gropu_size
  # Refused before any stage runs (a negative budget used to fail only when its stage started).
  for key, value, message in (
      ("dpo.tokens_per_device", -1, "config.dpo.tokens_per_device must be >= 0"),
      ("model.lora_alpha", 0.0, "lora_alpha must be a positive number"),
      ("model.lora_alpha", float("nan"), "lora_alpha must be a positive number"),
      ("model.lora_targets", "wq,wv,wq", "names wq more than once")):
    cfg = pipeline_configs.get_config("tiny")
    cfg.model.lora_rank = 4
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
      node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
      validate_config(cfg)
  with pytest.raises(ValueError, match="lora_rank must be an integer >= 0"):
    ModelConfig(lora_rank=2.5)


def test_stage_resolution():
  cfg = pipeline_configs.get_config("tiny")
  assert resolve_stages(cfg) == ["pretrain", "sft", "grpo", "distill", "dpo"]
  cfg.stages = "dpo,sft"
  assert resolve_stages(cfg) == ["sft", "dpo"]
  cfg.stages = "all"
  cfg.r1_zero = True
  assert "sft" not in resolve_stages(cfg)


def test_control_stage_runs_under_controls_or_when_named():
  cfg = pipeline_configs.get_config("tiny")
  cfg.controls = True
  assert resolve_stages(cfg) == ["pretrain", "sft", "grpo", "distill", "dpo", "replay_control"]
  cfg.grpo.replay_weight = 0.0  # no replay term: nothing to control for
  assert "replay_control" not in resolve_stages(cfg)
  cfg = pipeline_configs.get_config("tiny")
  cfg.stages = "replay_control"
  assert resolve_stages(cfg) == ["replay_control"]
  cfg.eval.control_temperatures = "0.5,-1"
  with pytest.raises(ValueError, match="control_temperatures"):
    validate_config(cfg)


def test_rollout_rows_layout():
  rows = rollout_rows([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], seq_len=6, pad_id=0,
                      injected=[np.array([False, True]), np.array([False, False, False])])
  np.testing.assert_array_equal(rows["tokens"], [[5, 6, 7, 1, 2, 0], [8, 3, 4, 9, 0, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 3, 3]])
  # Loss only on completion tokens, and not on the injected one.
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 0, 1, 0, 0], [0, 1, 1, 1, 0, 0]])


def test_rollout_rows_truncates_prompt_from_the_left():
  rows = rollout_rows([[1, 2, 3, 4, 5]], [[7, 8]], seq_len=4, pad_id=0)
  np.testing.assert_array_equal(rows["tokens"], [[4, 5, 7, 8]])
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 1, 1]])


def test_epoch_batches_cover_each_row_once_per_epoch():
  seen = np.concatenate([epoch_batches(10, 5, s, seed=3) for s in range(2)])
  assert sorted(seen.tolist()) == list(range(10))
  np.testing.assert_array_equal(epoch_batches(10, 5, 1, 3), epoch_batches(10, 5, 1, 3))
  assert len(epoch_batches(3, 5, 0, 3)) == 5  # wraps when fewer rows than a batch


def test_report_table_and_json(tmp_path):
  rep = {"m0": {"pass@1": 0.0, "maj@4": 0.0, "pass@4": 0.0, "greedy_acc": 0.0, "format_rate": 0.0,
                "mean_length": 64.0},
         "grpo": {"pass@1": 0.5, "maj@4": 0.6, "pass@4": 0.8, "greedy_acc": 0.55, "format_rate": 1.0,
                  "mean_length": 20.5}}
  table = report_lib.format_table(rep)
  lines = table.splitlines()
  assert lines[2].startswith("M0 base") and lines[3].startswith("M2 GRPO")
  assert "50.0%" in lines[3] and "60.0%" in lines[3] and "80.0%" in lines[3] and "20.5" in lines[3]
  report_lib.write_report(str(tmp_path / "r.json"), rep, {"seed": 0})
  assert json.load(open(tmp_path / "r.json"))["models"]["grpo"]["pass@1"] == 0.5


def test_metrics_writer_and_plots(tmp_path, capsys):
  w = MetricsWriter(str(tmp_path), tensorboard=True)
  for s in range(1, 4):
    w.write("grpo", s, {"reward": s / 10, "length": np.float32(5), "skipped": "text"})
  w.close()
  rows = w.read("grpo")
  assert [r["reward"] for r in rows] == [0.1, 0.2, 0.3] and "skipped" not in rows[0]
  assert list((tmp_path / "tensorboard").iterdir())
  assert report_lib.plot_curves(rows, ["reward", "length"], str(tmp_path / "c.png"), "grpo")
  assert (tmp_path / "c.png").stat().st_size > 1000
  Progress("sft", total=20, every=10).update(10, {"loss": 1.5})
  out = capsys.readouterr().out
  assert "[sft] step 10/20 (50%) loss=1.5" in out and "ETA" in out


def test_config_blocks_hold_their_dataclass_defaults():
  """Each value has one home: a block built from a dataclass holds every field of it, equal to
  the dataclass default unless the preset overrides it; and no stage reads another's block."""
  import dataclasses
  import pathlib

  from reasoner.losses.dpo import DPOConfig
  from reasoner.losses.grpo import GRPOConfig
  from reasoner.rewards.composite import RewardConfig
  from reasoner.train.optim import OptimConfig

  tiny = pipeline_configs.get_config("tiny")
  overrides = {"grpo.loss": {"epsilon_high", "beta", "loss_agg", "constant_norm", "entropy_coef"},
               "grpo.reward": {"w_proc", "l_cost"}, "dpo.loss": {"nll_weight"}}
  for key, cls in (("grpo.loss", GRPOConfig), ("grpo.reward", RewardConfig), ("dpo.loss", DPOConfig),
                   ("sft.optim", OptimConfig)):
    block = tiny[key.split(".")[0]][key.split(".")[1]].to_dict()
    assert set(block) == {f.name for f in dataclasses.fields(cls)}, key
    differ = {f.name for f in dataclasses.fields(cls) if block[f.name] != f.default}
    if key in overrides:
      assert differ == overrides[key], key
  # Every preset builds and validates, the smoke preset included.
  for preset in pipeline_configs.PIPELINE_PRESETS:
    cfg = pipeline_configs.get_config(preset)
    if cfg.init == "":
      cfg.init = "/models/some-folder"
    validate_config(cfg)
  # No stage reads another stage's block (distillation and DPO have their own max_new_tokens,
  # GRPO's replay its own row length).
  import re
  stages = pathlib.Path(__file__).parent.parent / "reasoner" / "stages"
  own = {"pretrain.py": "pretrain", "sft.py": "sft", "grpo.py": "grpo", "async_grpo.py": "grpo",
         "distill.py": "distill", "dpo.py": "dpo"}
  for name, block in own.items():
    read = set(re.findall(r"config\.(pretrain|sft|grpo|distill|dpo)\b", (stages / name).read_text()))
    assert read <= {block}, (name, read)


def test_stage_table(tmp_path):
  """The pipeline walks one table: each stage starts from a model an earlier stage made, and the
  distillation stage tells the pipeline the shape of the student it returns (its init_from
  model's, or a student preset's)."""
  import inspect
  import json

  from reasoner import stages
  from reasoner.model.config import get_config as model_config

  made = []
  for stage in stages.STAGES:
    assert len(inspect.signature(stage.run).parameters) == 3, stage.name  # (ctx, params, rng)
    parent = stage.parent_model(pipeline_configs.get_config("tiny"))
    assert parent is None and not made or parent in made, (stage.name, parent)
    made.append(stage.model)
  assert stages.STAGE_NAMES == ("pretrain", "sft", "grpo", "distill", "dpo", "replay_control")
  assert [s.name for s in stages.STAGES if s.control] == ["replay_control"]
  r1 = pipeline_configs.get_config("tiny")
  r1.r1_zero = True
  assert stages.get_stage("grpo").parent_model(r1) == "m0"
  with pytest.raises(ValueError, match="unknown stage 'rl'"):
    stages.get_stage("rl")

  config = pipeline_configs.get_config("tiny")
  teacher = model_config("tiny")
  ctx = stages.StageContext(config, str(tmp_path), None, teacher, None, None)
  distill = stages.get_stage("distill")
  with pytest.raises(FileNotFoundError):  # the student starts from M1, which is not there yet
    distill.output_config(ctx)
  for name, cfg in (("sft", teacher), ("m0", teacher.replace(n_layers=2))):
    (tmp_path / "stages" / name / "final").mkdir(parents=True)
    (tmp_path / "stages" / name / "final" / "model_config.json").write_text(json.dumps(cfg.to_dict()))
  assert distill.output_config(ctx) == teacher
  config.distill.init_from = "pretrain"  # e.g. a smaller run's M0 under another run's teacher
  assert distill.output_config(ctx) == teacher.replace(n_layers=2)
  config.distill.student = "qwen2_5_0_5b"
  student = distill.output_config(ctx)
  assert student == model_config("qwen2_5_0_5b", vocab_size=teacher.vocab_size) != teacher


def test_fingerprints_name_the_changed_fields(tmp_path):
  from reasoner.pipeline.fingerprint import check_fingerprint, fingerprint

  config = pipeline_configs.get_config("tiny")
  check_fingerprint(config, "grpo", tmp_path)  # first touch: recorded
  assert (tmp_path / "fingerprint.json").exists()
  check_fingerprint(config, "grpo", tmp_path)  # same config: fine

  # What shapes a model: its own and its ancestors' blocks, run-wide fields and the evaluation;
  # not how it runs (memory budgets, logging, which stages to run).
  for key, value in (("tokens_per_device", 512), ("rollout_rows", 64)):
    config.grpo[key] = value
  config.sft.tokens_per_device, config.log_every, config.stages = 1024, 3, "grpo"
  config.eval.batch_size, config.mesh.data = 8, 2
  check_fingerprint(config, "grpo", tmp_path)
  assert "dpo.beta" not in str(fingerprint(config, "grpo"))  # a later stage's block

  config.sft.optim.learning_rate = 5e-4  # an ancestor's setting
  config.eval.k = 8
  with pytest.raises(ValueError) as e:
    check_fingerprint(config, "grpo", tmp_path)
  message = str(e.value)
  assert "\n" not in message and "sft.optim.learning_rate: 0.001 -> 0.0005" in message
  assert "eval.k: 4 -> 8" in message and "allow_config_change" in message
  config.allow_config_change = True
  lines = []
  check_fingerprint(config, "grpo", tmp_path, log=lines.append)  # reused, new one recorded
  assert "sft.optim.learning_rate" in lines[0]
  config.allow_config_change = False
  check_fingerprint(config, "grpo", tmp_path)

  # R1-Zero's GRPO does not depend on SFT, nor does its distillation (the student starts from
  # M0); a normal run's student from init_from="sft" does.
  r1 = pipeline_configs.get_config("tiny")
  r1.r1_zero = True
  assert not any(k.startswith("sft.") for k in fingerprint(r1, "grpo"))
  assert not any(k.startswith("sft.") for k in fingerprint(r1, "distill"))
  assert any(k.startswith("sft.") for k in fingerprint(pipeline_configs.get_config("tiny"), "distill"))


def test_progress_line_stays_short_and_readable(capsys):
  from reasoner.io.metrics_log import PROGRESS_MAX, format_duration, progress_items

  assert [format_duration(s) for s in (12.44, 185, 7380)] == ["12.4s", "3m05s", "2h03m"]
  metrics = {f"zz{i}": float(i) for i in range(30)}
  metrics.update(loss=0.5, reward=0.25, _hidden=1.0, text="no")
  items = progress_items(metrics)
  assert len(items) == PROGRESS_MAX and items[:2] == [("loss", 0.5), ("reward", 0.25)]
  assert "_hidden" not in dict(items) and "text" not in dict(items)
  progress = Progress("grpo", total=4000, every=10)
  progress.t0 -= 3 * 3600  # three hours in
  progress.update(1000, metrics)
  line = capsys.readouterr().out.strip()
  assert line.startswith("[grpo] step 1000/4000 (25%) loss=0.5 reward=0.25")
  assert line.endswith("3h00m elapsed, ETA 9h00m") and len(line) < 200
