"""Host-side batching of (prompt, response) token examples into fixed [rows, seq_len] arrays.

`pack_sequences` packs several examples per row (first fit, in order): segment ids 1..k per
row, positions restarting at 0 for each segment, loss_mask on response tokens; the decoder
attends only within a segment, so each example sees exactly what it would see alone.
`pad_sequences` puts one example per row (for GRPO / DPO / PPO, whose per-row quantities
assume one sequence per row).

An example longer than seq_len is cut to its first seq_len tokens (prompt first, so a long
prompt may leave no response tokens); it is counted and logged, never dropped.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

Example = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, response_ids)


def _prepare(examples: Sequence[Example], seq_len: int):
  if seq_len < 2:
    raise ValueError(f"seq_len must be at least 2, got {seq_len}")
  out, n_truncated = [], 0
  for i, ex in enumerate(examples):
    if len(ex) != 2:
      raise ValueError(f"example {i} must be a (prompt_ids, response_ids) pair")
    prompt = np.asarray(ex[0], np.int32).reshape(-1)
    response = np.asarray(ex[1], np.int32).reshape(-1)
    tokens = np.concatenate([prompt, response])
    is_response = np.concatenate([np.zeros(len(prompt), bool), np.ones(len(response), bool)])
    if len(tokens) > seq_len:
      n_truncated += 1
      tokens, is_response = tokens[:seq_len], is_response[:seq_len]
    if len(tokens) == 0:
      raise ValueError(f"example {i} is empty")
    out.append((tokens, is_response))
  if n_truncated:
    logging.warning("truncated %d of %d examples to seq_len=%d", n_truncated, len(examples),
                    seq_len)
  return out, n_truncated


def _fill(rows: list[list[int]], prepared, seq_len: int, pad_id: int,
          num_rows: Optional[int]) -> dict:
  n = len(rows) if num_rows is None else num_rows
  if len(rows) > n:
    raise ValueError(f"{len(prepared)} examples need {len(rows)} rows of {seq_len} tokens, "
                     f"more than num_rows={num_rows}")
  batch = {
      "tokens": np.full((n, seq_len), pad_id, np.int32),
      "positions": np.zeros((n, seq_len), np.int32),
      "segment_ids": np.zeros((n, seq_len), np.int32),
      "loss_mask": np.zeros((n, seq_len), np.float32),
  }
  for r, members in enumerate(rows):
    start = 0
    for seg, idx in enumerate(members, start=1):
      tokens, is_response = prepared[idx]
      end = start + len(tokens)
      batch["tokens"][r, start:end] = tokens
      batch["positions"][r, start:end] = np.arange(len(tokens))
      batch["segment_ids"][r, start:end] = seg
      mask = is_response.astype(np.float32)
      mask[0] = 0.0  # the first token of a segment has nothing to be predicted from
      batch["loss_mask"][r, start:end] = mask
      start = end
  return batch


def _stats(prepared, n_truncated, batch) -> dict:
  used = float((batch["segment_ids"] > 0).sum())
  return {"n_examples": len(prepared), "n_rows": batch["tokens"].shape[0],
          "n_truncated": n_truncated, "fill": used / max(batch["tokens"].size, 1)}


def pack_sequences(examples: Sequence[Example], seq_len: int, pad_id: int, *,
                   num_rows: Optional[int] = None, return_stats: bool = False):
  """First-fit packing of examples into rows of seq_len tokens.

  Returns a batch dict of tokens / positions / segment_ids int32 and loss_mask float32, each
  [rows, seq_len]; rows = as many as needed, or exactly `num_rows` (extra rows are padding;
  too few raises ValueError). With return_stats, returns (batch, stats) where stats has
  n_examples, n_rows, n_truncated and fill (fraction of non-pad slots).
  """
  prepared, n_truncated = _prepare(examples, seq_len)
  rows: list[list[int]] = []
  free: list[int] = []
  for i, (tokens, _) in enumerate(prepared):
    for r, space in enumerate(free):
      if len(tokens) <= space:
        rows[r].append(i)
        free[r] -= len(tokens)
        break
    else:
      rows.append([i])
      free.append(seq_len - len(tokens))
  batch = _fill(rows, prepared, seq_len, pad_id, num_rows)
  return (batch, _stats(prepared, n_truncated, batch)) if return_stats else batch


def pad_sequences(examples: Sequence[Example], seq_len: int, pad_id: int, *,
                  num_rows: Optional[int] = None, return_stats: bool = False):
  """One example per row, right-padded to seq_len (segment id 1, pad 0). Same outputs as
  `pack_sequences`; row i holds example i."""
  prepared, n_truncated = _prepare(examples, seq_len)
  rows = [[i] for i in range(len(prepared))]
  batch = _fill(rows, prepared, seq_len, pad_id, num_rows)
  return (batch, _stats(prepared, n_truncated, batch)) if return_stats else batch
