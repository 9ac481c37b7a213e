"""Stage timings and a progress line for long Spark stages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from pyspark import SparkContext

log = logging.getLogger(__name__)


class StageTimer:
    """Times named stages, logs each with its duration, and keeps them for the manifest.

    Stages run one after another (their seconds add up to the run); work that nothing downstream reads can
    run in the background beside them (:meth:`background`), timed apart in ``background_seconds``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.background_seconds: dict[str, float] = {}
        self._pending: list[tuple[str, Future[None]]] = []

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        """Time the block as ``name``; log its start (with ``detail``) and its end with the duration."""
        log.info("%s%s ...", name, f" {detail}" if detail else "")
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 3)
            log.info("%s done in %.1f s", name, elapsed)

    def background(self, name: str, work: Callable[[], None]) -> None:
        """Start ``work`` in a thread beside the stages that follow; :meth:`join` waits for it.

        For work whose only reader is the commit, such as saving a model that the rest of the run does not
        load: the stages go on while the driver waits on its small Spark jobs.
        """

        def timed() -> None:
            started = time.perf_counter()
            work()
            elapsed = time.perf_counter() - started
            self.background_seconds[name] = round(elapsed, 3)
            log.info("%s (in the background) done in %.1f s", name, elapsed)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fruits-{name.replace(' ', '-')}")
        self._pending.append((name, pool.submit(timed)))
        pool.shutdown(wait=False)

    def join(self, *, raise_failure: bool = True) -> None:
        """Wait for every background work; then raise the first failure (unless told not to: a run that is
        already failing keeps its own error)."""
        pending, self._pending = self._pending, []
        errors = [future.exception() for _, future in pending]
        failures = [error for error in errors if error is not None]
        if failures and raise_failure:
            raise failures[0]


def _format_eta(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


@contextmanager
def report_progress(sc: SparkContext, what: str, total_items: int, every: float = 10.0) -> Iterator[None]:
    """Log ``what: done/total tasks (x%), ~n images/s, ETA`` every ``every`` seconds while the block runs.

    Reads Spark's status tracker from a daemon thread (no extra Spark work); the console progress bar shows
    the same per stage when ``spark.ui.showConsoleProgress`` is on.
    """
    stop = threading.Event()
    started = time.monotonic()

    def watch() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(every):
            done = total = 0
            for stage_id in tracker.getActiveStageIds():
                info = tracker.getStageInfo(stage_id)
                if info is not None and info.numTasks > 1:
                    done += info.numCompletedTasks
                    total += info.numTasks
            if not total:
                continue
            elapsed = time.monotonic() - started
            fraction = done / total
            rate = fraction * total_items / elapsed if elapsed else 0.0
            eta = (elapsed / fraction - elapsed) if fraction else float("nan")
            log.info(
                "%s: %d/%d tasks (%.0f%%), ~%.0f images/s, %s left",
                what,
                done,
                total,
                100 * fraction,
                rate,
                _format_eta(eta) if fraction else "unknown",
            )

    thread = threading.Thread(target=watch, name="fruits-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)
