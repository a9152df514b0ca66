"""The four-stage pipeline: M0 -> SFT -> GRPO -> rejection-sampling distillation -> DPO.

Usage:
  python -m launch.main --config=configs/pipeline.py:tiny --workdir=runs/tiny
  python -m launch.main --config=configs/pipeline.py:tiny --workdir=runs/tiny --config.stages=grpo
  python -m launch.main --config=configs/pipeline.py:tiny --workdir=runs/r1zero --config.r1_zero=True

Presets: tiny (CPU, minutes), tiny_smoke (tiny at test size, about a minute), qwen2_5_0_5b_gsm8k,
qwen2_5_7b_gsm8k, llama3_1_8b_gsm8k.
Every field can be overridden with --config.a.b=value, e.g. --config.model.lora_rank=8 to train
LoRA adapters instead of every weight (reasoner/stages/trainable.py).
"""

from ml_collections import ConfigDict

from configs.common import dataclass_block as _fields
from configs.common import optim_block as _optim
from reasoner.losses.dpo import DPOConfig
from reasoner.losses.grpo import GRPOConfig
from reasoner.model.config import PRESETS as MODEL_PRESETS
from reasoner.rewards.composite import RewardConfig

PIPELINE_PRESETS = ("tiny", "tiny_smoke", "qwen2_5_0_5b_gsm8k", "qwen2_5_7b_gsm8k",
                    "llama3_1_8b_gsm8k")


def _lora(model: ConfigDict, rank: int = 0, alpha: float = 16.0,
          targets: str = "wq,wk,wv,wo,w_gate,w_up,w_down", base_dtype: str = "float32"):
  """LoRA fields of config.model. rank > 0: every stage but pre-training trains rank-`rank`
  adapters (scale alpha / rank) on `targets` over a frozen base stored in `base_dtype`
  (model.param_dtype), and merges them into the weights when it ends."""
  model.lora_rank = rank
  model.lora_alpha = float(alpha)
  model.lora_targets = targets
  model.param_dtype = base_dtype


def _r1_zero_overrides(learning_rate=None, max_prompt_tokens=None) -> ConfigDict:
  """What R1-Zero mode (config.r1_zero=True) changes, as a nested block of the fields it replaces
  (applied by reasoner.pipeline.config_check.r1_zero_config, which logs each change; set
  --config.r1_zero_overrides.grpo.loss.entropy_coef=... to change one). The normal settings are
  tuned for GRPO from M1; from M0:
  - grpo.replay_weight and dpo.replay_weight 0: the replay terms are the SFT loss on reference
    solutions, SFT by another name (the validation refuses a positive one in R1-Zero mode).
  - grpo.loss.entropy_coef 0: entropy minimisation sharpens M1 toward its mode; from M0 it would
    shrink the exploration the format has to be found by.
  - grpo.reward.w_proc 0.5 (was 0.2): the format term is the first signal from M0 (the answer
    check needs the answer tags too), so it is worth half a correct answer.
  - grpo.optim.learning_rate (tiny preset: 5e-5): without the replay term, rates above 5e-5 lost
    accuracy (BUILD_NOTES "GRPO with SFT replay and an entropy term").
  - grpo.max_prompt_tokens (tiny preset: 128): the instruction adds 64 tokens of the tiny
    tokenizer to every prompt (the memory plan's row width; results do not depend on it).
  - distill.init_from "pretrain": the student starts from M0; there is no M1 (the validation
    refuses "sft").
  grpo.max_new_tokens stays: the tasks' full solutions take about half of the tiny preset's 64
  tokens, which leaves the responses room to grow, and the evaluation and distillation sample the
  same length."""
  grpo = dict(replay_weight=0.0, loss=dict(entropy_coef=0.0), reward=dict(w_proc=0.5))
  if learning_rate is not None:
    grpo["optim"] = dict(learning_rate=learning_rate)
  if max_prompt_tokens is not None:
    grpo["max_prompt_tokens"] = max_prompt_tokens
  return ConfigDict(dict(grpo=grpo, distill=dict(init_from="pretrain"),
                         dpo=dict(replay_weight=0.0)))


