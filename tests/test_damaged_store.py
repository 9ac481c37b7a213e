"""A damaged feature store heals: a damaged file is found, set aside (never deleted) and its images featurized again.

The damage: a file truncated, bytes changed under Hadoop's checksum, a file that is not Parquet, vectors of
another width, NaN or infinity in a vector. Without Spark: what :func:`fruits.feature_store.inspect_file` finds in
any damaged bytes (Hypothesis cuts, flips and appends), and finding and setting aside on a folder and on S3. With
Spark: the job, after each kind of damage, commits correct results, says so in one warning line naming the
file, counts it in the manifest, and leaves a store the next run reads without setting anything aside.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fruits import feature_store
from fruits.feature_store import (
    SET_ASIDE_DIR,
    Damage,
    data_files,
    inspect_file,
    inspect_key,
    judge,
    set_aside,
)
from fruits.job import main
from fruits.linalg import pack
from fruits.storage import Store, open_store
from tests.job_faults import add_images, job_args, run_job_process

WIDTH = 8
KEY = "model-f32"


def batch_file(vectors: list[np.ndarray | None], ids: list[str] | None = None) -> bytes:
    """A batch file as the job writes one: ``id, features, reason``."""
    ids = ids or [f"id{i}" for i in range(len(vectors))]
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "features": pa.array([None if v is None else pack(v) for v in vectors], pa.binary()),
            "reason": pa.array([None if v is not None else "corrupt" for v in vectors], pa.string()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def checksum(data: bytes, chunk: int = 512) -> bytes:
    """Hadoop's ``.crc`` file of ``data`` (as its local file system writes one beside each file)."""
    sums = b"".join(zlib.crc32(data[at : at + chunk]).to_bytes(4, "big") for at in range(0, len(data), chunk))
    return b"crc\0" + chunk.to_bytes(4, "big") + sums


GOOD = batch_file([np.arange(WIDTH, dtype=np.float32) + i for i in range(5)] + [None])


def test_a_healthy_file_has_no_problem_and_its_sizes_and_checksum_agree():
    assert inspect_file(GOOD, checksum(GOOD)) == (None, {WIDTH * 4: 5}, 0)


