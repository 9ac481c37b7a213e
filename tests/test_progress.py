"""Progress lines and stage timings, with a stand-in for Spark's status tracker."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from fruits.progress import StageTimer, report_progress


class Tracker:
    """Reports one active stage whose completed-task count grows at each poll."""

    def __init__(self) -> None:
        self.polls = 0

    def getActiveStageIds(self):  # Spark's camelCase names
        self.polls += 1
        return [7]

    def getStageInfo(self, stage_id):
        return SimpleNamespace(numTasks=10, numCompletedTasks=min(self.polls, 10))


def test_progress_logs_tasks_done_percentage_rate_and_eta(caplog):
    tracker = Tracker()
    context = SimpleNamespace(statusTracker=lambda: tracker)
    with (
        caplog.at_level(logging.INFO, logger="fruits"),
        report_progress(context, "featurize", 1000, every=0.02),
    ):
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("featurize:")]
    assert len(lines) >= 2
    assert (
        lines[0].startswith("featurize: 1/10 tasks (10%)") and "images/s" in lines[0] and "left" in lines[0]
    )
    assert "featurize: 2/10 tasks (20%)" in lines[1]


def test_progress_is_quiet_without_active_stages_and_stops_with_the_block(caplog):
    context = SimpleNamespace(
        statusTracker=lambda: SimpleNamespace(getActiveStageIds=lambda: [], getStageInfo=lambda _: None)
    )
    with (
        caplog.at_level(logging.INFO, logger="fruits"),
        report_progress(context, "featurize", 10, every=0.01),
    ):
        time.sleep(0.05)
    assert not [r for r in caplog.records if r.getMessage().startswith("featurize:")]


def test_stage_timer_keeps_each_stage_and_logs_it(caplog):
    timer = StageTimer()
    with caplog.at_level(logging.INFO, logger="fruits"):
        with timer.stage("catalog", "(120 images)"):
            time.sleep(0.01)
        with timer.stage("catalog"):
            pass
    assert set(timer.seconds) == {"catalog"} and timer.seconds["catalog"] >= 0.01
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "catalog (120 images) ..." and messages[1].startswith("catalog done in")


def test_background_work_is_timed_apart_and_its_failure_surfaces_at_join():
    timer = StageTimer()
    started = threading.Event()
    release = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)

    timer.background("save", slow)
    assert started.wait(10)
    with timer.stage("next stage"):  # runs while the background work is still going
        assert "save" not in timer.background_seconds
    release.set()
    timer.join()
    assert set(timer.background_seconds) == {"save"} and set(timer.seconds) == {"next stage"}

    def broken() -> None:
        raise OSError("the store refused the write")

    timer.background("save again", broken)
    with pytest.raises(OSError, match="refused"):
        timer.join()
    timer.background("save again", broken)
    timer.join(raise_failure=False)  # a run already failing keeps its own error
    timer.join()  # nothing is left pending
