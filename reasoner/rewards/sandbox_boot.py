"""Child-side prelude of the Python sandbox (see `reasoner.rewards.sandbox`).

Run as `python -I -S -B -c <this source>` (inside bubblewrap, or bare in the weak mode) with a
JSON request on stdin: {"code", "probes", "limits", "uid", "root", "hook", "math",
"result_fd"}. In order: it lowers the resource limits, drops to `uid` (when it starts as root
inside the sandbox), installs the audit hook (a tripwire that names blocked operations for
the safety flag; the boundary itself is the OS sandbox), runs the code as module "solution",
then evaluates each probe expression and writes one line per probe to RESULT_FD:

    {"ok": true, "value": <the value as tagged JSON>}   or   {"ok": false, "error": "TypeName"}

after a first line {"load": "ok"} (or {"load": "error"} when the code failed to compile or
raised). The parent judges the values; nothing written here decides the verdict, so this
process (which the code controls) cannot forge a pass.

Uses the standard library only and must not import anything from `reasoner`.
"""

import builtins
import json
import os
import resource
import sys
import traceback

VIOLATION_EXIT_CODE = 86
MEMORY_EXIT_CODE = 87  # the memory limit was hit (reported as 'killed', like a signal)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_ALLOWED_WRITE_PATHS = ("/dev/null",)
_MAX_DEPTH = 64

# Events denied outright (prefix match): network, processes, signals to others, native code,
# interpreter introspection, and resource limits.
_DENIED_PREFIXES = (
    "socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.system", "os.startfile", "os.kill", "os.killpg", "os.setpriority", "signal.pthread_kill",
    "pty.", "ctypes.", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.",
    "imaplib.", "nntplib.", "telnetlib.", "webbrowser.", "winreg.", "msvcrt.", "sys.remote_exec",
)
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
  """The audit hook (a tripwire: it names what was tried; the OS sandbox is the boundary)."""
  realpath, fspath, isabs = os.path.realpath, os.fspath, os.path.isabs
  write, hard_exit = os.write, os._exit
  prefix = root.rstrip("/") + "/"

  def inside(path, require_absolute=False):
    if path is None or isinstance(path, int):
      return True
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


def _encode(value, depth=0):
  """`value` as JSON with type tags (exact builtin types only: no subclasses, no objects with
  their own __eq__); raises TypeError otherwise. Floats travel as their repr (inf and nan too)."""
  if depth > _MAX_DEPTH:
    raise TypeError("nested too deeply (or recursive)")
  kind = type(value)
  if value is None or kind in (bool, int, str):
    return value
  if kind is float:
    return ["f", repr(value)]
  if kind is complex:
    return ["c", repr(value.real), repr(value.imag)]
  if kind is bytes:
    return ["b", value.hex()]
  if kind is dict:
    return ["d", [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]]
  tag = {list: "l", tuple: "t", set: "s", frozenset: "F"}.get(kind)
  if tag is None:
    raise TypeError(f"{kind.__name__} is not a plain value")
  return [tag, [_encode(v, depth + 1) for v in value]]


def _cap_tmpfs(spec):
  """Remounts the sandbox's tmpfs with a cap on its inodes as well as its size (bwrap sets only
  the size). Needs CAP_SYS_ADMIN, which the sandbox holds until the uid is dropped."""
  import ctypes  # pylint: disable=import-outside-toplevel
  libc = ctypes.CDLL(None, use_errno=True)
  ms_nosuid, ms_nodev, ms_remount = 2, 4, 32
  options = f"size={int(spec['size'])},nr_inodes={int(spec['inodes'])},mode=1777".encode()
  if libc.mount(b"tmpfs", spec["path"].encode(), b"tmpfs", ms_remount | ms_nosuid | ms_nodev,
                options) != 0:
    raise SystemExit(f"sandbox: could not cap the tmpfs (errno {ctypes.get_errno()})")
  for name in list(sys.modules):  # a later `import ctypes` loads it again (and trips the hook)
    if name in ("ctypes", "_ctypes") or name.startswith("ctypes."):
      del sys.modules[name]


def _drop_privileges(limits, uid, tmpfs=None):
  if tmpfs is not None and os.getuid() == 0:
    _cap_tmpfs(tmpfs)
  for name, value in limits:
    res = getattr(resource, name)
    _, hard = resource.getrlimit(res)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(res, (value, value))
  if uid is not None and os.getuid() == 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
  if uid is not None:
    if os.getuid() != uid or os.geteuid() != uid:
      raise SystemExit("sandbox: could not drop privileges")
    try:
      os.setuid(0)
    except PermissionError:
      pass
    else:
      raise SystemExit("sandbox: privileges were not dropped")


def main():
  request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
  sys.stdin.close()
  sys.stdin = open(os.devnull, "r")  # pylint: disable=consider-using-with
  result_fd = request["result_fd"]
  os.closerange(3, result_fd)  # nothing but stdio and the result channel stays open
  os.closerange(result_fd + 1, 1 << 16)
  _drop_privileges(request["limits"], request["uid"], request.get("tmpfs"))
  root = os.path.realpath(request["root"])
  os.chdir(root)
  write, dumps, run, evaluate, encode = os.write, json.dumps, exec, eval, _encode

  def emit(record):
    write(result_fd, (dumps(record) + "\n").encode("utf-8"))

  try:
    code = compile(request["code"], "solution.py", "exec")
    probes = [compile(p, "tests.py", "eval") for p in request["probes"]]
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    traceback.print_exc(limit=0)
    emit({"load": "error"})
    return
  for module in (os, sys.modules.get("posix")):
    for name in ("mkfifo", "mknod"):
      if module is not None and hasattr(module, name):
        delattr(module, name)
  pristine_builtins = dict(vars(builtins))
  math_module = __import__("math") if request["math"] else None
  if request["hook"]:
    sys.addaudithook(_make_hook(root))
  namespace = {"__name__": "solution", "__builtins__": builtins}
  try:
    run(code, namespace)
  except MemoryError:
    os._exit(MEMORY_EXIT_CODE)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc(limit=-3)
    emit({"load": "error"})
    return
  emit({"load": "ok"})
  scope = {k: v for k, v in namespace.items() if k not in pristine_builtins}
  scope["__builtins__"] = pristine_builtins
  if math_module is not None:
    scope.setdefault("math", math_module)
  for probe in probes:
    try:
      value = evaluate(probe, scope)
      record = {"ok": True, "value": encode(value)}
    except MemoryError:
      os._exit(MEMORY_EXIT_CODE)
    except BaseException as e:  # pylint: disable=broad-except
      record = {"ok": False, "error": type(e).__name__}
    emit(record)


if __name__ == "__main__":
  main()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:  # pylint: disable=broad-except
      pass
  os._exit(0)
