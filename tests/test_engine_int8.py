"""The int8 engine (``litert-int8``): how close its features are to float ones, its own place in the feature store,
and the quality it keeps on the 41-class development set.

- On the sample (FRUITS_DATA, FRUITS_WEIGHTS): per image, the cosine similarity and the relative L2 error of int8
  features against float ones, from the same Keras model and the job's calibration rule. Measured with
  MobileNet 0.25 and Keras' ImageNet weights on the 320 sample images: cosine at least 0.949 (median 0.970),
  relative error at most 0.316 (median 0.243). The bounds leave a margin for other CPUs' rounding; a broken
  quantization (no calibration, a wrong input or output scale) gives a cosine near 0 or an error near 1. What
  this much error costs is measured on the development set (last test): under one point of accuracy.
- Its place in the feature store (FRUITS_WEIGHTS on 32-pixel images: counts and keys): a key naming
  the calibration's source and count, kept by a store's first int8 run, so that an input that grows by 10 %, or a
  run with --limit, keeps the key and the model, and only new images are featurized; one model per key even when
  two runs build one at once; ``--check`` prepares the very model a run then uses (real weights).
- On the development set (FRUITS_DEV_DATA, 41 classes, 1,640 images): the quality report's test accuracy with
  int8, on the k components and on all features, and the 1-nearest-neighbour accuracy on 20 components, each at
  most one point below float's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fruits import calibration, engines, feature_store, layout, models, outcomes
from fruits.decoding import decode_image
from fruits.job import main, run
from fruits.listing import list_input
from fruits.model_export import prepare_model
from fruits.options import parse_options
from fruits.storage import LocalStore, NotFound, open_store
from tests.conftest import FAST_MODEL, write_image

COSINE_MIN, COSINE_MEDIAN = 0.93, 0.96
ERROR_MAX, ERROR_MEDIAN = 0.40, 0.30
POINT = 0.01  # one point of accuracy


def weights_file() -> str:
    """FRUITS_WEIGHTS (a random network's activations are below int8's resolution: its features are all 0)."""
    path = os.environ.get("FRUITS_WEIGHTS")
    if not path:
        pytest.skip("FRUITS_WEIGHTS is not set to a Keras weights file (int8 of random weights is all zeros)")
    return path


def model_of(path: str) -> tuple[str, float]:
    return models.infer_model_from_filename(path) or (
        os.environ.get("FRUITS_MODEL", "mobilenet_v2"),
        float(os.environ.get("FRUITS_ALPHA", "1.0")),
    )


@pytest.mark.realdata
def test_int8_features_stay_close_to_float_features_on_the_sample(fruits_data, tmp_path):
    weights = weights_file()
    name, alpha = model_of(weights)
    listing = list_input(str(fruits_data))
    images = np.stack(
        [decode_image(Path(e.path.removeprefix("file:")).read_bytes(), 100) for e in listing.to_read]
    )
    model = models.build_feature_model(
        models.get_spec(name),
        image_size=224,
        decode_size=100,
        alpha=alpha,
        weights=models.resolve_weights(weights),
    )
    chosen = calibration.collect(listing, 200, 64 << 20).decoded(100)
    features = {}
    for engine in ("litert", "litert-int8"):
        path = engines.export(model, engine, str(tmp_path), f"closeness-{engine}", chosen)
        predict = engines.load_predictor(path, engine, 1)  # as each Spark task runs it: one thread, per image
        features[engine] = np.concatenate([predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    exact, quantized = features["litert"].astype(np.float64), features["litert-int8"].astype(np.float64)
    norms = np.linalg.norm(exact, axis=1)
    assert norms.min() > 0
    cosine = (exact * quantized).sum(axis=1) / norms / np.maximum(np.linalg.norm(quantized, axis=1), 1e-30)
    error = np.linalg.norm(quantized - exact, axis=1) / norms
    measured = f"cosine min {cosine.min():.3f} median {np.median(cosine):.3f}; error max {error.max():.3f} median {np.median(error):.3f}"
    assert cosine.min() >= COSINE_MIN and np.median(cosine) >= COSINE_MEDIAN, measured
    assert error.max() <= ERROR_MAX and np.median(error) <= ERROR_MEDIAN, measured


def fruit_tree(root: Path, shift: int = 0, per_class: int = 4) -> Path:
    for c, label in enumerate(("Kiwi", "Plum")):
        for i in range(per_class):
            for split in ("Training", "Test"):
                seed = shift + 10 * c + i + (100 if split == "Test" else 0)
                write_image(root / split / label / f"{shift}-{i}.jpg", (60 + 90 * c, 80 + i, 40), seed=seed)
    return root


def small_model() -> list[str]:
    """FRUITS_WEIGHTS on 32-pixel images: a whole int8 run in seconds. Random weights would not do: their int8
    features are all 0, and a run refuses features without variance."""
    weights = weights_file()
    name, alpha = model_of(weights)
    return [
        "--model",
        name,
        "--alpha",
        str(alpha),
        "--weights",
        weights,
        "--image-size",
        "32",
        "--decode-size",
        "32",
    ]


def job(spark, source: Path, output: Path, *extra: str, engine: str = "litert-int8") -> dict:
    """One run of the job with the small model (int8 unless ``engine`` says otherwise)."""
    return run(spark, parse_options(
        ["--input", str(source), "--output", str(output), *small_model(), "--engine", engine, "--k", "2",
         "--overwrite", *extra]
    ))  # fmt: skip


def kept(output: Path, manifest: dict) -> dict:
    """The pointer the feature store keeps for the run's int8 model."""
    key = manifest["feature_store"]["model_key"]
    return json.loads((output / "feature_store" / key / "engines" / "litert-int8.json").read_text())


