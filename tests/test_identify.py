"""`fruits identify`: a committed run answers new photos with its own classifier and known images, without Spark.

The pure parts (nearest images, the arrays a run keeps, reading a photo) are tested alone; the rest over real
runs of the job on local Spark (the smallest model, random weights), answered by the CLI in a subprocess that
must never import pyspark nor start a JVM, from a local output and from the same output on S3 (moto server).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fruits import identify, layout
from fruits.decoding import ImageRejected
from fruits.lda import LinearClassifier
from fruits.storage import NotFound
from tests.conftest import FAST_MODEL, write_image

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"Red Apple": (200, 30, 30), "Lemon": (230, 220, 40), "Kiwi fruit": (60, 140, 40)}

# The CLI as a user runs it, in a fresh process; the probe says whether pyspark or py4j were ever imported and
# which processes the command left as its children (a JVM would be one).
PROBE = """
import json, os, sys
from fruits.ops.cli import main
code = main(sys.argv[1:])
children = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            name, fields = handle.read().rsplit(")", 1)
    except OSError:
        continue
    if fields.split()[1] == str(os.getpid()):
        children.append(name.split("(", 1)[1])
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"pyspark", "py4j", "tensorflow"})
with open(os.environ["FRUITS_PROBE"], "w") as handle:
    json.dump({"loaded": loaded, "children": children}, handle)
