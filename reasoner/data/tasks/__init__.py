"""Registry of procedural, verifiable tasks: `get_task(name)`, `TASKS`, `mixture(...)`."""

from reasoner.data.tasks.arithmetic import ArithmeticTask
from reasoner.data.tasks.base import SPLITS, TEST_FRACTION, VALIDATION_FRACTION, Task, split_of_key
from reasoner.data.tasks.countdown import CountdownTask, check_expression
from reasoner.data.tasks.linear_equation import LinearEquationTask
from reasoner.data.tasks.mixture import mixture
from reasoner.data.tasks.modular_arithmetic import ModularArithmeticTask

TASKS: dict[str, Task] = {
    task.name: task
    for task in (ArithmeticTask(), CountdownTask(), LinearEquationTask(), ModularArithmeticTask())
}


def get_task(name: str) -> Task:
  """The registered task called `name`; ValueError listing the valid names otherwise."""
  try:
    return TASKS[name]
  except KeyError:
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}") from None