@pytest.mark.parametrize(
    ("data", "crc", "problem"),
    [
        (GOOD[: len(GOOD) // 2], None, "not a readable Parquet file"),
        (b"", None, "not a readable Parquet file"),
        (b"id,features\n1,2\n", None, "not a readable Parquet file"),
        (GOOD, checksum(GOOD[:-1] + b"X"), "changed since it was written"),
        (GOOD, b"garbage", "its checksum file is not one Hadoop writes"),
        (
            pq.write_table(pa.table({"features": pa.array([1, 2])}), buf := pa.BufferOutputStream())
            or buf.getvalue().to_pybytes(),
            None,
            "its column features holds int64, not binary",
        ),
    ],
)
def test_an_unreadable_or_changed_file_is_named_with_what_is_wrong(data, crc, problem):
    found, _, _ = inspect_file(data, crc)
    assert found is not None and found.startswith(problem) and "\n" not in found


def test_vectors_of_another_width_or_not_finite_are_counted():
    wrong = batch_file([np.ones(WIDTH, np.float32), np.ones(WIDTH + 1, np.float32)])
    assert inspect_file(wrong) == (None, {WIDTH * 4: 1, (WIDTH + 1) * 4: 1}, 0)
    nan = batch_file([np.ones(WIDTH, np.float32), np.array([np.nan] + [1.0] * (WIDTH - 1), np.float32)])
    inf = batch_file([np.full(WIDTH, np.inf, np.float32)])
    assert inspect_file(nan)[2] == 1 and inspect_file(inf)[2] == 1


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """GOOD, cut short, with bytes changed, with bytes added, or replaced."""
    kind = draw(st.sampled_from(["cut", "flip", "append", "replace"]))
    if kind == "cut":
        return GOOD[: draw(st.integers(0, len(GOOD) - 1))]
    if kind == "flip":
        at = draw(st.integers(0, len(GOOD) - 1))
        return GOOD[:at] + bytes([GOOD[at] ^ draw(st.integers(1, 255))]) + GOOD[at + 1 :]
    if kind == "append":
        return GOOD + draw(st.binary(min_size=1, max_size=32))
    return draw(st.binary(max_size=256))


@settings(max_examples=300, deadline=None)
@given(data=damaged())
def test_any_damaged_bytes_are_judged_never_raise_and_a_cut_or_change_is_always_caught(data):
    problem, sizes, nonfinite = inspect_file(data, checksum(GOOD))
    assert problem is not None or data == GOOD  # the checksum written for GOOD tells any change
    assert (problem is None) == (
        judge([feature_store.Inspected("k", problem, sizes, nonfinite)], WIDTH) == []
    )


def test_judge_takes_the_models_width_or_else_the_most_common_one():
    files = [
        feature_store.Inspected("a", None, {WIDTH * 4: 10}, 0),
        feature_store.Inspected("b", None, {WIDTH * 4: 3, 5 * 4: 2}, 0),
        feature_store.Inspected("c", None, {5 * 4: 4}, 0),
    ]
    assert judge(files, None) == [
        Damage("b", f"2 vectors of 5 values, the model's have {WIDTH}"),
        Damage("c", f"4 vectors of 5 values, the model's have {WIDTH}"),
    ]
    assert [damage.key for damage in judge(files, 5)] == ["a", "b"]


@pytest.fixture
def store(store_uri: str) -> Store:
    return open_store(store_uri)


def test_damaged_files_are_found_and_set_aside_on_a_folder_and_on_s3(store: Store):
    batch = f"{KEY}/batch=20261125T130000Z-abc123"
    store.write_bytes(f"{batch}/part-00000.parquet", GOOD)
    store.write_bytes(f"{batch}/.part-00000.parquet.crc", checksum(GOOD))
    store.write_bytes(f"{batch}/part-00001.parquet", GOOD[:100])  # truncated
    store.write_bytes(f"{batch}/.part-00001.parquet.crc", checksum(GOOD))
    store.write_bytes(f"{batch}/part-00002.parquet", batch_file([np.full(WIDTH, np.nan, np.float32)]))
    store.write_bytes(f"{batch}/_SUCCESS", b"")
    store.write_bytes(f"{KEY}/{SET_ASIDE_DIR}/batch=20261125T130000Z-abc123/part-00001.parquet", b"earlier")

    keys = data_files(store, KEY, ["batch=20261125T130000Z-abc123"])
    assert keys == [f"{batch}/part-0000{i}.parquet" for i in range(3)]  # not _SUCCESS, not the .crc files
    found = judge([inspect_key(store, key) for key in keys], WIDTH)
    assert [(damage.key, damage.problem.split(" (")[0]) for damage in found] == [
        (keys[1], "not a readable Parquet file"),
        (keys[2], "1 vectors hold NaN or infinity"),
    ]

    moved = set_aside(store, KEY, found)

    aside = f"{KEY}/{SET_ASIDE_DIR}/batch=20261125T130000Z-abc123"
    assert [target for _, target in moved] == [f"{aside}/part-00001.parquet.2", f"{aside}/part-00002.parquet"]
    assert store.read_bytes(f"{aside}/part-00001.parquet.2") == GOOD[:100]  # kept, not deleted
    assert store.read_bytes(f"{aside}/.part-00001.parquet.2.crc") == checksum(GOOD)  # with its checksum
    assert store.read_bytes(f"{aside}/part-00001.parquet") == b"earlier"  # an earlier one is not replaced
    assert data_files(store, KEY, ["batch=20261125T130000Z-abc123"]) == [keys[0]]
    assert feature_store.committed_batches(store, KEY) == ["batch=20261125T130000Z-abc123"]
    assert judge([inspect_key(store, keys[0])], WIDTH) == []


# --- the job heals ----------------------------------------------------------------------------------------


def damage(kind: str, part: Path, new_image: Path) -> Path:
    """Damage the store as a broken disk, an interrupted copy or a hand would; returns the damaged file.

    A part file's bytes are replaced under its Hadoop checksum (truncated, not Parquet), replaced with its
    checksum removed (NaN: Spark reads it), or a file of another width is added, holding the vector of the new
    image (so the run reads it instead of featurizing that image).
    """
    if kind == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    elif kind == "not Parquet":
        part.write_bytes(b"<html>503 Slow Down</html>")
    elif kind == "NaN":
        rows = pq.read_table(part).to_pandas()
        nan = [None if v is None else np.full(len(v) // 4, np.nan, np.float32) for v in rows["features"]]
        part.with_name(f".{part.name}.crc").unlink()
        part.write_bytes(batch_file(nan, ids=list(rows["id"])))
    else:
        part = part.with_name("part-99999-extra.parquet")
        part.write_bytes(
            batch_file([np.ones(7, np.float32)], ids=[hashlib.sha256(new_image.read_bytes()).hexdigest()])
        )
    return part


DAMAGE = ["truncated", "not Parquet", "NaN", "wrong width"]


@pytest.fixture(scope="module")
def healthy(spark, tmp_path_factory):
    """A committed run over 8 images: its output folder (with the feature store) is copied by each test."""
    folder = tmp_path_factory.mktemp("store")
    add_images(folder / "images", 8)
    assert main(job_args(folder / "images", folder / "out"), spark) == 0
    return folder


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGE)
def test_the_job_sets_a_damaged_file_aside_and_featurizes_its_images_again(
    spark, healthy, tmp_path, caplog, capsys, kind
):
    images, output = tmp_path / "images", tmp_path / "out"
    shutil.copytree(healthy / "images", images)
    shutil.copytree(healthy / "out", output)
    (new_image,) = add_images(images, 1, first_seed=100)
    part = sorted(output.glob("feature_store/*/batch=*/part-*"))[0]
    lost = 0 if kind == "wrong width" else pq.read_table(part).num_rows  # images the damaged file held
    damaged = damage(kind, part, new_image)

    with caplog.at_level("WARNING", logger="fruits.job"):
        assert main(job_args(images, output, "--overwrite"), spark) == 0

    warnings = [r.getMessage() for r in caplog.records if r.name == "fruits.job" and "set aside" in r.message]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "\n" not in warnings[0]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["feature_store"]["set_aside"] == 1
    assert manifest["feature_store"]["set_aside_files"][0]["file"] == str(damaged)
    assert (
        not damaged.exists() and len(list(output.glob(f"feature_store/*/{SET_ASIDE_DIR}/batch=*/[!.]*"))) == 1
    )
    counts = manifest["counts"]
    assert counts["found"] == counts["featurized"] == 9 and counts["rejected"] == 0
    assert counts["newly_featurized"] == lost + 1 and counts["reused"] == 8 - lost
    results = pd.read_csv(output / "results.csv")
    assert len(results) == 9 and np.isfinite(results[["pc_1", "pc_2"]].to_numpy()).all()
    assert not (results[["pc_1", "pc_2"]] == 0).all().all()

    # Healed: the next run reads the whole store and sets nothing aside.
    caplog.clear()
    assert main(job_args(images, output, "--overwrite"), spark) == 0
    healed = json.loads((output / "manifest.json").read_text())
    assert healed["feature_store"]["set_aside"] == 0 and healed["counts"]["newly_featurized"] == 0
    assert "set aside" not in caplog.text


@pytest.mark.spark
@pytest.mark.slow
def test_a_failure_no_damaged_file_explains_is_raised_as_it_was(
    spark, healthy, tmp_path, monkeypatch, capsys
):
    import fruits.job

    images, output = tmp_path / "images", tmp_path / "out"
    shutil.copytree(healthy / "images", images)
    shutil.copytree(healthy / "out", output)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the pass of sums broke")

    monkeypatch.setattr(fruits.job.summaries, "summarize", broken)
    assert main(job_args(images, output, "--overwrite"), spark) == 1
    assert "the pass of sums broke" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not list(output.glob(f"feature_store/*/{SET_ASIDE_DIR}"))


@pytest.mark.slow
def test_the_job_sets_a_damaged_file_aside_on_s3_and_featurizes_its_images_again(
    moto_s3, tmp_path, monkeypatch
):
    """The cluster's case: input, output and store on S3, read by Spark through S3A and set aside through the
    job's boto3 client. A committed batch file cut short (S3A keeps no checksum file: Spark's read of it fails)
    is set aside, its images featurized again to the same vectors, and the results are the undamaged run's."""
    from tests.s3a_jobs import put_tree_on_s3, s3a_env, s3a_spark_home

    env = s3a_env(moto_s3, s3a_spark_home(monkeypatch))
    client, bucket = moto_s3.client, moto_s3.bucket

    def keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def run(name: str) -> str:
        log = tmp_path / f"{name}.log"
        args = job_args(moto_s3.uri("in"), moto_s3.uri("out"), "--overwrite")
        assert run_job_process(args, log, master=None, env=env) == 0, log.read_text()[-3000:]
        return log.read_text()

    def results() -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(read("out/results.csv"))).sort_values("path", ignore_index=True)

    add_images(tmp_path / "images", 8)
    put_tree_on_s3(moto_s3, tmp_path / "images", "in")
    run("healthy")
    undamaged = results()
    part = next(key for key in keys("out/feature_store/") if "/batch=" in key and "/part-" in key)
    data = read(part)
    held = pq.read_table(io.BytesIO(data)).to_pandas()  # the images the damaged file held, and their vectors
    lost = len(held)
    assert lost > 0 and not [key for key in keys("out/feature_store/") if key.endswith(".crc")]
    client.put_object(Bucket=bucket, Key=part, Body=data[: len(data) // 2])  # truncated

    log = run("damaged")

    damaged = f"s3://{bucket}/{part}"
    warnings = [line for line in log.splitlines() if "set aside" in line]
    assert len(warnings) == 1 and damaged in warnings[0], warnings
    manifest = json.loads(read("out/manifest.json"))
    assert manifest["feature_store"]["set_aside"] == 1
    (moved,) = manifest["feature_store"]["set_aside_files"]
    assert moved["file"] == damaged and moved["problem"].startswith("not a readable Parquet file")
    model_key, batch, name = part.removeprefix("out/feature_store/").split("/")
    aside = f"out/feature_store/{model_key}/{SET_ASIDE_DIR}/{batch}/{name}"
    assert moved["now"] == f"s3://{bucket}/{aside}" and part not in keys("out/")
    assert keys(f"out/feature_store/{model_key}/{SET_ASIDE_DIR}/") == [aside]  # kept, not deleted
    counts = manifest["counts"]
    assert counts["found"] == counts["featurized"] == 8 and counts["rejected"] == 0
    assert counts["newly_featurized"] == lost and counts["reused"] == 8 - lost
    assert counts["reused"] + counts["newly_featurized"] == counts["found"] - counts["rejected"]
    # Featurized again to the very vectors the damaged file held, in a new batch of this run.
    batches = [key for key in keys(f"out/feature_store/{model_key}/batch=") if key.endswith(".parquet")]
    again = pd.concat(pq.read_table(io.BytesIO(read(key))).to_pandas() for key in batches if key != part)
    again = again[again["id"].isin(held["id"])].drop_duplicates("id").set_index("id")
    assert len(again) == lost
    assert all(again.loc[row.id, "features"] == row.features for row in held.itertuples())
    healed = results()
    assert len(healed) == 8 and np.isfinite(healed[["pc_1", "pc_2"]].to_numpy()).all()
    pd.testing.assert_frame_equal(healed, undamaged, check_exact=False, rtol=1e-4, atol=1e-5)

    # Healed: every file of the store's committed batches now reads whole (what a next run would find).
    store = open_store(moto_s3.uri("out/feature_store"))
    files = data_files(store, model_key, feature_store.committed_batches(store, model_key))
    assert len(files) > 1 and judge([inspect_key(store, key) for key in files], None) == []
