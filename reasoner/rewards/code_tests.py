"""Unit tests of the code reward, judged in the trusted parent.

A test script is plain Python made of `assert` statements, assignments of test data, `for` loops
and `if`s over test data, `try` / `except` on the solution's exceptions, `import math`, and
helpers such as HumanEval's `def check(candidate): ...` called as `check(solve)`; a solution
function may be passed by name to `map`, `filter`, `sorted(key=)`, `min` / `max(key=)`. The
parent interprets it itself; only the calls into the solution ("probes", e.g. `add(2, 3)` or
`Solution().solve([1, 2])`) run in the sandboxed child, which sends back their values as plain
Python literals. Everything around a probe (the comparison, `sorted(...)`, `abs(x - 1.5) <
1e-6`, the expected values) is evaluated here, so the child never sees what its outputs are
compared with and no object of its making takes part in a comparison: forging the outputs is the
same as computing them.

    plan = plan_tests(tests)                 # the probes, in order, with test data inlined
    values = ...                             # (ok, value-or-error-name) per probe, from the child
    verdict = judge_tests(tests, values)     # Verdict(passed, checks, failure)

`plan_tests` raises UnsupportedTests for scripts it cannot judge this way (statements other than
the above, loops over a solution's output, ...): a data error, never a silent pass.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
from typing import Any, Callable, Optional, Sequence

MAX_ITEMS = 1_000_000  # largest sequence the parent builds while judging
MAX_INT_BITS = 100_000
MAX_LOOP_STEPS = 100_000


class UnsupportedTests(ValueError):
  """The test script uses a construct the parent cannot judge without running it in the child."""


@dataclasses.dataclass(frozen=True)
class Plan:
  probes: tuple[str, ...]  # expressions for the child, test data inlined as literals
  num_checks: int  # assert statements executed (loop iterations counted)
  uses_math: bool


@dataclasses.dataclass(frozen=True)
class Verdict:
  passed: bool
  checks: int
  failure: Optional[str] = None


class _Pending:
  """A probe's value before the child has run (planning pass)."""

  def __repr__(self):
    return "<pending>"


_PENDING = _Pending()


@dataclasses.dataclass(frozen=True)
class _SolutionRef:
  """A test helper's parameter bound to a name of the solution (`check(candidate)`)."""
  name: str


@dataclasses.dataclass(frozen=True)
class _TestFunction:
  """A `def` of the test script (e.g. HumanEval's `check(candidate)`), run by the interpreter."""
  node: ast.FunctionDef


class _Return(Exception):
  def __init__(self, value):
    super().__init__()
    self.value = value


class _ProbeRaised(Exception):
  """The solution raised while a probe ran (`kind`: its exception type name)."""

  def __init__(self, message: str, kind: str):
    super().__init__(message)
    self.kind = kind


def _exception_matches(raised: str, handler: str) -> bool:
  """Whether `except handler` catches an exception whose type is named `raised`: builtin types
  by their hierarchy, others (the solution's own classes) by `Exception` or their name."""
  import builtins  # pylint: disable=import-outside-toplevel
  base = getattr(builtins, handler, None)
  if not (isinstance(base, type) and issubclass(base, BaseException)):
    return False
  kind = getattr(builtins, raised, None)
  if isinstance(kind, type) and issubclass(kind, BaseException):
    return issubclass(kind, base)
  return base is Exception or base is BaseException


class _Failed(Exception):
  pass


@dataclasses.dataclass(frozen=True)
class _Deferred:
  error: BaseException


def _guarded_range(*args):
  r = range(*args)
  if len(r) > MAX_ITEMS:
    raise ValueError("range too long")
  return r


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple,
          "dict": dict, "set": set, "frozenset": frozenset, "complex": complex, "bytes": bytes}
_BUILTINS: dict[str, Callable] = {
    **_TYPES, "abs": abs, "all": all, "any": any, "divmod": divmod, "enumerate": enumerate,
    "len": len, "max": max, "min": min, "range": _guarded_range, "reversed": reversed,
    "round": round, "sorted": sorted, "sum": sum, "zip": zip, "chr": chr, "ord": ord,
    "map": map, "filter": filter,
    "repr": repr, "isinstance": isinstance, "hex": hex, "bin": bin, "oct": oct,
}
_MATH = {name: getattr(math, name) for name in (
    "isclose", "sqrt", "floor", "ceil", "fabs", "isnan", "isinf", "isfinite", "gcd", "log",
    "log2", "log10", "exp", "sin", "cos", "tan", "atan2", "hypot", "trunc", "pi", "e", "inf",
    "nan", "tau")}
