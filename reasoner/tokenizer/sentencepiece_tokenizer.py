"""A SentencePiece tokenizer (pad/unk/bos/eos + one id per reasoning tag), and training it."""

from __future__ import annotations

import io
import json
from typing import Iterable, Optional, Sequence

import sentencepiece as spm
from etils import epath

from reasoner.tokenizer.base import BACKEND_KEY, REASONING_TOKENS

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
BACKEND = "sentencepiece"

# Fixed ids of the control pieces in a tokenizer trained here.
PAD, UNK, BOS, EOS = ("<pad>", 0), ("<unk>", 1), ("<s>", 2), ("</s>", 3)


class SentencePieceTokenizer:
  """Wraps a SentencePiece model. `encode` adds no bos/eos; `decode` drops pad/bos/eos and any
  id outside the vocab (a padded model vocab can sample those)."""

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    if self._sp.eos_id() < 0:
      raise ValueError("SentencePiece model has no eos piece")
    # A model without a pad piece pads with eos; padding is masked by segment ids anyway.
    self._pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.eos_id()
    self._drop = {i for i in (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()) if i >= 0}

  @classmethod
  def load(cls, directory) -> "SentencePieceTokenizer":
    path = epath.Path(directory) / MODEL_FILE
    if not path.exists():
      raise FileNotFoundError(f"no {MODEL_FILE} in {directory}")
    return cls(path.read_bytes())

  @property
  def model_proto(self) -> bytes:
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def bos_id(self) -> Optional[int]:
    return self._sp.bos_id() if self._sp.bos_id() >= 0 else None

  @property
  def unk_id(self) -> Optional[int]:
    return self._sp.unk_id() if self._sp.unk_id() >= 0 else None

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    n = self.vocab_size
    return self._sp.decode([int(i) for i in ids if 0 <= int(i) < n and int(i) not in self._drop])

  def token_id(self, piece: str) -> int:
    i = self._sp.piece_to_id(piece)
    if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i):
      raise KeyError(f"{piece!r} is not a single token of this SentencePiece vocab")
    return i

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def special_tokens(self) -> dict:
    """Piece strings of bos/eos/pad/unk (None where absent)."""
    piece = lambda i: self._sp.id_to_piece(i) if i is not None and i >= 0 else None
    return {"bos_token": piece(self.bos_id), "eos_token": piece(self.eos_id),
            "pad_token": piece(self.pad_id), "unk_token": piece(self.unk_id)}

  def save(self, directory) -> None:
    """Writes tokenizer.model and tokenizer_config.json into `directory`."""
    d = epath.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / MODEL_FILE).write_bytes(self._proto)
    config = {BACKEND_KEY: BACKEND, **self.special_tokens(),
              "add_bos_token": False, "add_eos_token": False}
    (d / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def train_sentencepiece(texts: Iterable[str], out_dir, vocab_size: int = 512,
                        model_type: str = "bpe") -> SentencePieceTokenizer:
  """Trains a SentencePiece model in-process and saves it to `out_dir`.

  Digits are split, unknown characters fall back to bytes (so any text round-trips), text is
  not normalised (newlines and repeated spaces survive), and no dummy prefix is added (so
  encode(a) + encode(b) decodes to a + b). `vocab_size` is an upper bound: a small corpus
  yields fewer pieces. Ids: <pad>=0 <unk>=1 <s>=2 </s>=3, then the reasoning tags 4..7.
  The model's vocab must be >= tokenizer.vocab_size (see `padded_vocab_size`).
  """
  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
  sentences = [t for t in texts if t]
  if not sentences:
    raise ValueError("train_sentencepiece: no non-empty training texts")
  out = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, split_digits=True, byte_fallback=True,
        pad_id=PAD[1], unk_id=UNK[1], bos_id=BOS[1], eos_id=EOS[1], pad_piece=PAD[0],
        unk_piece=UNK[0], bos_piece=BOS[0], eos_piece=EOS[0],
        user_defined_symbols=list(REASONING_TOKENS), normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        hard_vocab_limit=False, max_sentence_length=1 << 16, input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=1, minloglevel=2)
  except RuntimeError as e:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise ValueError(f"SentencePiece training failed (vocab_size={vocab_size}, "
                     f"{len(sentences)} texts): {msg}") from None
  tok = SentencePieceTokenizer(out.getvalue())
  tok.save(out_dir)
  return tok
