"""Stage 3's on-policy mode (`distill.method="on_policy"`): the student's samples scored by the
teacher, updates that move the student toward the teacher, resuming, the config checks and
fingerprints, and the pipeline running the stage."""

import re

import jax
import numpy as np
import pytest

from configs.pipeline import tiny
from reasoner import sharding
from reasoner.io.metrics_log import MetricsWriter
from reasoner.losses.distill import full_reverse_kl
from reasoner.losses.logprobs import model_logits, sequence_logprobs
from reasoner.model import ModelConfig
from reasoner.pipeline.config_check import validate_config
from reasoner.pipeline.fingerprint import fingerprint
from reasoner.stages.context import StageContext
from reasoner.stages.distill import make_on_policy_collect, on_policy_loss_fn, run_distill
from reasoner.stages.models import save_stage_model
from reasoner.train import init_train_state, make_optimizer, make_train_step

MODEL = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64, max_seq_len=128)


def on_policy_config(loss="sampled"):
  cfg = tiny()
  cfg.distill.method = "on_policy"
  cfg.distill.update(dict(steps=2, max_new_tokens=16))
  cfg.distill.on_policy.update(dict(prompts_per_step=4, samples_per_prompt=2, loss=loss))
  cfg.distill.optim.update(dict(learning_rate=1e-2, schedule="constant", warmup_steps=0))
  cfg.log_every = 1
  return cfg


def stage_ctx(tmp_path, tokenizer, loss="sampled"):
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:2])
  ctx = StageContext(on_policy_config(loss), str(tmp_path), mesh, MODEL, tokenizer,
                     MetricsWriter(str(tmp_path), tensorboard=False))
  init = lambda seed: sharding.sharded_init(MODEL, jax.random.PRNGKey(seed), mesh)
  return ctx, init(0), init(1)  # context, teacher, student


def exact_reverse_kl(student, teacher, rows) -> float:
  """Token mean over the sampled positions of KL(student || teacher), in float64 numpy."""
  s, t = (np.asarray(model_logits(p, MODEL, rows), np.float64) for p in (student, teacher))
  log_softmax = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
  ls, lt = log_softmax(s), log_softmax(t)
  kl = (np.exp(ls) * (ls - lt)).sum(-1)[:, :-1]  # position j predicts token j + 1
  mask = rows["loss_mask"][:, 1:]
  return float((kl * mask).sum() / mask.sum())


def test_collect_lays_out_the_students_samples_with_the_teachers_log_probs(tmp_path, arith_tokenizer):
  ctx, teacher, student = stage_ctx(tmp_path, arith_tokenizer)
  rows, metrics = make_on_policy_collect(ctx, teacher)(student, 0, jax.random.PRNGKey(3))
  assert rows["tokens"].shape[0] == 4 * 2 and rows["tokens"].shape[1] % 32 == 0
  assert rows["loss_mask"].sum() > 0
  want = np.asarray(sequence_logprobs(teacher, MODEL, rows)[0]) * rows["loss_mask"]
  np.testing.assert_allclose(rows["teacher_logprobs"] * rows["loss_mask"], want, rtol=1e-5, atol=1e-5)
  assert 0.0 <= metrics["accuracy"] <= 1.0 and 0 < metrics["response_length"] <= 16
  # The teacher's full distributions for the "full" loss, and their exact KL against numpy's.
  ctx, teacher, student = stage_ctx(tmp_path / "full", arith_tokenizer, loss="full")
  full, _ = make_on_policy_collect(ctx, teacher)(student, 0, jax.random.PRNGKey(3))
  assert full["teacher_logits"].shape == (*full["tokens"].shape, MODEL.vocab_size)
  kl = np.asarray(full_reverse_kl(model_logits(student, MODEL, full), full["teacher_logits"],
                                  full["segment_ids"]))
  mask = full["loss_mask"]
  np.testing.assert_allclose((kl * mask).sum() / mask.sum(),
                             exact_reverse_kl(student, teacher, full), rtol=1e-4)


