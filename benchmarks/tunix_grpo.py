"""Peer benchmark: one GRPO training step of Google's Tunix (google-tunix) on CPU, on the shape of
our own GRPO benchmark (benchmarks/train_step.py, run_grpo_split).

  /tmp/tvenv/bin/python -m benchmarks.tunix_grpo [--steps=5] [--warmup=1] [--layers=4]
      [--new_tokens=128] [--json]

Shape: Tunix's own Qwen2 (tunix.models.qwen2.model), random init, float32: vocab 4096, d 256,
--layers layers, 4 query / 2 KV heads of 64, MLP 768, RoPE theta 1e6, QKV bias, tied embeddings
(4.20M params at 4 layers). A frozen reference copy of the same initial weights; GRPO with
beta 0.04, epsilon 0.2, G = 4, num_iterations 1. Each step: 4 prompts (our task mixture, in our
prompt template, our SentencePiece tokenizer) x 4 samples, up to --new_tokens new tokens at
temperature 1 (plain categorical sampling, no top-p / top-k), Tunix's `vanilla` rollout (its
in-JAX sampler with a KV cache, stopping when every row has hit EOS or the token limit), a
cheap reward (our composite reward on the decoded completion), then ONE AdamW update
(clip 1.0, lr 1e-6) on the whole 16-row batch (mini-batch = micro-batch = the 4 prompts).
Actor, rollout and reference all live on one CPU device (a 1x1 ('fsdp', 'tp') mesh); actor and
rollout share one model, so Tunix does no weight sync.

What is timed (monkeypatched RLCluster / learner methods, each result block_until_ready'd):
  step_s          GRPOLearner._run_global_step: one whole global step
  rollout_s       RLCluster.generate (tokenize, prefill + decode loop, detokenize)  ~ our rollout
  ref_logprobs_s  RLCluster.get_ref_per_token_logps (reference forward pass)      ~ our ref pass
  old_logprobs_s  RLCluster.get_old_per_token_logps: never called (num_iterations 1; Tunix then
                  uses stop_gradient of the current log-probs as "old"), so 0, as in ours
  reward_s        RLLearner._compute_rewards (the reward functions; our collect's reward time)
  update_s        RLCluster.update_actor (loss + grads + AdamW, one train step)    ~ our update
  other_s         step_s minus the parts: advantages, padding, host<->device copies, the data
                  thread hand-off and Tunix's bookkeeping (reward_s is reported inside it too).
Tunix prepares a step's batch on a worker thread, but with actor and rollout on the same mesh it
does not prefetch (async loading is off): step k's rollout starts inside step k, after step k-1's
update, so the parts above are sequential and add up to the step. The sampler's seed is set per
step (Tunix's default is the same key every call). Median over --steps after --warmup steps
(the warm-up compiles).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

P, G = 4, 4  # prompts per step, samples per prompt


class _Tok:
  """Our SentencePiece tokenizer in the method interface Tunix's TokenizerAdapter accepts.
  No BOS (our prompts have none); decode drops the ids above the 512 pieces that the 4096-row
  model can sample (SentencePiece itself would reject them)."""

  def __init__(self, tok):
    self.t = tok

  def encode(self, text, **kw):
    return self.t.encode(str(text))

  def decode(self, ids, **kw):
    return self.t.decode([int(i) for i in ids])

  def bos_id(self):
    return None

  def eos_id(self):
    return self.t.eos_id

  def pad_id(self):
    return self.t.pad_id


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--json", action="store_true")
  ap.add_argument("--verbose", action="store_true", help="print every step's timings")
  args = ap.parse_args(argv)

  import optax
  from flax import nnx
  import importlib.metadata as md
  from tunix.models.qwen2 import model as qwen2
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout
  from configs.pipeline import tiny
  from benchmarks.common import task_tokenizer, load_note
  from reasoner.data.tasks import mixture
  from reasoner.rewards.composite import compute_rewards
  from reasoner.tokenizer import format_prompt

  n_steps = args.warmup + args.steps
  cfg = tiny()
  tok = task_tokenizer(cfg)
  problems = mixture(cfg.data.tasks.split(","), "train", P * n_steps, cfg.seed,
                     cfg.data.difficulty)
  prompts = [format_prompt(p.prompt, cfg.tokenizer.template) for p in problems]
  longest = max(len(tok.encode(p)) for p in prompts)
  max_prompt = -(-longest // 16) * 16  # Tunix left-pads every prompt to this width
  data = [{"prompts": np.array(prompts[i * P:(i + 1) * P]), "pidx": np.arange(i * P, (i + 1) * P)}
          for i in range(n_steps)]

  def reward_fn(prompts, completions, pidx, **kw):  # our composite reward (answer + format)
    probs = [problems[int(i)] for i in pidx]
    n_tok = [len(tok.encode(c)) for c in completions]
    return [float(r) for r in compute_rewards(probs, completions, n_tok, cfg.grpo.reward)[0]]

  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)  # as tunix.utils.mesh
  mcfg = qwen2.ModelConfig(num_layers=args.layers, vocab_size=4096, embed_dim=256, hidden_dim=768,
                           num_heads=4, head_dim=64, num_kv_heads=2, rope_theta=1_000_000,
                           norm_eps=1e-6, use_tied_embedding=True)
  with jax.set_mesh(mesh):
    actor = qwen2.Qwen2(mcfg, rngs=nnx.Rngs(0))
    reference = qwen2.Qwen2(mcfg, rngs=nnx.Rngs(0))  # same seed: the same initial weights
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(actor, nnx.Param)))

  rollout_cfg = base_rollout.RolloutConfig(
      max_tokens_to_generate=args.new_tokens, temperature=1.0, top_p=1.0, top_k=None,
      max_prompt_length=max_prompt, kv_cache_size=max_prompt + args.new_tokens)
  train_cfg = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6)),
      eval_every_n_steps=10 ** 9, max_steps=n_steps, mini_batch_size=P, train_micro_batch_size=P,
      checkpoint_root_directory=None, pbar_description=None)
  roles = rl_cluster_lib.Role
  cluster = rl_cluster_lib.RLCluster(
      actor=actor, reference=reference, tokenizer=_Tok(tok),
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False, training_config=train_cfg,
          rollout_config=rollout_cfg))
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, reward_fns=reward_fn,
      algo_config=grpo_learner.GRPOConfig(num_generations=G, num_iterations=1, beta=0.04,
                                          epsilon=0.2))

  # ---- timers: wrap the instance's methods; each records (name, seconds) into `log` ----
  log, info = [], {"rows": [], "updates": [], "new_tokens": []}

  def timed(obj, name, key, after=None, before=None):
    inner = getattr(obj, name)

    def run(*a, **kw):
      if before is not None:
        before()
      t0 = time.perf_counter()
      out = jax.block_until_ready(inner(*a, **kw))
      if after is not None:
        after(a, kw, out)
      log.append((key, time.perf_counter() - t0))
      return out
    setattr(obj, name, run)

  def gen_before():  # a fresh sampling key per step
    rollout_cfg.seed = jax.random.PRNGKey(1000 + cluster.global_steps)

  def gen_after(a, kw, out):
    info["rows"].append(len(out.tokens))
    info["new_tokens"].append(float(np.mean([len(t) for t in out.tokens])))

  def update_after(a, kw, out):
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))  # the dispatched update
    info["updates"].append(cluster.actor_trainer.train_steps)
    info.setdefault("update_rows", []).append(sum(x.prompt_ids.shape[0] for x in a[0]))

  timed(cluster, "generate", "rollout", gen_after, gen_before)
  timed(cluster, "get_ref_per_token_logps", "ref")
  timed(cluster, "get_old_per_token_logps", "old")
  timed(learner, "_compute_rewards", "reward")
  timed(cluster, "update_actor", "update", update_after)
  timed(learner, "_run_global_step", "step")

  learner.train(data)

  # ---- split the log into steps (each ends with its "step" entry) ----
  rows, cur = [], {}
  for key, s in log:
    cur[key] = cur.get(key, 0.0) + s
    cur[key + "_n"] = cur.get(key + "_n", 0) + 1
    if key == "step":
      rows.append(cur)
      cur = {}
  assert len(rows) == n_steps, f"expected {n_steps} steps, got {len(rows)}"
  for r in rows:
    assert r["rollout_n"] == r["ref_n"] == r["update_n"] == r["reward_n"] == 1, r
    assert "old_n" not in r, r
  assert info["rows"] == [P * G] * n_steps, info["rows"]
  assert info["update_rows"] == [P * G] * n_steps, info["update_rows"]
  assert info["updates"] == list(range(1, n_steps + 1)), info["updates"]

  if args.verbose:
    for i, r in enumerate(rows):
      print(f"  step {i}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if "_n" not in k))
  kept = rows[args.warmup:]
  med = lambda k: float(np.median([r.get(k, 0.0) for r in kept]))
  res = dict(params=int(n_params), steps=args.steps, warmup=args.warmup, step_s=med("step"),
             rollout_s=med("rollout"), ref_logprobs_s=med("ref"), old_logprobs_s=med("old"),
             update_s=med("update"), reward_s=med("reward"),
             other_s=float(np.median([r["step"] - r["rollout"] - r["ref"] - r.get("old", 0.0)
                                      - r["update"] for r in kept])),
             mean_new_tokens=float(np.mean(info["new_tokens"][args.warmup:])),
             rows_per_step=P * G, updates_per_step=1, prompt_width=max_prompt,
             tunix_version=md.version("google-tunix"), jax_version=jax.__version__)

  print(f"Tunix GRPO step (vanilla rollout, CPU, {load_note()}): {n_params / 1e6:.2f}M params, "
        f"{P} prompts x {G} samples = {P * G} rows, <= {args.new_tokens} new tokens, prompt "
        f"width {max_prompt}, 1 update/step; median of {args.steps} after {args.warmup} warm-up")
  for k, label in [("step_s", "step"), ("rollout_s", "rollout (generate)"),
                   ("ref_logprobs_s", "ref log-probs"), ("old_logprobs_s", "old log-probs"),
                   ("update_s", "update (actor train)"),
                   ("other_s", "other (rewards, advantages, ...)"),
                   ("reward_s", "  of which reward fn")]:
    print(f"  {label:34s} {res[k]:8.3f} s")
  print(f"  {'mean new tokens':34s} {res['mean_new_tokens']:8.1f}")
  print(f"  tunix {res['tunix_version']}, jax {res['jax_version']}")
  if args.json:
    print("TUNIX_GRPO " + json.dumps(res))


if __name__ == "__main__":
  main()
