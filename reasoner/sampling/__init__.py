"""In-JAX batched generation with a KV cache: greedy / temperature / top-k / top-p, groups of n
samples per prompt, stop tokens and sequences, and thinking-budget control."""

from reasoner.sampling.config import SamplingConfig
from reasoner.sampling.sampler import (TRACE_COUNT, PreparedCall, SampleOutput, bucket, decode,
                                       generate, prefill, prepare, prompt_arrays, sample)
from reasoner.sampling.rollouts import Rollouts, sample_rollouts
from reasoner.sampling.step import Buffers, filter_logits, select_next

__all__ = ["SamplingConfig", "SampleOutput", "PreparedCall", "Buffers", "TRACE_COUNT", "bucket",
           "decode", "filter_logits", "generate", "prefill", "prepare", "prompt_arrays", "Rollouts",
           "sample", "sample_rollouts", "select_next"]
