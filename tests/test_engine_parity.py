"""Both float inference engines give the same features and the same results.csv on the real sample (FRUITS_DATA).

The LiteRT model is TensorFlow's own conversion of the Keras graph, so outputs may differ only by float
rounding (about 1e-5 relative); 1e-4 is the contract. Uses FRUITS_WEIGHTS (and the model its file name names)
when set, else MobileNet alpha 0.25 with random weights.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fruits import engines, models
from fruits.decoding import decode_image
from fruits.job import run
from fruits.options import parse_options
from tests.conftest import weights_settings

pytestmark = [pytest.mark.spark, pytest.mark.realdata, pytest.mark.slow]

TOLERANCE = 1e-4
# litert-int8's features are close to float, not equal: tests/test_engine_int8.py.
FLOAT_ENGINES = [e for e in engines.ENGINES if e not in engines.CALIBRATED]
WEIGHTS, MODEL, ALPHA = weights_settings()[-1]  # the real weights file when given, else random


def assert_close_rows(expected: np.ndarray, actual: np.ndarray) -> None:
    """Every row within TOLERANCE relative to that row's largest magnitude."""
    assert expected.shape == actual.shape
    scale = np.maximum(np.abs(expected).max(axis=1, keepdims=True), 1e-12)
    worst = float((np.abs(actual - expected) / scale).max())
    assert worst <= TOLERANCE, f"largest relative difference {worst:.2e} > {TOLERANCE}"


def test_litert_features_equal_keras_features(fruits_data, tmp_path):
    images = sorted(p for p in fruits_data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    batch = np.stack([decode_image(p.read_bytes(), 100) for p in images])
    model = models.build_feature_model(
        models.get_spec(MODEL),
        image_size=224,
        decode_size=100,
        alpha=ALPHA,
        weights=models.resolve_weights(WEIGHTS),
    )
    outputs = {}
    for engine in FLOAT_ENGINES:
        path = engines.export(model, engine, str(tmp_path), f"parity-{engine}")
        predict = engines.load_predictor(path, engine, threads=2)
        outputs[engine] = np.concatenate([predict(batch[i : i + 64]) for i in range(0, len(batch), 64)])
    assert outputs["keras"].shape == (len(images), models.get_spec(MODEL).feature_dim(ALPHA))
    assert np.abs(outputs["keras"]).max() > 0  # not a degenerate all-zero model
    assert_close_rows(outputs["keras"], outputs["litert"])


@pytest.fixture(scope="module")
def runs(spark, fruits_data, tmp_path_factory):
    """The job once per engine on the sample, each into its own output (no shared feature store)."""
    found = {}
    for engine in FLOAT_ENGINES:
        output = tmp_path_factory.mktemp(f"parity-{engine}") / "out"
        options = parse_options(
            ["--input", str(fruits_data), "--output", str(output), "--model", MODEL, "--alpha", str(ALPHA),
             "--weights", WEIGHTS, "--engine", engine, "--k", "10", "--keep-features"]
        )  # fmt: skip
        manifest = run(spark, options)
        assert manifest["model"]["engine"] == engine
        run_folder = output / "runs" / manifest["run_id"]
        found[engine] = (
            pd.read_parquet(run_folder / "results.parquet").sort_values("path").reset_index(drop=True),
            pd.read_csv(output / "results.csv"),
        )
    return found


def test_the_job_gives_the_same_features_with_either_engine(runs):
    keras_table, litert_table = runs["keras"][0], runs["litert"][0]
    assert list(keras_table["path"]) == list(litert_table["path"])
    assert_close_rows(np.stack(keras_table["features"]), np.stack(litert_table["features"]))


def test_the_job_writes_the_same_results_csv_with_either_engine(runs):
    keras_csv, litert_csv = runs["keras"][1], runs["litert"][1]
    assert (
        list(keras_csv.columns)
        == list(litert_csv.columns)
        == ["path", "label"] + [f"pc_{i}" for i in range(1, 11)]
    )
    assert keras_csv[["path", "label"]].equals(litert_csv[["path", "label"]])
    for column in [c for c in keras_csv.columns if c.startswith("pc_")]:
        expected, actual = keras_csv[column].to_numpy(), litert_csv[column].to_numpy()
        # A principal component is defined up to its sign; the engines must agree on everything else.
        if np.dot(expected, actual) < 0:
            actual = -actual
        scale = np.abs(expected).max()
        worst = float(np.abs(actual - expected).max() / scale)
        assert worst <= TOLERANCE, f"{column}: largest difference {worst:.2e} of the column's range"
