"""The job on real Fruits-360 images (FRUITS_DATA), with random weights and, when FRUITS_WEIGHTS names a
file, with real pretrained weights: MLlib's centered PCA agrees with scikit-learn's, and the reduced features
still classify the Test split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fruits.job import run
from fruits.options import parse_options
from tests.conftest import weights_settings

pytestmark = [pytest.mark.spark, pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(
    scope="module", params=weights_settings(), ids=lambda s: f"{s[1]}-{s[2]}-{s[0].rsplit('/', 1)[-1]}"
)
def real_run(request, spark, fruits_data, tmp_path_factory):
    weights, model, alpha = request.param
    output = tmp_path_factory.mktemp("real") / "out"
    options = parse_options(
        ["--input", str(fruits_data), "--output", str(output), "--model", model, "--alpha", str(alpha),
         "--weights", weights, "--k", "10", "--keep-features"]
    )  # fmt: skip
    manifest = run(spark, options)
    table = pd.read_parquet(output / "runs" / manifest["run_id"] / "results.parquet")
    return manifest, table, output


def test_every_sample_image_is_featurized_and_labelled(real_run, fruits_data):
    manifest, table, _ = real_run
    images = [p for p in fruits_data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert manifest["counts"]["featurized"] == len(images) == len(table)
    assert set(table["label"]) == {p.parent.name for p in images}
    assert set(table["split"]) == {"Training", "Test"}


def test_projection_equals_scikit_learn_pca_of_the_same_features(real_run):
    from sklearn.decomposition import PCA

    _, table, _ = real_run
    features = np.stack(table["features"].to_numpy()).astype(np.float64)
    expected = PCA(n_components=10, svd_solver="full").fit_transform(features)
    actual = table[[f"pc_{i}" for i in range(1, 11)]].to_numpy()
    for component in range(10):
        sign = np.sign(np.dot(expected[:, component], actual[:, component])) or 1.0
        scale = np.abs(expected[:, component]).max()
        assert scale > 0
        assert np.abs(sign * actual[:, component] - expected[:, component]).max() / scale < 1e-3, component


def test_results_csv_matches_the_parquet_rows(real_run):
    _, table, output = real_run
    csv = pd.read_csv(output / "results.csv")
    assert list(csv.columns) == ["path", "label", *[f"pc_{i}" for i in range(1, 11)]]
    merged = csv.merge(table, on="path", suffixes=("_csv", ""))
    assert len(merged) == len(table)
    for i in range(1, 11):
        scale = np.abs(merged[f"pc_{i}"]).max()
        assert scale > 0 and np.abs(merged[f"pc_{i}_csv"] - merged[f"pc_{i}"]).max() <= 1e-7 * scale


def test_quality_report_keeps_at_least_90_percent_test_accuracy(real_run):
    manifest, _, _ = real_run
    quality = manifest["quality"]
    assert quality["train_images"] > 0 and quality["test_images"] > 0
    assert quality["test_accuracy_pca"] >= 0.90, quality
    assert quality["test_accuracy_full_features"] >= 0.90, quality


def test_quality_report_is_not_weaker_than_scikit_learns_default_logistic_regression(real_run):
    """The report's classifier (cheap, one pass) against what an analyst would try first, on the same features."""
    from sklearn.linear_model import LogisticRegression

    manifest, table, _ = real_run
    train, test = table[table["split"] == "Training"], table[table["split"] == "Test"]
    x, xt = np.stack(train["features"].to_numpy()), np.stack(test["features"].to_numpy())
    reference = (LogisticRegression().fit(x, train["label"]).predict(xt) == test["label"]).mean()
    assert manifest["quality"]["test_accuracy_full_features"] >= reference - 0.01, (
        manifest["quality"],
        reference,
    )
