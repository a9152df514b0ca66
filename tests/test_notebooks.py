"""The notebooks run top to bottom with their smoke settings (REASONER_NOTEBOOK_SMOKE=1) and show
what they say they show. Each ends with a JSON line of its results, which the tests check.

The three notebooks share one work directory, in file order: the GRPO walkthrough and the
test-time-compute notebook reuse the models the quickstart trained (and its compiled programs);
run alone, each trains a small model of its own first. The Qwen GRPO notebook writes a tiny
random Qwen2 folder and GSM8K-format problems of its own.
"""

import json
import math
import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = ("quickstart.ipynb", "grpo_walkthrough.ipynb", "test_time_compute.ipynb")
STAGES = ["m0", "sft", "grpo", "distill", "dpo"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("notebooks")


def _kernel_name() -> str:
  from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
  try:
    KernelSpecManager().get_kernel_spec("python3")
  except NoSuchKernel:
    from ipykernel.kernelspec import install
    install(user=True, kernel_name="python3")
  return "python3"


def _execute(name: str, workdir, cwd: str = REPO):
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  env = {**os.environ, "REASONER_NOTEBOOK_SMOKE": "1", "REASONER_NOTEBOOK_WORKDIR": str(workdir),
         "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device in the kernel, not the tests' 8
  client = NotebookClient(nb, kernel_name=_kernel_name(), timeout=900,
                          resources={"metadata": {"path": cwd}})
  client.execute(env=env)  # raises CellExecutionError on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  return nb


def _summary(nb) -> dict:
  last = [c for c in nb.cells if c.cell_type == "code"][-1]
  text = "".join(o.text for o in last.outputs if o.output_type == "stream" and o.name == "stdout")
  return json.loads(text.strip().splitlines()[-1])


def _images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
             for o in c.outputs)


def test_notebooks_are_committed_clean_with_a_parameters_cell():
  for name in NAMES:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: clear the outputs"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), name
    assert 'os.environ.get("REASONER_NOTEBOOK_SMOKE") == "1"' in first.source, name
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_quickstart_runs_the_pipeline_and_reports_every_stage(workdir):
  nb = _execute("quickstart.ipynb", workdir)
  s = _summary(nb)
  assert s["smoke"] is True and s["repo"] == REPO
  run_dir = os.path.join(str(workdir), "quickstart_smoke")
  assert s["run_dir"] == run_dir  # the run went to the work directory, not into the repository
  assert list(s["models"]) == STAGES
  for name, m in s["models"].items():
    for key in ("pass@1", "greedy_acc", "format_rate", "maj@4", "pass@4"):
      assert 0.0 <= m[key] <= 1.0, (name, key, m[key])
    assert 0 < m["mean_length"] <= 32  # eval.max_new_tokens of the smoke settings
    assert m["pass@4"] >= m["pass@1"] - 1e-9 and m["pass@4"] >= m["maj@4"] - 1e-9
  for name in ("distill", "dpo"):
    assert 0.0 <= s["models"][name]["pref_acc"] <= 1.0  # held-out pairs existed (not NaN)
  # SFT taught the <think>/<answer> format the pre-trained model never saw.
  assert s["models"]["m0"]["format_rate"] == 0.0 and s["models"]["sft"]["format_rate"] > 0.2
  # The printed table is the report on disk.
  from reasoner.pipeline import report as report_lib
  saved = json.load(open(os.path.join(run_dir, "report.json")))
  assert set(saved["models"]) == set(STAGES)
  assert s["table"] == report_lib.format_table(saved["models"]).splitlines()
  for label in ("M0 base", "M1 SFT", "M2 GRPO", "M3 distilled", "M4 DPO"):
    assert any(row.startswith(label) and "%" in row for row in s["table"]), label
  assert all(n > 0 for n in s["curve_points"].values()), s["curve_points"]
  assert _images(nb) >= 2  # the inline plots (curves, accuracy per stage) were drawn


def test_grpo_walkthrough_advantages_clipping_and_training(workdir):
  nb = _execute("grpo_walkthrough.ipynb", workdir)
  s = _summary(nb)
  half_sqrt3 = math.sqrt(3) / 2  # (1 - 0.5) / std([1, 0, 1, 0], ddof=1)
  np.testing.assert_allclose(s["advantages_mixed"], [half_sqrt3, -half_sqrt3] * 2, atol=1e-4)
  assert s["advantages_equal"] == [0.0] * 4
  np.testing.assert_allclose(s["advantages_drgrpo"], [0.5, -0.5] * 2, atol=1e-6)
  assert s["dynamic_sampling_keep"] == [True] * 4 + [False] * 4
  lo, hi = 1 - s["epsilon_low"], 1 + s["epsilon_high"]
  pos, neg = s["clip"]["+1"], s["clip"]["-1"]
  assert pos["ratio"] == neg["ratio"] and min(pos["ratio"]) < lo and max(pos["ratio"]) > hi
  for r, obj, slope in zip(pos["ratio"], pos["objective"], pos["slope"]):  # A = +1
    assert obj == pytest.approx(min(r, hi), abs=1e-5)
    assert slope == pytest.approx(0.0 if r > hi else 1.0, abs=1e-5)
  for r, obj, slope in zip(neg["ratio"], neg["objective"], neg["slope"]):  # A = -1
    assert obj == pytest.approx(-max(r, lo), abs=1e-5)
    assert slope == pytest.approx(0.0 if r < lo else -1.0, abs=1e-5)
  assert s["clip_frac_high_example"] == pytest.approx(0.2)
  # A few real GRPO steps: one logged point per step, rewards in the composite reward's range
  # (w_out * 1 + w_proc * 1 at best, -l_safe at worst), and the weights moved.
  assert s["curve_steps"] == list(range(1, s["grpo_steps"] + 1))
  assert len(s["reward_curve"]) == s["grpo_steps"] == 5
  assert all(-1.0 - 1e-6 <= r <= 1.2 + 1e-6 for r in s["reward_curve"]), s["reward_curve"]
  assert all(0.0 <= g <= 1.0 for g in s["groups_kept"]) and max(s["groups_kept"]) > 0
  assert s["param_change"] > 0
  for m in (s["eval_before"], s["eval_after"]):
    assert all(0.0 <= v <= 1.0 for v in m.values())
  assert _images(nb) >= 2  # the clipping plot and the reward curve


def test_test_time_compute_curves_from_the_notebooks_folder(workdir):
  nb = _execute("test_time_compute.ipynb", workdir, cwd=NOTEBOOKS)
  s = _summary(nb)
  assert s["cwd"] == NOTEBOOKS and s["repo"] == REPO
  n = s["n_sweep"]
  assert n["n"] == [1, 2, 4, 8] and n["n"][-1] == s["n_max"]
  oracle = n["oracle_best_of_n"]
  assert all(b >= a for a, b in zip(oracle, oracle[1:])), oracle  # pass@N never falls with N
  for key in ("pass@1", "majority", "confidence_best_of_n"):
    assert all(0.0 <= v <= o + 1e-9 for v, o in zip(n[key], oracle)), (key, n[key], oracle)
    assert n[key][0] == pytest.approx(oracle[0])  # with one sample every strategy picks it
  assert s["pass@1"] <= s["best_of_n_oracle"] + 1e-9
  assert max(s["majority"], s["best_of_n_confidence"]) <= s["best_of_n_oracle"] + 1e-9
  b = s["budget_sweep"]
  assert b["budget"] == [8, 24]
  for budget, cap, force in zip(b["budget"], b["cap_thinking_tokens"], b["force_thinking_tokens"]):
    assert cap <= budget  # cap: </think> forced once the budget is spent
    assert force == pytest.approx(budget)  # force: exactly the budget
  assert all(0.0 <= v <= 1.0 for v in b["cap"] + b["force"])
  assert s["budget"]["force"]["forced_rate"] == 1.0
  with open(s["plot"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert _images(nb) >= 1


def test_library_plots_leave_the_matplotlib_backend_alone(tmp_path):
  """plot_curves / plot_scaling must not switch the caller's backend (a notebook's inline one)."""
  import matplotlib
  from reasoner.pipeline import report as report_lib
  from reasoner.tts import plot_scaling
  before = matplotlib.get_backend()
  matplotlib.use("svg")
  try:
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert report_lib.plot_curves(rows, ["loss"], str(tmp_path / "c.png"), "sft")
    plot_scaling({"n": [1, 2], "pass@1": [0.1, 0.1], "oracle_best_of_n": [0.1, 0.2]},
                 {"budget": [4, 8], "cap": [0.0, 0.1]}, str(tmp_path / "s.png"))
    assert matplotlib.get_backend() == "svg"
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "s.png").stat().st_size > 0
  finally:
    matplotlib.use(before)


QWEN_GRPO = "qwen_grpo_gsm8k.ipynb"


def test_qwen_grpo_gsm8k_plans_then_trains_a_tiny_qwen2_folder(workdir):
  """Smoke mode: a tiny random Qwen2 HF folder and GSM8K-format problems written by the notebook,
  budgets halved by the planner until everything fits, then GRPO through run_pipeline."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, QWEN_GRPO), as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
  assert "parameters" in code[0].metadata.get("tags", [])
  assert 'os.environ.get("REASONER_NOTEBOOK_SMOKE") == "1"' in code[0].source
  env = {k: os.environ.pop(k) for k in ("REASONER_QWEN_DIR", "REASONER_GSM8K_DIR") if k in os.environ}
  try:  # the notebook writes its own model and problems
    nb = _execute(QWEN_GRPO, workdir)
  finally:
    os.environ.update(env)
  s = _summary(nb)
  assert s["smoke"] is True and s["data"] == "jsonl"
  assert s["hf_dir"].startswith(str(workdir)) and s["run_dir"].startswith(str(workdir))
  # Sized by the planner: the last round fits, every earlier one did not and was halved.
  rounds = s["plan_rounds"]
  assert s["planned_fits"] is True and rounds[-1]["does_not_fit"] == []
  assert len(rounds) >= 2 and all(r["does_not_fit"] for r in rounds[:-1])
  assert (s["tokens_per_device"], s["rollout_rows"]) == (rounds[-1]["tokens_per_device"],
                                                         rounds[-1]["rollout_rows"])
  assert s["tokens_per_device"] < s["start_budgets"]["tokens_per_device"]
  assert s["hardware"]["devices"] == 1 and s["hardware"]["name"].startswith("cpu")
  assert s["stages"] == ["grpo"]
  assert s["grpo_steps"] == 3 and s["curve_steps"] == [1, 2, 3]
  assert len(s["reward_curve"]) == 3 and all(math.isfinite(r) for r in s["reward_curve"])
  assert s["reward_first"] == s["reward_curve"][0] and s["reward_last"] == s["reward_curve"][-1]
  assert max(s["groups_kept"]) > 0  # some updates ran (with the planner's micro-batches)
  for when in ("before", "after"):
    m = s["eval"][when]
    assert all(0.0 <= m[k] <= 1.0 for k in ("pass@1", "greedy_acc", "format_rate")), m
    assert 0 < m["mean_length"] <= 32
  assert _images(nb) >= 1  # the reward curve
