"""Child-side prelude of the Python sandbox (see `reasoner.rewards.sandbox`).

Run as `python -I -S -B sandbox_boot.py ROOT RESULT_FD` with a JSON request on stdin:
{"nonce": ..., "code": ..., "tests": ...}. It compiles both sources, installs an audit hook
that hard-exits the process on any forbidden operation, runs the code (as module "solution",
so `if __name__ == "__main__":` blocks are skipped) and then the tests, which see the
solution's names except those shadowing builtins, and a snapshot of the builtins taken
before the code ran. It reports "<nonce> <status>" on RESULT_FD. The nonce is only known to the
parent and this prelude, so user code that exits early (sys.exit(0), os._exit(0)) cannot
fake a pass.

Uses the standard library only and must not import anything from `reasoner`.
"""

import builtins
import json
import os
import sys
import traceback

VIOLATION_EXIT_CODE = 86
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_ALLOWED_WRITE_PATHS = ("/dev/null",)

# Events denied outright (prefix match): network, processes, signals to others, native code,
# interpreter introspection that could reach this prelude's state, and resource limits.
_DENIED_PREFIXES = (
    "socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.system", "os.startfile", "os.kill", "os.killpg", "os.setpriority", "signal.pthread_kill",
    "pty.", "ctypes.", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.",
    "imaplib.", "nntplib.", "telnetlib.", "webbrowser.", "winreg.", "msvcrt.", "sys.remote_exec",
)
# Modules whose mere import gives a way around the hook (native calls, unaudited spawning).
_DENIED_MODULES = ("ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters")
# Filesystem events: (indices of path arguments that must stay inside ROOT, indices of dir_fd
# arguments that must be unset).
_PATH_EVENTS = {
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
    "os.truncate": ((0,), ()), "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()),
    "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
    "shutil.copyfile": ((1,), ()), "shutil.copytree": ((1,), ()), "shutil.move": ((0, 1), ()),
    "shutil.make_archive": ((0,), ()), "shutil.unpack_archive": ((1,), ()),
    "tempfile.mkstemp": ((0,), ()), "tempfile.mkdtemp": ((0,), ()),
    "sqlite3.connect": ((0,), ()), "dbm.open": ((0,), ()),
}


def _make_hook(root):
  """The audit hook; it keeps no reference reachable from user code."""
  realpath, fspath, isabs = os.path.realpath, os.fspath, os.path.isabs
  write, hard_exit = os.write, os._exit
  prefix = root.rstrip("/") + "/"

  def inside(path, require_absolute=False):
    if path is None or isinstance(path, int):
      return True  # an already-open descriptor (its opening was checked)
    try:
      path = fspath(path)
      if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
      if path == ":memory:" or path in _ALLOWED_WRITE_PATHS:
        return True
      if require_absolute and not isabs(path):
        return False
      full = realpath(path)
    except Exception:  # pylint: disable=broad-except
      return False
    return full == root or full.startswith(prefix)

  def deny(event, detail):
    try:
      write(2, f"\nsandbox violation: {event} {detail}\n".encode("utf-8", "replace")[:1000])
    finally:
      hard_exit(VIOLATION_EXIT_CODE)

  def hook(event, args):
    if event == "open":
      path, mode, flags = (tuple(args) + (None, None, None))[:3]
      writing = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
      # os.open reports no mode and may be relative to an unseen dir_fd: demand absolute paths.
      if writing and not inside(path, require_absolute=mode is None):
        deny(event, repr(path))
    elif event == "import":
      name = args[0] if args else ""
      if name in _DENIED_MODULES or name.split(".")[0] in _DENIED_MODULES:
        deny(event, name)
    elif event in _PATH_EVENTS:
      path_indices, dir_fd_indices = _PATH_EVENTS[event]
      for i in dir_fd_indices:
        if i < len(args) and args[i] not in (None, -1):
          deny(event, "dir_fd")
      for i in path_indices:
        if i < len(args) and not inside(args[i]):
          deny(event, repr(args[i]))
    elif event.startswith(_DENIED_PREFIXES):
      deny(event, "")

  return hook


def _run(root, result_fd):
  request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
  sys.stdin.close()
  sys.stdin = open(os.devnull, "r")  # pylint: disable=consider-using-with
  nonce = request["nonce"]
  write, hard_exit, run = os.write, os._exit, exec  # captured before user code can patch them

  def report(status):
    # Only the first line counts (user-patched flush() below could append more).
    write(result_fd, f"{nonce} {status}\n".encode())
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except BaseException:  # pylint: disable=broad-except
        pass
    hard_exit(0)

  def print_error(limit):
    """Prints the current exception without this prelude's own frame."""
    try:
      kind, error, tb = sys.exc_info()
      traceback.print_exception(kind, error, tb.tb_next if tb is not None else None, limit=limit)
    except BaseException:  # pylint: disable=broad-except
      pass

  try:
    code = compile(request["code"], "solution.py", "exec")
    tests = compile(request["tests"], "tests.py", "exec")
  except (SyntaxError, ValueError):
    print_error(0)
    report("error")
  # Close gaps the hook cannot see (these calls raise no audit event).
  for module in (os, sys.modules.get("posix")):
    for name in ("mkfifo", "mknod"):
      if module is not None and hasattr(module, name):
        delattr(module, name)
  pristine_builtins = dict(vars(builtins))
  sys.addaudithook(_make_hook(root))
  namespace = {"__name__": "solution", "__builtins__": builtins}
  try:
    run(code, namespace)
  except MemoryError:
    report("killed")
  except BaseException:  # pylint: disable=broad-except
    print_error(3)
    report("error")
  # The tests see the solution's names but the original builtins: redefining `sorted` or
  # patching the builtins module cannot change what the assertions compute.
  test_namespace = {k: v for k, v in namespace.items() if k not in pristine_builtins}
  test_namespace.update(__name__="tests", __builtins__=pristine_builtins)
  try:
    run(tests, test_namespace)
  except MemoryError:
    report("killed")
  except BaseException:  # pylint: disable=broad-except
    print_error(3)
    report("failed")
  report("ok")


if __name__ == "__main__":
  _run(os.path.realpath(sys.argv[1]), int(sys.argv[2]))
