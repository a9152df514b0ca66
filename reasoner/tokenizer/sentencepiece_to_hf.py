"""Converts a SentencePiece model (as trained by `train_sentencepiece`) into a `tokenizer.json`
that transformers' AutoTokenizer (and our HFTokenizer) can load.

Supported: BPE and unigram models with identity normalisation and no dummy prefix (what
`train_sentencepiece` writes), byte fallback. Other SentencePiece options are rejected.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from reasoner.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _model_proto(tok: SentencePieceTokenizer):
  try:
    from sentencepiece import sentencepiece_model_pb2
  except ImportError as e:  # needs the protobuf package
    raise ImportError(f"converting SentencePiece to tokenizer.json needs protobuf: {e}") from None
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(tok.model_proto)
  return m


def _bpe_merges(pieces, vocab):
  """All (left, right) splits of every normal piece into two vocab pieces, ordered by the
  merged piece's rank (SentencePiece BPE scores fall with rank), then by the parts' ranks."""
  merges = []
  for p, kind in pieces:
    if kind != _NORMAL or len(p) < 2:
      continue
    for k in range(1, len(p)):
      a, b = p[:k], p[k:]
      if a in vocab and b in vocab:
        merges.append((vocab[p], vocab[a], vocab[b], a, b))
  merges.sort()
  return [(a, b) for _, _, _, a, b in merges]


def sentencepiece_to_hf_json(tok: SentencePieceTokenizer) -> str:
  """The tokenizer.json text equivalent to `tok` (same ids on encode, same text on decode)."""
  m = _model_proto(tok)
  norm = m.normalizer_spec
  if norm.add_dummy_prefix or norm.remove_extra_whitespaces or norm.precompiled_charsmap:
    raise ValueError("only SentencePiece models with identity normalisation and no dummy prefix "
                     "can be converted to tokenizer.json")
  pieces = [(p.piece, p.type) for p in m.pieces]
  vocab = {p: i for i, (p, _) in enumerate(pieces)}
  unk = next((p for p, t in pieces if t == _UNKNOWN), None)
  kind = m.trainer_spec.model_type  # 1 = unigram, 2 = bpe
  if kind == 2:
    model = models.BPE(vocab=vocab, merges=_bpe_merges(pieces, vocab), unk_token=unk,
                       fuse_unk=True, byte_fallback=m.trainer_spec.byte_fallback)
  elif kind == 1:
    unk_id = None if unk is None else vocab[unk]
    model = models.Unigram([(p.piece, p.score) for p in m.pieces], unk_id,
                           byte_fallback=m.trainer_spec.byte_fallback)
  else:
    raise ValueError(f"cannot convert SentencePiece model type {kind} (only bpe and unigram)")
  out = Tokenizer(model)
  out.normalizer = normalizers.Replace(" ", "\u2581")
  out.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  out.add_special_tokens([AddedToken(p, special=True, normalized=False)
                          for p, t in pieces if t in (_CONTROL, _UNKNOWN)])
  out.add_tokens([AddedToken(p, special=False, normalized=False)
                  for p, t in pieces if t == _USER_DEFINED])
  return out.to_str()
