"""Test-wide setup: 8 forced CPU devices so multi-device paths are exercised without accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
  """Drops every compiled program after each test module. XLA:CPU maps several memory regions per
  executable and the jit caches keep them all alive, so one process running the whole suite
  climbed past the kernel's map limit (vm.max_map_count, 65530) and segfaulted inside XLA's
  compiler when the next mmap failed (BUILD_NOTES, CI time)."""
  yield
  import gc
  import jax
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def arith_tokenizer(tmp_path_factory):
  """A 384-piece sentencepiece tokenizer trained on 300 arithmetic problems (RL stage tests)."""
  from reasoner.data.tasks import mixture
  from reasoner.tokenizer import train_sentencepiece
  texts = [p.prompt + " " + p.solution for p in mixture(["arithmetic"], "train", 300, 0, 1)]
  return train_sentencepiece(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=384)
