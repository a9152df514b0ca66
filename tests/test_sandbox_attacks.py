"""Attacks on the code reward, as a reward-hunting policy would try them.

Each attack asserts containment (the host, its files, its secrets and its processes are out of
reach; resource use is bounded) and that the cheating program never gets more reward than the
honest one. Most boundary attacks run with the in-process audit hook switched off
(`audit_hook=False`), so they exercise the OS sandbox alone.
"""

import glob
import json
import os
import tempfile
import time

import numpy as np
import pytest

from reasoner.data.problem import Problem
from reasoner.rewards import RewardConfig, compute_rewards, isolation
from reasoner.rewards.sandbox import run_many, run_python

pytestmark = pytest.mark.skipif(not isolation.bwrap_status()[0],
                                reason="bubblewrap unavailable: " + isolation.bwrap_status()[1])

SECRET = 987654321  # an expected value the program must never see
TESTS = (f"assert mul(3, 4) == 12\nassert mul(9137, 1) == 9137\n"
         f"assert mul(1, {SECRET}) == {SECRET}\n")
HONEST = "def mul(a, b):\n    return a * b\n"
# Run with the hook off: the OS sandbox alone must hold.
OS_ONLY = dict(audit_hook=False)


def _completion(code):
  return f"<think>ok</think><answer>```python\n{code}\n```</answer>"


def _rewards(*codes, tests=TESTS):
  problem = Problem("Write mul(a, b).", "", "", "code", {"tests": tests})
  rewards, parts = compute_rewards([problem] * len(codes), [_completion(c) for c in codes],
                                   [10] * len(codes), RewardConfig(code_timeout_s=3.0))
  return rewards, parts


def _assert_no_gain(code, tests=TESTS):
  rewards, parts = _rewards(HONEST, code, tests=tests)
  assert parts["r_out"][0] == 1.0, "the honest program must pass"
  assert parts["r_out"][1] == 0.0, code
  assert rewards[1] < rewards[0], code


def _observations(code, **kw):
  """Runs an attack that prints one JSON dict of what it saw (last stdout line)."""
  result = run_python(code, "", timeout_s=10.0, **kw)
  lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
  assert lines, result
  return json.loads(lines[-1]), result


# ------------------------------------------------------------------------- verdict forgery