def test_sampled_loss_is_the_full_reverse_kl_in_expectation(tmp_path, arith_tokenizer):
  """Through the model: the sampled loss over every one-token completion of a prompt, each
  weighted by the student's probability of it, has the value and the gradient of the exact
  reverse KL at that position (the "full" loss): the sampled loss is an unbiased estimate."""
  from reasoner.losses.distill import full_reverse_kl_loss, on_policy_distill_loss
  from reasoner.stages.rollouts import rollout_rows
  ctx, teacher, student = stage_ctx(tmp_path, arith_tokenizer)
  prompt = ctx.encode_prompt("Compute 2+3.")
  V, col = MODEL.vocab_size, len(prompt)
  rows = rollout_rows([prompt] * V, [[y] for y in range(V)], 32, arith_tokenizer.pad_id)
  logp = lambda p: np.asarray(sequence_logprobs(p, MODEL, rows)[0])
  s, t = logp(student), logp(teacher)
  probs = np.exp(s[:, col])
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
  weighted = dict(rows, loss_mask=rows["loss_mask"] * probs[:, None], teacher_logprobs=t)
  one = {k: v[:1] for k, v in rows.items()}
  one["teacher_logits"] = np.asarray(model_logits(teacher, MODEL, one))
  sampled = lambda p: on_policy_distill_loss(p, weighted, None, model_cfg=MODEL)[0]
  full = lambda p: full_reverse_kl_loss(p, one, None, model_cfg=MODEL)[0]
  (a, ga), (b, gb) = jax.value_and_grad(sampled)(student), jax.value_and_grad(full)(student)
  kl = np.sum(probs * (s[:, col] - t[:, col]))  # numpy, from the two models' log-probs
  np.testing.assert_allclose([a, b], [kl, kl], rtol=1e-4)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("loss", ["sampled", "full"])
def test_updates_on_a_fixed_batch_move_the_student_toward_the_teacher(tmp_path, arith_tokenizer, loss):
  """"full": the exact reverse KL on the batch's positions falls. "sampled" (one sample per
  position, far too few for the exact KL to follow on a random pair of models): the student's
  log-probs of its sampled tokens move toward the teacher's."""
  ctx, teacher, student = stage_ctx(tmp_path, arith_tokenizer, loss)
  rows, _ = make_on_policy_collect(ctx, teacher)(student, 0, jax.random.PRNGKey(3))
  # Small steps: Adam's first updates move every weight by about the learning rate, and at 1e-2
  # three of them overshoot on some batches.
  ctx.config.distill.optim.learning_rate = 1e-3
  opt = make_optimizer(ctx.config.distill.optim)
  step = make_train_step(on_policy_loss_fn(loss, MODEL), opt, mesh=ctx.mesh,
                         param_shardings=ctx.param_shardings)
  state = init_train_state(student, opt, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  if loss == "full":
    distance = lambda p: exact_reverse_kl(p, teacher, rows)
  else:
    teacher_logp = np.asarray(sequence_logprobs(teacher, MODEL, rows)[0])
    distance = lambda p: float(np.sum((np.asarray(sequence_logprobs(p, MODEL, rows)[0]) - teacher_logp) ** 2
                                      * rows["loss_mask"]) / rows["loss_mask"].sum())
  before = distance(student)
  for i in range(3):
    state, metrics = step(state, rows, jax.random.PRNGKey(i))
    if i == 0 and loss == "full":  # the metric: the exact KL of the params the step started from
      np.testing.assert_allclose(float(metrics["reverse_kl"]), before, rtol=1e-4)
  after = distance(jax.device_get(state.params))
  assert after < 0.9 * before, (before, after)


def test_stage_runs_checkpoints_and_resumes_to_the_same_student(tmp_path, arith_tokenizer, capsys):
  ctx, teacher, student = stage_ctx(tmp_path / "a", arith_tokenizer)
  save_stage_model(ctx, "sft", student, MODEL)  # distill.init_from = "sft"
  ctx.config.checkpoint_every = 1
  ctx.config.distill.steps = 1
  run_distill(ctx, teacher, jax.random.PRNGKey(7))  # killed after step 1, say
  ctx.config.distill.steps = 2
  resumed = jax.device_get(run_distill(ctx, teacher, jax.random.PRNGKey(7)))
  assert "[distill] resumed from checkpoint step 1/2" in capsys.readouterr().out
  other, _, _ = stage_ctx(tmp_path / "b", arith_tokenizer)
  save_stage_model(other, "sft", student, MODEL)
  straight = jax.device_get(run_distill(other, teacher, jax.random.PRNGKey(7)))
  for x, y, s in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight),
                     jax.tree.leaves(jax.device_get(student))):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  assert any(np.any(x != s) for x, s in zip(jax.tree.leaves(resumed),
                                            jax.tree.leaves(jax.device_get(student))))
  rows = [r for r in ctx.writer.read("distill")]
  assert [r["step"] for r in rows] == [1, 2]
  assert {"loss", "reverse_kl", "accuracy", "response_length", "grad_norm"} <= set(rows[-1])


@pytest.mark.parametrize("path,value,message", [
    ("method", "online", "config.distill.method='online' is not one of ('rejection', 'on_policy')"),
    ("on_policy.loss", "forward",
     "config.distill.on_policy.loss='forward' is not one of ('sampled', 'full')"),
    ("on_policy.samples_per_prompt", 0,
     "config.distill.on_policy.samples_per_prompt must be positive"),
    # a fresh student has no policy worth sampling
    ("student", "tiny", "config.distill.student='tiny' needs config.distill.method='rejection'"),
])
def test_config_checks_name_the_field_and_the_choices(path, value, message):
  validate_config(on_policy_config())
  cfg = on_policy_config()
  *parents, leaf = path.split(".")
  block = cfg.distill
  for name in parents:
    block = block[name]
  setattr(block, leaf, value)
  with pytest.raises(ValueError, match=re.escape(message)):
    validate_config(cfg)


