"""Sandboxed execution of model-written Python, judged in this (trusted) process.

    result = run_python(code, tests)      # one program
    results = run_many(jobs, workers=2)   # a GRPO batch, in parallel

The program runs in a fresh interpreter (`python -I -S -B`) inside the OS sandbox of
`reasoner.rewards.isolation` (bubblewrap: own pid / net / IPC namespaces, a read-only view of
the interpreter only, a size-capped private tmpfs, an unprivileged uid), with these limits set
by the prelude before the code is read (hard = soft):

  RLIMIT_CPU     ceil(timeout_s) + 1 seconds    RLIMIT_AS      memory_mb
  RLIMIT_NPROC   1 (per fresh uid: no fork,     RLIMIT_FSIZE   max_file_bytes (per file; the
                 no threads)                                   tmpfs caps the total: tmpfs_mb
                                                               and max_files inodes)
  RLIMIT_NOFILE  64                             RLIMIT_CORE    0

The child never sees the tests. `code_tests.plan_tests` turns them into probes (the calls
into the solution, test data inlined); the child returns each probe's value as a plain
literal and this process runs the tests on those values (`code_tests.judge_tests`). Nothing
the child writes can decide the verdict: a forged line is only a forged output.

Output is read while the program runs and kept up to a cap (the rest is drained); the
wall-clock timeout kills the whole process group, and bwrap's --die-with-parent and pid
namespace take everything inside with it. Without bubblewrap the code reward refuses to run
unless the caller passes allow_weak_sandbox=True (rlimits, a new session and the prelude's
audit hook only, in a throwaway directory; see isolation.sandbox_mode).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import re
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Optional, Sequence

from reasoner.rewards import isolation
from reasoner.rewards.code_tests import UnsupportedTests, judge_tests, plan_tests
from reasoner.verify.answers import THINK_CLOSE, answer_block

STATUSES = ("ok", "failed", "timeout", "error", "killed")
VIOLATION_EXIT_CODE = 86  # must match sandbox_boot.VIOLATION_EXIT_CODE
MEMORY_EXIT_CODE = 87  # must match sandbox_boot.MEMORY_EXIT_CODE
MAX_SOURCE_CHARS = 200_000
_BOOT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_boot.py")
with open(_BOOT_PATH, encoding="utf-8") as _f:
  _BOOT_SOURCE = _f.read()
_VIOLATION_LINE = re.compile(r"sandbox violation: (\S+)")
_CODE_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8"}


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  """Outcome of one sandboxed run.

  status: 'ok' (every check passed), 'failed' (a check failed or a probe raised), 'timeout'
  (wall clock), 'error' (the code did not compile, raised or exited before the probes were
  answered), 'killed' (a resource limit or a blocked operation; `violation` names the audit
  event). `failure` says which check failed; `checks` counts the asserts judged.
  """

  passed: bool
  status: str
  stdout: str
  stderr: str
  returncode: Optional[int] = None
  duration_s: float = 0.0
  violation: Optional[str] = None
  failure: Optional[str] = None
  checks: int = 0
  isolation: str = ""


def _limits(timeout_s: float, memory_mb: int, max_file_bytes: int) -> list[tuple[str, int]]:
  return [("RLIMIT_CPU", int(math.ceil(timeout_s)) + 1),
          ("RLIMIT_AS", int(memory_mb) * 1024 * 1024), ("RLIMIT_NPROC", 1),
          ("RLIMIT_FSIZE", int(max_file_bytes)), ("RLIMIT_NOFILE", 64), ("RLIMIT_CORE", 0)]


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _watch_init(raw: bytes, box: list, bwrap_pid: int) -> None:
  """Opens a pidfd on the sandbox's init from bwrap's --info-fd JSON (once): killing it ends
  every process of the sandbox's pid namespace, and its exit means they are all gone."""
  if box:
    return
  try:
    # bwrap writes this before it starts the program: only the first object counts.
    pid = int(json.JSONDecoder().raw_decode(raw.decode("utf-8").lstrip())[0]["child-pid"])
    pidfd = os.pidfd_open(pid)
    with open(f"/proc/{pid}/status", encoding="ascii") as f:  # only bwrap's own child
      parent = int(next(l for l in f if l.startswith("PPid:")).split()[1])
    if parent != bwrap_pid:
      os.close(pidfd)
      return
    box.append(pidfd)
  except (ValueError, KeyError, TypeError, OSError, AttributeError, StopIteration):
    return


def _kill_sandbox(box: list, wait_s: float = 10.0) -> None:
  for pidfd in box:
    try:
      signal.pidfd_send_signal(pidfd, signal.SIGKILL)
      poller = select.poll()
      poller.register(pidfd, select.POLLIN)
      poller.poll(wait_s * 1000)  # readable once it (and so its namespace) is gone
    except OSError:
      pass
    finally:
      os.close(pidfd)
  box.clear()


