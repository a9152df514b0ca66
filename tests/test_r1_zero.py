"""R1-Zero mode (config.r1_zero): the instruction in every prompt, its overrides and their
validation, the fingerprint that lets it reuse a normal run's M0, and a run end to end."""

import json
import shutil

import pytest

from configs import pipeline as pipeline_configs
from reasoner.pipeline.config_check import r1_zero_config, validate_config
from reasoner.pipeline.fingerprint import check_fingerprint, eval_file, fingerprint
from reasoner.stages import StageContext
from reasoner.tokenizer import R1_ZERO_INSTRUCTION, format_prompt

Q = "What is 17 + 25?"


def _r1(preset="tiny"):
  config = pipeline_configs.get_config(preset)
  config.r1_zero = True
  return config


def test_prompt_carries_the_tag_instruction_only_in_r1_zero_mode(arith_tokenizer):
  config = pipeline_configs.get_config("tiny")
  normal = StageContext(config, "/unused", None, None, arith_tokenizer, None)
  # Normal mode: byte for byte the prompt it was before R1-Zero mode had an instruction.
  assert normal.prompt_text(Q) == "User: What is 17 + 25?\nAssistant:"
  assert normal.encode_prompt(Q) == arith_tokenizer.encode("User: What is 17 + 25?\nAssistant:")
  config.tokenizer.template = "qwen"
  assert normal.prompt_text(Q) == format_prompt(Q, "qwen")

  r1 = StageContext(_r1(), "/unused", None, None, arith_tokenizer, None)
  text = r1.prompt_text(Q)
  assert text == f"{R1_ZERO_INSTRUCTION}\nUser: What is 17 + 25?\nAssistant:"
  for tag in ("<think>", "</think>", "<answer>", "</answer>"):
    assert tag in text
  assert r1.encode_prompt(Q) == arith_tokenizer.encode(text)
  assert arith_tokenizer.decode(r1.encode_prompt(Q)) == text  # byte fallback: nothing lost
  r1.config.tokenizer.template = "qwen"  # the instruction becomes the system message
  assert r1.prompt_text(Q) == format_prompt(Q, "qwen", system=R1_ZERO_INSTRUCTION)


def test_r1_zero_overrides_and_their_validation():
  normal = pipeline_configs.get_config("tiny")
  assert r1_zero_config(normal) is normal  # normal mode: the config as given
  lines = []
  r1 = r1_zero_config(_r1(), log=lines.append)
  assert r1.grpo.replay_weight == 0.0 and r1.grpo.loss.entropy_coef == 0.0
  assert r1.grpo.reward.w_proc == 0.5 and r1.grpo.optim.learning_rate == 5e-5
  assert r1.distill.init_from == "pretrain" and r1.dpo.replay_weight == 0.0
  assert "[r1_zero] grpo.replay_weight: 1.0 -> 0.0" in lines
  assert "[r1_zero] distill.init_from: 'sft' -> 'pretrain'" in lines
  assert r1_zero_config(r1).to_dict() == r1.to_dict()  # idempotent
  validate_config(_r1())
  real = _r1("qwen2_5_0_5b_gsm8k")
  real.init = "/some/model"
  validate_config(real)
  assert r1_zero_config(real).grpo.optim.learning_rate == 2e-6  # its own GRPO learning rate


@pytest.mark.parametrize("block,field,value,message", [
    # asking for the student to start from M1
    ("distill", "init_from", "sft", "init_from='sft': R1-Zero mode makes no SFT model"),
    ("grpo", "replay_weight", 0.5, "replay_weight=0.5: R1-Zero mode takes no replay"),
    ("dpo", "replay_weight", 0.5, "dpo.replay_weight=0.5: R1-Zero mode takes no replay"),
    ("grpo", "replay_wieght", 0.0, "r1_zero_overrides.grpo.replay_wieght"),  # a typo
])
def test_r1_zero_overrides_refused_with_the_field_named(block, field, value, message):
  bad = _r1()
  setattr(bad.r1_zero_overrides[block], field, value)
  with pytest.raises(ValueError, match=message):
    validate_config(bad)