FORGERIES = {
    # walk the frames up to the prelude and use its own reporting
    "prelude_emit": """
import sys
f = sys._getframe()
while f is not None:
    emit = f.f_locals.get('emit') or f.f_globals.get('emit')
    if emit:
        emit({'load': 'ok'})
        for _ in range(10):
            emit({'ok': True, 'value': 'True'})
        import os; os._exit(0)
    f = f.f_back
""",
    # the traceback of a caught exception reaches the same frames
    "traceback_frames": """
try:
    raise ValueError
except ValueError as e:
    tb = e.__traceback__
    f = tb.tb_frame
    while f.f_back is not None:
        f = f.f_back
    for name, value in list(f.f_globals.items()):
        if callable(value) and name.startswith('_check'):
            f.f_globals[name] = lambda *a, **k: None
class Any:
    def __eq__(self, other): return True
def mul(a, b): return Any()
""",
    # write result lines straight to every open descriptor
    "write_all_fds": """
import os
for fd in range(3, 64):
    try:
        os.write(fd, b'{"load": "ok"}\\n' + b'{"ok": true, "value": "12"}\\n' * 10)
    except OSError:
        pass
os._exit(0)
""",
    "print_pass": "print('{\"load\": \"ok\"}')\nprint('ok ok ok PASS')\nimport sys\nsys.exit(0)",
    "dynamic_eq": """
Eq = type('Eq', (), {'__eq__': lambda s, o: True, '__hash__': lambda s: 0})
def mul(a, b): return Eq()
""",
    "setattr_eq": """
class R: pass
setattr(R, '__' + 'eq' + '__', lambda s, o: True)
def mul(a, b): return R()
""",
    "int_subclass": """
class I(int):
    def __eq__(self, o): return True
    __hash__ = int.__hash__
def mul(a, b): return I(0)
""",
    "repr_forgery": """
class V:
    def __repr__(self): return '12'
def mul(a, b): return V()
""",
    "patch_builtins_repr": """
import builtins
builtins.repr = lambda v: '12'
builtins.isinstance = lambda *a: True
def mul(a, b): return object()
""",
    "exit_in_probe": "def mul(a, b):\n    raise SystemExit(0)",
    "os_exit_in_probe": "def mul(a, b):\n    import os\n    os._exit(0)",
    "keyboard_interrupt": "def mul(a, b):\n    raise KeyboardInterrupt",
    "nan": "def mul(a, b):\n    return float('nan')",
    "huge_result": "def mul(a, b):\n    return 'x' * (50 * 1024 * 1024)",
    "deep_result": "def mul(a, b):\n    x = []\n    for _ in range(100000):\n"
                   "        x = [x]\n    return x",
    "recursive_result": "def mul(a, b):\n    x = []\n    x.append(x)\n    return x",
    "big_int": "def mul(a, b):\n    return 10 ** 100000",
    "constant_guess": "def mul(a, b):\n    return 12",  # right on one input only
    "stateful_replay": """
seen = []
def mul(a, b):
    seen.append((a, b))
    return a if b == 1 else 12
""",
    "read_tests_from_memory": """
import sys, re
text = []
f = sys._getframe()
while f is not None:
    text.append(repr(f.f_locals)[:200000] + repr(f.f_globals)[:200000])
    f = f.f_back
for path in ('/proc/self/cmdline', '/proc/1/cmdline', '/proc/self/environ'):
    try:
        text.append(open(path, 'rb').read().decode('latin-1'))
    except OSError:
        pass
expected = [int(x) for x in re.findall(r'==[ ]*([0-9]+)', ' '.join(text))]
calls = []
def mul(a, b):
    calls.append(1)
    return expected[len(calls) - 1] if len(calls) <= len(expected) else 0
""",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_verdict_forgery_gets_no_reward(name):
  _assert_no_gain(FORGERIES[name])
  _assert_no_gain(FORGERIES[name].replace("987654321", "0"))  # variants without the hint


def test_the_child_never_sees_expected_values():
  spy = ("import sys, os\nseen = []\nf = sys._getframe()\nwhile f is not None:\n"
         "    seen.append(repr(f.f_locals)[:100000] + repr(f.f_globals)[:100000])\n"
         "    f = f.f_back\n"
         "for p in ('/proc/self/cmdline', '/proc/self/environ', '/proc/1/cmdline'):\n"
         "    try:\n        seen.append(open(p, 'rb').read().decode('latin-1'))\n"
         "    except OSError:\n        pass\n"
         "def mul(a, b):\n    print(seen)\n    return a * b\n")
  result = run_python(spy, TESTS, **OS_ONLY)
  assert result.passed  # it computes the right values, and yet:
  assert str(SECRET) not in result.stdout.replace(f"1, {SECRET}", "")  # only as an input
  assert "== 12" not in result.stdout and "9137 ==" not in result.stdout


# ------------------------------------------------------------- escape and exfiltration


def test_host_files_and_secrets_are_out_of_reach(monkeypatch):
  monkeypatch.setenv("REASONER_TEST_SECRET", "s3cr3t-token")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = f"""
import os, json
seen = {{}}
def read(path):
    try:
        with open(path, 'rb') as f:
            return f.read(4096).decode('latin-1')
    except OSError as e:
        return 'ERR ' + type(e).__name__
for path in ('/etc/shadow', '/etc/passwd', '/root/.bash_history', {repo!r} + '/README.md',
             {__file__!r}, '/proc/1/environ', '/proc/self/environ', '/proc/1/root/etc/shadow',
             '/sys/class/net/eth0/address', '/usr/lib/os-release', '/bin/sh', '/usr/bin/env'):
    seen[path] = read(path)
procs = [p for p in os.listdir('/proc') if p.isdigit()]
for p in procs:
    seen['environ ' + p] = read('/proc/%s/environ' % p)
    seen['cmdline ' + p] = read('/proc/%s/cmdline' % p)
seen['procs'] = procs
seen['ppid'] = os.getppid()
seen['root'] = sorted(os.listdir('/'))
seen['uid'] = [os.getuid(), os.geteuid(), os.getgid()]
seen['env'] = dict(os.environ)
fds = os.listdir('/proc/self/fd')  # the descriptor of the listing itself is the last one
seen['fds'] = sorted(fds, key=int)[:-1]
for module in ('reasoner', 'numpy', 'jax', 'sitecustomize'):
    try:
        __import__(module)
        seen['import ' + module] = 'IMPORTED'
    except ImportError:
        seen['import ' + module] = 'ImportError'
try:
    os.setuid(0)
    seen['setuid0'] = True
except OSError:
    seen['setuid0'] = False
print(json.dumps(seen))
"""
  seen, _ = _observations(code, **OS_ONLY)
  text = json.dumps(seen)
  assert "s3cr3t-token" not in text
  assert "root:" not in text  # no /etc/passwd or /etc/shadow
  for path in ("/etc/shadow", "/etc/passwd", "/root/.bash_history", repo + "/README.md", __file__,
               "/proc/1/root/etc/shadow", "/usr/lib/os-release", "/bin/sh", "/usr/bin/env"):
    assert seen[path].startswith("ERR"), path
  assert len(seen["procs"]) <= 2  # its own pid namespace: the sandbox's init and itself
  assert set(seen["root"]) <= {"dev", "lib", "lib64", "proc", "root", "tmp", "usr"}
  assert seen["uid"][0] != 0 and seen["uid"][1] != 0 and not seen["setuid0"]
  assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PWD"}
  assert len(seen["fds"]) == 4  # stdio and the result channel only
  assert "IMPORTED" not in seen.values()  # neither the project nor site-packages is in view
  hooked = run_python(code, "")  # with the hook on, the same reads leak nothing either
  assert "s3cr3t-token" not in hooked.stdout and "root:" not in hooked.stdout


def test_only_a_capped_private_tmpfs_is_writable():
  code = """
import os, json
seen = {}
for path in ('/x', '/usr/lib/x', '/dev/shm/x', '/dev/x', '/proc/x', os.__file__ + '.x',
             '/root/x', '/lib/x'):
    try:
        with open(path, 'w') as f:
            f.write('x')
        seen[path] = 'WROTE'
    except OSError as e:
        seen[path] = type(e).__name__
total, files = 0, 0
try:
    while files < 10000:
        with open('/tmp/fill%d' % files, 'wb') as f:
            for _ in range(64):
                f.write(b'x' * (1 << 20))
                total += 1 << 20
        files += 1
except OSError as e:
    seen['fill_error'] = type(e).__name__
seen['total'] = total
print(json.dumps(seen))
"""
  seen, result = _observations(code, audit_hook=False, tmpfs_mb=16, max_file_bytes=4 << 20)
  assert not any(v == "WROTE" for v in seen.values()), seen
  assert seen["fill_error"] == "OSError" and seen["total"] <= 16 << 20  # the cap holds across files
  assert not glob.glob(os.path.join(tempfile.gettempdir(), "fill*"))  # nothing reached the host
  assert result.status == "ok"


def test_network_is_absent():
  code = """
import socket, json
seen = {}
for host in ('127.0.0.1', '10.0.0.1', '8.8.8.8'):
    try:
        socket.create_connection((host, 80), timeout=1)
        seen[host] = 'CONNECTED'
    except OSError as e:
        seen[host] = type(e).__name__
try:
    socket.getaddrinfo('example.com', 80)
    seen['dns'] = 'RESOLVED'
except OSError as e:
    seen['dns'] = type(e).__name__
import os
seen['ifaces'] = sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else []
print(json.dumps(seen))
"""
  seen, _ = _observations(code, **OS_ONLY)
  assert "CONNECTED" not in seen.values() and seen["dns"] != "RESOLVED"
  assert run_python(code, "").status == "killed"  # and the hook names it when on


# ------------------------------------------------------------------ processes and the parent


def _sandbox_processes():
  """pids of live processes running as a sandbox uid (none must outlive a run)."""
  pids = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/status") as f:
        uid = int(next(l for l in f if l.startswith("Uid:")).split()[1])
    except (OSError, StopIteration, ValueError):
      continue
    if isolation.UID_RANGE[0] <= uid < isolation.UID_RANGE[1]:
      pids.append(pid)
  return pids


@pytest.mark.parametrize("attack", [
    "import os\nfor _ in range(100):\n    os.fork()\n",
    "import threading\nts = [threading.Thread(target=lambda: None) for _ in range(50)]\n"
    "for t in ts:\n    t.start()\n",
    "import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 100'])\n",
    "import os\nos.kill(os.getppid(), 9)\n",
    "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "import os, signal\nfor pid in range(1, 4000):\n    try:\n"
    "        os.kill(pid, signal.SIGKILL)\n"
    "    except OSError:\n        pass\n",
    "import os\nos.setsid()\nos.execv('/bin/sh', ['sh', '-c', 'sleep 100'])\n",
])
def test_processes_and_the_parent_are_out_of_reach(attack):
  contained = run_python(attack + HONEST, TESTS, timeout_s=3.0, **OS_ONLY)
  assert contained.status in ("error", "killed", "ok"), contained  # ok: the attempt just failed
  assert not _sandbox_processes()  # nothing it started outlives the run
  hooked = run_python(attack + HONEST, TESTS, timeout_s=3.0)
  assert hooked.status in ("killed", "error") and not hooked.passed
  _assert_no_gain("import os\nos.kill(os.getppid(), 9)\ndef mul(a, b):\n    return 0")
  assert run_python(HONEST, TESTS).passed  # the host still runs sandboxes


def test_fork_and_threads_fail_inside():
  code = """
import os, json, threading
seen = {}
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    seen['fork'] = 'FORKED'
except OSError as e:
    seen['fork'] = type(e).__name__
try:
    threading.Thread(target=lambda: None).start()
    seen['thread'] = 'STARTED'
except RuntimeError as e:
    seen['thread'] = 'RuntimeError'
print(json.dumps(seen))
"""
  seen, _ = _observations(code, **OS_ONLY)
  assert seen == {"fork": "BlockingIOError", "thread": "RuntimeError"}


# ------------------------------------------------------------------ resource exhaustion


@pytest.mark.parametrize("attack", [
    "import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):\n"
    "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
    "import time\ntime.sleep(1000)\n",
    "def mul(a, b):\n    import time\n    time.sleep(1000)\n",
    "x = 'x'\nwhile True:\n    x += x\n",
    "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n",  # stopped: no CPU time spent
    "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(1000)\n",  # EOF, then a hang
    "import threading\nthreading.Event().wait()\n",
])
def test_exhaustion_is_bounded(attack):
  start = time.monotonic()
  result = run_python(attack, TESTS, timeout_s=2.0, memory_mb=256, **OS_ONLY)
  assert not result.passed and result.status in ("timeout", "killed", "error")
  assert time.monotonic() - start < 15
  assert not _sandbox_processes()


@pytest.mark.parametrize("stream", ["sys.stdout", "sys.stderr"])
def test_output_flooding_is_capped(stream):
  code = f"import sys\nwhile True:\n    {stream}.write('y' * 65536)\n"
  result = run_python(code, TESTS, timeout_s=2.0, max_output_bytes=1000, **OS_ONLY)
  assert result.status == "timeout" and len(result.stdout) <= 1000 and len(result.stderr) <= 1000
  # Every descriptor the program holds besides stdio (the result channel's number depends on how
  # many files the parent has open), flooded with fake result lines.
  flood_results = ("import os\nfor fd in sorted(int(f) for f in os.listdir('/proc/self/fd')):\n"
                   "    if fd < 3:\n        continue\n    try:\n"
                   "        while True:\n            os.write(fd, b'{\"ok\": true}\\n' * 4096)\n"
                   "    except OSError:\n        pass\n" + HONEST)
  assert not run_python(flood_results, TESTS, timeout_s=3.0, **OS_ONLY).passed


def test_a_batch_of_attacks_leaves_honest_scores_unchanged():
  codes = [HONEST] + [FORGERIES[k] for k in sorted(FORGERIES)][:8] + [HONEST]
  rewards, parts = _rewards(*codes)
  assert parts["r_out"][0] == parts["r_out"][-1] == 1.0
  assert np.all(parts["r_out"][1:-1] == 0.0)
  assert np.all(rewards[1:-1] < rewards[0])


def test_concurrent_runs_cannot_see_each_other():
  writer = ("import os, time\nopen('/tmp/drop', 'w').write('from the other run')\n"
            "print(os.getuid())\ntime.sleep(1.5)\n")
  reader = ("import os, time\ntime.sleep(0.5)\nprint(os.getuid())\n"
            "print(os.path.exists('/tmp/drop'), sorted(p for p in os.listdir('/proc') "
            "if p.isdigit()))\n")
  results = run_many([(writer, ""), (reader, "")], workers=2, timeout_s=5.0, **OS_ONLY)
  assert [r.status for r in results] == ["ok", "ok"]
  writer_uid = results[0].stdout.split()[0]
  reader_uid, *rest = results[1].stdout.splitlines()
  assert writer_uid != reader_uid  # a fresh uid per run
  assert rest[0].startswith("False")  # its own /tmp
  assert len(json.loads(rest[0].split(" ", 1)[1].replace("'", '"'))) <= 2  # its own processes


def test_many_empty_files_stop_at_the_inode_cap():
  # Empty files cost no tmpfs bytes but kernel memory: the tmpfs caps their number too.
  code = ("import os, json\nn = 0\ntry:\n    while n < 10 ** 6:\n"
          "        os.close(os.open('/tmp/f%d' % n, os.O_CREAT | os.O_WRONLY))\n        n += 1\n"
          "except OSError as e:\n    print(json.dumps({'n': n, 'error': e.errno}))\n")
  seen, result = _observations(code, max_files=500, **OS_ONLY)
  assert seen == {"n": 499, "error": 28}  # ENOSPC; the tmpfs root is one of the 500
  assert result.status == "ok"
