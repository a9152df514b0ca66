"""Sandboxed execution of model-written Python against unit tests (the code reward).

Each run gets a fresh interpreter (`python -I -S -B`: no environment variables, no
site-packages, no bytecode writes) in a new session, with a throwaway working directory that
is also its HOME and TMPDIR, and these limits (set in `preexec_fn`, hard = soft):

  RLIMIT_CPU     ceil(timeout_s) + 1 seconds    RLIMIT_AS      memory_mb
  RLIMIT_NPROC   1 (no new processes; ignored   RLIMIT_FSIZE   max_file_bytes (bounds output
                 by the kernel for root)                       files and anything written)
  RLIMIT_NOFILE  64                             RLIMIT_CORE    0

The wall-clock timeout kills the whole process group. The prelude (`sandbox_boot.py`)
installs an audit hook that hard-exits on socket use, process creation (fork, exec, spawn,
system, subprocess), signals to other processes, ctypes, writes or deletions outside the
working directory, and rlimit changes, so these also work when the host runs as root. Output
is read back truncated to max_output_bytes. The directory is deleted afterwards.

Threat model: mistakes and naive reward hacks of a policy being trained (infinite loops, fork
or memory bombs, sys.exit(0) before the tests, deleting or writing files, network calls). It
is not a boundary against a determined human attacker; for that add OS isolation (a
container or user namespace, a dedicated unprivileged user).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Optional

from reasoner.verify.answers import THINK_CLOSE, answer_block

STATUSES = ("ok", "failed", "timeout", "error", "killed")
VIOLATION_EXIT_CODE = 86  # must match sandbox_boot.VIOLATION_EXIT_CODE
MAX_SOURCE_CHARS = 200_000
_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_boot.py")
_VIOLATION_LINE = re.compile(r"sandbox violation: (\S+)")
_CODE_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  """Outcome of one sandboxed run.

  status: 'ok' (tests passed), 'failed' (a test raised), 'timeout' (wall clock), 'error' (the
  code did not compile or raised / exited before the tests), 'killed' (a resource limit or a
  blocked operation; `violation` names the blocked audit event).
  """

  passed: bool
  status: str
  stdout: str
  stderr: str
  returncode: Optional[int] = None
  duration_s: float = 0.0
  violation: Optional[str] = None


def _rlimits(timeout_s: float, memory_mb: int, max_file_bytes: int) -> list[tuple[int, int]]:
  """(resource, limit) pairs, clamped to the current hard limits."""
  wanted = [
      (resource.RLIMIT_CPU, int(math.ceil(timeout_s)) + 1),
      (resource.RLIMIT_AS, int(memory_mb) * 1024 * 1024),
      (resource.RLIMIT_NPROC, 1),
      (resource.RLIMIT_FSIZE, int(max_file_bytes)),
      (resource.RLIMIT_NOFILE, 64),
      (resource.RLIMIT_CORE, 0),
  ]
  out = []
  for res, value in wanted:
    _, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
      value = min(value, hard)
    out.append((res, value))
  return out


def _preexec_fn(limits: list[tuple[int, int]]):
  def apply():  # runs in the forked child: keep it minimal
    for res, value in limits:
      try:
        resource.setrlimit(res, (value, value))
      except (ValueError, OSError):
        pass

  return apply


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _read_capped(path: str, limit: int) -> str:
  try:
    with open(path, "rb") as f:
      return f.read(limit).decode("utf-8", "replace")
  except OSError:
    return ""


def _read_report(fd: int) -> str:
  os.set_blocking(fd, False)
  try:
    data = os.read(fd, 4096)
  except (BlockingIOError, OSError):
    data = b""
  return data.decode("utf-8", "replace").split("\n", 1)[0]


def _remove_tree(path: str) -> None:
  def make_writable_and_retry(func, target, _):
    try:
      os.chmod(os.path.dirname(target), stat.S_IRWXU)
      os.chmod(target, stat.S_IRWXU)
      func(target)
    except OSError:
      pass

  shutil.rmtree(path, onerror=make_writable_and_retry)


def run_python(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 256,
               max_output_bytes: int = 65536, max_file_bytes: int = 8 << 20) -> SandboxResult:
  """Runs `code` then `tests` (plain Python that raises, e.g. asserts, on failure) sandboxed."""
  if len(code) + len(tests) > MAX_SOURCE_CHARS:
    return SandboxResult(False, "error", "", "source too large", None, 0.0)
  base = tempfile.mkdtemp(prefix="reasoner_sandbox_")
  root = os.path.join(base, "work")
  os.mkdir(root, 0o700)
  stdout_path, stderr_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
  nonce = secrets.token_hex(16)
  payload = json.dumps({"nonce": nonce, "code": code, "tests": tests}).encode("utf-8")
  env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
         "LC_ALL": "C.UTF-8"}
  read_fd, write_fd = os.pipe()
  start = time.monotonic()
  timed_out = False
  try:
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
      try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", _BOOT, root, str(write_fd)],
            stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=root, env=env,
            pass_fds=(write_fd,), close_fds=True, start_new_session=True,
            preexec_fn=_preexec_fn(_rlimits(timeout_s, memory_mb, max_file_bytes)))
      except OSError as e:
        return SandboxResult(False, "error", "", f"sandbox failed to start: {e}", None, 0.0)
      finally:
        os.close(write_fd)
      try:
        proc.stdin.write(payload)
        proc.stdin.close()
      except OSError:  # the child died before reading (e.g. could not start)
        pass
      try:
        proc.wait(timeout=max(timeout_s - (time.monotonic() - start), 0.01))
      except subprocess.TimeoutExpired:
        timed_out = True
      _kill_group(proc.pid)  # also reaps anything the child left behind in its group
      proc.wait()
    duration = time.monotonic() - start
    report = _read_report(read_fd)
    stdout = _read_capped(stdout_path, max_output_bytes)
    stderr = _read_capped(stderr_path, max_output_bytes)
  finally:
    os.close(read_fd)
    _remove_tree(base)

  violation = None
  returncode = proc.returncode
  reported = report.split(" ")
  if timed_out:
    status = "timeout"
  elif returncode == VIOLATION_EXIT_CODE:
    status = "killed"
    found = _VIOLATION_LINE.findall(stderr)
    violation = found[-1] if found else "unknown"
  elif returncode < 0:
    status = "killed"  # a signal: CPU limit, out of memory, ...
  elif returncode == 0 and len(reported) == 2 and reported[0] == nonce and reported[1] in STATUSES:
    status = reported[1]
  else:
    status = "error"  # e.g. exited early with os._exit(0): the nonce was never reported
  return SandboxResult(status == "ok", status, stdout, stderr, returncode, duration, violation)


def extract_code(completion: str) -> str:
  """The program in a completion: the last ```python fence of the answer block, else its text.

  The answer block is the single `<answer>` after `</think>`; without one, the text after
  `</think>` (or the whole completion) is searched instead.
  """
  completion = completion or ""
  block = answer_block(completion)
  if block is None:
    if THINK_CLOSE in completion:
      block = completion[completion.rfind(THINK_CLOSE) + len(THINK_CLOSE):]
    else:
      block = completion
  fences = _CODE_FENCE.findall(block)
  return textwrap.dedent(fences[-1] if fences else block).strip("\n")


def code_reward(completion: str, tests: str, **sandbox_kwargs) -> float:
  """1.0 iff the completion's code passes `tests` in the sandbox, else 0.0."""
  code = extract_code(completion)
  if not code.strip():
    return 0.0
  return 1.0 if run_python(code, tests, **sandbox_kwargs).passed else 0.0