def _communicate(proc: subprocess.Popen, extra: dict, payload: bytes, deadline: float,
                 caps: dict[str, int], on_info=None) -> tuple[dict[str, bytes], bool]:
  """Feeds stdin and reads stdout / stderr / results, keeping each up to its cap, until EOF
  or the deadline. Returns the bytes kept per stream and whether the deadline passed."""
  files = {"stdout": proc.stdout, "stderr": proc.stderr, **extra}
  streams = {name: f.fileno() for name, f in files.items()}
  data = {name: bytearray() for name in streams}
  sel = selectors.DefaultSelector()
  for name, fd in streams.items():
    os.set_blocking(fd, False)
    sel.register(fd, selectors.EVENT_READ, name)
  stdin_fd = proc.stdin.fileno()
  os.set_blocking(stdin_fd, False)
  sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
  pending = memoryview(payload)
  open_readers = len(streams)
  timed_out = False
  try:
    while open_readers:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        timed_out = True
        break
      for key, _ in sel.select(timeout=min(remaining, 1.0)):
        name = key.data
        if name == "stdin":
          try:
            pending = pending[os.write(stdin_fd, pending[:65536]):]
          except BlockingIOError:
            continue
          except OSError:  # the child is gone or closed its stdin
            pending = pending[:0]
          if not pending:
            sel.unregister(stdin_fd)
            proc.stdin.close()
          continue
        try:
          chunk = os.read(key.fd, 65536)
        except BlockingIOError:
          continue
        except OSError:
          chunk = b""
        room = caps[name] - len(data[name])
        data[name] += chunk[:max(room, 0)]  # past the cap, stdout / stderr are drained unkept
        if name == "info" and on_info is not None and chunk:
          on_info(bytes(data[name]))
        if not chunk or (name in ("results", "info") and len(chunk) > room):
          sel.unregister(key.fd)
          open_readers -= 1
          if chunk:  # too many results: close the channel (the writer gets EPIPE)
            files[name].close()
  finally:
    sel.close()
    if not proc.stdin.closed:
      try:
        proc.stdin.close()
      except OSError:
        pass
  return {k: bytes(v) for k, v in data.items()}, timed_out


def _decode(obj, depth: int = 0):
  """A plain value from the child's tagged JSON (see sandbox_boot._encode); ValueError or
  TypeError for anything else."""
  if depth > 100:
    raise ValueError("nested too deeply")
  if obj is None or type(obj) in (bool, int, str, float):
    return obj
  if type(obj) is not list or len(obj) < 2 or not isinstance(obj[0], str):
    raise ValueError("not a tagged value")
  tag, body = obj[0], obj[1]
  if tag == "f" and isinstance(body, str):
    return float(body)
  if tag == "c" and len(obj) == 3:
    return complex(float(obj[1]), float(obj[2]))
  if tag == "b" and isinstance(body, str):
    return bytes.fromhex(body)
  if not isinstance(body, list):
    raise ValueError("not a tagged value")
  if tag == "d":
    return {_decode(k, depth + 1): _decode(v, depth + 1) for k, v in body}
  build = {"l": list, "t": tuple, "s": set, "F": frozenset}.get(tag)
  if build is None:
    raise ValueError(f"unknown tag {tag!r}")
  return build(_decode(v, depth + 1) for v in body)


def _parse_results(raw: bytes, n_probes: int) -> tuple[bool, list[tuple[bool, Any]]]:
  """(loaded, [(ok, value or error name)]) from the child's result lines; anything malformed
  ends the list (the missing probes then fail)."""
  lines = raw.split(b"\n")
  try:
    head = json.loads(lines[0])
  except (ValueError, RecursionError):
    return False, []
  if not isinstance(head, dict) or head.get("load") != "ok":
    return False, []
  values = []
  for line in lines[1:1 + n_probes]:
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
        break
      if record["ok"]:
        values.append((True, _decode(record["value"])))
      else:
        values.append((False, str(record.get("error"))[:100]))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, KeyError):
      break
  return True, values