sys.exit(code)
"""


# --- the pure parts -------------------------------------------------------------------------------------


def test_nearest_images_are_the_brute_force_nearest_in_order_with_ties_in_path_order():
    rng = np.random.default_rng(0)
    pcs = rng.normal(size=(500, 7)).astype(np.float32)
    pcs[10] = pcs[3]  # two known images with the same components: the earlier row first
    known = identify.Known([f"p{i:03d}" for i in range(500)], ["x"] * 500, pcs)
    queries = np.vstack([rng.normal(size=(4, 7)), pcs[3].astype(np.float64)])
    found = known.nearest(queries, 6)
    for query, rows in zip(queries, found, strict=True):
        exact = np.sqrt(((pcs.astype(np.float64) - query) ** 2).sum(axis=1))
        expected = np.lexsort((np.arange(500), exact))[:6]
        assert [row for row, _ in rows] == list(expected)
        assert np.allclose([d for _, d in rows], exact[expected], rtol=0, atol=1e-12)
    assert [row for row, _ in found[-1][:2]] == [3, 10] and found[-1][0][1] == 0.0
    assert [len(rows) for rows in known.nearest(queries[:2], 900)] == [500, 500]  # at most every image
    assert known.nearest(queries[:2], 0) == [[], []]


def test_photos_are_answered_in_their_order_across_batches_the_bad_ones_with_their_reason(tmp_path):
    # A stand-in model (each photo's mean colour, as three features) over the real decoding: the answers of 150
    # photos (three batches) come back in order, each with its own class and nearest image.
    colours = {"red": (200, 30, 30), "yellow": (230, 220, 40), "green": (60, 140, 40)}
    photos, truth = [], []
    for i in range(150):
        name = list(colours)[i % 3]
        photos.append(str(write_image(tmp_path / f"{i:03d}.jpg", colours[name], seed=i)))
        truth.append(name)
    for i in (5, 64, 149):  # one bad photo in each batch, the last one last
        Path(photos[i]).write_bytes(b"not a photo")
    centres = np.array([colours[name] for name in colours], dtype=np.float64) / 3 + 255 * 2 / 3
    classifier = LinearClassifier(list(colours), 2 * centres.T, -(centres**2).sum(axis=1))
    identifier = identify.Identifier(
        run_id="r",
        mean=np.zeros(3),
        components=np.eye(3),
        classifiers={"full": classifier, "pca": classifier},
        no_classifier=None,
        known=identify.Known(list(colours), list(colours), centres),
        predictor=lambda batch: batch.reshape(len(batch), -1, 3).mean(axis=1).astype(np.float32),
        decode_size=40,
        max_file_bytes=1 << 20,
        max_pixels=10**6,
        description={},
    )
    answers = list(identifier.answer(photos, top=1, runners_up=1))
    assert [a.path for a in answers] == photos
    for i, answer in enumerate(answers):
        if i in (5, 64, 149):
            assert answer.predicted is None and answer.reason == "not an image (unrecognised format)"
        else:
            assert answer.predicted == truth[i] == answer.similar[0].path and len(answer.classes) == 2
    assert list(identifier.answer([])) == []


def test_a_runs_arrays_come_back_as_they_were_written_and_carry_no_pickle():
    rng = np.random.default_rng(1)
    classes = ["Lemon", "Red Apple ", "Kiwi, gold", "Äpfel"]  # spaces, commas, non-ASCII: kept exactly
    classifiers = {
        "full": LinearClassifier(classes, rng.normal(size=(6, 4)), rng.normal(size=4)),
        "pca": LinearClassifier(classes, rng.normal(size=(2, 4)), rng.normal(size=4)),
    }
    mean, components = rng.normal(size=6), rng.normal(size=(6, 2))
    data = identify.model_npz(mean, components, classifiers)
    got_mean, got_components, got = identify.read_model_npz(data)  # read with allow_pickle=False
    assert np.array_equal(got_mean, mean) and np.array_equal(got_components, components)
    for space in ("full", "pca"):
        assert got[space].classes == classes
        assert np.array_equal(got[space].weights, classifiers[space].weights)
        assert np.array_equal(got[space].bias, classifiers[space].bias)
    assert identify.read_model_npz(identify.model_npz(mean, components, None))[2] is None


def test_known_images_are_read_from_the_arrays_spark_writes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    for part, (start, stop) in enumerate(((0, 1), (1, 4))):  # two part files, as several tasks would write
        table = pa.table(
            {
                "path": [f"file:/d/{i}.jpg" for i in range(start, stop)],
                "label": ["a"] * (stop - start),
                "pcs": pa.array([list(r) for r in rows[start:stop]], pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, tmp_path / f"part-{part}.parquet")
    known = identify.read_known([str(tmp_path / "part-0.parquet"), str(tmp_path / "part-1.parquet")])
    assert known.paths == [f"file:/d/{i}.jpg" for i in range(4)] and np.array_equal(known.pcs, rows)
    ragged = pa.table({"path": ["x", "y"], "label": ["a", "a"], "pcs": [[1.0, 2.0], [3.0]]})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(identify.IdentifyError, match="one length"):
        identify.read_known([str(tmp_path / "ragged.parquet")])


def test_a_photo_is_judged_as_the_listing_judges_a_file_before_it_is_read(tmp_path):
    good = write_image(tmp_path / "a.jpg", (200, 30, 30))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")

    assert identify.read_photo(str(good), 1 << 20) == good.read_bytes()
    assert identify.read_photo(f"file:{good}", 1 << 20) == good.read_bytes()  # as results.csv names files
    reasons = {}
    for name in ("missing.jpg", "empty.png", "notes.txt", "folder.jpg", "pipe.jpg", "a.jpg"):
        with pytest.raises(ImageRejected) as rejected:
            identify.read_photo(str(tmp_path / name), 100)  # a limit of 100 bytes: a.jpg is too large
        reasons[name] = rejected.value.reason
    assert reasons == {
        "missing.jpg": "not found",
        "empty.png": "empty file (0 bytes)",
        "notes.txt": "unsupported file type (not .jpg, .jpeg or .png)",
        "folder.jpg": "a folder, not a photo",
        "pipe.jpg": "not a regular file (FIFO, socket or device)",  # never opened: it would block
        "a.jpg": reasons["a.jpg"],
    }
    assert reasons["a.jpg"].startswith("too large:") and "--max-file-mb" in reasons["a.jpg"]
    with pytest.raises(ImageRejected, match="not a local file nor an s3:// object"):
        identify.read_photo("https://example.com/a.jpg", 1 << 20)


def test_a_photo_on_s3_is_judged_and_read_as_a_local_one(moto_s3, tmp_path):
    good = write_image(tmp_path / "a.jpg", (200, 30, 30)).read_bytes()
    for key, data in (("p/a.jpg", good), ("p/empty.jpg", b""), ("p/notes.txt", b"text")):
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=key, Body=data)
    assert identify.read_photo(moto_s3.uri("p/a.jpg"), 1 << 20, moto_s3.client) == good
    reasons = {}
    for key in ("p/missing.jpg", "p/empty.jpg", "p/notes.txt", "p/a.jpg"):
        with pytest.raises(ImageRejected) as rejected:
            identify.read_photo(moto_s3.uri(key), 100, moto_s3.client)  # a.jpg: more than 100 bytes
        reasons[key] = rejected.value.reason
    assert reasons["p/missing.jpg"] == "not found"
    assert reasons["p/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["p/notes.txt"] == "unsupported file type (not .jpg, .jpeg or .png)"
    assert reasons["p/a.jpg"].startswith("too large:")


def test_the_runs_model_file_is_kept_in_its_feature_store_and_found_from_there_or_the_cache(
    tmp_path, monkeypatch
):
    from fruits import model_export
    from fruits.storage import open_store

    key, engine = "mobilenet-a0.25-s32-d32-wrandom-seed0-f32", "litert"
    exported = tmp_path / "litert-0123.tflite"
    exported.write_bytes(b"the exported model")
    sha = model_export.models.sha256_file(str(exported))[:16]
    pointer = {
        "file_name": exported.name,
        "sha256": sha,
        "engine": engine,
        "input_size": 32,
        "feature_dim": 8,
    }
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "cache"))
    model_export._to_local(str(tmp_path / "cache" / "models"), key, engine, pointer, str(exported))
    store = open_store(tmp_path / "store")

    # A run whose model came from the local cache keeps it beside its features too.
    assert model_export.kept_pointer(store, key, engine) == pointer
    assert store.read_bytes(f"{key}/engines/{exported.name}") == b"the exported model"
    assert model_export.kept_pointer(open_store(tmp_path / "other"), "another-key", engine) is None

    cached = model_export.kept_model(store, key, pointer, str(tmp_path / "scratch"))
    assert cached == str(tmp_path / "cache" / "models" / key / exported.name)  # the cache first
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "empty-cache"))
    fetched = model_export.kept_model(store, key, pointer, str(tmp_path / "scratch"))
    assert fetched == str(tmp_path / "scratch" / exported.name)  # then the store, and kept in the cache
    assert (tmp_path / "empty-cache" / "models" / key / exported.name).read_bytes() == b"the exported model"
    with pytest.raises(model_export.ModelMismatch):
        model_export.kept_model(store, key, {**pointer, "sha256": "0" * 16}, str(tmp_path / "scratch"))
    with pytest.raises(NotFound, match="neither in the local cache nor in"):
        model_export.kept_model(store, key, {**pointer, "file_name": "gone.tflite"}, str(tmp_path / "x"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("s3://b/out/runs/20261125T134501Z-3f9a1c/", ("s3://b/out", "20261125T134501Z-3f9a1c")),
        ("/data/out/runs/20261125T134501Z-3f9a1c", ("/data/out", "20261125T134501Z-3f9a1c")),
        ("runs/20261125T134501Z-3f9a1c", (".", "20261125T134501Z-3f9a1c")),
        ("/data/out", ("/data/out", None)),
        ("/data/out/runs/not-a-run", ("/data/out/runs/not-a-run", None)),
        ("/data/xruns/20261125T134501Z-3f9a1c", ("/data/xruns/20261125T134501Z-3f9a1c", None)),
    ],
)
def test_a_run_folder_names_its_output_and_its_run(given, expected):
    assert layout.split_run_uri(given) == expected


# --- runs of the job ------------------------------------------------------------------------------------


def split_tree(root: Path) -> Path:
    """Three classes (one name with a space), 8 Training and 4 Test images each, and one corrupt Test file."""
    for index, (label, colour) in enumerate(COLOURS.items()):
        for i in range(12):
            split = "Training" if i < 8 else "Test"
            write_image(root / split / label / f"{i}.jpg", colour, seed=100 * index + i)
    (root / "Test" / "Lemon" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    return root


def run_job(spark: Any, root: Path, output: Path) -> dict[str, Any]:
    from fruits.job import run
    from fruits.options import parse_options

    return run(spark, parse_options(["--input", str(root), "--output", str(output), *FAST_MODEL, "--k", "4"]))


@pytest.fixture(scope="module")
def split_run(spark, tmp_path_factory):
    root = split_tree(tmp_path_factory.mktemp("tree") / "images")
    output = tmp_path_factory.mktemp("out") / "result"
    return root, output, run_job(spark, root, output)


def cli(
    args: list[str], probe: Path, cache: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The `fruits` CLI with ARGS in a fresh process (this checkout's package), with the probe."""
    environment = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": str(REPO / "jobs"),
        "FRUITS_CACHE": str(cache),
        "FRUITS_PROBE": str(probe),
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=environment, capture_output=True, text=True, timeout=300
    )


