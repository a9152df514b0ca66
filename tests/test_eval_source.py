"""config.eval.source: a second evaluation set (held-out task families, a JSONL file, GSM8K)."""

import json

import jax
import pytest

from configs import pipeline as pipeline_configs
from reasoner.data.tasks import TASKS, mixture
from reasoner.pipeline import report as report_lib
from reasoner.pipeline.config_check import validate_config
from reasoner.pipeline.eval_source import eval_source_problems, parse_eval_source
from reasoner.pipeline.fingerprint import fingerprint

JSONL_ROWS = [{"prompt": "What is 2 + 3?", "answer": "5"},
              {"prompt": "What is 7 - 4?", "answer": "3"},
              {"prompt": "What is 6 * 2?", "answer": "12", "task": "arithmetic"}]


def _config(source=""):
  c = pipeline_configs.get_config("tiny")
  c.eval.source = source
  return c


@pytest.fixture
def jsonl_path(tmp_path):
  path = tmp_path / "eval.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in JSONL_ROWS))
  return str(path)


def test_eval_source_parsing_and_errors(jsonl_path):
  assert parse_eval_source(_config()) is None
  assert parse_eval_source(_config("tasks:countdown")) == ("tasks", ["countdown"])
  assert parse_eval_source(_config(f"jsonl:{jsonl_path}")) == ("jsonl", jsonl_path)
  assert parse_eval_source(_config("gsm8k")) == ("gsm8k", "")
  validate_config(_config(f"jsonl:{jsonl_path}"))
  for source, message in (("tasks:countdwn", r"unknown task\(s\) \['countdwn'\]"),
                          ("tasks:", "unknown task"),
                          ("tasks:arithmetic", "also in config.data.tasks"),
                          ("jsonl:/no/such/file.jsonl", "no such file /no/such/file.jsonl"),
                          ("jsonl:", "needs a path"),
                          ("mmlu", "expected ''")):
    with pytest.raises(ValueError, match=message) as e:
      validate_config(_config(source))
    assert str(e.value).startswith(f"config.eval.source={source!r}") and "\n" not in str(e.value)
  gsm = _config("gsm8k")
  gsm.data.source = "gsm8k"
  with pytest.raises(ValueError, match="gsm8k already"):
    validate_config(gsm)
  every = _config("tasks:held_out")
  every.data.tasks = ",".join(TASKS)
  with pytest.raises(ValueError, match="none is held out"):
    validate_config(every)


def test_held_out_task_families_are_disjoint_from_training():
  config = _config("tasks:held_out")
  training = set(config.data.tasks.split(","))
  kind, names = parse_eval_source(config)
  assert kind == "tasks" and set(names) == set(TASKS) - training and names
  problems = eval_source_problems(config, 24)
  assert len(problems) == 24 and {p.task for p in problems} <= set(names)
  assert not {p.task for p in problems} & training
  assert [p.prompt for p in eval_source_problems(config, 24)] == [p.prompt for p in problems]
  assert eval_source_problems(_config(), 24) == []


def test_jsonl_source_reads_the_whole_file_or_a_seeded_subset(jsonl_path):
  config = _config(f"jsonl:{jsonl_path}")
  problems = eval_source_problems(config, 10)
  assert [(p.prompt, p.answer, p.task) for p in problems] == [
      (r["prompt"], r["answer"], r.get("task", "math")) for r in JSONL_ROWS]
  two = eval_source_problems(config, 2)
  assert len(two) == 2 and two == eval_source_problems(config, 2)


def test_fingerprint_leaves_eval_source_to_eval_json():
  # A second eval set shapes no model: changing it must not stop a rerun (eval.json records its
  # source and is redone), and fingerprints written before the field existed still match.
  assert fingerprint(_config("tasks:countdown"), "grpo") == fingerprint(_config(), "grpo")
  assert not any("source" in k for k in fingerprint(_config(), "grpo") if k.startswith("eval."))