@pytest.mark.spark
@pytest.mark.slow
def test_int8_features_have_their_own_key_named_by_the_calibration_spec_and_the_float_key_is_unchanged(
    spark, tmp_path
):
    source = fruit_tree(tmp_path / "in")
    output = tmp_path / "out"

    first = job(spark, source, output)
    described = first["model"]["calibration"]
    assert described["source"] == str(source) and described["split"] == "Training"
    assert described["images"] == 8 and first["model"]["prepared_from"] == "built"
    name, alpha = model_of(weights_file())
    weights_id = feature_store.weights_id(models.resolve_weights(weights_file()))
    float_key = feature_store.model_key(name, alpha, 32, 32, weights_id)
    int8_key = first["feature_store"]["model_key"]
    assert (
        int8_key
        == float_key.removesuffix(f"-{layout.STORE_FORMAT}")
        + f"-int8-{calibration.spec(first_options(source))}-{layout.STORE_FORMAT}"
    )
    pointer = kept(output, first)
    assert pointer["calibration"] == described and pointer["file_name"].endswith(".tflite")

    floats = job(spark, source, output, engine="litert")
    assert floats["feature_store"]["model_key"] == float_key and floats["model"]["calibration"] is None
    assert floats["counts"]["reused"] == 0  # int8 features are never float ones
    assert sorted(p.name for p in (output / "feature_store").iterdir()) == sorted([float_key, int8_key])

    # Another calibration source or count: another key, and its first run calibrates a model for it.
    other = fruit_tree(tmp_path / "other", shift=1000)
    third = job(spark, source, output, "--calibration", str(other), "--calibration-images", "3")
    assert third["model"]["calibration"]["images"] == 3
    assert third["model"]["calibration"]["source"] == str(other)
    assert third["feature_store"]["model_key"] not in (int8_key, float_key)
    assert third["model"]["prepared_from"] == "built" and third["counts"]["newly_featurized"] == 16


def first_options(source: Path):
    return parse_options(["--input", str(source), "--output", "/o", *FAST_MODEL, "--engine", "litert-int8"])


@pytest.mark.spark
@pytest.mark.slow
def test_an_input_that_grows_by_ten_percent_keeps_its_int8_model_and_featurizes_only_the_new_images(
    spark, tmp_path
):
    source = fruit_tree(tmp_path / "in", per_class=5)  # 20 images, 10 of them Training: all calibrate
    output = tmp_path / "out"
    first = job(spark, source, output)
    assert first["counts"]["newly_featurized"] == 20 and first["model"]["calibration"]["images"] == 10

    for i in (0, 1):  # 10 % more, both in Training/: the images a fresh choice would now calibrate on differ
        write_image(source / "Training" / "Kiwi" / f"new-{i}.jpg", (60, 200, 40), seed=500 + i)
    assert (
        calibration.choose(first_options(source), list_input(str(source))).identity
        != (first["model"]["calibration"]["id"])
    )

    second = job(spark, source, output)
    assert second["feature_store"]["model_key"] == first["feature_store"]["model_key"]
    assert second["counts"] == {
        "found": 22,
        "featurized": 22,
        "rejected": 0,
        "reused": 20,
        "newly_featurized": 2,
    }
    assert second["model"]["prepared_from"] != "built"  # the kept model, not a new calibration
    assert second["model"]["calibration"] == first["model"]["calibration"]
    assert kept(output, second) == kept(output, first)