def probed(probe: Path) -> dict[str, Any]:
    return json.loads(probe.read_text())


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_keeps_its_classifiers_projection_and_known_images_named_in_its_manifest(split_run):
    from pyspark.ml import PipelineModel

    from fruits.reduce import projection_of

    _, output, manifest = split_run
    run_dir = output / layout.run_prefix(manifest["run_id"])
    described = manifest[layout.MANIFEST_IDENTIFY_FIELD]
    assert described["model"] == layout.IDENTIFY_MODEL and described["known"] == layout.IDENTIFY_KNOWN
    assert manifest["outputs"][layout.IDENTIFY_MODEL] == str(run_dir / layout.IDENTIFY_MODEL)
    assert described["known_images"] == manifest["counts"]["featurized"] == 36
    assert described["model_key"] == manifest["feature_store"]["model_key"]
    assert described["classifier"]["shrinkage"] == manifest["quality"]["shrinkage"]
    assert described["no_classifier"] is None
    # The model file the run's features came from, kept in the feature store under the run's model key.
    pointer = described["model_file"]
    engines = output / "feature_store" / described["model_key"] / "engines"
    assert (engines / pointer["file_name"]).is_file() and pointer["feature_dim"] == described["feature_dim"]

    # The arrays are the saved pipeline's own projection.
    mean, components, classifiers = identify.read_model_npz((run_dir / layout.IDENTIFY_MODEL).read_bytes())
    saved = projection_of(PipelineModel.load(manifest["outputs"]["pca_model"]))
    assert np.array_equal(mean, saved.mean) and np.allclose(components, saved.components, rtol=0, atol=1e-15)
    assert classifiers["full"].classes == sorted(COLOURS)
    # Every known image's components are results.parquet's, as float32.
    parts = sorted((run_dir / layout.IDENTIFY_KNOWN).glob("part-*.parquet"))
    assert len(parts) == 1
    known = identify.read_known([str(p) for p in parts])
    results = pd.read_parquet(run_dir / "results.parquet").sort_values("path")
    assert known.paths == list(results["path"]) and known.labels == list(results["label"])
    pcs = results[[f"pc_{i}" for i in range(1, 5)]].to_numpy()
    assert np.array_equal(known.pcs, pcs.astype(np.float32))