def tiny() -> ConfigDict:
  """The README's run: a 4M-parameter model pre-trained here, every stage in minutes on CPU."""
  c = ConfigDict()
  c.preset = "tiny"
  c.seed = 0  # seeds every stage (data order, sampling, initialisation)
  # Comma-separated subset of: pretrain, sft, grpo, distill, dpo ("all" = every stage).
  c.stages = "all"
  # R1-Zero: GRPO straight from M0 (skips SFT). Every prompt then carries an instruction to think
  # inside <think></think> and answer inside <answer></answer> (R1_ZERO_INSTRUCTION in
  # reasoner/tokenizer/template.py, the template's system text; config.tokenizer.template and the
  # tokenizer stay as they are, so a normal run's tokenizer and M0 can be copied in and reused),
  # and the fields in r1_zero_overrides replace the ones below (see _r1_zero_overrides).
  c.r1_zero = False
  c.r1_zero_overrides = _r1_zero_overrides(learning_rate=5e-5, max_prompt_tokens=128)
  # Controls (the study sets this): also make M1 + GRPO's SFT replay updates alone (the
  # `replay_control` stage) and evaluate M1 at the temperature of eval.control_temperatures with
  # the best validation pass@1, so that M2's gain can be read against both.
  c.controls = False

  # The decoder (reasoner.model.config.ModelConfig: every field is documented there).
  c.model = ConfigDict(MODEL_PRESETS["tiny"])
  c.model.preset = "tiny"
  _lora(c.model)  # full fine-tuning; --config.model.lora_rank=8 trains adapters instead
  # Where M0 comes from: "pretrain" (the pipeline pre-trains it on the task corpus) or a
  # model directory / Hugging Face folder path.
  c.init = "pretrain"
  # Device mesh axis sizes (reasoner.sharding): -1 takes the devices the others leave.
  c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))

  # kind: sentencepiece (trained on the task corpus into WORKDIR/tokenizer, vocab_size pieces) |
  # from_init (the tokenizer of the `init` folder) | dir (a saved tokenizer at `path`).
  # template: the chat template prompts are written in (reasoner.tokenizer.template).
  c.tokenizer = ConfigDict(dict(kind="sentencepiece", path="", vocab_size=512, template="plain"))

  c.data = ConfigDict()
  c.data.source = "procedural"  # procedural | gsm8k | jsonl
  # Countdown and modular_arithmetic are available too; the tiny model learns these two in minutes.
  c.data.tasks = "arithmetic,linear_equation"
  c.data.difficulty = 1  # procedural tasks' difficulty level (larger numbers, more steps)
  c.data.path = ""  # JSONL file or TFDS data_dir
  c.data.preferences_path = ""  # optional JSONL of {prompt, chosen, rejected} for DPO

  # Supervised stages: `steps` optimiser updates of `batch_size` packed rows of `seq_len` tokens.
  # Every training stage's `tokens_per_device`: the most tokens one device runs forward and
  # backward at a time; a batch with more is split into micro-batches whose gradients are
  # accumulated in the same step (0 = the whole batch at once). The batch size is the
  # optimisation setting, this the memory one (size it with `python -m launch.plan`).
  # Pre-training: on `n_documents` plain-prose documents of the tasks (no reasoning tags); with
  # tagged_fraction > 0 that share of them are template-formatted solutions in the tags instead
  # (reasoner/stages/pretrain.py: what R1-Zero mode needs of M0 for the format reward to fire).
  # 600 steps keep the README run under 15 minutes on 2 CPU cores (BUILD_NOTES "Results").
  c.pretrain = ConfigDict(dict(steps=600, batch_size=32, seq_len=128, n_documents=20000,
                               tagged_fraction=0.0, tokens_per_device=0,
                               optim=_optim(3e-3, 600, warmup=50, wd=0.01)))
  # SFT: on the reference solutions of `n_examples` training problems, loss on the response.
  c.sft = ConfigDict(dict(steps=150, batch_size=32, seq_len=128, n_examples=1500,
                          tokens_per_device=0, optim=_optim(1e-3, 150, warmup=10)))

  c.grpo = ConfigDict()
  c.grpo.steps = 60  # GRPO steps: one batch of rollouts each
  # Problems per step: with dynamic sampling, the groups with mixed rewards each step trains on
  # (24: about as many as the 32 sampled per step kept on average before dynamic sampling
  # resampled, so the update costs what it did).
  c.grpo.prompts_per_step = 24
  c.grpo.group_size = 8  # completions per problem (G), advantages normalised within the group
  c.grpo.max_new_tokens = 64  # the longest completion sampled
  # Prompt tokens a GRPO row is planned for (`launch.plan`: row width = this + max_new_tokens,
  # rounded up to 32). Longer prompts still run; the memory plan just no longer covers them.
  c.grpo.max_prompt_tokens = 64
  c.grpo.tokens_per_device = 0  # also bounds the old / reference log-prob passes
  c.grpo.rollout_rows = 0  # rows per sampler call (bounds the KV cache); 0 = the whole step
  c.grpo.temperature = 1.0  # sampling temperature of the rollouts
  c.grpo.top_p = 1.0  # nucleus sampling of the rollouts; 1 = off
  c.grpo.epochs = 1  # optimisation epochs over each batch of rollouts
  c.grpo.minibatches = 4  # updates per batch of rollouts (per epoch)
  # DAPO dynamic sampling: groups whose rewards are all equal carry no gradient, so each step
  # samples rounds of fresh prompts until it holds prompts_per_step groups with mixed rewards
  # (at most max_sampling_rounds rounds; short of that, it trains on those it has) and trains on
  # those only. False: one round, every group trained on.
  c.grpo.dynamic_sampling = True
  c.grpo.max_sampling_rounds = 3
  # The policy loss (reasoner.losses.grpo.GRPOConfig, whose defaults are the GRPO paper's). The
  # tiny model's settings: DAPO's clip-higher and token-mean aggregation, no KL term, and
  # entropy minimisation (BUILD_NOTES "GRPO with SFT replay and an entropy term").
  c.grpo.loss = _fields(GRPOConfig, epsilon_high=0.28, beta=0.0, loss_agg="token_mean",
                        constant_norm=64.0, entropy_coef=-0.5)
  # The reward (reasoner.rewards.composite.RewardConfig): accuracy + 0.2 x format, no token cost.
  # Code problems (meta "tests") run under bubblewrap, code_workers at a time (0 = all CPUs);
  # without bwrap the code reward refuses to run unless allow_weak_sandbox=True.
  c.grpo.reward = _fields(RewardConfig, w_proc=0.2, l_cost=0.0)
  # The tiny model's GRPO (BUILD_NOTES "GRPO with SFT replay and an entropy term"): lr 2e-4 with
  # the replay term below and entropy minimisation; without the replay, rates above 5e-5 lose
  # accuracy.
  c.grpo.optim = _optim(2e-4, 60, warmup=5, schedule="constant")
  # PPO-ptx: replay_weight x the SFT loss on replay_batch_size packed rows of replay_seq_len
  # tokens of reference solutions (from replay_problems problems of their own) added to every
  # update; 0 = off.
  c.grpo.replay_weight = 1.0
  c.grpo.replay_batch_size = 16
  c.grpo.replay_seq_len = 128
  c.grpo.replay_problems = 1000
  # Actor-learner mode (reasoner/stages/async_grpo.py): rollouts for step t+1 overlap training
  # on step t, sampled at most max_staleness policy versions back, importance weights truncated
  # at is_clip; actor_devices > 0 gives the actor that many devices of the mesh of its own.
  c.grpo.async_rl = ConfigDict(dict(enabled=False, max_staleness=1, is_clip=2.0, actor_devices=0))

  c.distill = ConfigDict()
  # "rejection": the teacher samples, its verified samples are kept and the student is fine-tuned
  # on them (the fields below). "on_policy": the student samples, the teacher scores the sampled
  # tokens and the student minimises its reverse KL to the teacher (the `on_policy` block; it
  # also reads max_new_tokens, init_from, steps, tokens_per_device and optim, not the rejection
  # sampling fields, and needs student=""). reasoner/stages/distill.py.
  c.distill.method = "rejection"
  c.distill.n_problems = 800  # training problems the teacher (M2) samples
  c.distill.samples_per_problem = 4
  c.distill.temperature = 0.8  # the teacher's sampling temperature
  c.distill.max_new_tokens = 64  # the longest sample
  # sft | pretrain | grpo: the student's starting point (R1-Zero mode: pretrain, i.e. M0)
  c.distill.init_from = "sft"
  c.distill.student = ""  # model preset for a smaller student; "" = same shape as the teacher
  # The teacher: "" = this run's M2, or a model directory (e.g. a larger run's
  # WORKDIR/stages/grpo/final, same tokenizer) to distill into this run's init_from model: a
  # smaller run's M1 (BUILD_NOTES "Distillation into a smaller student").
  c.distill.teacher = ""
  # SFT of the student on the kept samples, as for the supervised stages above.
  # 80 steps: the ~500 kept samples fill ~150 packed rows, so this is ~15 epochs already (200
  # steps, the earlier setting, fit them to a loss of 0.02 and cost a minute of the README run).
  c.distill.steps = 80
  c.distill.batch_size = 32
  c.distill.seq_len = 128
  c.distill.tokens_per_device = 0
  c.distill.rollout_rows = 0  # rows per rejection-sampling call; 0 = 64 problems' samples at once
  c.distill.optim = _optim(1e-3, 80, warmup=10)
  # On-policy distillation: each of the `steps` steps samples samples_per_prompt completions of
  # prompts_per_step training problems from the student at `temperature` (1 = the student's own
  # distribution, which the loss assumes) and takes one update on them. loss: "sampled" (reverse
  # KL on the sampled tokens, from the teacher's log-probs of them) | "full" (exact reverse KL
  # against the teacher's whole next-token distributions; small vocabularies only).
  c.distill.on_policy = ConfigDict(dict(prompts_per_step=8, samples_per_prompt=4, temperature=1.0,
                                        loss="sampled"))

  c.dpo = ConfigDict()
  c.dpo.n_problems = 400  # training problems M3 samples preference pairs from
  c.dpo.samples_per_problem = 4
  c.dpo.temperature = 1.0  # M3's sampling temperature for the pairs
  c.dpo.max_new_tokens = 64  # the longest sample
  c.dpo.steps = 40  # updates of `batch_size` pairs (and as many replay rows) of `seq_len` tokens
  c.dpo.batch_size = 16
  c.dpo.seq_len = 128
  c.dpo.tokens_per_device = 0  # a pair counts its chosen and rejected tokens
  c.dpo.rollout_rows = 0  # rows per sampler call for the pairs; 0 = 64 problems' samples at once
  # The loss (reasoner.losses.dpo.DPOConfig): beta 0.1, sigmoid; here with RPO's NLL term
  # (nll_weight: weight of the chosen responses' per-token NLL).
  c.dpo.loss = _fields(DPOConfig, nll_weight=1.0)
  c.dpo.replay_weight = 0.5  # weight of the SFT loss on replayed earlier data
  c.dpo.optim = _optim(1e-5, 40, warmup=5, schedule="constant")

  # Held-out evaluation of every stage's model: `n_problems` test problems, greedy and `k`
  # samples at `temperature` (pass@1, maj@k, pass@k), `batch_size` rows per sampler call.
  c.eval = ConfigDict(dict(n_problems=256, k=4, temperature=1.0, max_new_tokens=64, batch_size=256))
  # Which split the evaluation reads: "test" (what the report and README show) or "validation"
  # (for choosing settings: a tuning run passes --config.eval.split=validation). Every task has
  # the three splits train / validation / test (reasoner/data/tasks/base.py).
  c.eval.split = "test"
  # Temperatures M1 is tried at on validation for the best-temperature control (config.controls).
  c.eval.control_temperatures = "0.25,0.5,0.75,1.0"
  # A second evaluation set, not the training source (reasoner/pipeline/eval_source.py): "" =
  # none (only the test split of config.data) | "tasks:NAME[,NAME]" procedural families not in
  # config.data.tasks ("tasks:held_out" = all of them) | "jsonl:PATH" a problem file |
  # "gsm8k[:DATA_DIR]". Its n_problems problems are scored the same way; every model's eval.json
  # gains them as ood/pass@1, ood/greedy_acc, ... (the table's "ood" columns).
  c.eval.source = ""
  # The hardware the run is planned for (`python -m launch.plan`): `devices` chips of `memory_gib`
  # each; a program fits when its per-device peak (plus the buffers the stage keeps alive beside
  # it) stays under `budget_gib`, the share of memory we allow ourselves (the rest is headroom for
  # the runtime, fragmentation and the estimate's error).
  c.hardware = ConfigDict(dict(name="cpu", devices=1, memory_gib=16.0, budget_gib=16.0))
  c.log_every = 10  # steps between metrics lines / progress output
  c.checkpoint_every = 50  # steps between checkpoints of a stage (a rerun resumes from the last)
  # A step whose loss or gradient is not finite is skipped (params and optimiser state kept);
  # this many in a row stop the stage with an error.
  c.max_skipped_steps = 5
  # A rerun compares the config with the one each finished or started stage was made with
  # (WORKDIR/stages/*/fingerprint.json) and stops on a change that would make its results stale;
  # True reuses them anyway.
  c.allow_config_change = False
  return c


