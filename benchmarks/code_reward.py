"""Throughput of the code reward on a GRPO batch: programs scored per second.

  python -m benchmarks.code_reward [--programs=256] [--workers=0,1] [--timeout_s=1.0] [--quick]

Scores `programs` completions through `compute_rewards` (the path GRPO uses) with the default
sandbox (bubblewrap; every program in its own namespaces, judged in the parent), once per
worker count (0 = the CPUs of this process). The batch is a fixed mix, in shuffled order:

  correct  50%   passes all 5 asserts               wrong  25%   fails an assert
  crash    12.5% raises at import or in a call      loop   12.5% never ends (hits the timeout)

Looping programs cost timeout_s each, so programs/s depends on the timeout as much as on the
sandbox: the table also gives the rate over the non-looping programs alone.
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks.common import load_note
from reasoner.data.problem import Problem
from reasoner.rewards import RewardConfig, compute_rewards, isolation
from reasoner.rewards.sandbox import default_workers

TESTS = "\n".join(f"assert fib({n}) == {v}" for n, v in ((0, 0), (1, 1), (2, 1), (10, 55),
                                                           (20, 6765)))
PROGRAMS = {
    "correct": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
               "    return a\n",
    "wrong": "def fib(n):\n    return n\n",
    "crash": "def fib(n):\n    return fib(n - 1) + fib(n - 2)\n",  # RecursionError
    "loop": "def fib(n):\n    while True:\n        pass\n",
}
MIX = {"correct": 4, "wrong": 2, "crash": 1, "loop": 1}  # out of 8


def batch(n: int, seed: int = 0) -> list[str]:
  kinds = [k for k, w in MIX.items() for _ in range(w)]
  names = [kinds[i % len(kinds)] for i in range(n)]
  random.Random(seed).shuffle(names)
  return names


def score(names: list[str], workers: int, timeout_s: float) -> tuple[float, dict]:
  problem = Problem("Write fib(n).", "", "", "code", {"tests": TESTS})
  completions = [f"<think>ok</think><answer>```python\n{PROGRAMS[k]}```</answer>" for k in names]
  config = RewardConfig(code_timeout_s=timeout_s, code_workers=workers)
  start = time.perf_counter()
  _, parts = compute_rewards([problem] * len(names), completions, [10] * len(names), config)
  elapsed = time.perf_counter() - start
  expected = [1.0 if k == "correct" else 0.0 for k in names]
  if parts["r_out"].tolist() != expected:
    raise SystemExit("the code reward scored the benchmark batch wrongly")
  return elapsed, parts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--programs", type=int, default=256)
  parser.add_argument("--workers", default="0,1")
  parser.add_argument("--timeout_s", type=float, default=1.0)
  parser.add_argument("--quick", action="store_true", help="16 programs, one worker count")
  args = parser.parse_args(argv)
  n = 16 if args.quick else args.programs
  worker_counts = [0] if args.quick else [int(w) for w in args.workers.split(",")]
  works, reason = isolation.bwrap_status()
  if not works:
    raise SystemExit(f"no OS sandbox here: {reason}")
  names = batch(n)
  loops = names.count("loop")
  print(f"code reward: {n} programs ({', '.join(f'{names.count(k)} {k}' for k in MIX)}), "
        f"timeout {args.timeout_s:g} s, bwrap; {load_note()}")
  print(f"{'workers':>8} {'seconds':>8} {'programs/s':>11} {'non-loop/s':>11}")
  for workers in worker_counts:
    elapsed, _ = score(names, workers, args.timeout_s)
    used = workers or default_workers()
    loop_seconds = loops * args.timeout_s / used  # lower bound of the time spent on loops
    rest = (n - loops) / max(elapsed - loop_seconds, 1e-9)
    print(f"{used:>8d} {elapsed:>8.2f} {n / elapsed:>11.1f} {rest:>11.1f}")


if __name__ == "__main__":
  main()