_METHODS = {
    str: {"lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
          "startswith", "endswith", "count", "find", "rfind", "index", "isdigit", "isalpha",
          "isalnum", "isspace", "islower", "isupper", "title", "capitalize", "casefold", "join"},
    list: {"count", "index", "copy"}, tuple: {"count", "index"},
    dict: {"keys", "values", "items", "get", "copy"},
    set: {"issubset", "issuperset", "union", "intersection", "difference", "isdisjoint", "copy"},
    frozenset: {"issubset", "issuperset", "union", "intersection", "difference", "isdisjoint"},
    int: {"bit_length"}, float: {"is_integer"}, bytes: {"decode", "count"},
}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
           ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_,
          ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
_MATH_MODULE = object()  # what `import math` binds in the interpreter's environment


def _checked_binop(op, a, b):
  if op is ast.Mult:
    for seq, n in ((a, b), (b, a)):
      if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and \
          len(seq) * max(n, 0) > MAX_ITEMS:
        raise ValueError("sequence too long")
  if op is ast.Pow and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and \
      b * max(abs(a).bit_length(), 1) > MAX_INT_BITS:
    raise ValueError("power too large")
  if op is ast.LShift and isinstance(b, int) and b > MAX_INT_BITS:
    raise ValueError("shift too large")
  return _BINOPS[op](a, b)


def _to_literal(value) -> ast.expr:
  """An AST literal for a plain test value (inlined into a probe)."""
  if isinstance(value, float) and not math.isfinite(value):
    return ast.parse(f"float({str(value)!r})", mode="eval").body
  if isinstance(value, (list, tuple, set, frozenset)) and any(
      isinstance(v, float) and not math.isfinite(v) for v in value):
    raise UnsupportedTests("non-finite floats inside a container passed to the solution")
  text = repr(value)
  try:
    same = ast.literal_eval(text) == value
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    same = False
  if not same:
    raise UnsupportedTests(f"cannot pass a {type(value).__name__} to the solution")
  return ast.parse(text, mode="eval").body


