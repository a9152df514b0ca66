"""The OS boundary of the code sandbox: bubblewrap (`bwrap`, Debian package `bubblewrap`).

Each run gets new pid, network, IPC and UTS namespaces and a filesystem view that holds only the
interpreter, read-only (its prefix, with site-packages hidden, and the shared libraries it and
its extension modules load, found with ldd), a fresh /proc of its own pid namespace, a minimal
/dev and a size-capped private tmpfs at /tmp, the only writable place. No /etc, no project
files, no host processes, no network. As root, bwrap keeps only CAP_SETUID / CAP_SETGID /
CAP_SYS_ADMIN for the prelude, which caps the tmpfs's inodes and drops to a fresh unprivileged
uid per run before it reads the program (so RLIMIT_NPROC applies and no capability remains); as
another user, bwrap maps the caller's uid into a user namespace (the tmpfs then has a size cap
only).

`sandbox_mode(allow_weak)` is 'bwrap' when a probe run works (cached), else 'weak' (rlimits,
session and audit hook only) if the caller accepts it, with a warning, else it raises
SandboxUnavailable.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import threading
import warnings

UID_RANGE = (200_000, 1 << 30)  # unprivileged uids drawn per run when starting as root


class SandboxUnavailable(RuntimeError):
  """No OS isolation here and the config did not accept the weak sandbox."""


_lock = threading.Lock()
_probe_result: dict[str, object] = {}
_warned = [False]


def _interpreter_paths() -> list[str]:
  paths = []
  for path in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(
      os.path.realpath(sys.executable)))):
    path = os.path.realpath(path)
    if path != "/" and not any(path == p or path.startswith(p + "/") for p in paths):
      paths = [p for p in paths if not p.startswith(path + "/")] + [path]
  return paths


def _hidden_paths(prefixes: list[str]) -> list[str]:
  """site-packages directories inside the bound prefixes (hidden behind empty tmpfs)."""
  hidden = []
  for key in ("purelib", "platlib"):
    path = os.path.realpath(sysconfig.get_paths()[key])
    if os.path.isdir(path) and any(path.startswith(p + "/") for p in prefixes):
      hidden.append(path)
  return sorted(set(hidden))


def _parent_dirs(path: str, made: set) -> list[str]:
  """`--dir` for each folder above `path` not made yet, world-readable (bwrap would otherwise
  copy the host's modes, and a 0700 folder hides what is under it from the dropped uid)."""
  args = []
  parts = path.strip("/").split("/")
  for i in range(1, len(parts)):
    parent = "/" + "/".join(parts[:i])
    if parent not in made:
      made.add(parent)
      args += ["--perms", "0755", "--dir", parent]
  return args


def _path_args(path: str, made: set) -> list[str]:
  """bwrap arguments that reproduce `path` inside the sandbox: each symlink on the way as a
  symlink, then the real file or folder, read-only."""
  parts = path.strip("/").split("/")
  for i in range(1, len(parts) + 1):
    here = "/" + "/".join(parts[:i])
    if os.path.islink(here):
      target = os.readlink(here)
      args = [] if here in made else _parent_dirs(here, made) + ["--symlink", target, here]
      made.add(here)
      resolved = os.path.normpath(os.path.join(os.path.dirname(here), target, *parts[i:]))
      return args + _path_args(resolved, made)
  if path in made:
    return []
  args = _parent_dirs(path, made)
  made.add(path)
  return args + ["--ro-bind", path, path]


@functools.lru_cache(maxsize=1)
def _libraries() -> tuple[str, ...]:
  """The shared libraries (as the loader names them) that the interpreter and its extension
  modules load, from ldd; () when ldd is unavailable."""
  ldd = shutil.which("ldd")
  if ldd is None:
    return ()
  dynload = os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload")
  targets = [os.path.realpath(sys.executable)] + sorted(glob.glob(os.path.join(dynload, "*.so")))
  try:
    out = subprocess.run([ldd] + targets, capture_output=True, text=True, timeout=60,
                         check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return ()
  found = set()
  for line in out.splitlines():
    match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
    if match and os.path.exists(match.group(1)):
      found.add(match.group(1))
  return tuple(sorted(found))


def bwrap_command(tmpfs_bytes: int) -> list[str]:
  """The bwrap argument list up to (not including) the interpreter command."""
  root = os.geteuid() == 0
  cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
         "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
  if root:
    # Held by the prelude only: it caps the tmpfs's inodes, then drops to an unprivileged uid.
    cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
            "--cap-add", "CAP_SYS_ADMIN"]
  else:
    cmd += ["--unshare-user"]
  prefixes = _interpreter_paths()
  made = set()
  for path in prefixes:
    cmd += _path_args(path, made)
  libraries = [p for p in _libraries() if not any(
      os.path.realpath(p).startswith(prefix + "/") for prefix in prefixes)]
  if libraries:  # only the libraries the interpreter loads
    for path in libraries:
      cmd += _path_args(path, made)
  else:  # no ldd: the system library folders
    for path in ["/usr/lib", "/usr/lib64", "/lib", "/lib64"]:
      if os.path.exists(path):
        cmd += _path_args(path, made)
  for path in _hidden_paths(prefixes):
    cmd += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
  cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(int(tmpfs_bytes)),
          "--tmpfs", "/tmp", "--chdir", "/tmp"]
  return cmd


def sandbox_uid() -> int | None:
  """A fresh unprivileged uid for one run when the host runs as root, else None."""
  if os.geteuid() != 0:
    return None
  return UID_RANGE[0] + secrets.randbelow(UID_RANGE[1] - UID_RANGE[0])


def bwrap_status() -> tuple[bool, str]:
  """(works, reason) for bubblewrap on this host; probed once per process."""
  with _lock:
    if "bwrap" not in _probe_result:
      _probe_result["bwrap"] = _probe_bwrap()
    return _probe_result["bwrap"]


def _probe_bwrap() -> tuple[bool, str]:
  if shutil.which("bwrap") is None:
    return False, "bwrap is not installed (apt-get install bubblewrap)"
  from reasoner.rewards.sandbox import run_python  # pylint: disable=import-outside-toplevel
  try:
    result = run_python("def two():\n  return 2\n", "assert two() == 2", timeout_s=30.0,
                        _mode="bwrap")
  except OSError as e:
    return False, f"bwrap failed to start: {e}"
  if not result.passed:
    detail = (result.stderr.strip().splitlines() or [result.status])[-1]
    return False, f"bwrap cannot create the sandbox here: {detail[:200]}"
  return True, "ok"


def sandbox_mode(allow_weak: bool) -> str:
  """'bwrap', or 'weak' when bwrap does not work and `allow_weak` (warns once); else raises."""
  works, reason = bwrap_status()
  if works:
    return "bwrap"
  if not allow_weak:
    raise SandboxUnavailable(
        f"the code reward needs OS isolation and {reason}; install bubblewrap, or accept the "
        "weaker in-process sandbox with allow_weak_sandbox=True (config.grpo.reward)")
  if not _warned[0]:
    _warned[0] = True
    warnings.warn(f"code sandbox without OS isolation ({reason}): rlimits and an audit hook "
                  "only; a determined program can read host files", RuntimeWarning, stacklevel=3)
  return "weak"