def tiny_smoke() -> ConfigDict:
  """The tiny pipeline at smoke size, about a minute on CPU (the tests and the notebooks' smoke
  mode): a 2-layer model, one task with small answers (so that a briefly trained model gets a
  few right, which rejection sampling and DPO need) and a handful of steps per stage.
  Pre-training, SFT and distillation share one optimiser setting and batch shape, and every
  sampling call 64 prompts x 4 samples, so they share compiled programs. It learns little."""
  c = tiny()
  c.preset = "tiny_smoke"
  c.model.update(dict(vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, d_ff=192))
  c.tokenizer.vocab_size = 384
  c.data.tasks = "modular_arithmetic"
  for stage in (c.pretrain, c.sft, c.distill):
    stage.update(dict(batch_size=8, seq_len=128))
    stage.optim.update(dict(learning_rate=3e-3, total_steps=80, warmup_steps=10,
                            weight_decay=0.0))
  c.pretrain.update(dict(steps=40, n_documents=1000))
  c.sft.update(dict(steps=80, n_examples=600))
  c.grpo.update(dict(steps=4, prompts_per_step=8, group_size=4, max_new_tokens=32))
  c.grpo.optim.update(dict(total_steps=4, warmup_steps=1))
  c.distill.update(dict(n_problems=64, temperature=1.0, steps=10, max_new_tokens=32))
  c.dpo.update(dict(n_problems=128, steps=4, batch_size=8, max_new_tokens=32))
  c.dpo.optim.update(dict(total_steps=4, warmup_steps=1))
  c.eval.update(dict(n_problems=64, k=4, max_new_tokens=32))
  c.log_every = 2
  c.checkpoint_every = 1000
  return c