class _Interpreter:
  """Evaluates a test script over plain values; `probe(source)` supplies solution values."""

  def __init__(self, probe: Callable[[str], Any], planning: bool):
    self.probe, self.planning = probe, planning
    self.checks, self.steps, self.uses_math, self.depth = 0, 0, False, 0
    self.proxy_pending = False  # a solution callable returned a pending value (planning)

  # ---- statements -------------------------------------------------------------------------
  def run(self, body: Sequence[ast.stmt], env: dict):
    for stmt in body:
      self.steps += 1
      if self.steps > MAX_LOOP_STEPS:
        raise UnsupportedTests("test script runs too many statements")
      self.statement(stmt, env)

  def statement(self, stmt: ast.stmt, env: dict):
    if isinstance(stmt, ast.Assert):
      self.checks += 1
      value = self.eval(stmt.test, env)
      if value is _PENDING or self.planning:  # planning visits every path; judging stops here
        return
      if not value:
        raise _Failed(f"assert {ast.unparse(stmt.test)}")
    elif isinstance(stmt, ast.Assign):
      value = self.eval(stmt.value, env)
      for target in stmt.targets:
        self.bind(target, value, env)
    elif isinstance(stmt, ast.Expr):
      self.eval(stmt.value, env)
    elif isinstance(stmt, ast.For) and not stmt.orelse:
      items = self.eval(stmt.iter, env)
      if items is _PENDING:
        raise UnsupportedTests("a for loop over a solution's output")
      for item in list(items)[:MAX_ITEMS]:
        self.bind(stmt.target, item, env)
        self.run(stmt.body, env)
    elif isinstance(stmt, ast.If):
      test = self.eval(stmt.test, env)
      if test is _PENDING:
        raise UnsupportedTests("an if on a solution's output (use assert)")
      self.run(stmt.body if test else stmt.orelse, env)
    elif isinstance(stmt, ast.Import) and [a.name for a in stmt.names] == ["math"]:
      env[stmt.names[0].asname or "math"] = _MATH_MODULE
      self.uses_math = True
    elif isinstance(stmt, ast.ImportFrom) and stmt.module == "math" and stmt.level == 0:
      for alias in stmt.names:
        if alias.name not in _MATH:
          raise UnsupportedTests(f"math.{alias.name} is not available to tests")
        env[alias.asname or alias.name] = _MATH[alias.name]
    elif isinstance(stmt, ast.Pass):
      pass
    elif isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list:
      args = stmt.args
      if args.vararg or args.kwarg or args.kwonlyargs or args.defaults or args.posonlyargs:
        raise UnsupportedTests(f"test helper {stmt.name} must take plain parameters")
      env[stmt.name] = _TestFunction(stmt)
    elif isinstance(stmt, ast.Try):
      self.run_try(stmt, env)
    elif isinstance(stmt, ast.Return):
      raise _Return(None if stmt.value is None else self.eval(stmt.value, env))
    else:
      raise UnsupportedTests(f"unsupported test statement: {ast.unparse(stmt)[:80]}")

  def run_try(self, stmt: ast.Try, env: dict):
    """try / except / else / finally, where the exceptions are the solution's (by type name,
    as the child reports them) or a failed assert (AssertionError)."""
    for handler in stmt.handlers:
      names = [] if handler.type is None else (
          handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type])
      if handler.name or not all(isinstance(n, ast.Name) for n in names):
        raise UnsupportedTests("except clauses must name exception types (without 'as')")
    if self.planning:  # every block may run: collect the probes of all of them
      for body in [stmt.body] + [h.body for h in stmt.handlers] + [stmt.orelse, stmt.finalbody]:
        self.run(body, env)
      return
    try:
      try:
        self.run(stmt.body, env)
      except (_ProbeRaised, _Failed) as e:
        raised = e.kind if isinstance(e, _ProbeRaised) else "AssertionError"
        for handler in stmt.handlers:
          if handler.type is None or any(_exception_matches(raised, n.id) for n in
                                         (handler.type.elts if isinstance(handler.type, ast.Tuple)
                                          else [handler.type])):
            self.run(handler.body, env)
            break
        else:
          raise
      else:
        self.run(stmt.orelse, env)
    finally:
      self.run(stmt.finalbody, env)

  def bind(self, target: ast.expr, value, env: dict):
    if isinstance(target, ast.Name):
      env[target.id] = value
    elif isinstance(target, (ast.Tuple, ast.List)):
      if value is _PENDING:
        for elt in target.elts:
          self.bind(elt, _PENDING, env)
        return
      values = list(value)
      if len(values) != len(target.elts):
        raise ValueError("wrong number of values to unpack")
      for elt, v in zip(target.elts, values):
        self.bind(elt, v, env)
    else:
      raise UnsupportedTests(f"unsupported assignment target {ast.unparse(target)}")

  # ---- expressions ------------------------------------------------------------------------
  def solution_rooted(self, node: ast.expr, env: dict) -> bool:
    """Whether `node` names something of the solution (a free name, or a call / attribute of
    one): such a node is a probe, evaluated in the child."""
    if isinstance(node, ast.Name):
      if node.id in env:
        return isinstance(env[node.id], _SolutionRef)
      return node.id not in _BUILTINS
    if isinstance(node, ast.Attribute):
      return self.solution_rooted(node.value, env)
    if isinstance(node, ast.Call):
      return self.solution_rooted(node.func, env)
    return False

  def make_probe(self, node: ast.expr, env: dict):
    class Inline(ast.NodeTransformer):
      def visit_Name(self, name):  # pylint: disable=invalid-name
        if isinstance(name.ctx, ast.Load) and name.id in env:
          value = env[name.id]
          if value is _MATH_MODULE:
            return name  # the child imports math too
          if isinstance(value, _SolutionRef):
            return ast.copy_location(ast.Name(value.name, ast.Load()), name)
          if isinstance(value, _TestFunction):
            raise UnsupportedTests("a test helper passed to the solution")
          if value is _PENDING or isinstance(value, _Deferred):
            raise UnsupportedTests("a solution's output passed back into the solution")
          return ast.copy_location(_to_literal(value), name)
        return name

    source = ast.unparse(ast.fix_missing_locations(Inline().visit(
        ast.parse(ast.unparse(node), mode="eval"))))
    return self.probe(source)

  def eval(self, node: ast.expr, env: dict):
    if self.solution_rooted(node, env):
      return self.make_probe(node, env)
    method = getattr(self, "eval_" + type(node).__name__, None)
    if method is None:
      raise UnsupportedTests(f"unsupported expression: {ast.unparse(node)[:80]}")
    return method(node, env)

  def eager(self, node: ast.expr, env: dict):
    """Evaluates `node` now (so probes are visited in the same order whatever is used later),
    deferring its error until its value is needed."""
    try:
      return self.eval(node, env)
    except UnsupportedTests:
      raise
    except Exception as e:  # pylint: disable=broad-except
      return _Deferred(e)

  @staticmethod
  def need(value):
    if isinstance(value, _Deferred):
      raise value.error
    return value

  def eval_Constant(self, node, env):  # pylint: disable=invalid-name
    return node.value

  def eval_Name(self, node, env):  # pylint: disable=invalid-name
    if node.id in env:
      return self.need(env[node.id])
    return _BUILTINS[node.id]

  def eval_Attribute(self, node, env):  # pylint: disable=invalid-name
    base = self.eval(node.value, env)
    if base is _MATH_MODULE and node.attr in _MATH:
      return _MATH[node.attr]
    raise UnsupportedTests(f"unsupported attribute: {ast.unparse(node)[:80]}")

  def eval_Tuple(self, node, env):  # pylint: disable=invalid-name
    values = [self.eval(e, env) for e in node.elts]
    return _PENDING if any(v is _PENDING for v in values) else tuple(values)

  def eval_List(self, node, env):  # pylint: disable=invalid-name
    values = [self.eval(e, env) for e in node.elts]
    return _PENDING if any(v is _PENDING for v in values) else values

  def eval_Set(self, node, env):  # pylint: disable=invalid-name
    values = [self.eval(e, env) for e in node.elts]
    return _PENDING if any(v is _PENDING for v in values) else set(values)

  def eval_Dict(self, node, env):  # pylint: disable=invalid-name
    if any(k is None for k in node.keys):
      raise UnsupportedTests("dict unpacking in tests")
    keys = [self.eval(k, env) for k in node.keys]
    values = [self.eval(v, env) for v in node.values]
    if any(v is _PENDING for v in keys + values):
      return _PENDING
    return dict(zip(keys, values))

  def eval_UnaryOp(self, node, env):  # pylint: disable=invalid-name
    value = self.eval(node.operand, env)
    return _PENDING if value is _PENDING else _UNARY[type(node.op)](value)

  def eval_BinOp(self, node, env):  # pylint: disable=invalid-name
    a, b = self.eval(node.left, env), self.eval(node.right, env)
    if a is _PENDING or b is _PENDING:
      return _PENDING
    if type(node.op) not in _BINOPS:
      raise UnsupportedTests("unsupported operator")
    return _checked_binop(type(node.op), a, b)

  def eval_BoolOp(self, node, env):  # pylint: disable=invalid-name
    values = [self.eager(v, env) for v in node.values]
    if any(v is _PENDING for v in values):
      return _PENDING
    is_and = isinstance(node.op, ast.And)
    for v in values[:-1]:
      v = self.need(v)
      if (not v) if is_and else v:
        return v
    return self.need(values[-1])

  def eval_IfExp(self, node, env):  # pylint: disable=invalid-name
    test, body, orelse = (self.eager(n, env) for n in (node.test, node.body, node.orelse))
    if any(v is _PENDING for v in (test, body, orelse)):
      return _PENDING
    return self.need(body) if self.need(test) else self.need(orelse)

  def eval_Compare(self, node, env):  # pylint: disable=invalid-name
    values = [self.eval(node.left, env)] + [self.eval(c, env) for c in node.comparators]
    if any(v is _PENDING for v in values):
      return _PENDING
    for op, a, b in zip(node.ops, values, values[1:]):
      if not _COMPARE[type(op)](a, b):
        return False
    return True

  def eval_Subscript(self, node, env):  # pylint: disable=invalid-name
    base, index = self.eval(node.value, env), self.eval(node.slice, env)
    if base is _PENDING or index is _PENDING:
      return _PENDING
    if not isinstance(base, (str, bytes, list, tuple, dict, range)):
      raise TypeError("not subscriptable")
    return base[index]

  def eval_Slice(self, node, env):  # pylint: disable=invalid-name
    parts = [None if p is None else self.eval(p, env) for p in (node.lower, node.upper, node.step)]
    return _PENDING if any(p is _PENDING for p in parts) else slice(*parts)

  def eval_Call(self, node, env):  # pylint: disable=invalid-name
    func = node.func
    if isinstance(func, ast.Attribute) and not self.solution_rooted(func.value, env):
      base = self.eval(func.value, env)
      if base is _MATH_MODULE:
        fn = self.eval_Attribute(func, env)
      elif base is _PENDING:
        fn = None
      else:
        if func.attr not in _METHODS.get(type(base), ()):
          raise UnsupportedTests(f"method {type(base).__name__}.{func.attr} in tests")
        fn = getattr(base, func.attr)
    else:
      fn = self.eval(func, env)
    if any(isinstance(a, ast.Starred) for a in node.args):
      raise UnsupportedTests("*args in tests")
    if isinstance(fn, _TestFunction):
      return self.call_helper(fn.node, node, env)
    args = [self.argument(a, env) for a in node.args]
    kwargs = {}
    for kw in node.keywords:
      if kw.arg is None:
        raise UnsupportedTests("**kwargs in tests")
      kwargs[kw.arg] = self.argument(kw.value, env)
    if fn is None or any(v is _PENDING for v in args + list(kwargs.values())):
      return _PENDING
    if not callable(fn):
      raise TypeError("not callable")
    outer, self.proxy_pending = self.proxy_pending, False
    try:
      result = fn(*args, **kwargs)
      if isinstance(result, (enumerate, reversed, zip, map, filter, type(iter([])),
                             type(iter(())))) or type(result).__name__.endswith("iterator"):
        result = list(result)[:MAX_ITEMS]
    except Exception:  # pylint: disable=broad-except
      if self.planning and self.proxy_pending:
        return _PENDING  # e.g. sorted() comparing keys the child has not computed yet
      raise
    finally:
      pending, self.proxy_pending = self.proxy_pending, outer or self.proxy_pending
    if pending:
      return _PENDING
    if isinstance(result, (str, bytes, list, tuple)) and len(result) > MAX_ITEMS:
      raise ValueError("result too long")
    return result

  def argument(self, node: ast.expr, env: dict):
    """An argument of a call evaluated here: a solution function passed by name (`map(f, xs)`,
    `sorted(xs, key=f)`) becomes a callable whose every call is a probe."""
    if isinstance(node, (ast.Name, ast.Attribute)) and self.solution_rooted(node, env):
      def call_solution(*args):
        call = ast.Call(func=node, args=[_to_literal(a) for a in args], keywords=[])
        value = self.make_probe(call, env)
        if value is _PENDING:  # planning: a stand-in the builtin can compare, marked pending
          self.proxy_pending = True
          return 0
        return value
      return call_solution
    return self.eval(node, env)

  def call_helper(self, fdef: ast.FunctionDef, call: ast.Call, env: dict):
    """Runs a test helper: a parameter given a solution name refers to it; others get values."""
    params = [a.arg for a in fdef.args.args]
    if call.keywords or len(call.args) != len(params):
      raise UnsupportedTests(f"call {ast.unparse(call)[:80]} must pass every parameter by position")
    self.depth += 1
    if self.depth > 20:
      raise UnsupportedTests("test helpers nest too deeply")
    scope = dict(env)
    for param, arg in zip(params, call.args):
      if isinstance(arg, ast.Name) and self.solution_rooted(arg, env):
        scope[param] = env[arg.id] if arg.id in env else _SolutionRef(arg.id)
      else:
        scope[param] = self.eval(arg, env)
    try:
      self.run(fdef.body, scope)
      return None
    except _Return as r:
      return r.value
    finally:
      self.depth -= 1

  def comprehension(self, generators, env, element: Callable[[dict], Any]):
    """Rows of element(env) for every binding of `generators`, in order (eagerly evaluated)."""
    rows = []

    def loop(i, scope):
      if i == len(generators):
        rows.append(element(scope))
        return
      gen = generators[i]
      if gen.is_async:
        raise UnsupportedTests("async comprehension")
      items = self.eval(gen.iter, scope)
      if items is _PENDING:
        raise UnsupportedTests("a comprehension over a solution's output")
      for item in list(items)[:MAX_ITEMS]:
        self.steps += 1
        if self.steps > MAX_LOOP_STEPS:
          raise UnsupportedTests("test script runs too many statements")
        inner = dict(scope)
        self.bind(gen.target, item, inner)
        conds = [self.eager(c, inner) for c in gen.ifs]
        if any(c is _PENDING for c in conds):
          raise UnsupportedTests("a comprehension filtered on a solution's output")
        if all(self.need(c) for c in conds):
          loop(i + 1, inner)

    loop(0, dict(env))
    return rows

  def _elements(self, node, env):
    rows = self.comprehension(node.generators, env, lambda scope: self.eager(node.elt, scope))
    if any(v is _PENDING for v in rows):
      return _PENDING
    return [self.need(v) for v in rows]

  def eval_ListComp(self, node, env):  # pylint: disable=invalid-name
    return self._elements(node, env)

  def eval_GeneratorExp(self, node, env):  # pylint: disable=invalid-name
    return self._elements(node, env)

  def eval_SetComp(self, node, env):  # pylint: disable=invalid-name
    rows = self._elements(node, env)
    return rows if rows is _PENDING else set(rows)

  def eval_DictComp(self, node, env):  # pylint: disable=invalid-name
    rows = self.comprehension(node.generators, env,
                              lambda s: (self.eager(node.key, s), self.eager(node.value, s)))
    if any(k is _PENDING or v is _PENDING for k, v in rows):
      return _PENDING
    return {self.need(k): self.need(v) for k, v in rows}

  def eval_JoinedStr(self, node, env):  # pylint: disable=invalid-name
    parts = []
    for value in node.values:
      if isinstance(value, ast.Constant):
        parts.append(value.value)
      elif value.format_spec is None and value.conversion == -1:
        v = self.eval(value.value, env)
        parts.append(v if v is _PENDING else str(v))
      else:
        raise UnsupportedTests("formatted f-string fields in tests")
    return _PENDING if any(p is _PENDING for p in parts) else "".join(parts)