@pytest.mark.spark
def test_the_known_images_of_a_big_run_are_several_files_each_written_by_its_own_task(
    spark, tmp_path, monkeypatch
):
    from fruits import writing

    monkeypatch.setattr(writing, "KNOWN_ROWS_PER_FILE", 10)  # 35 rows: 4 files, as 1,000,000 rows would be
    rows = [(f"file:/d/{i:02d}.jpg", "odd" if i % 2 else "even", float(i), -float(i)) for i in range(35)]
    frame = spark.createDataFrame(rows, "path string, label string, pc_1 double, pc_2 double").repartition(6)
    frame.persist().count()  # as the run's projection: persisted and computed before
    writing.write_known(frame, str(tmp_path / "known.parquet"), 2, len(rows))
    parts = sorted(str(p) for p in (tmp_path / "known.parquet").glob("part-*.parquet"))
    assert len(parts) == 4
    known = identify.read_known(parts)
    assert sorted(known.paths) == [path for path, *_ in rows]
    for path, label, pcs in zip(known.paths, known.labels, known.pcs, strict=True):
        i = int(path[-6:-4])
        assert label == ("odd" if i % 2 else "even") and pcs.tolist() == [i, -i]
    frame.unpersist()


@pytest.mark.spark
@pytest.mark.slow
def test_identify_answers_the_test_photos_as_the_quality_report_scored_them_without_a_jvm(
    split_run, tmp_path
):
    root, output, manifest = split_run
    photos = sorted(str(p) for p in (root / "Test").rglob("*.jpg"))
    # The reason the job gave the file it could not decode, word for word.
    rejected = pd.read_csv(output / "rejected.csv")
    (reason,) = rejected.loc[rejected["path"].str.endswith("broken.jpg"), "reason"]
    answered = {}
    for space, accuracy in (("full", "test_accuracy_full_features"), ("pca", "test_accuracy_pca")):
        probe = tmp_path / f"{space}.json"
        done = cli(
            ["identify", *photos, "--run", str(output), "--json", "--top", "3", "--classifier", space],
            probe,
            tmp_path / "cache",
        )
        assert done.returncode == 1, done.stderr  # one photo could not be decoded: the others are answered
        assert probed(probe) == {"loaded": [], "children": []}  # no pyspark, no py4j, no JVM, no TensorFlow
        assert done.stderr.strip().splitlines() == [
            f"fruits: {root / 'Test' / 'Lemon' / 'broken.jpg'}: {reason}"
        ]
        document = json.loads(done.stdout)
        assert document["run"]["run_id"] == manifest["run_id"] and document["run"]["known_images"] == 36
        answers = document["answers"]
        assert [a["path"] for a in answers] == photos
        broken = [a for a in answers if a["path"].endswith("broken.jpg")]
        assert broken == [{"path": broken[0]["path"], "class": None, "reason": reason}]
        scored = [a for a in answers if "reason" not in a]
        right = [a["class"] == Path(a["path"]).parent.name for a in scored]
        assert len(scored) == manifest["quality"]["test_images"] == 12
        assert sum(right) / len(right) == pytest.approx(manifest["quality"][accuracy], abs=1e-12)
        for answer in scored:
            probabilities = [answer["probability"], *(r["probability"] for r in answer["runners_up"])]
            assert probabilities == sorted(probabilities, reverse=True) and sum(
                probabilities
            ) == pytest.approx(1)
            assert len(answer["runners_up"]) == 2  # three classes: the predicted one and two others
            assert [s["distance"] for s in answer["similar"]] == sorted(
                s["distance"] for s in answer["similar"]
            )
            # The photo is itself a known image (the run featurized it): its nearest, at distance ~0.
            assert answer["similar"][0]["path"] == f"file:{answer['path']}"
            nearest, second = answer["similar"][0]["distance"], answer["similar"][1]["distance"]
            assert nearest < 1e-4 * second and len(answer["similar"]) == 3
        answered[space] = scored
    per_class = manifest["quality"]["per_class"]
    for label, numbers in per_class.items():
        mine = [a["class"] == label for a in answered["full"] if Path(a["path"]).parent.name == label]
        assert sum(mine) / len(mine) == pytest.approx(numbers["accuracy_full_features"], abs=1e-12)