def test_report_table_shows_the_second_set():
  report = {"m0": {"pass@1": 0.1, "greedy_acc": 0.2},
            "sft": {"pass@1": 0.5, "ood/pass@1": 0.05, "ood/greedy_acc": 0.125,
                    "eval_source": "tasks:countdown"}}
  table = report_lib.format_table(report)
  assert "ood/pass@1" in table and "ood/greedy" in table and "12.5%" in table
  assert table.splitlines()[-1] == "ood/: config.eval.source = tasks:countdown"
  assert "ood" not in report_lib.format_table({"m0": {"pass@1": 0.1}})


def test_pipeline_scores_the_jsonl_set_and_redoes_it_when_the_source_changes(
    jsonl_path, tmp_path, monkeypatch):
  from reasoner.model import get_config, init_params
  from reasoner.pipeline import run as run_lib
  from reasoner.stages.context import StageContext
  from reasoner.tokenizer import format_prompt, train_sentencepiece

  config = _config(f"jsonl:{jsonl_path}")
  config.eval.update(dict(n_problems=4, k=2, max_new_tokens=8, batch_size=16))
  validate_config(config)
  probs = mixture(config.data.tasks.split(","), "train", 200, 0, 1)
  tok = train_sentencepiece([format_prompt(p.prompt) + p.solution for p in probs],
                            str(tmp_path / "tok"), vocab_size=384)
  model_cfg = get_config("tiny", vocab_size=384, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                         head_dim=16, d_ff=64, max_seq_len=96)
  params = init_params(model_cfg, jax.random.PRNGKey(0))
  pipe = run_lib.Pipeline.__new__(run_lib.Pipeline)  # only what _evaluate reads
  pipe.config, pipe.tokenizer, pipe.mesh = config, tok, None
  pipe.rng, pipe._eval_problems, pipe._source_problems = jax.random.PRNGKey(0), None, (None, [])
  pipe.ctx = StageContext(config, str(tmp_path / "work"), None, model_cfg, tok, None)
  calls = []
  real = run_lib.evaluate

  def counting(params, model_cfg, tokenizer, problems, *a, **kw):
    calls.append([p.prompt for p in problems])
    return real(params, model_cfg, tokenizer, problems, *a, **kw)

  monkeypatch.setattr(run_lib, "evaluate", counting)
  first = pipe._evaluate("sft", params, model_cfg)
  assert [len(c) for c in calls] == [4, 3]  # the test split, then the whole file
  assert calls[1] == [r["prompt"] for r in JSONL_ROWS]
  assert first["ood/n_problems"] == 3 and first["n_problems"] == 4
  for key in ("ood/pass@1", "ood/greedy_acc", "ood/maj@2", "ood/pass@2", "ood/format_rate"):
    assert 0.0 <= first[key] <= 1.0
  assert first["eval_source"] == config.eval.source and "ood/examples" not in first
  saved = json.load(open(tmp_path / "work" / "stages" / "sft" / "eval.json"))
  assert saved["ood/pass@1"] == first["ood/pass@1"]

  calls.clear()
  assert pipe._evaluate("sft", params, model_cfg) == saved and not calls  # cached

  # Another source: the cached test-split metrics stay, only the second set is redone.
  config.eval.source = "tasks:countdown"
  second = pipe._evaluate("sft", params, model_cfg)
  assert [len(c) for c in calls] == [4] and second["eval_source"] == "tasks:countdown"
  assert all(second[k] == first[k] for k in ("pass@1", "greedy_acc", "examples"))
  assert second["ood/n_problems"] == 4

  # No source any more: the second set's metrics go.
  calls.clear()
  config.eval.source = ""
  third = pipe._evaluate("sft", params, model_cfg)
  assert not calls and not any(k.startswith("ood/") or k == "eval_source" for k in third)
  assert third["pass@1"] == first["pass@1"]