def _parse(tests: str) -> ast.Module:
  try:
    return ast.parse(tests, "tests.py")
  except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
    raise UnsupportedTests(f"tests do not parse: {type(e).__name__}: {e}") from None


def plan_tests(tests: str) -> Plan:
  """The probes the child must evaluate for `tests` (raises UnsupportedTests)."""
  probes: list[str] = []

  def record(source):
    probes.append(source)
    return _PENDING

  interp = _Interpreter(record, planning=True)
  try:
    interp.run(_parse(tests).body, {})
  except UnsupportedTests:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UnsupportedTests(f"the tests fail on their own: {type(e).__name__}: {e}") from None
  return Plan(tuple(probes), interp.checks, interp.uses_math)


def judge_tests(tests: str, results: Sequence[tuple[bool, Any]]) -> Verdict:
  """Runs `tests` here with the probes' values from the child: results[i] is (True, value) or
  (False, exception type name) for plan_tests(tests).probes[i] (missing ones fail)."""
  # A probe's result is keyed by (source, how many times that source came before it): the
  # planning pass visits every branch, judging skips some, and both count the same way.
  keyed, seen = {}, {}
  for source, result in zip(plan_tests(tests).probes, results):
    keyed[(source, seen.get(source, 0))] = result
    seen[source] = seen.get(source, 0) + 1
  used: dict = {}

  def lookup(source):
    key = (source, used.get(source, 0))
    used[source] = key[1] + 1
    if key not in keyed:
      raise _Failed(f"no result for {source}")
    ok, value = keyed[key]
    if not ok:
      raise _ProbeRaised(f"{source} raised {value}", str(value))
    return value

  interp = _Interpreter(lookup, planning=False)
  try:
    interp.run(_parse(tests).body, {})
  except _Failed as e:
    return Verdict(False, interp.checks, str(e))
  except _ProbeRaised as e:
    return Verdict(False, interp.checks, str(e))
  except UnsupportedTests:
    raise
  except Exception as e:  # pylint: disable=broad-except
    return Verdict(False, interp.checks, f"{type(e).__name__} while judging: {e}"[:300])
  return Verdict(True, interp.checks)
