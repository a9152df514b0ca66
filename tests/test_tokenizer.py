"""Tokenizers: SentencePiece training, HF tokenizer.json loading, conversion, prompt templates."""

import json
import random

import pytest

from reasoner.tokenizer import (REASONING_TOKENS, R1_SYSTEM, HFTokenizer, SentencePieceTokenizer,
                                Tokenizer, format_prompt, load_tokenizer, padded_vocab_size,
                                train_sentencepiece)
from reasoner.tokenizer.sentencepiece_to_hf import sentencepiece_to_hf_json
from tests.hf_fixtures import write_hf_tokenizer


def _math_texts(n, seed=0):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    a, b = rng.randint(0, 9999), rng.randint(0, 999)
    out.append(rng.choice([
        f"User: What is {a} + {b}?\nAssistant: <think>{a} + {b} = {a + b}</think>"
        f"<answer>{a + b}</answer>",
        f"Solve  x * {b} = {a * b}.  So x = {a}.",
        f"The product of {a} and {b} is {a * b}, so\n\n  the answer is {a * b}."]))
  return out


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("sp")
  train_sentencepiece(_math_texts(5000), d, vocab_size=512)
  return d


@pytest.fixture(scope="module")
def sp(sp_dir):
  return load_tokenizer(sp_dir)


HARD_STRINGS = ["User: What is  12 + 345?\nAssistant:", "  leading and trailing  ", "a\tb\r\nc",
                "unicode: é ∑ x² 😀", "<think>ok</think><answer>7</answer>", "", "\n\n"]


def test_sentencepiece_special_ids_and_tags(sp):
  assert isinstance(sp, SentencePieceTokenizer) and isinstance(sp, Tokenizer)
  assert sp.vocab_size <= 512
  assert (sp.pad_id, sp.bos_id, sp.eos_id) == (0, 2, 3)
  tag_ids = [sp.token_id(t) for t in REASONING_TOKENS]
  assert len(set(tag_ids)) == 4
  for tag, i in zip(REASONING_TOKENS, tag_ids):
    assert sp.encode(tag) == [i]
    assert sp.decode([i]) == tag
  ids = sp.encode("<think>1+1=2</think><answer>2</answer>")
  assert ids[0] == tag_ids[0] and ids[-1] == tag_ids[3] and tag_ids[1] in ids and tag_ids[2] in ids


@pytest.mark.parametrize("text", HARD_STRINGS + _math_texts(50, seed=1))
def test_sentencepiece_round_trip(sp, text):
  assert sp.decode(sp.encode(text)) == text


def test_sentencepiece_digits_split_and_concatenation(sp):
  ids = sp.encode("31415")
  assert [sp.decode([i]) for i in ids] == list("31415")
  a, b = "User: 12 + 3 =", " 15<think>carry</think>"
  assert sp.decode(sp.encode(a) + sp.encode(b)) == a + b


def test_sentencepiece_decode_drops_pad_eos_bos_and_out_of_vocab(sp):
  ids = sp.encode("x = 4")
  assert sp.decode([sp.bos_id] + ids + [sp.eos_id, sp.pad_id, sp.pad_id, sp.vocab_size + 3]) == "x = 4"


def test_sentencepiece_training_is_deterministic(sp_dir, tmp_path):
  train_sentencepiece(_math_texts(5000), tmp_path, vocab_size=512)
  assert (tmp_path / "tokenizer.model").read_bytes() == (sp_dir / "tokenizer.model").read_bytes()
  assert json.loads((tmp_path / "tokenizer_config.json").read_text())["reasoner_backend"] == "sentencepiece"


def test_sentencepiece_small_corpus_gives_smaller_vocab(tmp_path):
  tok = train_sentencepiece(["1 + 1 = 2", "2 + 2 = 4"], tmp_path, vocab_size=512)
  assert tok.vocab_size < 512
  assert tok.decode(tok.encode("4 + 1 = 5?")) == "4 + 1 = 5?"  # unseen chars via bytes


def test_padded_vocab_size():
  assert [padded_vocab_size(n, 128) for n in (1, 128, 129, 151665)] == [128, 128, 256, 151680]


def test_sentencepiece_training_errors(tmp_path):
  with pytest.raises(ValueError, match=r"vocab_size=100.*Vocabulary size is smaller"):
    train_sentencepiece(_math_texts(20), tmp_path, vocab_size=100)
  with pytest.raises(ValueError, match="no non-empty training texts"):
    train_sentencepiece(["", ""], tmp_path)
  with pytest.raises(ValueError, match="model_type"):
    train_sentencepiece(["a"], tmp_path, model_type="wordpiece")


