"""Code sandbox: correct / wrong code, and hostile programs that must score 0 harmlessly."""

import os
import subprocess
import sys
import tempfile
import time

import pytest

from reasoner.rewards.sandbox import code_reward, extract_code, run_python

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"


def _completion(code):
  return f"<think>write it</think><answer>```python\n{code}```</answer>"


def test_correct_code_scores_one():
  result = run_python(GOOD, TESTS)
  assert result.passed and result.status == "ok" and result.violation is None
  assert code_reward(_completion(GOOD), TESTS) == 1.0


def test_wrong_code_scores_zero():
  result = run_python("def add(a, b):\n    return a - b\n", TESTS)
  assert not result.passed and result.status == "failed"
  assert "AssertionError" in result.stderr
  assert code_reward(_completion("def add(a, b):\n    return a - b\n"), TESTS) == 0.0


@pytest.mark.parametrize("code,status", [
    ("def add(a, b) return a + b", "error"),  # syntax error
    ("raise RuntimeError('boom')", "error"),
    ("import sys\nsys.exit(0)", "error"),  # exiting before the tests is not a pass
    ("import os\nos._exit(0)", "error"),
    ("def add(a, b):\n    return a + b\nimport builtins\nbuiltins.exec = lambda *a, **k: None",
     "ok"),  # patching exec does not skip the tests (they still run, and pass here)
])
def test_errors_and_early_exits(code, status):
  result = run_python(code, TESTS)
  assert result.status == status
  assert result.passed is (status == "ok")


def test_patched_exec_cannot_skip_failing_tests():
  code = "def add(a, b):\n    return 0\nimport builtins\nbuiltins.exec = lambda *a, **k: None"
  assert run_python(code, TESTS).status == "failed"


def test_tests_use_pristine_builtins():
  tests = "assert sorted(top3([5, 1, 4, 2])) == [2, 4, 5]"
  assert run_python("def top3(xs):\n    return sorted(xs)[1:]", tests).passed
  cheats = ("def top3(xs):\n    return []\ndef sorted(xs):\n    return [2, 4, 5]",
            "def top3(xs):\n    return []\nimport builtins\nbuiltins.sorted = lambda xs: [2, 4, 5]")
  for code in cheats:
    assert run_python(code, tests).status == "failed", code


def test_infinite_loop_times_out():
  start = time.monotonic()
  result = run_python("while True:\n    pass\n", TESTS, timeout_s=1.0)
  assert result.status == "timeout" and not result.passed
  assert time.monotonic() - start < 20  # killed at 1 s; generous bound for a loaded machine
  assert code_reward(_completion("while True:\n    pass\n"), TESTS, timeout_s=1.0) == 0.0


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()\n",
    "import subprocess\nsubprocess.Popen(['sleep', '100'])\n",
    "import os\nos.system(':(){ :|:& };:')\n",
    "import os\nos.execv('/bin/sh', ['sh'])\n",
])
def test_fork_bomb_and_process_creation_blocked(code):
  result = run_python(code, "pass", timeout_s=3.0)
  assert result.status == "killed" and not result.passed
  assert result.violation is not None
  # the host is fine: it can still create processes and run the sandbox
  assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).stdout == b"1\n"
  assert run_python(GOOD, TESTS).passed


def test_memory_bomb_is_stopped():
  result = run_python("x = bytearray(2 * 1024 ** 3)\n", "pass", memory_mb=256)
  assert result.status == "killed" and not result.passed
  grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
  assert run_python(grow, "pass", memory_mb=256, timeout_s=5.0).status == "killed"


def test_writing_outside_the_sandbox_is_blocked():
  target = os.path.join(tempfile.gettempdir(), "outside_xyz")
  if os.path.exists(target):
    os.remove(target)
  for code in (f"open({target!r}, 'w').write('pwned')",
               f"import pathlib\npathlib.Path({target!r}).write_text('pwned')",
               f"import os\nos.chdir('/tmp')\nopen('outside_xyz', 'w').write('pwned')",
               "import os\nfd = os.open('/tmp', os.O_RDONLY)\n"
               "os.open('outside_xyz', os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
               f"import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('pwned')"):
    result = run_python(code, "pass")
    assert result.status == "killed" and result.violation is not None, code
    assert not os.path.exists(target), code


def test_deleting_outside_the_sandbox_is_blocked(tmp_path):
  victim = tmp_path / "keep.txt"
  victim.write_text("precious")
  for code in (f"import os\nos.remove({str(victim)!r})",
               f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
               f"import os\nos.rename({str(victim)!r}, 'stolen.txt')"):
    assert run_python(code, "pass").status == "killed", code
  assert victim.read_text() == "precious"


def test_files_inside_the_sandbox_are_allowed_and_removed():
  code = ("import os, tempfile\nopen('notes.txt', 'w').write('hi')\n"
          "os.mkdir('sub')\nfd, path = tempfile.mkstemp()\nos.close(fd)\n"
          "os.chmod('sub', 0)\ncwd = os.getcwd()\nprint(cwd)\n")
  tests = "import os\nassert open('notes.txt').read() == 'hi'\nassert os.environ['HOME'] == cwd"
  result = run_python(code, tests)
  assert result.passed
  workdir = result.stdout.strip()
  assert os.path.basename(os.path.dirname(workdir)).startswith("reasoner_sandbox_")
  assert not os.path.exists(os.path.dirname(workdir))


def test_network_is_blocked():
  for code in ("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)",
               "import socket\ns = socket.socket()\n",
               "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)"):
    result = run_python(code, "pass")
    assert result.status == "killed" and result.violation is not None, code


def test_signalling_the_host_is_blocked():
  result = run_python("import os\nos.kill(os.getppid(), 9)\n", "pass")
  assert result.status == "killed" and result.violation == "os.kill"
  assert run_python("import ctypes\n", "pass").status == "killed"


def test_huge_output_is_capped():
  result = run_python("print('x' * 5_000_000)\n" + GOOD, TESTS, max_output_bytes=1000)
  assert len(result.stdout) <= 1000
  endless = run_python("while True:\n    print('y' * 10000)\n", "pass", timeout_s=5.0,
                       max_output_bytes=1000)
  assert not endless.passed and len(endless.stdout) <= 1000


def test_extract_code():
  assert extract_code(_completion(GOOD)) == GOOD.rstrip("\n")
  fenced_twice = ("<think>draft ```python\nbad\n```</think>"
                  "<answer>```py\nx = 1\n```\n```python\ny = 2\n```</answer>")
  assert extract_code(fenced_twice) == "y = 2"
  assert extract_code("<think>t</think><answer>  x = 1</answer>") == "x = 1"
  assert extract_code("x = 3") == "x = 3"
  assert code_reward("<think>t</think><answer></answer>", TESTS) == 0.0
