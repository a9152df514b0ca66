"""Symbolic equivalence under a hard time limit, computed by a persistent sympy worker process.

sympy can run for minutes (or forever) on adversarial input and a Python thread cannot be
stopped, so the comparison runs in a child process that is killed (and lazily restarted) when
it misses its deadline. The child also bounds its address space, and it parses expressions
with a namespace holding only whitelisted sympy names and no builtins. Callers are expected
to pre-validate the strings too (see `reasoner.verify.answers`).

Run as a script (`python symbolic.py --worker`) this file is the worker itself; it must not
import anything from `reasoner`.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Optional

STARTUP_TIMEOUT_S = 120.0  # importing sympy on a busy 2-core machine can take seconds
WORKER_MEMORY_MB = 2048
_READY = b"ready\n"

# Names an expression may use; anything else that looks like a name becomes a Symbol.
FUNCTION_NAMES = ("sqrt", "log", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos",
                  "atan", "sinh", "cosh", "tanh", "Abs")
CONSTANT_NAMES = ("pi", "E", "I", "oo")


class SympyWorker:
  """A lazily started sympy process answering `equal(a, b)` requests one at a time."""

  def __init__(self, startup_timeout_s: float = STARTUP_TIMEOUT_S):
    self._startup_timeout_s = startup_timeout_s
    self._proc: Optional[subprocess.Popen] = None
    self._pid_of_owner = None
    self._lock = threading.Lock()

  def equal(self, a: str, b: str, timeout_s: float) -> Optional[bool]:
    """True/False, or None when the worker failed or ran past `timeout_s` (then it is killed)."""
    with self._lock:
      if not self._ensure_started():
        return None
      request = json.dumps({"a": a, "b": b}).encode() + b"\n"
      try:
        os.write(self._proc.stdin.fileno(), request)
        line = self._read_line(timeout_s)
      except OSError:
        line = None
      if line is None:
        self._kill()
        return None
      try:
        return bool(json.loads(line)["equal"])
      except (ValueError, KeyError, TypeError):
        self._kill()
        return None

  def close(self) -> None:
    with self._lock:
      self._kill()

  def _ensure_started(self) -> bool:
    if (self._proc is not None and self._proc.poll() is None
        and self._pid_of_owner == os.getpid()):
      return True
    self._kill()
    # -P (3.11+): keep this file's directory off sys.path so its siblings cannot shadow modules.
    flags = ["-P"] if sys.version_info >= (3, 11) else []
    self._proc = subprocess.Popen(
        [sys.executable, *flags, os.path.abspath(__file__), "--worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        close_fds=True)
    self._pid_of_owner = os.getpid()
    if self._read_line(self._startup_timeout_s) != _READY:
      self._kill()
      return False
    return True

  def _read_line(self, timeout_s: float) -> Optional[bytes]:
    """Reads one newline-terminated line from the worker, or None past the deadline / at EOF."""
    fd = self._proc.stdout.fileno()
    deadline = time.monotonic() + max(timeout_s, 0.0)
    chunks = []
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        return None
      ready, _, _ = select.select([fd], [], [], left)
      if not ready:
        return None
      chunk = os.read(fd, 65536)
      if not chunk:
        return None
      chunks.append(chunk)
      if chunk.endswith(b"\n"):
        return b"".join(chunks)

  def _kill(self) -> None:
    if self._proc is None:
      return
    if self._pid_of_owner == os.getpid():
      try:
        self._proc.kill()
        self._proc.wait(timeout=5)
      except (OSError, subprocess.TimeoutExpired):
        pass
    self._proc = None


_DEFAULT_WORKER = SympyWorker()
atexit.register(_DEFAULT_WORKER.close)


def symbolic_equal(a: str, b: str, timeout_s: float = 1.0) -> Optional[bool]:
  """Whether two sympy-syntax expressions are equal; None when undecided within `timeout_s`."""
  return _DEFAULT_WORKER.equal(a, b, timeout_s)


# ----------------------------------------------------------------------------- worker side


def _worker_main() -> None:
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
  try:
    import resource
    limit = WORKER_MEMORY_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  except (ImportError, ValueError, OSError):
    pass
  import sympy
  from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application,
                                          parse_expr, standard_transformations)

  transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
  namespace = {"__builtins__": {}}
  constructors = ("Integer", "Float", "Rational", "Symbol", "Function")
  for name in constructors + FUNCTION_NAMES + CONSTANT_NAMES:
    namespace[name] = getattr(sympy, name)

  def parse(text):
    expr = parse_expr(text, global_dict=dict(namespace), transformations=transformations)
    if not isinstance(expr, sympy.Expr):
      raise ValueError("not an expression")
    return expr

  def equal(a, b):
    ea, eb = parse(a), parse(b)
    if ea == eb:
      return True
    diff = ea - eb
    if sympy.simplify(diff) == 0:
      return True
    return diff.equals(0) is True

  out = sys.stdout.buffer
  out.write(_READY)
  out.flush()
  for line in sys.stdin.buffer:
    try:
      request = json.loads(line)
      result = {"equal": bool(equal(request["a"], request["b"]))}
    except Exception as e:  # pylint: disable=broad-except
      result = {"equal": False, "error": type(e).__name__}
    out.write(json.dumps(result).encode() + b"\n")
    out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
  _worker_main()
