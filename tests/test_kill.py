"""A run killed at each stage costs nothing that was committed, and the next run finishes the work.

A first run is committed (#1); then the input grows by two images and a run in its own process kills itself
with SIGKILL at one stage (``FRUITS_KILL_AT``: featurize, pca, write, commit). Afterwards:
- the published files at the root and run #1's folder are byte-for-byte what they were, #1 is still current;
- the feature store reads cleanly and holds only complete batches;
- the dead run's lease is left behind, held by a process that no longer exists;
- the next run, on the same host, sees that the lease's process is gone and takes the lease over at once
  (no waiting for its 300 s TTL, no --wait), and commits #2, reusing whatever the killed run had stored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fruits import commits, feature_store
from fruits.job import PUBLISHED, main
from fruits.storage import open_store
from tests.job_faults import add_images, job_args, pid_alive, run_job_process, tree_digest

pytestmark = [pytest.mark.spark, pytest.mark.slow]
BASE, EXTRA = 6, 2

# What the killed run leaves under runs/<its id>/ and in the feature store, stage by stage: proves the
# process died where it was told to, not earlier or later.
LEFT_BEHIND = {
    "featurize": {"batch": False, "pca_model": False, "results.csv": False, "manifest.json": False},
    "pca": {"batch": True, "pca_model": False, "results.csv": False, "manifest.json": False},
    # None: either. The PCA pipeline is saved in the background beside the write stage.
    "write": {"batch": True, "pca_model": None, "results.csv": False, "manifest.json": False},
    "commit": {"batch": True, "pca_model": True, "results.csv": True, "manifest.json": True},
}


@pytest.fixture(scope="module")
def committed(spark, tmp_path_factory):
    """Run #1 over BASE images, then EXTRA more images in the input for the runs that get killed."""
    folder = tmp_path_factory.mktemp("kill")
    images, output = folder / "images", folder / "committed"
    add_images(images, BASE)
    assert main(job_args(images, output), spark) == 0
    add_images(images, EXTRA, first_seed=BASE)
    return images, output


@pytest.mark.parametrize("stage", list(LEFT_BEHIND))
def test_kill_at_stage_keeps_previous_result_and_next_run_completes(spark, committed, tmp_path, stage):
    images, committed_output = committed
    output = tmp_path / "out"
    shutil.copytree(committed_output, output)
    store = open_store(str(output))
    first = commits.latest_commit(store)
    assert first["number"] == 1
    published = {name: (output / name).read_bytes() for name in PUBLISHED}
    first_run = tree_digest(output / "runs" / first["run_id"])
    fs = json.loads((output / "manifest.json").read_text())["feature_store"]
    key = fs["model_key"]
    features = open_store(str(output / "feature_store"))  # the copy's store, not the manifest's uri

    args = job_args(images, output, "--overwrite")  # the default lease TTL: 300 s
    log = tmp_path / "killed.log"
    status = run_job_process(args, log, env={"FRUITS_KILL_AT": stage})
    assert status == -9, f"expected SIGKILL at {stage}, got {status}:\n{log.read_text()[-3000:]}"
    assert f"FRUITS_KILL_AT={stage}" in log.read_text()

    # The previous result: root files, commit and run folder untouched.
    assert {name: (output / name).read_bytes() for name in PUBLISHED} == published
    assert commits.commit_numbers(store) == [1]
    assert commits.read_run_manifest(store)["run_id"] == first["run_id"]
    assert tree_digest(output / "runs" / first["run_id"]) == first_run

    # The dead run's lease is still there, owned by a process that is gone.
    lease = json.loads((output / "_lease.json").read_text())
    killed = lease["owner"]
    assert killed != first["run_id"] and not pid_alive(lease["pid"])
    run_dir = output / "runs" / killed
    expected = LEFT_BEHIND[stage]
    left = {name: (run_dir / name).exists() for name in ("pca_model", "results.csv", "manifest.json")}
    batches = feature_store.committed_batches(features, key)
    left["batch"] = f"batch={killed}" in batches
    assert {name: seen for name, seen in left.items() if expected[name] is not None} == {
        name: wanted for name, wanted in expected.items() if wanted is not None
    }

    # The feature store reads cleanly: only complete batches, one row per image it holds.
    on_disk = sorted(
        p.name for p in (output / "feature_store" / key).iterdir() if p.name.startswith("batch=")
    )
    assert on_disk == batches, "a batch without _SUCCESS was left behind"
    stored = feature_store.read_features(spark, features, key, batches)
    stored_count = BASE + (EXTRA if expected["batch"] else 0)
    assert stored.count() == stored.where("features IS NOT NULL").count() == stored_count

    # The next run takes over the dead run's lease at once (its process is gone) and commits #2.
    started = time.monotonic()
    assert main(job_args(images, output, "--overwrite"), spark) == 0
    assert time.monotonic() - started < 240, (
        "the next run waited for the lease's TTL instead of taking it over"
    )
    latest = commits.latest_commit(store)
    assert latest["number"] == 2 and latest["run_id"] != killed
    newly = 0 if expected["batch"] else EXTRA  # what the killed run stored is not featurized again
    assert latest["counts"] == {
        "found": BASE + EXTRA,
        "featurized": BASE + EXTRA,
        "rejected": 0,
        "reused": BASE + EXTRA - newly,
        "newly_featurized": newly,
    }
    results = (output / "results.csv").read_text().splitlines()
    assert len(results) == 1 + BASE + EXTRA
    assert not (output / "_lease.json").exists()
    # What a dead run wrote is left for retention (--keep-runs), never reused; before PCA it wrote nothing there.
    written = [expected[name] for name in ("pca_model", "results.csv", "manifest.json")]
    if any(written):
        assert run_dir.exists()
    elif all(seen is False for seen in written):
        assert not run_dir.exists()


def test_feature_batch_without_success_marker_is_ignored(spark, committed, tmp_path):
    """A batch whose job never committed (task files visible, no _SUCCESS) is not trusted by the next run.

    Simulates a kill while the feature store was being written (or an S3 writer that exposes task files
    early): the planted part file holds deliberately wrong vectors for the new images.
    """
    images, committed_output = committed
    output = tmp_path / "out"
    shutil.copytree(committed_output, output)
    key = json.loads((output / "manifest.json").read_text())["feature_store"]["model_key"]
    extras = sorted(images.rglob(f"img{BASE}.jpg")) + sorted(images.rglob(f"img{BASE + 1}.jpg"))
    ids = [hashlib.sha256(path.read_bytes()).hexdigest() for path in extras]
    partial = output / "feature_store" / key / f"batch={commits.new_run_id()}"
    partial.mkdir()
    table = pa.table(
        {"id": ids, "features": [bytes(8 * 4)] * len(ids), "reason": [None] * len(ids)},  # 8 float32 zeros
        schema=pa.schema([("id", pa.string()), ("features", pa.binary()), ("reason", pa.string())]),
    )
    pq.write_table(table, partial / "part-00000-planted.snappy.parquet")

    assert main(job_args(images, output, "--overwrite"), spark) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["newly_featurized"] == EXTRA
    assert partial.name not in manifest["feature_store"]["batches"]