def run_python(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 256,
               max_output_bytes: int = 65536, max_file_bytes: int = 8 << 20, *,
               tmpfs_mb: int = 64, max_files: int = 4096, max_result_bytes: int = 1 << 20,
               allow_weak_sandbox: bool = False, audit_hook: bool = True,
               _mode: Optional[str] = None) -> SandboxResult:
  """Runs `code`, evaluates the probes of `tests` in the sandbox and judges them here.

  `tests`: see `code_tests` (asserts over calls into the solution; "" runs the program only).
  Raises UnsupportedTests for tests that cannot be judged outside the child, and
  isolation.SandboxUnavailable when bwrap does not work and allow_weak_sandbox is False.
  `audit_hook=False` leaves the OS boundary alone (used by the tests of that boundary).
  """
  plan = plan_tests(tests)
  mode = _mode or isolation.sandbox_mode(allow_weak_sandbox)
  if len(code) + sum(map(len, plan.probes)) > MAX_SOURCE_CHARS:
    return SandboxResult(False, "error", "", "source too large", None, 0.0, isolation=mode)
  workdir = None
  info_read, info_write = os.pipe()  # bwrap reports the host pid of the sandbox's init here
  info = os.fdopen(info_read, "rb", buffering=0)
  if mode == "bwrap":
    cmd = isolation.bwrap_command(tmpfs_mb << 20) + ["--info-fd", str(info_write)] + [
        os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", _BOOT_SOURCE]
    root, uid, cwd = "/tmp", isolation.sandbox_uid(), "/"
  else:
    workdir = tempfile.mkdtemp(prefix="reasoner_sandbox_")
    root = cwd = os.path.join(workdir, "work")
    os.mkdir(root, 0o700)
    cmd, uid = [sys.executable, "-I", "-S", "-B", _BOOT_PATH], None
  read_fd, write_fd = os.pipe()
  results = os.fdopen(read_fd, "rb", buffering=0)
  tmpfs = {"path": "/tmp", "size": tmpfs_mb << 20, "inodes": max_files} if uid is not None \
      else None
  request = {"code": code, "probes": list(plan.probes), "uid": uid, "root": root, "tmpfs": tmpfs,
             "hook": bool(audit_hook), "math": plan.uses_math, "result_fd": write_fd,
             "limits": _limits(timeout_s, memory_mb, max_file_bytes)}
  env = dict(_ENV, HOME=root, TMPDIR=root)
  start = time.monotonic()
  try:
    try:
      passed_fds = (write_fd, info_write) if mode == "bwrap" else (write_fd,)
      proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=cwd, env=env, pass_fds=passed_fds,
                              close_fds=True, start_new_session=True)
    finally:
      os.close(write_fd)
      os.close(info_write)
    caps = {"stdout": max_output_bytes, "stderr": max_output_bytes, "results": max_result_bytes,
            "info": 4096}
    init_pidfd: list = []  # the sandbox's init, once bwrap has reported it
    try:
      data, timed_out = _communicate(
          proc, {"results": results, "info": info}, json.dumps(request).encode("utf-8"),
          start + timeout_s, caps, on_info=lambda raw: _watch_init(raw, init_pidfd, proc.pid))
      if not timed_out:
        try:
          proc.wait(timeout=max(start + timeout_s - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
          timed_out = True
    finally:
      _kill_sandbox(init_pidfd)
      _kill_group(proc.pid)  # also reaps anything left in its group
      proc.kill()
      proc.wait()
      for stream in (proc.stdout, proc.stderr):
        stream.close()
  finally:
    results.close()
    info.close()
    if workdir is not None:
      _remove_tree(workdir)
  duration = time.monotonic() - start
  stdout = data["stdout"].decode("utf-8", "replace")
  stderr = data["stderr"].decode("utf-8", "replace")
  returncode = proc.returncode
  violation, failure, checks = None, None, 0
  if timed_out:
    status = "timeout"
  elif returncode == VIOLATION_EXIT_CODE:
    status = "killed"
    found = _VIOLATION_LINE.findall(stderr)
    violation = found[-1] if found else "unknown"
  elif returncode < 0 or returncode > 128 or returncode == MEMORY_EXIT_CODE:
    status = "killed"  # a signal (bwrap reports 128 + signal): CPU, memory, file size, ...
  else:
    loaded, values = _parse_results(data["results"], len(plan.probes))
    if not loaded or returncode != 0:
      status, failure = "error", "the program failed before its outputs were read"
    else:
      verdict = judge_tests(tests, values)
      status = "ok" if verdict.passed else "failed"
      failure, checks = verdict.failure, verdict.checks
  return SandboxResult(status == "ok", status, stdout, stderr, returncode, duration, violation,
                       failure, checks, mode)


def _remove_tree(path: str) -> None:
  def make_writable_and_retry(func, target, _):
    try:
      os.chmod(os.path.dirname(target), 0o700)
      os.chmod(target, 0o700)
      func(target)
    except OSError:
      pass

  shutil.rmtree(path, onerror=make_writable_and_retry)


def default_workers() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)


def run_many(jobs: Sequence[tuple[str, str]], workers: int = 0, **kwargs) -> list[SandboxResult]:
  """run_python(code, tests, **kwargs) for each (code, tests), `workers` at a time (0 = the
  CPUs this process may use); results in the order of `jobs`. Each run keeps its own timeout."""
  if not jobs:
    return []
  isolation.sandbox_mode(kwargs.get("allow_weak_sandbox", False))  # refuse (or warn) once
  workers = workers or default_workers()
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
    return list(pool.map(lambda job: run_python(job[0], job[1], **kwargs), jobs))


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


def require_checks(tests: str) -> None:
  """Raises ValueError unless `tests` judge at least one assert (a reward needs a check)."""
  if plan_tests(tests).num_checks == 0:
    raise UnsupportedTests("the tests contain no assert to judge")


def code_reward(completion: str, tests: str, **sandbox_kwargs) -> float:
  """1.0 iff the completion's code passes `tests` in the sandbox, else 0.0."""
  require_checks(tests)
  code = extract_code(completion)
  if not code.strip():
    return 0.0
  return 1.0 if run_python(code, tests, **sandbox_kwargs).passed else 0.0