def _hardware(name: str, devices: int, memory_gib: float, budget_gib: float) -> ConfigDict:
  return ConfigDict(dict(name=name, devices=devices, memory_gib=memory_gib, budget_gib=budget_gib))


def _real(model_preset: str, mesh: dict, template: str, hardware: ConfigDict,
          tokens_per_device: int, rollout_rows: int, lr_scale: float = 1.0) -> ConfigDict:
  """A GSM8K pipeline that starts from a pre-trained model folder (set --config.init=PATH)."""
  c = tiny()
  c.model = ConfigDict(MODEL_PRESETS[model_preset])
  c.model.preset = model_preset
  c.model.dtype = "bfloat16"
  c.model.remat = True
  _lora(c.model)
  c.init = ""  # a Hugging Face folder or model directory; required
  c.mesh = ConfigDict(mesh)
  c.tokenizer = ConfigDict(dict(kind="from_init", path="", vocab_size=0, template=template))
  c.data.source = "gsm8k"
  c.stages = "sft,grpo,distill,dpo"
  seq = 1024
  c.sft.update(dict(steps=500, batch_size=64, seq_len=seq, n_examples=7473,
                    optim=_optim(1e-5 * lr_scale, 500, warmup=25, wd=0.0)))
  c.grpo.update(dict(steps=500, prompts_per_step=64, group_size=16, max_new_tokens=768,
                     max_prompt_tokens=256, minibatches=4, temperature=1.0,
                     replay_seq_len=seq))
  c.grpo.loss.beta = 0.001
  c.grpo.loss.entropy_coef = 0.0  # the tiny preset's entropy and replay terms are tuned for it only
  c.grpo.replay_weight = 0.0
  c.r1_zero_overrides = _r1_zero_overrides()  # the learning rate above stays
  c.dpo.loss.nll_weight = 0.0
  c.grpo.loss.constant_norm = 768.0
  c.grpo.optim = _optim(1e-6 * lr_scale, 500, warmup=10, schedule="constant")
  c.distill.update(dict(n_problems=7473, samples_per_problem=4, steps=500, batch_size=64,
                        seq_len=seq, max_new_tokens=768, optim=_optim(1e-5 * lr_scale, 500, warmup=25)))
  c.dpo.update(dict(n_problems=2000, steps=200, batch_size=32, seq_len=seq, max_new_tokens=768,
                    optim=_optim(5e-7 * lr_scale, 200, warmup=10, schedule="constant")))
  c.eval.update(dict(n_problems=1319, k=8, max_new_tokens=768, batch_size=128))
  c.checkpoint_every = 100
  c.hardware = hardware
  # Memory budgets per device (checked by `python -m launch.plan` against `hardware`).
  for stage in (c.sft, c.grpo, c.distill, c.dpo):
    stage.tokens_per_device = tokens_per_device
  # Rows per sampler call in every stage that samples (bounds the KV cache the engine holds).
  c.grpo.rollout_rows = c.distill.rollout_rows = c.dpo.rollout_rows = rollout_rows
  return c


