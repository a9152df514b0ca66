"""The answer verifier: extracting the final answer of a completion and deciding whether it
equals a reference (numbers, fractions, LaTeX, expressions through a sandboxed SymPy worker).
Pure text in, verdict out: the lowest layer the tasks, the rewards and the evaluation share."""

from reasoner.verify.answers import (ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN,
                                     answer_block, answers_equal, boxed_contents, extract_answer,
                                     math_accuracy, normalize_answer)

__all__ = ["ANSWER_CLOSE", "ANSWER_OPEN", "THINK_CLOSE", "THINK_OPEN", "answer_block",
           "answers_equal", "boxed_contents", "extract_answer", "math_accuracy",
           "normalize_answer"]
