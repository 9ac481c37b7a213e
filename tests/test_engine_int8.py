"""The int8 engine (``litert-int8``): how close its features are to float ones, its own place in the feature store,
and the quality it keeps on the 41-class development set.

- On the sample (FRUITS_DATA, FRUITS_WEIGHTS): per image, the cosine similarity and the relative L2 error of int8
  features against float ones, from the same Keras model and the job's calibration rule. Measured with
  MobileNet 0.25 and Keras' ImageNet weights on the 320 sample images: cosine at least 0.949 (median 0.970),
  relative error at most 0.316 (median 0.243). The bounds leave a margin for other CPUs' rounding; a broken
  quantization (no calibration, a wrong input or output scale) gives a cosine near 0 or an error near 1. What
  this much error costs is measured on the development set (last test): under one point of accuracy.
- On the development set (FRUITS_DEV_DATA, 41 classes, 1,640 images): the quality report's test accuracy with
  int8, on the k components and on all features, and the 1-nearest-neighbour accuracy on 20 components, each at
  most one point below float's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fruits import calibration, engines, feature_store, models
from fruits.decoding import decode_image
from fruits.job import run
from fruits.listing import list_input
from fruits.options import parse_options
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


def fruit_tree(root: Path, shift: int = 0) -> Path:
    for c, label in enumerate(("Kiwi", "Plum")):
        for i in range(4):
            for split in ("Training", "Test"):
                seed = shift + 10 * c + i + (100 if split == "Test" else 0)
                write_image(root / split / label / f"{i}.jpg", (60 + 90 * c, 80 + i, 40), seed=seed)
    return root


@pytest.mark.spark
@pytest.mark.slow
def test_int8_features_have_their_own_key_named_by_the_calibration_and_the_float_key_is_unchanged(
    spark, tmp_path
):
    source = fruit_tree(tmp_path / "in")
    output = tmp_path / "out"

    def job(engine: str, *extra: str) -> dict:
        return run(spark, parse_options(
            ["--input", str(source), "--output", str(output), *FAST_MODEL, "--engine", engine, "--k", "2",
             "--overwrite", *extra]
        ))  # fmt: skip

    from fruits.job import RunContext

    options = parse_options(
        ["--input", str(source), "--output", str(output), *FAST_MODEL, "--engine", "litert-int8"]
    )
    assert RunContext.start(spark, options).model_key.endswith(
        "-int8-uncalibrated-f32"
    )  # never the float key

    first = job("litert-int8")
    described = first["model"]["calibration"]
    assert described["source"] == str(source) and described["split"] == "Training"
    assert described["images"] == 8 and first["model"]["prepared_from"] == "built"
    float_key = feature_store.model_key("mobilenet", 0.25, 32, 32, "random-seed0")
    int8_key = first["feature_store"]["model_key"]
    assert int8_key == float_key.removesuffix("-f32") + f"-int8-c{described['id']}-f32"
    pointer = json.loads((output / "feature_store" / int8_key / "engines" / "litert-int8.json").read_text())
    assert pointer["calibration"] == described and pointer["file_name"].endswith(".tflite")

    floats = job("litert")
    assert floats["feature_store"]["model_key"] == float_key and floats["model"]["calibration"] is None
    assert floats["counts"]["reused"] == 0  # int8 features are never float ones
    assert sorted(p.name for p in (output / "feature_store").iterdir()) == sorted([float_key, int8_key])

    # The same images elsewhere calibrate the same model: same key, every feature reused.
    elsewhere = tmp_path / "calibration"
    shutil.copytree(source / "Training", elsewhere / "Training")
    again = job("litert-int8", "--calibration", str(elsewhere))
    assert again["feature_store"]["model_key"] == int8_key and again["counts"]["reused"] == 16
    assert again["model"]["calibration"]["source"] == str(elsewhere)

    # Other images, another calibration: another key, and its model is built for it.
    other = fruit_tree(tmp_path / "other", shift=1000)
    third = job("litert-int8", "--calibration", str(other), "--calibration-images", "3")
    assert third["model"]["calibration"]["images"] == 3
    assert third["feature_store"]["model_key"] not in (int8_key, float_key)
    assert third["model"]["prepared_from"] == "built" and third["counts"]["newly_featurized"] == 16


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
