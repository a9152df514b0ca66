"""The parent-side judge of code tests: probes, inlined test data, verdicts on plain values."""

import pytest

from reasoner.rewards.code_tests import UnsupportedTests, judge_tests, plan_tests

TESTS = """import math
cases = [(1, 2, 3), (2, 2, 4)]
for a, b, c in cases:
    assert add(a, b) == c
assert sorted(top([5, 1, 4])) == [1, 4, 5]
assert abs(half(3) - 1.5) < 1e-6 and math.isclose(half(1), 0.5)
assert all(add(i, i) == 2 * i for i in range(3))
result = add(10, 1)
assert result == 11, "eleven"
assert Solution().solve([1]) == [1]
"""
GOOD = [3, 4, [5, 1, 4], 1.5, 0.5, 0, 2, 4, 11, [1]]


def test_probes_carry_inputs_never_expected_values():
  plan = plan_tests(TESTS)
  assert plan.probes == ("add(1, 2)", "add(2, 2)", "top([5, 1, 4])", "half(3)", "half(1)",
                         "add(0, 0)", "add(1, 1)", "add(2, 2)", "add(10, 1)",
                         "Solution().solve([1])")
  assert plan.num_checks == 7 and plan.uses_math
  secret = plan_tests("assert f(2) == 987654321\nexpected = 123456789\nassert g(1) == expected")
  assert not any("987654321" in p or "123456789" in p for p in secret.probes)


def test_verdicts_follow_the_values():
  assert judge_tests(TESTS, [(True, v) for v in GOOD]).passed
  for i in range(len(GOOD)):
    wrong = [(True, v) for v in GOOD]
    wrong[i] = (True, "nope")
    assert not judge_tests(TESTS, wrong).passed, i
    raised = [(True, v) for v in GOOD]
    raised[i] = (False, "ZeroDivisionError")
    verdict = judge_tests(TESTS, raised)
    assert not verdict.passed and "ZeroDivisionError" in verdict.failure, i
  assert not judge_tests(TESTS, [(True, v) for v in GOOD[:-1]]).passed  # a missing value
  assert not judge_tests(TESTS, []).passed


def test_short_circuit_keeps_probe_order():
  tests = "x = 0\nassert x == 0 or f(1) == 2\nassert (g(1) if x else h(1)) == 5\nassert k() == 1"
  assert plan_tests(tests).probes == ("f(1)", "g(1)", "h(1)", "k()")
  # f raising is fine (not needed), g raising is fine (branch not taken)
  values = [(False, "ValueError"), (False, "ValueError"), (True, 5), (True, 1)]
  assert judge_tests(tests, values).passed
  assert not judge_tests(tests, [(True, 0), (True, 0), (True, 4), (True, 1)]).passed


def test_solution_values_cannot_fake_equality():
  # Only plain values reach the judge; a truthy non-empty value does not satisfy == .
  tests = "assert f(1) == [1, 2]"
  for fake in (True, 1, "[1, 2]", (1, 2), {1, 2}, None):
    assert not judge_tests(tests, [(True, fake)]).passed, fake


@pytest.mark.parametrize("tests", [
    "def helper(x=1):\n    return x\nassert helper() == f()",  # a helper with defaults
    "@cache\ndef helper(x):\n    return x\nassert helper(1) == f()",
    "def check(c):\n    assert c(1) == 2\ncheck(lambda x: 2)",
    "while True:\n    assert f() == 1",
    "class T:\n    pass\nassert f() == 1",
    "for x in f(3):\n    assert x > 0",  # control flow on a solution's output
    "if f(1):\n    assert True",
    "import os\nassert f() == 1",
    "x = f(1)\nassert g(x) == 2",  # an output fed back into the solution
    "with open('x') as fh:\n    assert f() == 1",
    "assert (lambda: f())() == 1",
    "assert f(",
])
def test_unsupported_tests_raise(tests):
  with pytest.raises(UnsupportedTests):
    plan_tests(tests)