def test_fingerprint_shares_m0_and_separates_the_rl_models(tmp_path):
  normal, r1 = pipeline_configs.get_config("tiny"), _r1()
  assert fingerprint(normal, "m0") == fingerprint(r1, "m0")
  assert "r1_zero" not in fingerprint(normal, "m0")
  for model in ("grpo", "distill", "dpo"):
    assert fingerprint(normal, model)["r1_zero"] is False
    assert fingerprint(r1, model)["r1_zero"] is True
  # R1-Zero's models depend on no SFT setting: the student starts from M0.
  for model in ("grpo", "distill", "dpo"):
    assert not any(k.startswith("sft.") for k in fingerprint(r1, model))
  assert any(k.startswith("pretrain.") for k in fingerprint(r1, "distill"))
  assert fingerprint(r1, "grpo")["grpo.replay_weight"] == 0.0

  # An M0 made by a normal run, also one whose fingerprint still holds the once run-wide r1_zero.
  check_fingerprint(normal, "m0", tmp_path)
  check_fingerprint(r1, "m0", tmp_path)
  saved = json.loads((tmp_path / "fingerprint.json").read_text())
  (tmp_path / "fingerprint.json").write_text(json.dumps({**saved, "r1_zero": False}))
  check_fingerprint(r1, "m0", tmp_path)
  check_fingerprint(normal, "grpo", tmp_path / "grpo")
  with pytest.raises(ValueError, match="r1_zero: False -> True"):
    check_fingerprint(r1, "grpo", tmp_path / "grpo")
  assert eval_file(normal) == "eval.json" and eval_file(r1) == "eval_r1_zero.json"


def test_r1_zero_end_to_end_on_a_normal_runs_m0(tmp_path, monkeypatch, capsys):
  """A normal run makes the tokenizer and M0; a new workdir with copies of both runs R1-Zero's
  GRPO and distillation (M0 reused, not pre-trained again), every prompt with the instruction,
  and reports GRPO's reward, format rate and response length curves."""
  import zlib

  import importlib

  from reasoner.pipeline.run import run_pipeline
  from reasoner.sampling import rollouts as sampling_rollouts
  from reasoner.stages import context, rollouts
  from tests.test_pipeline_e2e import small_config

  def config(stages):
    cfg = small_config(stages)
    cfg.eval.n_problems, cfg.eval.max_new_tokens, cfg.grpo.max_new_tokens = 4, 16, 16
    cfg.distill.n_problems, cfg.distill.steps = 8, 2
    return cfg

  normal_dir, r1_dir = tmp_path / "normal", tmp_path / "r1zero"
  run_pipeline(config("pretrain"), str(normal_dir))
  r1_dir.mkdir()
  shutil.copytree(normal_dir / "tokenizer", r1_dir / "tokenizer")
  shutil.copytree(normal_dir / "stages" / "m0", r1_dir / "stages" / "m0")
  m0_final = r1_dir / "stages" / "m0" / "final"
  m0_files = lambda: sorted(p.stat().st_mtime for p in m0_final.rglob("*"))
  m0_params = m0_files()

  prompts = []
  real_sample = sampling_rollouts.sample_rollouts

  def recording_sample(params, model_cfg, tokenizer, prompt_ids, *args, **kwargs):
    prompts.extend(tokenizer.decode(list(p)) for p in prompt_ids)
    return real_sample(params, model_cfg, tokenizer, prompt_ids, *args, **kwargs)

  monkeypatch.setattr(context, "sample_rollouts", recording_sample)  # GRPO, distillation
  evaluate_lib = importlib.import_module("reasoner.pipeline.evaluate")
  monkeypatch.setattr(evaluate_lib, "sample_rollouts", recording_sample)  # the evaluation
  # M0 solves nothing: a coin decides which samples rejection sampling keeps.
  monkeypatch.setattr(rollouts, "is_correct", lambda p, t: zlib.crc32(t.encode()) % 2 == 0)
  monkeypatch.setattr(rollouts, "format_reward", lambda text: 1.0)
  cfg = config("pretrain,sft,grpo,distill")
  cfg.r1_zero = True
  report = run_pipeline(cfg, str(r1_dir))

  assert list(report) == ["m0", "grpo", "distill"]  # no SFT model
  assert not (r1_dir / "stages" / "sft").exists()
  assert m0_files() == m0_params
  rows = [json.loads(l) for l in open(r1_dir / "metrics.jsonl")]
  assert {r["stage"] for r in rows} == {"grpo", "distill"}  # M0 reused, not pre-trained again
  assert not any("replay_loss" in r for r in rows)
  for model in ("m0", "grpo", "distill"):
    assert (r1_dir / "stages" / model / "eval_r1_zero.json").exists()
  assert (normal_dir / "stages" / "m0" / "eval.json").exists()
  assert prompts and all(p.startswith(R1_ZERO_INSTRUCTION + "\nUser: ") for p in prompts)

  saved = json.loads((r1_dir / "report.json").read_text())
  curve = saved["grpo_curve"]
  assert set(curve) >= {"reward", "reward/format", "response_length"}
  assert curve["reward"]["last_step"] == cfg.grpo.steps
  assert (r1_dir / "grpo_curves.png").exists()
  out = capsys.readouterr().out
  assert "[r1_zero] grpo.replay_weight: 1.0 -> 0.0" in out
  assert "grpo (steps " in out and "format rate" in out and "response length" in out


