"""Verifiable problems: procedural tasks with held-out splits, GSM8K and JSONL datasets."""

from reasoner.data.datasets import (DatasetFormatError, gsm8k_problem, load_gsm8k,
                                    load_jsonl_preferences, load_jsonl_problems,
                                    parse_gsm8k_answer)
from reasoner.data.problem import PreferencePair, Problem
from reasoner.data.tasks import TASKS, Task, get_task, mixture, split_of_key
