"""Code sandbox: correct / wrong code, errors, limits, parallel runs and the weak-mode refusal.

Attacks on the sandbox and on the verdict are in test_sandbox_attacks.py.
"""

import shutil
import time
import warnings

import pytest

from reasoner.rewards import isolation
from reasoner.rewards.code_tests import UnsupportedTests
from reasoner.rewards.sandbox import code_reward, extract_code, run_many, run_python

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"
HAVE_BWRAP = isolation.bwrap_status()[0]
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap unavailable here: "
                                 + isolation.bwrap_status()[1])


def _completion(code):
  return f"<think>write it</think><answer>```python\n{code}```</answer>"


@needs_bwrap
def test_correct_code_scores_one():
  result = run_python(GOOD, TESTS)
  assert result.passed and result.status == "ok" and result.violation is None
  assert result.checks == 2 and result.isolation == "bwrap"
  assert code_reward(_completion(GOOD), TESTS) == 1.0


@needs_bwrap
def test_wrong_code_scores_zero():
  result = run_python("def add(a, b):\n    return a - b\n", TESTS)
  assert not result.passed and result.status == "failed"
  assert result.failure == "assert add(2, 3) == 5"
  assert code_reward(_completion("def add(a, b):\n    return a - b\n"), TESTS) == 0.0


@needs_bwrap
@pytest.mark.parametrize("code,status", [
    ("def add(a, b) return a + b", "error"),  # syntax error
    ("raise RuntimeError('boom')", "error"),
    ("import sys\nsys.exit(0)", "error"),  # exiting before the tests is not a pass
    ("import os\nos._exit(0)", "error"),
    (GOOD + "import builtins\nbuiltins.exec = lambda *a, **k: None", "ok"),
    ("def add(a, b):\n    raise ValueError", "failed"),  # a probe that raises fails its check
    ("def add(a, b):\n    import sys\n    sys.exit(0)", "failed"),
    ("def add(a, b):\n    import os\n    os._exit(0)", "failed"),  # outputs missing
])
def test_errors_and_early_exits(code, status):
  result = run_python(code, TESTS)
  assert result.status == status, result
  assert result.passed is (status == "ok")


@needs_bwrap
def test_tests_use_pristine_builtins():
  tests = "assert sorted(top3([5, 1, 4, 2])) == [2, 4, 5]"
  assert run_python("def top3(xs):\n    return sorted(xs)[1:]", tests).passed
  cheats = ("def top3(xs):\n    return []\ndef sorted(xs):\n    return [2, 4, 5]",
            "def top3(xs):\n    return []\nimport builtins\nbuiltins.sorted = lambda xs: [2, 4, 5]")
  for code in cheats:
    assert run_python(code, tests).status == "failed", code


@needs_bwrap
def test_loops_floats_and_classes():
  code = ("class Solution:\n    def solve(self, xs):\n        return [x * 2 for x in xs]\n"
          "def half(x):\n    return x / 2\n")
  tests = ("import math\nfor xs in ([1], [2, 3], []):\n"
           "    assert Solution().solve(xs) == [2 * x for x in xs]\n"
           "assert math.isclose(half(1), 0.5)\nassert abs(half(3) - 1.5) < 1e-9\n")
  result = run_python(code, tests)
  assert result.passed and result.checks == 5
  humaneval = "def check(candidate):\n    assert candidate(4) == 2.0\n\ncheck(half)\n"
  assert run_python(code, humaneval).passed
  assert run_python(code, "assert list(map(half, [2, 4])) == [1.0, 2.0]").passed
  assert not run_python("def half(x):\n    return x", humaneval).passed


@needs_bwrap
def test_infinite_loop_times_out():
  start = time.monotonic()
  result = run_python("while True:\n    pass\n", TESTS, timeout_s=1.0)
  assert result.status == "timeout" and not result.passed
  assert time.monotonic() - start < 20  # killed at 1 s; generous bound for a loaded machine
  looping_probe = run_python("def add(a, b):\n    while True:\n        pass\n", TESTS,
                             timeout_s=1.0)
  assert looping_probe.status == "timeout"


@needs_bwrap
def test_memory_bomb_is_stopped():
  result = run_python("x = bytearray(2 * 1024 ** 3)\n", "pass", memory_mb=256)
  assert result.status == "killed" and not result.passed
  grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
  assert run_python(grow, "pass", memory_mb=256, timeout_s=5.0).status == "killed"
  in_a_call = "def add(a, b):\n    return bytearray(2 * 1024 ** 3)\n"
  assert run_python(in_a_call, TESTS, memory_mb=256).status == "killed"


@needs_bwrap
def test_files_inside_the_sandbox_are_allowed():
  code = ("import os, tempfile\nopen('notes.txt', 'w').write('hi')\nos.mkdir('sub')\n"
          "fd, path = tempfile.mkstemp()\nos.close(fd)\n"
          "def notes():\n    return open('notes.txt').read(), os.getcwd(), os.environ['HOME']\n")
  assert run_python(code, "assert notes() == ('hi', '/tmp', '/tmp')").passed