def test_pretraining_corpus_can_show_m0_the_tags(tmp_path):
  from reasoner.stages.pretrain import corpus, corpus_document

  config = pipeline_configs.get_config("tiny_smoke")
  ctx = StageContext(config, "/unused", None, None, None, None)
  plain = corpus(ctx, 200)
  assert all("<think>" not in d and "\nWorking: " in d for d in plain)  # the default: no tags
  assert plain == [corpus_document(p) for p in ctx.problems("train", 200, "pretrain")]
  config.pretrain.tagged_fraction = 0.25
  mixed = corpus(ctx, 200)
  tagged = [d for d in mixed if "<think>" in d]
  assert 30 <= len(tagged) <= 70 and corpus(ctx, 200) == mixed  # deterministic in the seed
  problem = ctx.problems("train", 1, "pretrain")[0]
  doc = corpus_document(problem, tagged=True)
  assert doc == f"User: {problem.prompt}\nAssistant:{problem.solution}\n"
  assert doc.endswith(f"</think><answer>{problem.answer}</answer>\n")
  qwen = corpus_document(problem, True, "qwen")
  assert qwen == format_prompt(problem.prompt, "qwen") + problem.solution + "\n"
  assert [d for d in mixed if "<think>" not in d] == [d for d, m in zip(plain, mixed) if d == m]

  # M0s made before the field existed keep matching while it stays 0.
  config.pretrain.tagged_fraction = 0.0
  check_fingerprint(config, "m0", tmp_path)
  saved = json.loads((tmp_path / "fingerprint.json").read_text())
  del saved["pretrain.tagged_fraction"]
  (tmp_path / "fingerprint.json").write_text(json.dumps(saved))
  check_fingerprint(config, "m0", tmp_path)
  config.pretrain.tagged_fraction = 0.1
  with pytest.raises(ValueError, match="pretrain.tagged_fraction: 0.0 -> 0.1"):
    check_fingerprint(config, "m0", tmp_path)
  config.pretrain.tagged_fraction = 1.5
  with pytest.raises(ValueError, match="tagged_fraction must be in"):
    validate_config(config)
