"""Tools the model can call, and the text syntax of a call and of its result.

A model turn that calls a tool ends with one call; the environment answers with the result:

  model:        <think><tool>calc: 347*86</tool>
  environment:  <result>29842</result>
  model:        </think><answer>29842</answer>

The syntax is `<tool>NAME: INPUT</tool>` (INPUT may span lines, e.g. Python code) and the
environment's answer `<result>OUTPUT</result>`, or `<result>error: MESSAGE</result>` for a
malformed call, an unknown tool, or a tool that refused or failed. Tool output is cut to
`max_chars` and any reserved tag inside it is defused (`<answer>` -> `[answer]`), so a tool
cannot forge an answer block or a nested call.

Tools: `calc` (exact arithmetic, see `calculator.py`) and `python` (a program run in the
sandbox of `reasoner.rewards.sandbox`; its stdout is the result, and a final bare expression is
printed, as in a REPL).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import textwrap
from typing import Callable, Mapping, Optional

from reasoner.agentic.calculator import CalculatorError, calculate, format_number
from reasoner.rewards.isolation import SandboxUnavailable
from reasoner.rewards.sandbox import run_python

TOOL_OPEN, TOOL_CLOSE = "<tool>", "</tool>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
TOOL_TAGS = (TOOL_OPEN, TOOL_CLOSE, RESULT_OPEN, RESULT_CLOSE)
RESERVED_TAGS = ("<think>", "</think>", "<answer>", "</answer>") + TOOL_TAGS
MAX_OUTPUT_CHARS = 200

_CALL_BODY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)", re.S)
_FENCE = re.compile(r"^```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)\n?```\s*$", re.S | re.I)

Tool = Callable[[str], str]  # input text -> output text; raises ToolError (a ValueError) on failure


class ToolError(ValueError):
  """A tool refused or failed; the message is shown to the model."""


@dataclasses.dataclass(frozen=True)
class ToolCall:
  """A parsed call. `error` is set (and name / argument may be empty) for a malformed one."""

  name: str
  argument: str
  error: Optional[str] = None


def parse_tool_call(text: str) -> Optional[ToolCall]:
  """The tool call in one model turn: None when the turn has no tool tag at all.

  Exactly one `<tool>NAME: INPUT</tool>` is a call (text around it is allowed). Anything else
  that contains a tool tag is a ToolCall with `error` set, never an exception: several calls in
  one turn, an unclosed or unopened tag, a body without `NAME:`, or an empty input.
  """
  text = text or ""
  n_open, n_close = text.count(TOOL_OPEN), text.count(TOOL_CLOSE)
  if n_open == 0 and n_close == 0:
    return None
  if n_open > 1 or n_close > 1:
    return ToolCall("", "", "one tool call per turn: write one <tool>NAME: INPUT</tool> and "
                    "wait for its result")
  if n_close == 0:
    return ToolCall("", "", f"unclosed {TOOL_OPEN}: end the call with {TOOL_CLOSE}")
  if n_open == 0:
    return ToolCall("", "", f"{TOOL_CLOSE} without {TOOL_OPEN}")
  start, end = text.index(TOOL_OPEN) + len(TOOL_OPEN), text.index(TOOL_CLOSE)
  if end < start:
    return ToolCall("", "", f"{TOOL_CLOSE} before {TOOL_OPEN}")
  m = _CALL_BODY.fullmatch(text[start:end])
  if m is None:
    return ToolCall("", "", f"malformed tool call: expected {TOOL_OPEN}NAME: INPUT{TOOL_CLOSE}")
  name, argument = m.group(1), m.group(2).strip()
  if not argument:
    return ToolCall(name, "", f"empty input for tool {name!r}")
  return ToolCall(name, argument)


def format_call(name: str, argument: str) -> str:
  """The text of a call: format_call('calc', '2+2') == '<tool>calc: 2+2</tool>'."""
  return f"{TOOL_OPEN}{name}: {argument}{TOOL_CLOSE}"


def defuse(text: str, max_chars: int = MAX_OUTPUT_CHARS) -> str:
  """Tool output made safe to splice into a transcript: reserved tags become [tag], and the
  text is cut to max_chars (with a trailing '...')."""
  for tag in RESERVED_TAGS:
    text = text.replace(tag, "[" + tag[1:-1] + "]")
  return text if len(text) <= max_chars else text[:max(max_chars - 3, 0)] + "..."


def format_result(output: str, max_chars: int = MAX_OUTPUT_CHARS) -> str:
  """The environment's observation for a tool output: '<result>OUTPUT</result>'."""
  return f"{RESULT_OPEN}{defuse(output, max_chars)}{RESULT_CLOSE}"


