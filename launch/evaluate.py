"""Test-time compute on held-out problems: one strategy, a comparison at equal tokens, and
optionally the scaling sweeps.

  python -m launch.evaluate --config=configs/pipeline.py:tiny --model_dir=runs/tiny/stages/grpo/final \
      --strategy=majority --n=8
  python -m launch.evaluate ... --strategy=best_of_n --n=8 [--verifier=prm|confidence|oracle]
  python -m launch.evaluate ... --strategy=budget --budget=32 --budget_mode=cap|force
  python -m launch.evaluate ... --strategy=prm_search --prm_dir=runs/tiny/prm --train_prm \
      --beam_width=4 --expansions=4
  python -m launch.evaluate ... --strategy=compare --prm_dir=runs/tiny/prm --train_prm \
      --output=runs/tiny/compare.json     # PRM search vs majority / best-of-N at equal tokens
  python -m launch.evaluate ... --plot=runs/tiny/tts.png    # accuracy vs N and vs thinking budget

Best-of-N's verifier defaults to the PRM when one is given (--prm_dir holding one, or
--train_prm), else to the policy's confidence. --verifier=oracle picks a correct sample using the
reference answer: that is pass@N, an upper bound and not a usable strategy, so it is printed and
written as `oracle pass@N` (JSON key `oracle_pass@N`) and never as an accuracy; the N sweep's
oracle curve is written as `oracle_pass@n` for the same reason.

--strategy=compare runs the PRM-guided search, counts the tokens it generates per problem (every
expansion included), picks the N at which sampling spends as many, and reports PRM search,
majority vote, best-of-N (PRM- and confidence-scored) and one sample on the same problems, each
with its accuracy, 95% Wilson interval over problems and generated tokens per problem, then the
oracle upper bounds apart (`reasoner.tts.sweep.compare_strategies`); a table is printed.

Problems are the pipeline's held-out set (config.data's test split, config.seed), its validation
split with --eval_set=validation (choose settings there, report test once), or with
--eval_set=source the second evaluation set of config.eval.source (held-out task families, a JSONL
file or GSM8K: reasoner/pipeline/eval_source.py); prompts use config.tokenizer.template. Results are printed and written as JSON to --output (default: next to
--plot, else nothing is written). --train_prm fits a PRM head on the model's hidden states from
step-labelled training problems and saves it to --prm_dir (when given).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

STRATEGIES = ("greedy", "best_of_n", "majority", "budget", "prm_search", "compare")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file (path:preset).",
                                          lock_config=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model directory to evaluate "
                                 "(e.g. WORKDIR/stages/grpo/final).")
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", STRATEGIES, "Test-time strategy.")
_N = flags.DEFINE_integer("n", 8, "Samples per problem (best_of_n, majority; largest N of --plot).")
_BUDGET = flags.DEFINE_integer("budget", 32, "Thinking budget in tokens (strategy=budget).")
_BUDGET_MODE = flags.DEFINE_enum("budget_mode", "cap", ["cap", "force"],
                                 "cap: force </think> at the budget; force: also 'Wait' until it.")
_WAIT_TEXT = flags.DEFINE_string("wait_text", " Wait,", "Text injected to extend the thinking.")
_ANSWER_TOKENS = flags.DEFINE_integer("answer_tokens", 16, "Tokens allowed after </think>.")
_NUM_PROBLEMS = flags.DEFINE_integer("num_problems", None, "Held-out problems (default "
                                     "config.eval.n_problems).")
_EVAL_SET = flags.DEFINE_enum("eval_set", "test", ["test", "validation", "source"],
                              "test: config.data's test split (what is reported); validation: its "
                              "validation split (for choosing settings); source: "
                              "config.eval.source's set.")
_VERIFIER = flags.DEFINE_enum("verifier", None, ["prm", "confidence", "oracle"],
                              "Scorer of best_of_n (default: prm when a PRM is given, else "
                              "confidence; oracle reports pass@N, labelled as such).")
_AGGREGATE = flags.DEFINE_enum("aggregate", "last", ["last", "min", "prod"],
                               "How PRM step scores make a solution score (best_of_n, compare).")
_PRM_DIR = flags.DEFINE_string("prm_dir", "", "PRM directory (load, or save with --train_prm).")
_TRAIN_PRM = flags.DEFINE_bool("train_prm", False, "Train a PRM if --prm_dir holds none.")
_PRM_STEPS = flags.DEFINE_integer("prm_steps", 300, "PRM training steps.")
_PRM_PROBLEMS = flags.DEFINE_integer("prm_problems", 512, "Training problems for the PRM.")
_PRM_FINETUNE = flags.DEFINE_bool("prm_finetune", False, "Fine-tune the trunk with the PRM head "
                                  "(default: frozen trunk, head only).")
_PRM_LR = flags.DEFINE_float("prm_learning_rate", None, "PRM learning rate (default 0.05 frozen, "
                             "3e-4 fine-tuned).")
_BEAM_WIDTH = flags.DEFINE_integer("beam_width", 4, "prm_search: beams kept per problem.")
_EXPANSIONS = flags.DEFINE_integer("expansions", 4, "prm_search: sampled steps per beam.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 16, "prm_search: rounds of step expansion.")
_STEP_TOKENS = flags.DEFINE_integer("step_tokens", 24, "prm_search: most tokens of one step.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature "
                                  "(default config.eval.temperature).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Generation budget "
                                "(default config.eval.max_new_tokens).")
_PLOT = flags.DEFINE_string("plot", "", "Write a PNG of accuracy vs N and vs thinking budget.")
_NS = flags.DEFINE_list("ns", [], "N values of the sweep (default 1, 2, 4, ... up to --n).")
_BUDGETS = flags.DEFINE_list("budgets", [], "Thinking budgets of the sweep (default 4, 8, 16, ... "
                             "below --max_new_tokens).")
_BUDGET_MODES = flags.DEFINE_list("budget_modes", ["cap", "force"], "Budget modes of the sweep.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON results path.")
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default config.seed).")
_MAX_N = flags.DEFINE_integer("max_n", 256, "compare: most samples per problem for the sampling "
                              "strategies' pool.")
flags.mark_flags_as_required(["config", "model_dir"])


def _ints(values, name):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of integers, got {values}") from None


def default_verifier(verifier, prm_given: bool) -> str:
  """best_of_n's verifier: `verifier` when set, else prm when a PRM is given, else confidence
  (never the oracle, which needs the answers)."""
  if verifier:
    return verifier
  return "prm" if prm_given else "confidence"


def label_oracle(result: dict, n: int) -> dict:
  """An oracle best-of-n result with its 'accuracy' renamed to 'oracle_pass@n' (it is pass@n)."""
  out = {k: v for k, v in result.items() if k != "accuracy"}
  out[f"oracle_pass@{n}"] = result["accuracy"]
  return out


def _summary(result: dict) -> dict:
  """The result without per-problem lists (kept: the first 3 completions as examples)."""
  out = {k: v for k, v in result.items()
         if k not in ("completions", "chosen", "scores", "correct", "beam_correct",
                      "generated_tokens")}
  if "completions" in result:
    out["examples"] = result["completions"][:3]
  return out


def _load_or_train_prm(policy, ctx, model_dir, seed):
  from reasoner.tts import has_prm, load_prm, save_prm, train_prm
  prm_dir = _PRM_DIR.value
  if prm_dir and has_prm(prm_dir):
    return load_prm(prm_dir, mesh=policy.mesh)
  if not _TRAIN_PRM.value:
    where = f"in {prm_dir}" if prm_dir else "(no --prm_dir)"
    raise FileNotFoundError(f"this run needs a PRM and there is none {where}; pass --train_prm "
                            f"to train one")
  problems = ctx.problems("train", _PRM_PROBLEMS.value, "prm")
  lr = _PRM_LR.value or (3e-4 if _PRM_FINETUNE.value else 0.05)
  print(f"[prm] training on {len(problems)} problems for {_PRM_STEPS.value} steps "
        f"({'fine-tuned' if _PRM_FINETUNE.value else 'frozen'} trunk)", flush=True)
  prm = train_prm(policy.params, policy.cfg, policy.tokenizer, problems, _PRM_STEPS.value,
                  template=policy.template, finetune_trunk=_PRM_FINETUNE.value, learning_rate=lr,
                  seed=seed)
  print(f"[prm] loss {prm.history[0]:.4f} -> {prm.history[-1]:.4f}", flush=True)
  if prm_dir:
    save_prm(prm_dir, prm, trunk_dir=None if prm.finetuned else model_dir)
  return prm


def run(config, model_dir: str) -> dict:
  import jax

  from reasoner import sharding
  from reasoner.checkpoint import load_model
  from reasoner.sampling import SamplingConfig
  from reasoner.stages.context import StageContext, held_out_problems
  from reasoner.tts import (Policy, accuracy_vs_budget, accuracy_vs_n, best_of_n, budget_forcing,
                            compare_strategies, format_comparison, has_prm, majority_vote,
                            plot_scaling, powers_of_two, prm_metrics, prm_search)
  from reasoner.tts.best_of_n import correctness

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  params, model_cfg, tokenizer, _ = load_model(model_dir, mesh=mesh)
  if tokenizer is None:
    raise FileNotFoundError(f"{model_dir} has no tokenizer/ directory")
  e = config.eval
  seed = config.seed if _SEED.value is None else _SEED.value
  temperature = e.temperature if _TEMPERATURE.value is None else _TEMPERATURE.value
  max_new = e.max_new_tokens if _MAX_NEW.value is None else _MAX_NEW.value
  policy = Policy(params, model_cfg, tokenizer, config.tokenizer.template, mesh, e.batch_size)
  ctx = StageContext(config, os.path.dirname(model_dir), mesh, model_cfg, tokenizer, writer=None)
  if _EVAL_SET.value == "source":
    from reasoner.pipeline.eval_source import eval_source_problems, parse_eval_source
    if parse_eval_source(config) is None:
      raise ValueError("--eval_set=source needs config.eval.source (e.g. tasks:countdown)")
    problems = eval_source_problems(config, _NUM_PROBLEMS.value or e.n_problems)
  else:
    problems = held_out_problems(ctx, _NUM_PROBLEMS.value or e.n_problems, split=_EVAL_SET.value)
  rng = jax.random.PRNGKey(seed)
  sampling = SamplingConfig(max_new_tokens=max_new, temperature=temperature)
  strategy = _STRATEGY.value
  prm_given = _TRAIN_PRM.value or bool(_PRM_DIR.value and has_prm(_PRM_DIR.value))
  verifier = default_verifier(_VERIFIER.value, prm_given)
  needs_prm = strategy in ("prm_search", "compare") or (strategy == "best_of_n" and verifier == "prm")
  prm = None
  report = {"model_dir": model_dir, "strategy": strategy, "n_problems": len(problems),
            "eval_set": config.eval.source if _EVAL_SET.value == "source" else _EVAL_SET.value,
            "seed": seed, "temperature": temperature, "max_new_tokens": max_new}
  if strategy == "best_of_n":
    report["verifier"] = verifier
  if needs_prm or (_PLOT.value and (_PRM_DIR.value or _TRAIN_PRM.value)):
    prm = _load_or_train_prm(policy, ctx, model_dir, seed)
    try:
      report["prm_metrics"] = prm_metrics(prm, problems)
      print("[prm] held-out " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in report["prm_metrics"].items()), flush=True)
    except ValueError as e:  # held-out problems without step-labelled solutions
      print(f"[prm] no held-out step metrics: {e}", flush=True)

  if strategy == "greedy":
    samples = policy.sample(problems, SamplingConfig(max_new_tokens=max_new, greedy=True), rng)
    result = {"accuracy": float(correctness(problems, samples).mean()),
              "completions": [r[0] for r in samples.texts]}
  elif strategy == "best_of_n":
    result = best_of_n(policy, problems, _N.value, sampling, rng, verifier=verifier,
                       prm=prm, aggregate=_AGGREGATE.value)
    if verifier == "oracle":
      result = label_oracle(result, _N.value)
  elif strategy == "majority":
    result = majority_vote(policy, problems, _N.value, sampling, rng)
  elif strategy == "budget":
    result = budget_forcing(policy, problems, _BUDGET.value, sampling.replace(greedy=True), rng,
                            mode=_BUDGET_MODE.value, wait_text=_WAIT_TEXT.value,
                            answer_tokens=_ANSWER_TOKENS.value)
  elif strategy == "prm_search":
    result = prm_search(policy, prm, problems, rng, beam_width=_BEAM_WIDTH.value,
                        expansions=_EXPANSIONS.value, max_steps=_MAX_STEPS.value,
                        step_tokens=_STEP_TOKENS.value, max_new_tokens=max_new,
                        temperature=temperature)
  else:
    result = compare_strategies(policy, prm, problems, sampling, rng, beam_width=_BEAM_WIDTH.value,
                                expansions=_EXPANSIONS.value, max_steps=_MAX_STEPS.value,
                                step_tokens=_STEP_TOKENS.value, aggregate=_AGGREGATE.value,
                                max_n=_MAX_N.value)
  report["result"] = _summary(result)
  if strategy == "compare":
    print(format_comparison(result), flush=True)
  elif "accuracy" in result:
    print(f"[{strategy}] accuracy {100 * result['accuracy']:.1f}% on {len(problems)} problems",
          flush=True)
  else:  # the oracle verifier
    print(f"[{strategy}] oracle pass@{_N.value} {100 * result[f'oracle_pass@{_N.value}']:.1f}% "
          f"on {len(problems)} problems (an upper bound: the pick uses the reference answers)",
          flush=True)

  if _PLOT.value:
    ns = _ints(_NS.value, "ns") or powers_of_two(_N.value)
    budgets = _ints(_BUDGETS.value, "budgets") or [b for b in powers_of_two(max_new)[2:]
                                                   if b < max_new]
    n_curves = accuracy_vs_n(policy, problems, ns, sampling, jax.random.fold_in(rng, 1), prm)
    modes = [m.strip() for m in _BUDGET_MODES.value]
    if not modes or any(m not in ("cap", "force") for m in modes):
      raise ValueError(f"--budget_modes must be a list of cap / force, got {modes}")
    budget_curves = accuracy_vs_budget(policy, problems, budgets, sampling.replace(greedy=True),
                                       jax.random.fold_in(rng, 2), modes=modes,
                                       answer_tokens=_ANSWER_TOKENS.value,
                                       wait_text=_WAIT_TEXT.value)
    plot_scaling(n_curves, budget_curves, _PLOT.value,
                 title=f"{os.path.basename(os.path.dirname(model_dir.rstrip('/')))}: "
                       f"{len(problems)} held-out problems")
    n_curves["oracle_pass@n"] = n_curves.pop("oracle_best_of_n")  # pass@N, not an accuracy
    report.update(n_sweep=n_curves, budget_sweep=budget_curves, plot=_PLOT.value)
    print(f"[plot] {_PLOT.value}", flush=True)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the output
  try:
    if not os.path.isdir(_MODEL_DIR.value):  # before the slow imports
      raise FileNotFoundError(f"model directory {_MODEL_DIR.value} does not exist")
    report = run(_CONFIG.value, _MODEL_DIR.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  output = _OUTPUT.value or (os.path.splitext(_PLOT.value)[0] + ".json" if _PLOT.value else "")
  if output:
    from reasoner.io import write_json
    write_json(os.path.abspath(output), report)
    print(f"[results] {output}", flush=True)
  else:
    print(json.dumps(report["result"], indent=2))


if __name__ == "__main__":
  app.run(main)
