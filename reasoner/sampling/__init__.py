"""In-JAX batched generation with a KV cache: greedy / temperature / top-k / top-p, groups of n
samples per prompt, stop tokens and sequences, and thinking-budget control.

`generate` runs the sampler `SamplingConfig.engine` names: the rollout engine (continuous
batching over a paged KV cache, `engine` / `paged`) by default, or the static sampler
(`sampler`)."""

from reasoner.sampling.config import SamplingConfig
from reasoner.sampling.engine import Engine, EngineConfig, generate, generate_paged
from reasoner.sampling.sampler import (TRACE_COUNT, PreparedCall, SampleOutput, bucket, decode,
                                       prefill, prepare, prompt_arrays, sample)
from reasoner.sampling.rollouts import Rollouts, sample_rollouts
from reasoner.sampling.step import Buffers, filter_logits, select_next

__all__ = ["Buffers", "Engine", "EngineConfig", "PreparedCall", "Rollouts", "SampleOutput",
           "SamplingConfig", "TRACE_COUNT", "bucket", "decode", "filter_logits", "generate",
           "generate_paged", "prefill", "prepare", "prompt_arrays", "sample", "sample_rollouts",
           "select_next"]