def test_a_smaller_student_is_accepted_with_rejection_sampling():
  cfg = on_policy_config()
  cfg.distill.student = "tiny"
  cfg.distill.method = "rejection"
  validate_config(cfg)


def test_fingerprints_hold_the_fields_the_method_reads():
  rejection, on_policy = tiny(), on_policy_config()
  fp = fingerprint(rejection, "distill")
  # Rejection sampling: the fields it had before on-policy distillation existed, no more.
  assert not any(k.startswith(("distill.method", "distill.on_policy")) for k in fp)
  assert "distill.n_problems" in fp and "distill.optim.learning_rate" in fp
  rejection.distill.on_policy.prompts_per_step = 64  # unread by rejection sampling
  assert fingerprint(rejection, "distill") == fp
  fp = fingerprint(on_policy, "distill")
  assert fp["distill.method"] == "on_policy" and fp["distill.on_policy.loss"] == "sampled"
  assert "distill.n_problems" not in fp and "distill.max_new_tokens" in fp
  on_policy.distill.on_policy.temperature = 0.7
  assert fingerprint(on_policy, "distill") != fp
  assert fingerprint(on_policy, "dpo")["distill.on_policy.temperature"] == 0.7  # a descendant


def test_pipeline_runs_the_on_policy_stage(tmp_path):
  """`--config.distill.method=on_policy` through the pipeline at the e2e tests' smoke size, with
  random models standing in for M0, M1 and M2 (the stage's wiring, not what it learns)."""
  import json

  from reasoner.pipeline.run import Pipeline
  from tests.test_pipeline_e2e import small_config

  cfg = small_config("distill")
  cfg.distill.method = "on_policy"
  cfg.distill.update(dict(steps=2, max_new_tokens=24))
  cfg.distill.on_policy.update(dict(prompts_per_step=4, samples_per_prompt=2))
  pipe = Pipeline(cfg, str(tmp_path))
  for i, name in enumerate(("m0", "sft", "grpo")):
    params = sharding.sharded_init(pipe.ctx.model_cfg, jax.random.PRNGKey(i), pipe.mesh)
    save_stage_model(pipe.ctx, name, params, pipe.ctx.model_cfg)
    (tmp_path / "stages" / name / "eval.json").write_text('{"pass@1": 0.0}')  # not re-evaluated
  report = pipe.run()
  assert list(report) == ["m0", "sft", "grpo", "distill"] and "greedy_acc" in report["distill"]
  assert (tmp_path / "stages" / "distill" / "final" / "model_config.json").exists()
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  steps = [r for r in rows if r["stage"] == "distill"]
  assert [r["step"] for r in steps] == [2]  # log_every 2
  assert {"loss", "reverse_kl", "accuracy", "response_length"} <= set(steps[0])
  saved = json.load(open(tmp_path / "stages" / "distill" / "fingerprint.json"))
  assert saved["distill.method"] == "on_policy" and "distill.n_problems" not in saved


def test_rejection_sampling_calls_hold_at_most_rollout_rows():
  """distill.rollout_rows (and dpo.rollout_rows) bound every sampler call of `sample_and_verify`:
  a chunk of 64 problems x n samples runs in calls of at most that many rows, as the planner
  plans them (`verify_call_prompts`)."""
  import types
  from reasoner.data.problem import Problem
  from reasoner.stages.rollouts import sample_and_verify, verify_call_prompts
  calls = []

  class Ctx:
    def encode_prompt(self, text):
      return [1, 2, 3]

    def sample(self, params, prompts, sampling, rng, batch_rows=0):
      calls.append((len(prompts), batch_rows))
      rows = len(prompts) * sampling.n
      return types.SimpleNamespace(completion_ids=[[4]] * rows, texts=["x"] * rows,
                                   done=[True] * rows)

  from reasoner.sampling import SamplingConfig
  problems = [Problem(prompt=f"p{i}", answer="1", solution="", task="arithmetic")
              for i in range(100)]
  sampling = SamplingConfig(max_new_tokens=8, n=4)
  out = sample_and_verify(Ctx(), None, problems, sampling, jax.random.PRNGKey(0), batch_rows=32)
  assert len(out) == 100 and calls == [(64, 32), (36, 32)]
  assert verify_call_prompts(100, 4, 32) == 8 and verify_call_prompts(100, 4, 0) == 64
  assert verify_call_prompts(10, 4, 0) == 10 and verify_call_prompts(100, 64, 32) == 1
