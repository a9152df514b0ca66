"""Helpers shared by more than one benchmark."""

from __future__ import annotations

import os
import tempfile


def task_tokenizer(cfg, n_problems: int = 2000):
  """A SentencePiece tokenizer (vocab <= cfg.tokenizer.vocab_size) trained on `n_problems`
  training problems of the pipeline config `cfg`'s task mixture (corpus documents + formatted
  prompt/solution pairs), written to a fresh temporary directory."""
  from reasoner.data.tasks import mixture
  from reasoner.stages.pretrain import corpus_document
  from reasoner.tokenizer import format_prompt, train_sentencepiece
  probs = mixture(cfg.data.tasks.split(","), "train", n_problems, 0, cfg.data.difficulty)
  texts = [corpus_document(p) for p in probs] + [format_prompt(p.prompt, "plain") + p.solution
                                                 for p in probs]
  return train_sentencepiece(texts, tempfile.mkdtemp(prefix="bench_tok_"),
                             vocab_size=cfg.tokenizer.vocab_size)


def load_note() -> str:
  """'load average X' (1 min) of this machine, for the header of a timing table."""
  try:
    return "load average %.1f" % os.getloadavg()[0]
  except OSError:
    return "load average unknown"