@pytest.mark.spark
@pytest.mark.slow
def test_limit_keeps_the_key_and_a_sample_run_calibrates_on_the_whole_input(spark, tmp_path):
    source = fruit_tree(tmp_path / "in", per_class=5)
    output = tmp_path / "out"
    sample = job(spark, source, output, "--limit", "4")
    assert sample["counts"]["found"] == 4
    # The first 4 files in path order are all Test/ images: the calibration still takes the input's Training/.
    assert (
        sample["model"]["calibration"]["images"] == 10
        and sample["model"]["calibration"]["split"] == "Training"
    )
    full = job(spark, source, output)
    assert full["feature_store"]["model_key"] == sample["feature_store"]["model_key"]
    assert full["counts"]["reused"] == 4 and full["counts"]["newly_featurized"] == 16
    assert full["model"]["calibration"] == sample["model"]["calibration"]


@pytest.mark.spark
def test_an_input_that_cannot_calibrate_is_nothing_to_featurize_with_allow_empty(spark, tmp_path, capsys):
    source = tmp_path / "in"
    (source / "Kiwi").mkdir(parents=True)
    for name in ("0.jpg", "1.jpg"):
        (source / "Kiwi" / name).write_bytes(b"not an image")
    output = tmp_path / "out"
    args = ["--input", str(source), "--output", str(output), *FAST_MODEL, "--engine", "litert-int8"]
    assert run(spark, parse_options([*args, "--allow-empty"])) is None
    assert not (output / "manifest.json").exists()
    assert main(args, spark) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"featurize_pca: error: no image under {source} could be featurized: none of the 2 calibration images "
        f"of {source} could be decoded"
    )


