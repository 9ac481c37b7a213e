"""Every run's outcome under its output (fruits.outcomes), and --check (fruits.cluster_check), on local Spark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fruits import commits, layout, outcomes
from fruits.cluster_check import synthetic_jpeg
from fruits.job import main
from fruits.storage import open_store
from tests.conftest import FAST_MODEL, make_image_tree


def _records(output: Path) -> list[outcomes.Outcome]:
    return outcomes.read_all(open_store(str(output)))


def _record(**changes: object) -> outcomes.Outcome:
    fields = {
        "run_id": "20261207T120501Z-3f9a1c",
        "status": outcomes.FAILED,
        "exit_code": 2,
        "reason": "input is empty",
        "started_at": "2026-12-07T12:05:01+00:00",
        "finished_at": "2026-12-07T12:05:09+00:00",
        "input": "s3://in/",
        "output": "s3://out/",
    }
    return outcomes.Outcome(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_record_round_trips_and_foreign_objects_are_refused(tmp_path):
    store = open_store(str(tmp_path))
    record = _record()
    assert outcomes.write(store, record) == store.uri_for(layout.outcome_key(record.run_id))
    store.write_bytes(f"{layout.OUTCOMES_PREFIX}20261207T120502Z-aaaaaa.json", b"[1, 2]")  # not a record
    store.write_bytes(f"{layout.OUTCOMES_PREFIX}notes.txt", b"hello")  # not a record's name
    assert outcomes.read_all(store) == [record]
    with pytest.raises(ValueError, match="unknown outcome status"):
        _record(status="maybe")
    with pytest.raises(ValueError, match="not a run id"):
        _record(run_id="../x")


def test_a_record_that_cannot_be_written_does_not_fail_the_run(tmp_path, caplog):
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder should be")
    assert outcomes.write(open_store(str(blocked)), _record()) is None
    assert "could not write the run's outcome record" in caplog.text


@pytest.mark.spark
@pytest.mark.slow
def test_a_failed_run_leaves_its_reason_and_exit_status(spark, tmp_path, capsys):
    empty, output = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    assert main(["--input", str(empty), "--output", str(output), *FAST_MODEL], spark) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    (record,) = _records(output)
    assert record.status == outcomes.FAILED and record.exit_code == 2
    assert line == f"featurize_pca: error: {record.reason}" and "input is empty" in record.reason
    assert record.commit is None and record.input == str(empty)


@pytest.mark.spark
@pytest.mark.slow
def test_an_empty_input_with_allow_empty_is_nothing_to_do(spark, tmp_path):
    empty, output = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    assert main(["--input", str(empty), "--output", str(output), *FAST_MODEL, "--allow-empty"], spark) == 0
    (record,) = _records(output)
    assert (record.status, record.exit_code, record.reason, record.commit) == (
        outcomes.NOTHING_TO_DO,
        0,
        None,
        None,
    )


@pytest.mark.spark
@pytest.mark.slow
def test_a_committed_run_names_its_commit_and_counts(spark, tmp_path):
    root = make_image_tree(tmp_path / "images")
    output = tmp_path / "out"
    assert main(["--input", str(root), "--output", str(output), *FAST_MODEL, "--k", "2"], spark) == 0
    (record,) = _records(output)
    commit = commits.latest_commit(open_store(str(output)))
    assert record.status == outcomes.SUCCEEDED and record.commit == commit["number"] == 1
    assert record.run_id == commit["run_id"] and record.counts == commit["counts"]


@pytest.mark.spark
@pytest.mark.slow
def test_check_exercises_every_part_and_commits_nothing(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "cache"))  # a fresh node: no model in its local cache
    root = make_image_tree(tmp_path / "images")
    output = tmp_path / "out"
    assert main(["--input", str(root), "--output", str(output), *FAST_MODEL, "--check"], spark) == 0
    store = open_store(str(output))
    assert commits.latest_commit(store) is None and not store.exists(layout.LEASE_KEY)
    assert store.list_keys(layout.CHECKS_PREFIX) == []  # its scratch object is gone
    (record,) = _records(output)
    assert record.status == outcomes.CHECKED and record.exit_code == 0
    report = record.details or {}
    assert list(report) == ["options", "weights", "input", "output", "model", "executors"]
    assert report["input"] == f"{sum(1 for p in root.rglob('*') if p.is_file())} files"
    assert report["model"]["from"] == "built" and "featurized on 2 task slots" in report["executors"]
    # The model is kept where the first real run looks for it: that run does not build it again.
    keys = open_store(str(output / "feature_store")).list_keys()
    assert any("/engines/" in key for key in keys), keys


@pytest.mark.spark
@pytest.mark.slow
def test_check_fails_in_one_line_naming_the_step(spark, tmp_path, capsys):
    root = make_image_tree(tmp_path / "images")
    output = tmp_path / "out"
    store = open_store(str(output))
    store.write_bytes("_checks", b"a file where the check's folder should be")
    assert main(["--input", str(root), "--output", str(output), *FAST_MODEL, "--check"], spark) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("featurize_pca: error: check failed at output: ")
    (record,) = _records(output)
    assert record.status == outcomes.FAILED and record.reason.startswith("check failed at output")


def test_synthetic_images_are_real_jpegs_of_distinct_colours():
    import io

    from PIL import Image

    first, second = (Image.open(io.BytesIO(synthetic_jpeg(i))) for i in (1, 2))
    assert first.format == "JPEG" and first.size == (100, 100)
    assert first.getpixel((50, 50)) != second.getpixel((50, 50))
    assert json.dumps(_record().to_json())  # records are plain JSON
