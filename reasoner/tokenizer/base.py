"""The tokenizer interface every stage uses, and the reasoning tags it must keep whole."""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

# Each of these must encode to exactly one id, so rewards and masks can find them by id.
REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Written into tokenizer_config.json so `load_tokenizer` knows which backend saved a folder.
BACKEND_KEY = "reasoner_backend"


@runtime_checkable
class Tokenizer(Protocol):
  """Text <-> ids. `decode` drops pad/eos/bos; `encode` adds no special tokens."""

  @property
  def vocab_size(self) -> int: ...          # 1 + the largest id the tokenizer can produce

  @property
  def pad_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def bos_id(self) -> Optional[int]: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_id(self, piece: str) -> int: ...

  def save(self, directory: str) -> None: ...


def padded_vocab_size(tokenizer_vocab: int, multiple: int = 128) -> int:
  """The model vocab for a tokenizer: `tokenizer_vocab` rounded up to `multiple`.

  Ids >= tokenizer_vocab are never produced by the tokenizer; the extra embedding rows only make
  the vocab dim divide evenly over a tensor-parallel mesh axis.
  """
  return -(-tokenizer_vocab // multiple) * multiple
