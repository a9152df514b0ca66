"""Sequence packing / padding layout, truncation, and packed forward == each sequence alone."""

import logging

import jax
import numpy as np
import pytest

from reasoner.losses import sequence_logprobs
from reasoner.model import ModelConfig, init_params
from reasoner.train import pack_sequences, pad_sequences

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=64, max_seq_len=32)


def example(n_prompt, n_response, start):
  return (list(range(start, start + n_prompt)),
          list(range(start + n_prompt, start + n_prompt + n_response)))


def test_pack_layout_first_fit():
  # Lengths 5, 4, 3, 2 into rows of 8: first fit gives rows [0, 2] and [1, 3].
  ex = [example(2, 3, 10), example(1, 3, 20), example(1, 2, 30), example(1, 1, 40)]
  b = pack_sequences(ex, seq_len=8, pad_id=0)
  np.testing.assert_array_equal(b["tokens"], [[10, 11, 12, 13, 14, 30, 31, 32],
                                              [20, 21, 22, 23, 40, 41, 0, 0]])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2],
                                                   [1, 1, 1, 1, 2, 2, 0, 0]])
  np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 3, 4, 0, 1, 2],
                                                 [0, 1, 2, 3, 0, 1, 0, 0]])
  np.testing.assert_array_equal(b["loss_mask"], [[0, 0, 1, 1, 1, 0, 1, 1],
                                                 [0, 1, 1, 1, 0, 1, 0, 0]])
  assert {k: v.dtype for k, v in b.items()} == {
      "tokens": np.int32, "positions": np.int32, "segment_ids": np.int32, "loss_mask": np.float32}


def test_pad_layout_and_num_rows():
  ex = [example(2, 2, 10), example(1, 1, 20)]
  b = pad_sequences(ex, seq_len=6, pad_id=99, num_rows=3)
  np.testing.assert_array_equal(b["tokens"], [[10, 11, 12, 13, 99, 99], [20, 21, 99, 99, 99, 99],
                                              [99] * 6])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6])
  np.testing.assert_array_equal(b["loss_mask"], [[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0] * 6])
  with pytest.raises(ValueError, match="more than num_rows=1"):
    pad_sequences(ex, seq_len=6, pad_id=0, num_rows=1)
  with pytest.raises(ValueError, match="more than num_rows=1"):
    pack_sequences(ex * 3, seq_len=6, pad_id=0, num_rows=1)


def test_truncation_is_counted_not_dropped(caplog):
  ex = [example(3, 9, 1), example(2, 2, 30)]
  with caplog.at_level(logging.WARNING):
    b, stats = pack_sequences(ex, seq_len=8, pad_id=0, return_stats=True)
  assert "truncated 1 of 2 examples to seq_len=8" in caplog.text
  assert stats["n_truncated"] == 1 and stats["n_examples"] == 2 and stats["n_rows"] == 2
  np.testing.assert_array_equal(b["tokens"][0], np.arange(1, 9))  # first seq_len tokens kept
  np.testing.assert_array_equal(b["loss_mask"][0], [0, 0, 0, 1, 1, 1, 1, 1])
  assert stats["fill"] == pytest.approx((8 + 4) / 16)
  with pytest.raises(ValueError, match="example 0 must be a"):
    pack_sequences([[1, 2, 3]], seq_len=8, pad_id=0)


def test_packed_forward_equals_each_sequence_alone():
  rng = np.random.default_rng(0)
  ex = [(rng.integers(1, 64, rng.integers(1, 5)), rng.integers(1, 64, rng.integers(2, 7)))
        for _ in range(6)]
  packed = pack_sequences(ex, seq_len=16, pad_id=0)
  alone = pad_sequences(ex, seq_len=16, pad_id=0)
  assert packed["tokens"].shape[0] < len(ex)  # really packed
  params = init_params(CFG, jax.random.PRNGKey(0))
  fn = jax.jit(lambda p, b: sequence_logprobs(p, CFG, b))
  lp_packed, ent_packed = map(np.asarray, fn(params, packed))
  lp_alone, ent_alone = map(np.asarray, fn(params, alone))
  # Walk the packed rows segment by segment; they appear in first-fit order.
  seen = 0
  for r in range(packed["tokens"].shape[0]):
    for seg in range(1, packed["segment_ids"][r].max() + 1):
      cols = np.flatnonzero(packed["segment_ids"][r] == seg)
      n = len(cols)
      i = next(i for i in range(len(ex))
               if np.array_equal(alone["tokens"][i, :n], packed["tokens"][r, cols])
               and alone["segment_ids"][i, n:].sum() == 0)
      np.testing.assert_allclose(lp_packed[r, cols], lp_alone[i, :n], atol=2e-5)
      np.testing.assert_allclose(ent_packed[r, cols], ent_alone[i, :n], atol=2e-5)
      np.testing.assert_array_equal(packed["loss_mask"][r, cols], alone["loss_mask"][i, :n])
      seen += 1
  assert seen == len(ex)
  assert np.all(lp_packed[packed["segment_ids"] == 0] == 0)