def get_config(preset: str = "tiny") -> ConfigDict:
  if preset == "tiny":
    return tiny()
  if preset == "tiny_smoke":
    return tiny_smoke()
  # One 16 GiB chip (a Colab T4 or a TPU v5e-1), 12 GiB of it planned for.
  small = _hardware("colab-t4 / tpu-v5e-1", devices=1, memory_gib=16.0, budget_gib=12.0)
  # A TPU v4-8: 4 chips of 32 GiB, 24 GiB of each planned for.
  v4_8 = _hardware("tpu-v4-8", devices=4, memory_gib=32.0, budget_gib=24.0)
  if preset == "qwen2_5_0_5b_gsm8k":
    # 192 rows per sampler call: at 256 the decode chunk (8.85 GiB) beside the float32 policy,
    # its starting copy and Adam moments (7.36 GiB) needs 16.21 of the chip's 16 GiB (`launch.plan`).
    c = _real("qwen2_5_0_5b", dict(data=-1, fsdp=1, tensor=1), "qwen", small,
              tokens_per_device=4096, rollout_rows=192, lr_scale=2.0)
    c.model.logits_chunk_mib = 64  # 0.62 GB of float32 logits per 1k tokens of its 152k vocab
  # The 7B / 8B presets train LoRA adapters on every projection over a bfloat16 frozen base
  # (about 2 bytes a weight, against 16 for float32 weights + Adam moments), which fits a v4-8;
  # LoRA wants learning rates ~10x those of full fine-tuning, hence lr_scale. The 0.5B preset
  # fine-tunes fully.
  elif preset == "qwen2_5_7b_gsm8k":
    c = _real("qwen2_5_7b", dict(data=1, fsdp=1, tensor=4), "qwen", v4_8,
              tokens_per_device=8192, rollout_rows=256, lr_scale=10.0)
    _lora(c.model, rank=16, alpha=32, base_dtype="bfloat16")
  elif preset == "llama3_1_8b_gsm8k":
    # 128 rows per sampler call: its 8 kv heads hold 4x Qwen2.5-7B's KV cache per row, and at
    # 256 rows the engine's decode chunk peaks at 23.8 of the 24 GiB budget (`launch.plan`).
    c = _real("llama3_1_8b", dict(data=1, fsdp=1, tensor=4), "llama3", v4_8,
              tokens_per_device=8192, rollout_rows=128, lr_scale=10.0)
    _lora(c.model, rank=32, alpha=64, base_dtype="bfloat16")
  else:
    raise ValueError(f"unknown pipeline preset {preset!r}; available: {', '.join(PIPELINE_PRESETS)}")
  c.preset = preset  # _real starts from tiny()
  return c
