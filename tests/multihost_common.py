"""The start every multi-process test script shares (imported before anything imports jax):
2 CPU devices per process, gloo collectives, and `join()` to enter the run."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def join() -> tuple[int, int, str]:
  """Reads `PROCESS_ID N PORT WORKDIR` from argv, initialises jax.distributed on localhost and
  puts the repository on sys.path; returns (process_id, n, workdir)."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  process_id, n, port, workdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  jax.distributed.initialize(f"localhost:{port}", num_processes=n, process_id=process_id)
  return process_id, n, workdir
