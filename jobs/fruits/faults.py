"""Fault hooks for the kill and retry tests: named points where a run can be made to die or fail on purpose.

- ``FRUITS_KILL_AT=<name>``: the driver kills itself with SIGKILL at :func:`checkpoint` ``<name>`` (featurize,
  pca, write, commit), as a lost driver container would die;
- ``FRUITS_FAULT=fail-first-attempt``: the first attempt of every featurization task raises, so Spark retries it;
- ``FRUITS_FAULT=stall-tasks``: every featurization task waits (up to 10 minutes) before it starts, as a slow one
  would, so that a test can interrupt a run while Spark is working.

Both are read from the environment and do nothing when unset.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)


def checkpoint(name: str) -> None:
    """Mark a point of the run; with FRUITS_KILL_AT=<name> the process kills itself there."""
    log.debug("checkpoint %s", name)
    if os.environ.get("FRUITS_KILL_AT") == name:
        log.warning("FRUITS_KILL_AT=%s: killing this run now", name)
        os.kill(os.getpid(), signal.SIGKILL)


def fail_first_attempt() -> None:
    """In a task: with FRUITS_FAULT=fail-first-attempt, the task's first attempt fails."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if os.environ.get("FRUITS_FAULT") == "fail-first-attempt" and context and context.attemptNumber() == 0:
        raise RuntimeError(f"injected fault: first attempt of task {context.partitionId()}")


def stall_task() -> None:
    """In a task: with FRUITS_FAULT=stall-tasks, wait as a slow task would (an interrupted run cancels it)."""
    if os.environ.get("FRUITS_FAULT") == "stall-tasks":
        time.sleep(600)