class HidesItsModelOnce(LocalStore):
    """A store whose first read of the int8 model's pointer finds nothing, as if another run's pointer landed
    just after this run looked: two first runs at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hidden = False

    def read_json(self, key: str):  # type: ignore[no-untyped-def]
        if key.endswith("/engines/litert-int8.json") and not self.hidden:
            self.hidden = True
            raise NotFound(key)
        return super().read_json(key)


@pytest.mark.spark
@pytest.mark.slow
def test_a_store_keeps_one_int8_model_per_key_whoever_builds_it(spark, tmp_path, monkeypatch):
    source = fruit_tree(tmp_path / "in")
    options = first_options(source)
    weights = models.resolve_weights("none")
    key = feature_store.model_key_for(options, weights)
    one = calibration.collect(list_input(str(source)), 8, 1 << 20)
    two = calibration.collect(list_input(str(fruit_tree(tmp_path / "other", shift=1000))), 8, 1 << 20)

    def scratch(name: str) -> str:
        (tmp_path / name).mkdir()
        return str(tmp_path / name)

    def never() -> calibration.Calibration:
        raise AssertionError("a key whose model is kept is never calibrated again")

    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "node1"))
    store = LocalStore(tmp_path / "store")
    first, how = prepare_model(spark, options, weights, store, key, scratch("s1"), lambda: one)
    assert how == "built"
    assert prepare_model(spark, options, weights, store, key, scratch("s2"), never) == (first, "local cache")

    # Another node (its own cache) builds its own model from other images at the same time: it loses the
    # create-only race and runs the kept model, never its own.
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "node2"))
    racing = HidesItsModelOnce(tmp_path / "store")
    late, how = prepare_model(spark, options, weights, racing, key, scratch("s3"), lambda: two)
    assert racing.hidden and (late, how) == (first, "feature store")
    kept_files = sorted(p.name for p in (tmp_path / "store" / key / "engines").glob("*.tflite"))
    assert len(kept_files) == 2, kept_files  # its own model was another file: a race that could have mixed

    # A new store on a node whose cache holds a model of this key takes that one and keeps it.
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "node1"))
    fresh = LocalStore(tmp_path / "fresh")
    assert prepare_model(spark, options, weights, fresh, key, scratch("s4"), never) == (first, "local cache")
    assert fresh.read_json(f"{key}/engines/litert-int8.json")["file_name"] == first.file_name


def checked_model(output: Path) -> dict:
    """The ``model`` entry of the report of the one ``--check`` run under ``output``."""
    (record,) = [r for r in outcomes.read_all(open_store(str(output))) if r.status == outcomes.CHECKED]
    return (record.details or {})["model"]


@pytest.mark.spark
@pytest.mark.realdata
@pytest.mark.slow
def test_check_prepares_the_calibrated_model_the_first_run_then_uses(
    spark, fruits_data, tmp_path, monkeypatch
):
    weights = weights_file()
    name, alpha = model_of(weights)
    output = tmp_path / "out"
    args = ["--input", str(fruits_data), "--output", str(output), "--model", name, "--alpha", str(alpha),
            "--weights", weights, "--engine", "litert-int8"]  # fmt: skip
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "node-that-checked"))
    assert main([*args, "--check"], spark) == 0
    model = checked_model(output)
    assert model["from"] == "built" and model["calibration"]["split"] == "Training"
    assert model["calibration"]["images"] == 200 and "-int8-" in model["model_key"]

    # The first real run, on another node (nothing in its cache), and a sample of the input: the same key, and
    # the model the check calibrated, from the feature store.
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "node-that-runs"))
    assert main([*args, "--limit", "40"], spark) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["feature_store"]["model_key"] == model["model_key"]
    assert manifest["model"]["prepared_from"] == "feature store"
    assert manifest["model"]["calibration"] == model["calibration"]


@pytest.mark.spark
@pytest.mark.slow
def test_check_before_any_image_says_int8_is_not_calibrated_yet_unless_its_calibration_is_pinned(
    spark, tmp_path, capsys
):
    empty = tmp_path / "in"
    empty.mkdir()
    output = tmp_path / "out"
    args = ["--input", str(empty), "--output", str(output), *FAST_MODEL, "--engine", "litert-int8"]
    assert main([*args, "--check"], spark) == 0
    model = checked_model(output)
    assert model["from"].startswith(f"not prepared: no image to calibrate the int8 model on under {empty}")
    assert model["checked_with"]["engine"] == "litert" and model["checked_with"]["features"] > 0
    assert not (output / "feature_store" / model["model_key"]).exists()  # nothing kept under the int8 key

    pinned = tmp_path / "calibration"
    pinned.mkdir()
    assert main([*args, "--check", "--calibration", str(pinned)], spark) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        line
        == f"featurize_pca: error: check failed at model: no image to calibrate the int8 model on under {pinned}"
    )


def dev_data() -> Path:
    value = os.environ.get("FRUITS_DEV_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("FRUITS_DEV_DATA is not set to the 41-class Fruits-360 development set")
    return Path(value)


def nearest_neighbour_accuracy(table: pd.DataFrame, components: int = 20) -> float:
    """Test images labelled by their nearest Training image in the first ``components`` centered principal
    components of all images' features (the job's PCA, fitted here in float64)."""
    features = np.stack(table["features"].to_numpy()).astype(np.float64)
    centered = features - features.mean(axis=0)
    _, _, basis = np.linalg.svd(centered, full_matrices=False)
    projected = centered @ basis[:components].T
    train, test = (table["split"] == "Training").to_numpy(), (table["split"] == "Test").to_numpy()
    a, b = projected[train], projected[test]
    distances = (b**2).sum(axis=1)[:, None] - 2 * b @ a.T + (a**2).sum(axis=1)[None, :]
    labels = table["label"].to_numpy()
    return float((labels[train][distances.argmin(axis=1)] == labels[test]).mean())


@pytest.mark.spark
@pytest.mark.realdata
@pytest.mark.slow
def test_int8_keeps_the_quality_of_float_on_the_development_set(spark, tmp_path):
    data, weights = dev_data(), weights_file()
    name, alpha = model_of(weights)
    found = {}
    for engine in ("litert", "litert-int8"):
        output = tmp_path / engine
        manifest = run(spark, parse_options(
            ["--input", str(data), "--output", str(output), "--model", name, "--alpha", str(alpha),
             "--weights", weights, "--engine", engine, "--keep-features"]
        ))  # fmt: skip
        table = pd.read_parquet(output / "runs" / manifest["run_id"] / "results.parquet")
        quality = manifest["quality"]
        found[engine] = {
            "k": manifest["pca"]["k"],
            "pca": quality["test_accuracy_pca"],
            "all": quality["test_accuracy_full_features"],
            "1nn20": nearest_neighbour_accuracy(table),
        }
    print(f"\ndevelopment set quality: {found}")  # recorded in README and docs/benchmark.md
    float_, int8 = found["litert"], found["litert-int8"]
    assert min(float_["pca"], float_["all"], float_["1nn20"]) >= 0.9, (
        found
    )  # a set the weights can tell apart
    for measure in ("pca", "all", "1nn20"):
        assert int8[measure] >= float_[measure] - POINT, (measure, found)
