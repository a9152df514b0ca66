"""A Hugging Face `tokenizer.json` tokenizer (Qwen2.5, Llama 3 folders) via the `tokenizers` package."""

from __future__ import annotations

import json
from typing import Optional, Sequence

from absl import logging
from etils import epath
from tokenizers import AddedToken, Tokenizer as _RawTokenizer

from reasoner.tokenizer.base import BACKEND_KEY, REASONING_TOKENS

JSON_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
BACKEND = "hf"
_SPECIALS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _content(tok) -> Optional[str]:
  """A special-token entry is a string or {"content": ...}."""
  if isinstance(tok, dict):
    return tok.get("content")
  return tok


def _read_json(path: epath.Path) -> dict:
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None


class HFTokenizer:
  """A `tokenizers.Tokenizer` plus bos/eos/pad tokens.

  The reasoning tags are added as (non-special) added tokens when the vocab lacks them, so the
  vocab may grow past the original model's; `added_tokens` lists what was added.
  `encode` adds no special tokens; `decode` drops pad/bos/eos and ids outside the vocab.
  """

  def __init__(self, tokenizer: _RawTokenizer, eos_token: str, pad_token: Optional[str] = None,
               bos_token: Optional[str] = None, config: Optional[dict] = None):
    self._tok = tokenizer
    self._config = dict(config or {})
    missing = [t for t in REASONING_TOKENS if tokenizer.token_to_id(t) is None]
    self.added_tokens = tuple(missing)
    if missing:
      before = self.vocab_size
      tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
      logging.warning("tokenizer lacked %s; added them: vocab grew from %d to %d", missing,
                      before, self.vocab_size)
    self._eos_token, self._pad_token, self._bos_token = eos_token, pad_token or eos_token, bos_token
    self._eos = self.token_id(eos_token)
    self._pad = self.token_id(self._pad_token)
    self._bos = None if bos_token is None else self.token_id(bos_token)
    self._drop = {i for i in (self._eos, self._pad, self._bos) if i is not None}

  @classmethod
  def load(cls, directory) -> "HFTokenizer":
    """Reads DIR/tokenizer.json; special tokens from tokenizer_config.json (then
    special_tokens_map.json). A folder without a pad token pads with eos."""
    d = epath.Path(directory)
    if not (d / JSON_FILE).exists():
      raise FileNotFoundError(f"no {JSON_FILE} in {directory}")
    try:
      raw = _RawTokenizer.from_str((d / JSON_FILE).read_text())
    except Exception as e:  # the Rust parser's errors are not a Python subclass we can name
      raise ValueError(f"cannot parse {d / JSON_FILE}: {e}") from None
    config = _read_json(d / CONFIG_FILE)
    specials = _read_json(d / SPECIAL_MAP_FILE)
    get = lambda k: _content(config.get(k)) or _content(specials.get(k))
    if not get("eos_token"):
      raise ValueError(f"no eos_token in {d / CONFIG_FILE} or {d / SPECIAL_MAP_FILE}")
    return cls(raw, get("eos_token"), get("pad_token"), get("bos_token"), config)

  @property
  def raw(self) -> _RawTokenizer:
    return self._tok

  @property
  def vocab_size(self) -> int:
    return max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def bos_id(self) -> Optional[int]:
    return self._bos

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    n = self.vocab_size
    keep = [int(i) for i in ids if 0 <= int(i) < n and int(i) not in self._drop]
    return self._tok.decode(keep, skip_special_tokens=False)

  def token_id(self, piece: str) -> int:
    i = self._tok.token_to_id(piece)
    if i is None:
      raise KeyError(f"{piece!r} is not a single token of this tokenizer")
    return i

  def special_tokens(self) -> dict:
    return {"bos_token": self._bos_token, "eos_token": self._eos_token,
            "pad_token": self._pad_token}

  def save(self, directory) -> None:
    """Writes tokenizer.json and tokenizer_config.json (loadable by transformers' AutoTokenizer)."""
    d = epath.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / JSON_FILE).write_text(self._tok.to_str())
    config = {k: v for k, v in self._config.items()
              if k not in ("added_tokens_decoder", "tokenizer_file", "auto_map") + _SPECIALS}
    config.update({BACKEND_KEY: BACKEND, "tokenizer_class": "PreTrainedTokenizerFast",
                   **self.special_tokens()})
    (d / CONFIG_FILE).write_text(json.dumps(config, indent=2))