@pytest.mark.spark
@pytest.mark.slow
def test_the_human_form_names_each_photo_its_class_and_its_similar_images(split_run, tmp_path):
    root, output, _ = split_run
    photo = root / "Test" / "Kiwi fruit" / "9.jpg"
    done = cli(["identify", str(photo), "--run", str(output), "--top", "2"], tmp_path / "p", tmp_path / "c")
    assert done.returncode == 0 and done.stderr == ""
    first, *similar = done.stdout.strip().splitlines()
    assert first.startswith(f"{photo}: ") and "%" in first and "(then " in first
    assert len(similar) == 2 and similar[0].split()[0] == "0.000" and similar[0].endswith(f"file:{photo}")


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_without_a_training_split_answers_similar_images_and_says_why_no_class(spark, tmp_path):
    root = tmp_path / "flat"
    for label, colour in COLOURS.items():
        for i in range(5):
            write_image(root / label / f"{i}.jpg", colour, seed=i)
    manifest = run_job(spark, root, tmp_path / "out")
    assert (
        manifest["identify"]["classifier"] is None
        and "no Training/ split" in manifest["identify"]["no_classifier"]
    )

    photo = str(root / "Lemon" / "3.jpg")
    done = cli(["identify", photo, "--run", str(tmp_path / "out"), "--json"], tmp_path / "p", tmp_path / "c")
    assert done.returncode == 0
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"fruits: run {manifest['run_id']} has no classifier: its input had no Training/")
    (answer,) = json.loads(done.stdout)["answers"]
    assert answer["class"] is None and "probability" not in answer
    assert answer["similar"][0]["path"] == f"file:{photo}" and len(answer["similar"]) == 5
    assert json.loads(done.stdout)["run"]["no_classifier"] == manifest["identify"]["no_classifier"]


# --- bad inputs: one line, exit 2 ----------------------------------------------------------------------