def test_parent_side_work_is_bounded():
  # Values from the child may be large; the judge refuses to amplify them.
  verdict = judge_tests("assert f() * 10 ** 9 == ''", [(True, "x" * 100)])
  assert not verdict.passed and "too long" in verdict.failure
  verdict = judge_tests("assert 3 ** f() == 0", [(True, 10 ** 9)])
  assert not verdict.passed and "too large" in verdict.failure
  # str.replace may amplify, so tests cannot apply it to values here:
  with pytest.raises(UnsupportedTests):
    plan_tests("s = 'aaa'\nassert s.replace('a', 'b') == f()")


def test_humaneval_style_check_function():
  tests = ("METADATA = {'author': 'x'}\n\ndef check(candidate):\n"
           "    assert candidate([1, 2]) == 3\n    for xs in ([1], [2]):\n"
           "        assert candidate(xs) == xs[0]\n\ncheck(total)\n")
  plan = plan_tests(tests)
  assert plan.probes == ("total([1, 2])", "total([1])", "total([2])") and plan.num_checks == 3
  assert judge_tests(tests, [(True, 3), (True, 1), (True, 2)]).passed
  assert not judge_tests(tests, [(True, 3), (True, 1), (True, 3)]).passed
  helper = "def expected(x):\n    return x * 2\nfor i in range(3):\n    assert f(i) == expected(i)"
  assert plan_tests(helper).probes == ("f(0)", "f(1)", "f(2)")
  assert judge_tests(helper, [(True, 0), (True, 2), (True, 4)]).passed


def test_expected_exceptions_by_type_name():
  tests = ("try:\n    f(-1)\n    assert False, 'no error'\nexcept ValueError:\n    pass\n"
           "try:\n    f(0)\nexcept (TypeError, ArithmeticError):\n    pass\nelse:\n"
           "    assert False\nassert f(2) == 4\n")
  assert plan_tests(tests).probes == ("f(-1)", "f(0)", "f(2)")
  assert judge_tests(tests, [(False, "ValueError"), (False, "ZeroDivisionError"), (True, 4)]).passed
  for values in ([(True, 1), (False, "ZeroDivisionError"), (True, 4)],  # did not raise
                 [(False, "ValueError"), (True, 0), (True, 4)],
                 [(False, "MyError"), (False, "ZeroDivisionError"), (True, 4)],  # wrong type
                 [(False, "ValueError"), (False, "ZeroDivisionError"), (True, 5)]):
    assert not judge_tests(tests, values).passed, values
  # The solution's own exception classes are caught by Exception, never by a builtin type.
  own = "try:\n    f()\nexcept Exception:\n    pass\nelse:\n    assert False"
  assert judge_tests(own, [(False, "MyError")]).passed
  assert not judge_tests(own, [(False, "SystemExit")]).passed  # not an Exception


def test_repeated_calls_keep_their_order():
  tests = "assert counter() == 1\nassert counter() == 2\n"
  assert plan_tests(tests).probes == ("counter()", "counter()")
  assert judge_tests(tests, [(True, 1), (True, 2)]).passed
  assert not judge_tests(tests, [(True, 2), (True, 1)]).passed


def test_solution_functions_passed_to_builtins():
  tests = ("assert list(map(f, [1, 2])) == [2, 4]\nassert sorted([3, 1, 2], key=f) == [1, 2, 3]\n"
           "assert list(filter(g, [1, 2, 3])) == [2]\nassert max([1, 5, 3], key=f) == 5\n")
  plan = plan_tests(tests)
  assert plan.probes == ("f(1)", "f(2)", "f(3)", "f(1)", "f(2)", "g(1)", "g(2)", "g(3)", "f(1)",
                         "f(5)", "f(3)")
  double = {"f(1)": 2, "f(2)": 4, "f(3)": 6, "f(5)": 10, "g(1)": False, "g(2)": True,
            "g(3)": False}
  assert judge_tests(tests, [(True, double[p]) for p in plan.probes]).passed
  negated = [(True, -double[p]) if p.startswith("f") else (True, double[p]) for p in plan.probes]
  assert not judge_tests(tests, negated).passed