def test_sentencepiece_unknown_piece(sp):
  with pytest.raises(KeyError, match="not a single token"):
    sp.token_id("<definitely-not-a-piece>")
  assert sp.token_id("<unk>") == sp.unk_id


def test_sentencepiece_save_load(sp, tmp_path):
  sp.save(tmp_path / "copy")
  again = load_tokenizer(tmp_path / "copy")
  text = _math_texts(1, seed=3)[0]
  assert isinstance(again, SentencePieceTokenizer) and again.encode(text) == sp.encode(text)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_to_tokenizer_json_matches(sp, tmp_path, model_type):
  from tokenizers import Tokenizer
  tok = sp if model_type == "bpe" else train_sentencepiece(_math_texts(2000), tmp_path, 400, "unigram")
  hf = Tokenizer.from_str(sentencepiece_to_hf_json(tok))
  for text in HARD_STRINGS + _math_texts(200, seed=2):
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ids == tok.encode(text), text
    assert hf.decode(ids, skip_special_tokens=False) == text


# ---- Hugging Face tokenizer.json --------------------------------------------------------------

@pytest.fixture
def hf_dir(tmp_path):
  write_hf_tokenizer(str(tmp_path / "hf"))
  return tmp_path / "hf"


def test_hf_tokenizer_specials_and_added_tags(hf_dir):
  tok = load_tokenizer(hf_dir)
  assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
  assert tok.eos_id == tok.token_id("<|im_end|>") == 2
  assert tok.pad_id == tok.token_id("<|endoftext|>") == 1
  assert tok.bos_id is None
  assert tok.added_tokens == REASONING_TOKENS
  assert tok.vocab_size == 14 + 4
  tags = [tok.token_id(t) for t in REASONING_TOKENS]
  assert sorted(tags) == list(range(14, 18))
  assert tok.encode("<think>the answer</think><answer>3</answer>") == [
      tags[0], 3, 4, tags[1], tags[2], 8, tags[3]]
  assert tok.encode("the answer is 3") == [3, 4, 5, 8]
  assert tok.decode([3, 4, 5, 8, tok.eos_id, tok.pad_id, 999]) == "the answer is 3"


def test_hf_tokenizer_pad_falls_back_to_eos_and_special_map(hf_dir):
  cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
  del cfg["pad_token"], cfg["eos_token"]
  (hf_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
  (hf_dir / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
  tok = load_tokenizer(hf_dir)
  assert tok.eos_id == tok.pad_id == 1


def test_hf_tokenizer_missing_eos(hf_dir):
  (hf_dir / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ValueError, match=r"no eos_token in .*tokenizer_config.json"):
    load_tokenizer(hf_dir)


def test_hf_tokenizer_save_reload_and_transformers_agree(hf_dir, tmp_path):
  from transformers import AutoTokenizer
  tok = load_tokenizer(hf_dir)
  tok.save(tmp_path / "saved")
  again = load_tokenizer(tmp_path / "saved")
  assert again.added_tokens == ()  # the tags are in the saved vocab now
  text = "User: the answer <think>1 + 2</think><answer>3</answer>"
  assert again.encode(text) == tok.encode(text)
  ref = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
  assert ref(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
  assert ref.eos_token_id == tok.eos_id and ref.pad_token_id == tok.pad_id


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*empty"):
    load_tokenizer(tmp_path / "empty")


# ---- prompt templates ---------------------------------------------------------------------------

def test_format_prompt_templates():
  q = "What is 2 + 3?"
  assert format_prompt(q) == "User: What is 2 + 3?\nAssistant:"
  assert format_prompt(q, "plain", system="Be brief.") == "Be brief.\nUser: What is 2 + 3?\nAssistant:"
  r1 = format_prompt(q, "r1")
  assert r1 == R1_SYSTEM + " User: What is 2 + 3?\nAssistant:"
  assert r1.startswith("A conversation between User and Assistant.")
  assert "<think> </think> and <answer> </answer>" in r1
  assert format_prompt(q, "qwen", system="S") == (
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
      "<|im_start|>assistant\n")
  assert format_prompt(q, "qwen", system="").startswith("<|im_start|>user\n")
  assert format_prompt(q, "llama3", system="S") == (
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n")
  assert R1_SYSTEM in format_prompt(q, "llama3")


def test_format_prompt_unknown_template():
  with pytest.raises(ValueError, match=r"unknown prompt template 'chatml'.*'plain', 'r1', 'qwen', 'llama3'"):
    format_prompt("q", "chatml")