def one_line_exit_2(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and done.stdout == "", done.stderr
    return lines[0]


@pytest.mark.spark
@pytest.mark.slow
def test_bad_runs_and_an_empty_photo_list_are_one_line_and_exit_2(split_run, tmp_path):
    root, output, manifest = split_run
    photo = str(root / "Test" / "Lemon" / "9.jpg")

    def error(*args: str, cache: Path | None = None) -> str:
        return one_line_exit_2(cli(["identify", *args], tmp_path / "probe", cache or tmp_path / "cache"))

    assert error(photo, "--run", str(tmp_path / "nowhere")).startswith("fruits: no such output:")
    (tmp_path / "empty").mkdir()
    assert "no commits yet" in error(photo, "--run", str(tmp_path / "empty"))
    uncommitted = output / "runs" / "20200101T000000Z-abcdef"
    assert "unknown run 20200101T000000Z-abcdef" in error(photo, "--run", str(uncommitted))
    assert error("--run", str(output)).startswith("fruits: no photos given")

    # An older job's run: its manifest has no identify section.
    older = tmp_path / "older"
    shutil.copytree(output, older, ignore=shutil.ignore_patterns("feature_store"))
    manifest_path = older / layout.manifest_key(manifest["run_id"])
    document = json.loads(manifest_path.read_text())
    del document["identify"]
    manifest_path.write_text(json.dumps(document))
    assert "an older job made it" in error(photo, "--run", str(older))


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_whose_model_file_is_missing_or_another_is_one_line_and_exit_2(split_run, tmp_path):
    root, output, manifest = split_run
    photo = str(root / "Test" / "Lemon" / "9.jpg")
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    described = manifest["identify"]
    model = copy / "feature_store" / described["model_key"] / "engines" / described["model_file"]["file_name"]
    empty_cache = (
        tmp_path / "empty-cache"
    )  # not the local cache the job filled: the feature store must answer

    model.write_bytes(b"another model's bytes")
    line = one_line_exit_2(cli(["identify", photo, "--run", str(copy)], tmp_path / "p", empty_cache))
    assert "is not the model the run used" in line and described["model_file"]["sha256"] in line
    model.unlink()
    line = one_line_exit_2(cli(["identify", photo, "--run", str(copy)], tmp_path / "p", empty_cache))
    assert (
        f"the model file {described['model_file']['file_name']} is neither in the local cache nor in" in line
    )


# --- S3 outputs ------------------------------------------------------------------------------------------


def upload(client: Any, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.mark.spark
@pytest.mark.slow
def test_an_s3_output_answers_as_the_local_one_with_the_model_from_its_feature_store(
    split_run, moto_s3, tmp_path
):
    root, output, manifest = split_run
    upload(moto_s3.client, output, moto_s3.bucket, "results")
    photos = [str(root / "Test" / label / "10.jpg") for label in COLOURS]
    env = {name: os.environ[name] for name in os.environ if name.startswith("AWS_")}

    def answers(run: str, cache: Path) -> list[dict[str, Any]]:
        done = cli(["identify", *photos, "--run", run, "--json"], tmp_path / "probe", cache, env)
        assert done.returncode == 0, done.stderr
        assert probed(tmp_path / "probe")["loaded"] == []
        return json.loads(done.stdout)["answers"]

    local = answers(str(output), tmp_path / "local-cache")
    fresh = tmp_path / "s3-cache"  # empty: the model comes from s3://.../results/feature_store/<key>/engines/
    assert answers(moto_s3.uri("results"), fresh) == local
    model_name = manifest["identify"]["model_file"]["file_name"]
    assert (fresh / "models" / manifest["identify"]["model_key"] / model_name).is_file()  # kept for next time
    run_folder = moto_s3.uri(f"results/runs/{manifest['run_id']}/")
    assert answers(run_folder, fresh) == local  # a run's own folder; its files now from the local copy


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.usefixtures("aws_env")
def test_a_bare_run_id_is_a_run_of_the_stacks_results(split_run, s3, dep, capsys, monkeypatch, tmp_path):
    from fruits.ops.cli import main

    root, output, manifest = split_run
    bucket, _, prefix = dep.results_uri.removeprefix("s3://").partition("/")
    upload(s3, output, bucket, prefix.rstrip("/"))
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "cache"))
    photo = str(root / "Test" / "Red Apple" / "8.jpg")
    assert main(["identify", photo, "--run", manifest["run_id"], "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["run"]["run_id"] == manifest["run_id"] and document["run"][
        "output"
    ] == dep.results_uri.rstrip("/")
    assert document["answers"][0]["path"] == photo and document["answers"][0]["class"] in COLOURS
    assert main(["identify", photo, "--run", "20200101T000000Z-abcdef"]) == 2
    assert "unknown run 20200101T000000Z-abcdef" in capsys.readouterr().err
