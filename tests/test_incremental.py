"""Incremental featurization: a run featurizes only content the feature store has not seen.

Three runs over one input folder that grows and changes between them, shared by the tests below:
1. 20 images;
2. the same plus 2 new ones (10%): only the 2 are featurized;
3. with ``--reuse-pca``, after one file was rewritten, one deleted, and one new image was added under two
   paths (identical bytes): the rewritten file and the pair are featurized, the pair once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fruits import feature_store
from fruits.job import main
from fruits.storage import open_store
from tests.conftest import write_image
from tests.job_faults import YELLOW, add_images, job_args

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _snapshot(output: Path) -> dict:
    manifest = json.loads((output / "manifest.json").read_text())
    run_dir = output / "runs" / manifest["run_id"]
    return {
        "manifest": manifest,
        "csv": pd.read_csv(output / "results.csv"),
        # Full precision (results.csv rounds to 6 decimals).
        "parquet": pd.read_parquet(run_dir / "results.parquet").set_index("path"),
    }


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("incremental")
    images, output = folder / "images", folder / "out"
    add_images(images, 20)
    runs = {}

    assert main(job_args(images, output), spark) == 0
    runs[1] = _snapshot(output)

    add_images(images, 2, first_seed=20)
    assert main(job_args(images, output, "--overwrite"), spark) == 0
    runs[2] = _snapshot(output)

    changed = images / "Red" / "img0.jpg"
    deleted = images / "Lemon" / "img1.jpg"
    write_image(changed, (180, 40, 40), size=32, seed=1000)  # same path, new bytes
    deleted.unlink()
    twin = write_image(images / "Lemon" / "twin_a.jpg", YELLOW, size=32, seed=2000)
    shutil.copyfile(twin, images / "Lemon" / "twin_b.jpg")
    assert main(job_args(images, output, "--overwrite", "--reuse-pca"), spark) == 0
    runs[3] = _snapshot(output)
    return {
        "runs": runs,
        "output": output,
        "changed": changed,
        "deleted": deleted,
        "twins": [f"file:{images / 'Lemon' / name}" for name in ("twin_a.jpg", "twin_b.jpg")],
    }


def test_first_run_featurizes_everything(history):
    counts = history["runs"][1]["manifest"]["counts"]
    assert counts == {"found": 20, "featurized": 20, "rejected": 0, "reused": 0, "newly_featurized": 20}


def test_ten_percent_more_images_featurizes_only_the_new_ones(history):
    run1, run2 = history["runs"][1], history["runs"][2]
    counts = run2["manifest"]["counts"]
    assert counts == {"found": 22, "featurized": 22, "rejected": 0, "reused": 20, "newly_featurized": 2}
    # The new run's batch holds the two new images only; the first run's batch is read, not rewritten.
    batches = run2["manifest"]["feature_store"]["batches"]
    assert batches[0] == run1["manifest"]["feature_store"]["batches"][0]
    assert batches[1] == f"batch={run2['manifest']['run_id']}"
    store = open_store(run2["manifest"]["feature_store"]["uri"])
    key = run2["manifest"]["feature_store"]["model_key"]
    batch = pd.read_parquet(store.uri_for(f"{key}/{batches[1]}"))
    new_ids = set(run2["parquet"]["id"]) - set(run1["parquet"]["id"])
    assert set(batch["id"]) == new_ids and len(batch) == 2
    assert len(run2["csv"]) == 22 and run2["csv"]["path"].is_unique


def test_changed_deleted_and_duplicate_files(history):
    run2, run3 = history["runs"][2], history["runs"][3]
    # 23 = 22 - 1 deleted + 2 twins; featurized: the rewritten file and ONE of the twins.
    counts = run3["manifest"]["counts"]
    assert counts == {"found": 23, "featurized": 23, "rejected": 0, "reused": 20, "newly_featurized": 2}

    changed = f"file:{history['changed']}"
    new_id = hashlib.sha256(history["changed"].read_bytes()).hexdigest()
    assert run3["parquet"].loc[changed, "id"] == new_id != run2["parquet"].loc[changed, "id"]

    paths = set(run3["csv"]["path"])
    assert f"file:{history['deleted']}" in set(run2["csv"]["path"])
    assert f"file:{history['deleted']}" not in paths
    assert set(history["twins"]) <= paths and run3["csv"]["path"].is_unique
    twins = run3["parquet"].loc[history["twins"]]
    assert twins["id"].nunique() == 1
    assert twins[["pc_1", "pc_2"]].iloc[0].tolist() == twins[["pc_1", "pc_2"]].iloc[1].tolist()


def test_feature_store_keeps_one_row_per_content_id(spark, history):
    fs = history["runs"][3]["manifest"]["feature_store"]
    store = open_store(fs["uri"])
    batches = feature_store.committed_batches(store, fs["model_key"])
    assert batches == fs["batches"] and len(batches) == 3
    rows = spark.read.parquet(*[store.uri_for(f"{fs['model_key']}/{name}") for name in batches])
    # 20 + 2 new + the rewritten file's new bytes + the twins' bytes; the old bytes stay (never modified).
    assert rows.count() == rows.select("id").distinct().count() == 24


def test_reuse_pca_projects_with_the_saved_pipeline(history):
    run2, run3 = history["runs"][2], history["runs"][3]
    pca2, pca3 = run2["manifest"]["pca"], run3["manifest"]["pca"]
    assert pca2["fitted_in_this_run"] is True
    assert pca3["fitted_in_this_run"] is False
    assert pca3["k"] == pca2["k"] == 2
    assert pca3["explained_variance"] == pca2["explained_variance"]
    # An image whose bytes did not change gets exactly the coordinates it had: same features, same pipeline.
    # Compared at full precision: random-weight features are tiny, so results.csv's 6 decimals hide them.
    unchanged = run3["parquet"].index.intersection(run2["parquet"].index)
    unchanged = [
        path for path in unchanged if run3["parquet"].loc[path, "id"] == run2["parquet"].loc[path, "id"]
    ]
    assert len(unchanged) == 20
    before = run2["parquet"].loc[unchanged, ["pc_1", "pc_2"]]
    after = run3["parquet"].loc[unchanged, ["pc_1", "pc_2"]]
    assert (before.abs().to_numpy() > 0).all()
    pd.testing.assert_frame_equal(after, before, rtol=1e-9, atol=0)


@pytest.mark.spark
def test_rows_of_a_later_run_carry_a_reason_only_without_features(spark, tmp_path):
    from types import SimpleNamespace

    from fruits.job import Catalog, Featurized, joined_rows

    store = open_store(str(tmp_path / "store"))
    stored = spark.createDataFrame(
        [("a", b"\x00" * 8, None), ("b", None, "corrupt image: broken data")], feature_store.STORE_SCHEMA
    )
    batch = feature_store.write_batch(stored, store, "m", "r1")
    images = spark.createDataFrame(
        [
            ("/i/a.jpg", "x", "Training", 3, "a", None, None),
            ("/i/b.jpg", "x", "Training", 3, "b", None, None),
            ("/i/c.jpg", "x", "Training", 3, "c", None, None),  # read, never featurized
            ("/i/d.jpg", "x", "Training", 0, None, None, "empty file (0 bytes)"),
        ],
        "path string, label string, split string, length long, id string, content binary, reason string",
    )
    ctx = SimpleNamespace(spark=spark, store=store, model_key="m")
    featurized = Featurized([batch], 0, images.select("id"), None, None)
    rows = joined_rows(ctx, Catalog(images, 4), featurized)  # type: ignore[arg-type]
    reasons = {r.path: r.reason for r in rows.collect()}
    assert reasons == {
        "/i/a.jpg": None,
        "/i/b.jpg": "corrupt image: broken data",
        "/i/c.jpg": "not featurized",
        "/i/d.jpg": "empty file (0 bytes)",
    }
