"""Prompt templates: how a question is wrapped before the model writes `<think>...` + EOS."""

from __future__ import annotations

from typing import Optional

# DeepSeek-R1-Zero's instruction: think inside <think></think>, answer inside <answer></answer>.
R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think><answer> answer here </answer>.")

# The instruction R1-Zero mode puts before every question (config.r1_zero; the system text of
# the configured template, so a plain-template prompt is "{this}\nUser: {question}\nAssistant:").
# It says what R1-Zero's template says (think inside <think></think>, then answer inside
# <answer></answer>), kept short: the tiny tokenizer spells most of it a few letters per token.
R1_ZERO_INSTRUCTION = ("The Assistant works the problem out inside <think> </think>, then gives "
                       "only the final answer inside <answer> </answer>.")


def _plain(question: str, system: Optional[str]) -> str:
  head = f"{system}\n" if system else ""
  return f"{head}User: {question}\nAssistant:"


def _r1(question: str, system: Optional[str]) -> str:
  return f"{R1_SYSTEM if system is None else system} User: {question}\nAssistant:"


def _qwen(question: str, system: Optional[str]) -> str:
  system = R1_SYSTEM if system is None else system
  head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
  return f"{head}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def _llama3(question: str, system: Optional[str]) -> str:
  system = R1_SYSTEM if system is None else system
  head = "<|begin_of_text|>"
  if system:
    head += f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
  return (f"{head}<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")


_TEMPLATES = {"plain": _plain, "r1": _r1, "qwen": _qwen, "llama3": _llama3}
TEMPLATES = tuple(_TEMPLATES)


def format_prompt(question: str, template: str = "plain", system: Optional[str] = None) -> str:
  """The prompt text for `question`; the model's completion follows it directly.

  plain:  "User: {question}\\nAssistant:" (with `system`, a "{system}\\n" line first)
  r1:     DeepSeek-R1-Zero's instruction (or `system`), then " User: {question}\\nAssistant:"
  qwen:   ChatML; llama3: Llama 3 chat headers (starts with <|begin_of_text|>). Both use the R1
          instruction as the system message unless `system` is given; system="" drops it.
  """
  if template not in _TEMPLATES:
    raise ValueError(f"unknown prompt template {template!r}; valid templates: {list(TEMPLATES)}")
  return _TEMPLATES[template](question, system)