@needs_bwrap
def test_program_output_is_kept_and_capped():
  result = run_python("print('x' * 5_000_000)\n" + GOOD, TESTS, max_output_bytes=1000)
  assert result.passed and len(result.stdout) == 1000
  assert run_python("print(6 * 7)", "").stdout == "42\n"


@needs_bwrap
def test_run_many_keeps_order_and_parallelises():
  jobs = [(GOOD, TESTS), ("def add(a, b):\n    return 0\n", TESTS), ("while True: pass", TESTS),
          ("raise SystemExit", TESTS)] * 2
  start = time.monotonic()
  results = run_many(jobs, workers=4, timeout_s=1.0)
  elapsed = time.monotonic() - start
  assert [r.status for r in results] == ["ok", "failed", "timeout", "error"] * 2
  assert elapsed < 2 * 1.0 + 10  # two loops per pair of workers, not four in a row


def test_unsupported_tests_are_a_data_error():
  with pytest.raises(UnsupportedTests):
    run_python(GOOD, "while True:\n    assert add(0, 1) == 1")
  with pytest.raises(UnsupportedTests):
    code_reward(_completion(GOOD), "x = 1")  # nothing to judge: no reward


def test_refuses_without_isolation_unless_allowed(monkeypatch):
  monkeypatch.setitem(isolation._probe_result, "bwrap", (False, "bwrap is not installed"))
  monkeypatch.setattr(isolation, "_warned", [False])
  with pytest.raises(isolation.SandboxUnavailable, match="allow_weak_sandbox"):
    run_python(GOOD, TESTS)
  with pytest.raises(isolation.SandboxUnavailable):
    run_many([(GOOD, TESTS)])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = run_python(GOOD, TESTS, allow_weak_sandbox=True)
  assert result.passed and result.isolation == "weak"
  assert any("without OS isolation" in str(w.message) for w in caught)
  # the weak mode still judges in the parent and keeps the audit hook
  assert run_python("def add(a, b):\n    return 0", TESTS, allow_weak_sandbox=True).status == \
      "failed"
  blocked = run_python("import os\nos.system('true')", TESTS, allow_weak_sandbox=True)
  assert blocked.status == "killed" and blocked.violation == "os.system"


def test_bwrap_probe_reports_a_missing_binary(monkeypatch):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  works, reason = isolation._probe_bwrap()
  assert not works and "apt-get install bubblewrap" in reason


def test_extract_code():
  assert extract_code(_completion(GOOD)) == GOOD.rstrip("\n")
  fenced_twice = ("<think>draft ```python\nbad\n```</think>"
                  "<answer>```py\nx = 1\n```\n```python\ny = 2\n```</answer>")
  assert extract_code(fenced_twice) == "y = 2"
  assert extract_code("<think>t</think><answer>  x = 1</answer>") == "x = 1"
  assert extract_code("x = 3") == "x = 3"
  assert code_reward("<think>t</think><answer></answer>", TESTS) == 0.0


def test_python_tool_refuses_without_isolation(monkeypatch):
  from reasoner.agentic.tools import ToolCall, default_tools, run_tool_call
  monkeypatch.setitem(isolation._probe_result, "bwrap", (False, "bwrap is not installed"))
  with pytest.raises(isolation.SandboxUnavailable):
    run_tool_call(ToolCall("python", "print(1)"), default_tools())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tools = default_tools(python_allow_weak_sandbox=True)
    assert run_tool_call(ToolCall("python", "6 * 7"), tools) == ("42", None)


@needs_bwrap
def test_every_plain_type_travels_exactly():
  code = ("def values():\n    return [float('inf'), -0.5, 1e300, 2 ** 100, True, None, 'é\\n',"
          " b'\\x00\\xff', 1 + 2j, (1, (2,)), {1, 2}, frozenset({3}), {frozenset({1}): [2]},"
          " {'a': {'b': (1.5,)}}]\ndef nan():\n    return float('nan')\n")
  tests = ("import math\nassert values() == [math.inf, -0.5, 1e300, 2 ** 100, True, None, 'é\\n',"
           " b'\\x00\\xff', complex(1, 2), (1, (2,)), {1, 2}, frozenset({3}),"
           " {frozenset({1}): [2]}, {'a': {'b': (1.5,)}}]\nassert math.isnan(nan())\n"
           "assert isinstance(values()[9], tuple) and isinstance(values()[11], frozenset)\n")
  result = run_python(code, tests)
  assert result.passed, result


@needs_bwrap
def test_every_stdlib_extension_loads_inside():
  # The sandbox binds only the libraries ldd names: each compiled stdlib module must import.
  code = ("import os, sys, importlib\nfailed = []\n"
          "dynload = [p for p in sys.path if p.endswith('lib-dynload')][0]\n"
          "for name in sorted(os.listdir(dynload)):\n"
          "    module = name.split('.')[0]\n"
          "    if module.startswith('_test') or module in ('xxlimited', 'xxlimited_35'):\n"
          "        continue\n"
          "    try:\n        importlib.import_module(module)\n"
          "    except ImportError as e:\n        failed.append((module, str(e)))\n"
          "print(failed)\n")
  result = run_python(code, "", timeout_s=30.0, memory_mb=1024, audit_hook=False)
  assert result.status == "ok" and result.stdout.strip() == "[]", result
