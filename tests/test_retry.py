"""A featurization task that fails once is retried, and no image is counted twice.

Local mode normally never retries a task (it ignores ``spark.task.maxFailures``); ``local[2,2]`` allows two
attempts. The run goes in its own process because a process has one SparkContext and the shared session is
``local[2]``. ``FRUITS_FAULT=fail-first-attempt`` makes every featurization task's first attempt raise.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.job_faults import add_images, job_args, run_job_process

pytestmark = [pytest.mark.spark, pytest.mark.slow]
IMAGES = 6


def test_task_failing_once_is_retried_without_double_counting(tmp_path):
    images, output = tmp_path / "images", tmp_path / "out"
    add_images(images, IMAGES)
    log = tmp_path / "run.log"
    status = run_job_process(
        job_args(images, output), log, master="local[2,2]", env={"FRUITS_FAULT": "fail-first-attempt"}
    )
    text = log.read_text()
    assert status == 0, text[-3000:]
    # The fault really fired (else this test proves nothing) and the run still succeeded.
    assert "injected fault: first attempt of task" in text

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["spark_master"] == "local[2,2]"
    assert manifest["counts"] == {
        "found": IMAGES,
        "featurized": IMAGES,
        "rejected": 0,
        "reused": 0,
        "newly_featurized": IMAGES,
    }
    results = pd.read_csv(output / "results.csv")
    assert len(results) == IMAGES and results["path"].is_unique
    fs = manifest["feature_store"]
    (batch,) = fs["batches"]
    stored = pd.read_parquet(output / "feature_store" / fs["model_key"] / batch)
    assert len(stored) == IMAGES and stored["id"].is_unique