# ------------------------------------------------------------------------------------ the tools


def calculator_tool(expression: str) -> str:
  """'347*86' -> '29842'; exact fractions ('1/3+1/6' -> '1/2'). Raises ToolError."""
  try:
    return format_number(calculate(expression))
  except CalculatorError as e:
    raise ToolError(str(e)) from None


def _program(code: str) -> str:
  """Strips a ``` fence and dedents; a final bare expression (not already a print) is printed."""
  code = textwrap.dedent(code).strip()
  fenced = _FENCE.match(code)
  if fenced:
    code = textwrap.dedent(fenced.group(1)).strip()
  try:
    tree = ast.parse(code)
  except SyntaxError as e:
    raise ToolError(f"SyntaxError: {e.msg} (line {e.lineno})") from None
  except (ValueError, RecursionError, MemoryError) as e:
    raise ToolError(f"cannot parse the program: {type(e).__name__}") from None
  last = tree.body[-1] if tree.body else None
  if isinstance(last, ast.Expr) and not (isinstance(last.value, ast.Call) and
                                         isinstance(last.value.func, ast.Name) and
                                         last.value.func.id == "print"):
    call = ast.Call(func=ast.Name("print", ast.Load()), args=[last.value], keywords=[])
    tree.body[-1] = ast.fix_missing_locations(ast.Expr(call))
  return ast.unparse(tree)


def python_tool(code: str, timeout_s: float = 2.0, memory_mb: int = 256,
                allow_weak_sandbox: bool = False) -> str:
  """Runs `code` in the sandbox; returns its stdout (stripped) or raises ToolError with the
  last line of the traceback / the sandbox's reason."""
  result = run_python(_program(code), "", timeout_s=timeout_s, memory_mb=memory_mb,
                      max_output_bytes=4096, allow_weak_sandbox=allow_weak_sandbox)
  if result.passed:
    out = result.stdout.strip()
    return out if out else "(no output)"
  if result.status == "timeout":
    raise ToolError(f"timed out after {timeout_s:g}s")
  if result.status == "killed":
    raise ToolError(f"blocked by the sandbox ({result.violation})" if result.violation
                    else "killed (resource limit)")
  lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
  raise ToolError(lines[-1].strip() if lines else f"failed ({result.status})")


def default_tools(python_timeout_s: float = 2.0, python_memory_mb: int = 256,
                  python_allow_weak_sandbox: bool = False) -> dict[str, Tool]:
  """{'calc': calculator_tool, 'python': python_tool with these limits}."""
  return {"calc": calculator_tool,
          "python": functools.partial(python_tool, timeout_s=python_timeout_s,
                                      memory_mb=python_memory_mb,
                                      allow_weak_sandbox=python_allow_weak_sandbox)}


def run_tool_call(call: ToolCall, tools: Mapping[str, Tool]) -> tuple[str, Optional[str]]:
  """(output text, error or None) for a parsed call. The output of a failed
  call is 'error: MESSAGE'. Only a host without the sandbox (SandboxUnavailable) raises."""
  error = call.error
  if error is None and call.name not in tools:
    error = f"unknown tool {call.name!r}; available: {', '.join(sorted(tools)) or 'none'}"
  if error is None:
    try:
      return str(tools[call.name](call.argument)), None
    except SandboxUnavailable:
      raise  # a configuration error of the host, not of the call
    except ValueError as e:  # ToolError and CalculatorError are ValueErrors
      error = str(e) or type(e).__name__
    except Exception as e:  # pylint: disable=broad-except
      error = f"{call.name} failed: {type(e).__name__}: {e}"
  return f"error: {error}", error
