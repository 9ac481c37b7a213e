"""The whole job on local Spark over small generated images (random weights, the smallest model)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fruits import commits, layout
from fruits.job import main, run
from fruits.options import parse_options
from fruits.storage import open_store
from tests.conftest import FAST_MODEL, make_image_tree

pytestmark = [pytest.mark.spark, pytest.mark.slow]
FAST = FAST_MODEL


def job_options(input_dir: Path, output: Path, *extra: str):
    return parse_options(["--input", str(input_dir), "--output", str(output), *FAST, *extra])


@pytest.fixture(scope="module")
def first_run(spark, tmp_path_factory):
    """One run over the image tree of conftest, shared by the read-only tests below."""
    root = make_image_tree(tmp_path_factory.mktemp("tree") / "images")
    output = tmp_path_factory.mktemp("out") / "result"
    manifest = run(spark, job_options(root, output, "--k", "3", "--keep-features"))
    return root, output, manifest


def test_counts_reconcile_found_equals_featurized_plus_rejected(first_run):
    _, output, manifest = first_run
    counts = manifest["counts"]
    assert counts == {"found": 18, "featurized": 14, "rejected": 4, "reused": 0, "newly_featurized": 16}
    rejected = pd.read_csv(output / "rejected.csv")
    reasons = dict(zip(rejected["path"].str.rsplit("/", n=1).str[-1], rejected["reason"], strict=True))
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["not_an_image.jpg"].startswith("not an image")
    assert reasons["truncated.jpg"].startswith("corrupt image")
    assert reasons["notes.txt"].startswith("unsupported file type")


def test_a_second_run_over_the_same_tree_reuses_every_image_and_rejects_the_same_files(spark, tmp_path):
    """The two-pass path: the store answers for every image, and the files it cannot hold are counted again."""
    root = make_image_tree(tmp_path / "images")
    output = tmp_path / "out"
    first = run(spark, job_options(root, output, "--k", "2"))
    second = run(spark, job_options(root, output, "--k", "2", "--overwrite"))
    assert first["counts"] == {
        "found": 18,
        "featurized": 14,
        "rejected": 4,
        "reused": 0,
        "newly_featurized": 16,
    }
    # The store also remembers the two undecodable files (their content ids, with the reason): nothing goes
    # through the model again, and they are rejected with the same reasons.
    reused = {"found": 18, "featurized": 14, "rejected": 4, "reused": 14, "newly_featurized": 0}
    assert second["counts"] == reused
    rejected = pd.read_csv(output / "rejected.csv")
    reasons = dict(zip(rejected["path"].str.rsplit("/", n=1).str[-1], rejected["reason"], strict=True))
    assert reasons["truncated.jpg"].startswith("corrupt image") and reasons["empty.jpg"].startswith(
        "empty file"
    )


def test_a_later_run_that_can_featurize_nothing_fails_in_one_line_and_commits_nothing(
    spark, tmp_path, capsys
):
    """The two-pass path with a store but no image to summarize: the feature width is unknown (no stored row
    matches), the pass of sums has nothing to add, and the run stops before the PCA."""
    from tests.conftest import write_image

    good, bad, output = tmp_path / "good", tmp_path / "bad", tmp_path / "out"
    for i in range(4):
        write_image(good / ("A" if i % 2 else "B") / f"{i}.jpg", (200, 40 * i, 10), seed=i)
    run(spark, job_options(good, output, "--k", "1"))
    (bad / "A").mkdir(parents=True)
    (bad / "A" / "bad.jpg").write_bytes(b"not a jpeg")
    (bad / "A" / "worse.jpg").write_bytes(b"nor this")  # two: one image alone is refused from the listing
    commits_before = sorted(p.name for p in (output / "_commits").iterdir())
    argv = ["--input", str(bad), "--output", str(output), *FAST, "--k", "1", "--overwrite"]
    assert main(argv, spark) == 2
    assert "could be featurized" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.name for p in (output / "_commits").iterdir()) == commits_before


def test_results_csv_is_one_plain_file_with_path_label_and_k_components(first_run):
    _, output, _ = first_run
    with open(output / "results.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "label", "pc_1", "pc_2", "pc_3"]
    assert len(rows) == 1 + 14
    labels = {row[1] for row in rows[1:]}
    assert labels == {"Red Apple", "Lemon"}  # spaces kept
    values = np.array([[float(value) for value in row[2:]] for row in rows[1:]])  # plain numbers, no quotes
    assert np.abs(values).max() > 0  # untrained features are tiny (~1e-17) but must not print as 0
    assert [row[0] for row in rows[1:]] == sorted(row[0] for row in rows[1:])
    assert any(row[0].endswith("R_UPPER.JPG") for row in rows) and any(
        row[0].endswith(".png") for row in rows
    )


def test_parquet_manifest_model_and_plots_are_written_and_parse(first_run, spark):
    _, output, manifest = first_run
    run_dir = Path(manifest["outputs"]["results.parquet"]).parent
    table = pd.read_parquet(run_dir / "results.parquet")
    assert len(table) == 14 and {"path", "label", "split", "id", "features", "pc_3"} <= set(table.columns)
    assert len(table["features"].iloc[0]) == 256
    on_disk = json.loads((output / "manifest.json").read_text())
    assert on_disk["run_id"] == manifest["run_id"]
    assert on_disk["weights"]["pretrained"] is False and "RANDOM WEIGHTS" in on_disk["weights"]["warning"]
    assert on_disk["pca"]["k"] == 3 and len(on_disk["pca"]["explained_variance"]) == 256
    assert on_disk["model"]["feature_dim"] == 256
    assert set(on_disk["timings_seconds"]) >= {"list", "featurize", "reconcile", "PCA", "write results"}
    # beside the stages, not in their sum
    assert set(on_disk["background_seconds"]) == {"save PCA model", "plots"}
    assert on_disk["versions"]["spark"] == spark.version
    assert "openblas" in on_disk["versions"]["blas"]  # the PCA ran on an optimized BLAS, not a reference one
    for name in ("explained_variance.png", "pca_scatter.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import PCAModel, StandardScalerModel

    stages = PipelineModel.load(str(run_dir / "pca_model")).stages
    assert [type(stage) for stage in stages] == [StandardScalerModel, PCAModel]  # center, then the first k
    assert stages[1].getK() == 3 and stages[0].getWithMean() and not stages[0].getWithStd()


def test_the_commit_names_the_manifest_the_readers_follow(first_run):
    _, output, manifest = first_run
    store = open_store(str(output))
    commit = commits.latest_commit(store)
    assert commit[layout.COMMIT_MANIFEST_FIELD] == layout.manifest_key(manifest["run_id"])
    assert commits.read_run_manifest(store) == json.loads((output / "manifest.json").read_text())


def test_saved_pipeline_projects_the_same_rows_without_refitting(first_run, spark):
    from pyspark.ml import PipelineModel

    from fruits.reduce import project_with_pipeline

    _, _, manifest = first_run
    run_dir = Path(manifest["outputs"]["results.parquet"]).parent
    table = spark.read.parquet(str(run_dir / "results.parquet"))
    again = project_with_pipeline(
        PipelineModel.load(str(run_dir / "pca_model")), table.select("path", "features"), 3
    ).toPandas()
    expected = table.select("path", "pc_1", "pc_2", "pc_3").toPandas()
    merged = expected.merge(again, on="path", suffixes=("", "_again"))
    assert len(merged) == 14
    for i in (1, 2, 3):
        scale = merged[f"pc_{i}"].abs().max()
        assert scale > 0
        assert (merged[f"pc_{i}"] - merged[f"pc_{i}_again"]).abs().max() <= 1e-9 * scale


def test_existing_result_is_refused_without_overwrite(first_run, capsys, spark):
    root, output, _ = first_run
    before = (output / "results.csv").read_bytes()
    status = main(["--input", str(root), "--output", str(output), *FAST, "--k", "3"], spark)
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("featurize_pca: error:") and "--overwrite" in error[-1]
    assert (output / "results.csv").read_bytes() == before


def test_a_failed_run_leaves_the_earlier_result_intact(spark, tmp_path):
    from tests.conftest import write_image

    root = tmp_path / "images"
    for i in range(4):
        write_image(root / "A" / f"{i}.jpg", (200, 10, 10), seed=i)
        write_image(root / "B" / f"{i}.jpg", (10, 200, 10), seed=i)
    output = tmp_path / "out"
    run(spark, job_options(root, output, "--k", "2"))
    snapshot = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    # Second run: every image now corrupt, so the run fails after it has started writing.
    for path in root.rglob("*.jpg"):
        path.write_bytes(b"corrupt")
    assert main(["--input", str(root), "--output", str(output), *FAST, "--k", "2", "--overwrite"], spark) == 2
    for relative, data in snapshot.items():
        assert (output / relative).read_bytes() == data, relative
    commits = sorted((output / "_commits").iterdir())
    assert len(commits) == 1


def test_weights_file_is_loaded_and_hashed(spark, tmp_path):
    """The code path for a weights file, with a file saved from a freshly built model."""
    import keras

    from tests.conftest import write_image

    backbone = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    )
    weights_file = tmp_path / "mobilenet_test.weights.h5"
    backbone.save_weights(weights_file)
    root = tmp_path / "images"
    for i in range(3):
        write_image(root / "A" / f"{i}.jpg", (200, 10, 10), seed=i)
        write_image(root / "B" / f"{i}.jpg", (10, 10, 200), seed=i)
    options = parse_options(
        ["--input", str(root), "--output", str(tmp_path / "out"), "--model", "mobilenet", "--alpha", "0.25",
         "--weights", str(weights_file), "--image-size", "32", "--decode-size", "32", "--k", "2"]
    )  # fmt: skip
    manifest = run(spark, options)
    import hashlib

    assert manifest["weights"]["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert manifest["weights"]["pretrained"] is True and "warning" not in manifest["weights"]
    assert manifest["counts"]["featurized"] == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "{missing}", "--output", "{out}"], "input not found"),
        (["--input", "{empty}", "--output", "{out}"], "input is empty"),
        (["--input", "{empty}", "--output", "{out}", "--k", "0"], "must be >= 1"),
        (["--input", "{empty}", "--output", "{out}", "--k", "2", "--variance", "0.9"], "not allowed with"),
        (["--input", "{empty}", "--output", "{out}", "--model", "vgg99"], "invalid choice"),
        (["--input", "{empty}", "--output", "{out}", "--model", "mobilenet", "--alpha", "0.3"], "alpha 0.3"),
        (["--output", "{out}"], "no input"),
        (["--input", "{empty}", "--output", "{out}", "--weights", "weights.bin"], "expected imagenet, none"),
    ],
)
def test_bad_options_and_inputs_give_one_line_and_exit_2(spark, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("ignored")
    values = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "out": tmp_path / "out"}
    status = main([arg.format(**values) for arg in argv], spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("featurize_pca: error:") and message in err[0], err
    assert not (tmp_path / "out" / "_commits").exists()


@pytest.mark.parametrize("input_kind", ["empty", "all-corrupt"])
def test_allow_empty_logs_one_line_exits_0_and_commits_nothing(spark, tmp_path, caplog, input_kind):
    root = tmp_path / "images"
    root.mkdir()
    if input_kind == "all-corrupt":
        (root / "A").mkdir()
        (root / "A" / "bad.jpg").write_bytes(b"not a jpeg")
    output = tmp_path / "out"
    argv = ["--input", str(root), "--output", str(output), *FAST, "--k", "2"]
    assert main(argv, spark) == 2  # without the flag: unchanged
    caplog.clear()
    with caplog.at_level("WARNING", logger="fruits"):
        assert main([*argv, "--allow-empty"], spark) == 0
    lines = [r.getMessage() for r in caplog.records if "nothing to featurize" in r.getMessage()]
    assert lines == [f"nothing to featurize under {root}: no run committed"]
    assert not (output / "_commits").exists() and not (output / "results.csv").exists()
    assert not (output / "_lease.json").exists()  # the lease was released


def test_weights_that_do_not_fit_the_model_are_one_line_and_exit_2(spark, tmp_path, capsys):
    import keras

    from tests.conftest import write_image

    backbone = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    )
    weights_file = tmp_path / "mobilenet_025.weights.h5"
    backbone.save_weights(weights_file)
    root = tmp_path / "images"
    for i in range(2):
        write_image(root / "A" / f"{i}.jpg", (200, 10, 10), seed=i)
    argv = ["--input", str(root), "--output", str(tmp_path / "out"), "--model", "mobilenet_v2",
            "--weights", str(weights_file), "--image-size", "32", "--decode-size", "32", "--k", "1"]  # fmt: skip
    assert main(argv, spark) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featurize_pca: error: weights ") and "mobilenet_v2" in err[0]


class _Context:
    def __init__(self, master: str, application_id: str) -> None:
        self.master, self.applicationId = master, application_id


def test_the_lease_is_reentrant_per_yarn_application_not_per_step():
    from fruits.job import reentrant_key

    # Every attempt of one YARN application has the same id (the attempt number is separate).
    assert (
        reentrant_key(_Context("yarn", "application_1732590000000_0007")) == "application_1732590000000_0007"
    )
    assert reentrant_key(_Context("local[2]", "local-1732590000000")) is None


def test_a_lease_left_by_an_earlier_attempt_of_the_same_application_is_taken_over(
    spark, tmp_path, monkeypatch
):
    from fruits import job
    from fruits.lease import Lease
    from fruits.storage import open_store
    from tests.conftest import write_image

    root = tmp_path / "images"
    for i in range(2):
        write_image(root / "A" / f"{i}.jpg", (200, 10, 10), seed=i)
        write_image(root / "B" / f"{i}.jpg", (10, 10, 200), seed=i)
    output = tmp_path / "out"
    output.mkdir()
    attempt_1 = Lease(open_store(str(output)), owner="attempt-1", ttl_seconds=600, background=False,
                      reentrant_key="application_1_0001").acquire()  # fmt: skip
    assert attempt_1.held
    monkeypatch.delenv("EMR_STEP_ID", raising=False)  # as in a cluster-mode driver's container
    monkeypatch.setattr(job, "reentrant_key", lambda sc: "application_1_0001")
    assert job.main(["--input", str(root), "--output", str(output), *FAST, "--k", "1"], spark) == 0
    assert len(list((output / "_commits").iterdir())) == 1


def test_a_run_that_finds_its_model_in_the_cache_never_imports_tensorflow(tmp_path):
    """Two fresh processes with one model cache: the first builds and converts, the second only loads the file."""
    import os
    import subprocess
    import sys

    from tests.conftest import write_image

    for i in range(4):
        write_image(tmp_path / "in" / ("Kiwi" if i % 2 else "Plum") / f"{i}.jpg", (40 * i, 120, 60), seed=i)
    script = (
        "import json, sys; from fruits.job import main; "
        "code = main(sys.argv[1:]); "
        "print(json.dumps({'code': code, 'tensorflow': 'tensorflow' in sys.modules}))"
    )
    env = {**os.environ, "FRUITS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path("jobs").resolve())}
    seen = []
    for name in ("first", "second"):
        args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / name), *FAST, "--k", "2"]
        done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        seen.append(json.loads(done.stdout.strip().splitlines()[-1]))
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        seen[-1]["source"] = manifest["model"]["prepared_from"]
    assert seen[0] == {"code": 0, "tensorflow": True, "source": "built"}
    assert seen[1] == {"code": 0, "tensorflow": False, "source": "local cache"}


@pytest.mark.parametrize(
    ("images", "per_task", "slots", "tasks"),
    [
        (2500, 512, 2, 6),
        (20000, 512, 2, 40),
        (10, 512, 2, 2),
        (10, 512, 8, 8),
        (4097, 512, 4, 12),
        (0, 512, 2, 2),
    ],
)
def test_tasks_come_in_whole_waves(images, per_task, slots, tasks):
    from fruits.job import task_count

    assert task_count(images, per_task, slots) == tasks


@pytest.mark.spark
@pytest.mark.parametrize(("rows", "partitions"), [(2500, 2), (20000, 10), (4545, 4), (7, 4), (9, 10)])
def test_the_listing_reaches_spark_in_its_partitions_without_a_shuffle(spark, rows, partitions):
    import pandas as pd

    from fruits.job import ARROW_BATCH_ROWS, ARROW_ENABLED, ARROW_LOCAL_RELATION, arrow_slices, sliced_frame

    keys = (ARROW_BATCH_ROWS, ARROW_ENABLED, ARROW_LOCAL_RELATION)
    before = [spark.conf.get(key) for key in keys]
    frame = pd.DataFrame({"path": [f"/d/{i:06d}.jpg" for i in range(rows)]})
    listed = sliced_frame(spark, frame, "path string", partitions)
    sizes = listed.rdd.glom().map(len).collect()
    assert sum(sizes) == rows and len(sizes) <= partitions and max(sizes) - min(sizes) <= max(sizes) // 2 + 1
    # listed_frame relies on this count without asking Spark: one partition per Arrow batch.
    assert len(sizes) == arrow_slices(rows, partitions)[1]
    if rows >= 100 * partitions:
        assert len(sizes) == partitions  # one slice per task: no repartition needed
    assert "Exchange" not in listed._jdf.queryExecution().executedPlan().toString()
    assert sorted(r.path for r in listed.collect()) == list(frame["path"])
    assert [spark.conf.get(key) for key in keys] == before  # the settings are the call's only


def test_a_split_input_gets_its_report_and_exactly_the_result_columns_with_or_without_reuse_pca(
    spark, tmp_path
):
    """The report's rows are scored in the projection's pass: its columns must not reach the results."""
    from tests.conftest import write_image

    root = tmp_path / "images"
    colours = {"Red Apple": (200, 30, 30), "Lemon": (230, 220, 40), "Lime": (60, 200, 60)}
    for split, count in (("Training", 10), ("Test", 4)):
        for c, (label, colour) in enumerate(colours.items()):
            for i in range(count):
                write_image(root / split / label / f"{i}.jpg", colour, seed=100 * c + 10 * len(split) + i)
    output = tmp_path / "out"
    first = run(spark, job_options(root, output, "--k", "2"))
    second = run(spark, job_options(root, output, "--k", "2", "--overwrite", "--reuse-pca"))
    for manifest in (first, second):
        quality = manifest["quality"]
        assert quality["test_images"] == 12 and quality["train_images"] == 30 and quality["classes"] == 3
        assert sum(c["test_images"] for c in quality["per_class"].values()) == 12
        run_dir = Path(manifest["outputs"]["results.parquet"]).parent
        assert list(pd.read_parquet(run_dir / "results.parquet").columns) == [
            "path", "label", "split", "id", "pc_1", "pc_2"
        ]  # fmt: skip
        with open(output / "results.csv", newline="") as handle:
            assert next(csv.reader(handle)) == ["path", "label", "pc_1", "pc_2"]
    assert second["pca"]["fitted_in_this_run"] is False and second["quality"] == first["quality"]


@pytest.mark.spark
@pytest.mark.parametrize(("images", "per_task", "tasks"), [(9, 1, 10), (4000, 1000, 4)])
def test_the_listed_frame_has_one_task_per_share_of_images(spark, images, per_task, tasks):
    from types import SimpleNamespace

    from fruits.job import listed_frame
    from fruits.listing import Entry, Listing

    entries = [Entry(f"file:/d/{i:05d}.jpg", 10, "x", "Training", "v") for i in range(images)]
    ctx = SimpleNamespace(spark=spark, options=SimpleNamespace(images_per_task=per_task))
    listed = listed_frame(ctx, Listing("file:/d", entries))  # type: ignore[arg-type]
    # 9 images in 10 tasks: equal slices make 9 partitions, so the frame is spread by a shuffle instead.
    assert listed.rdd.getNumPartitions() == tasks
    assert sorted(r.path for r in listed.collect()) == [e.path for e in entries]
