"""The PCA fit: exact against NumPy, the same as MLlib's PCA, and a pipeline that reloads and projects."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, StandardScaler

from fruits.linalg import pack
from fruits.reduce import (
    fit,
    loaded_k,
    moments,
    principal_components,
    project,
    project_with_pipeline,
    projection_of,
    with_vectors,
)

pytestmark = pytest.mark.spark


def low_rank(rows: int, dim: int, rank: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.5, rank)
    data = (rng.normal(size=(rows, rank)) * scale) @ rng.normal(size=(rank, dim))
    return (data + 0.01 * rng.normal(size=(rows, dim)) + 5.0).astype(np.float32)


def numpy_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centered = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    return (s**2) / (s**2).sum(), vt.T


def test_moments_of_batches_equal_those_of_the_whole():
    x = low_rank(50, 6, 2)
    whole = moments([x], 6)
    parts = moments([x[:7], x[7:30], x[30:0], x[30:]], 6)
    assert parts.n == 50 and np.allclose(parts.gram, whole.gram) and np.allclose(parts.total, whole.total)


def test_principal_components_match_numpy_svd_up_to_sign():
    x = low_rank(300, 12, 4)
    mean, vectors, explained = principal_components(moments([x], 12))
    reference, reference_vectors = numpy_pca(x)
    assert np.allclose(explained, reference, rtol=1e-6, atol=1e-12)
    for i in range(4):  # the well-separated components
        assert abs(abs(vectors[:, i] @ reference_vectors[:, i]) - 1) < 1e-8
    assert np.allclose(mean, x.mean(axis=0), rtol=1e-6)


def test_fit_projects_like_numpy_and_reloads(spark, tmp_path):
    x = low_rank(400, 16, 5)
    frame = spark.createDataFrame(
        [(i, pack(row)) for i, row in enumerate(x)],
        "i long, features binary",  # as the job keeps them
    )
    reduction = fit(frame.repartition(3), feature_dim=16, k=None, variance=0.99)
    reference, reference_vectors = numpy_pca(x)
    assert np.allclose(reduction.explained, reference, rtol=1e-6, atol=1e-12)
    k = reduction.k
    assert 1 <= k <= 5
    projected = project(reduction.projection, frame).orderBy("i").toPandas()
    got = projected[[f"pc_{j + 1}" for j in range(k)]].to_numpy()
    expected = (x.astype(np.float64) - x.mean(axis=0)) @ reference_vectors[:, :k]
    for j in range(k):
        sign = np.sign(got[:, j] @ expected[:, j])
        assert np.allclose(
            sign * got[:, j], expected[:, j], rtol=1e-4, atol=1e-4 * np.abs(expected[:, j]).max()
        )

    reduction.model.write().overwrite().save(str(tmp_path / "pca_model"))
    reloaded = PipelineModel.load(str(tmp_path / "pca_model"))
    assert loaded_k(reloaded) == k
    arrays = spark.createDataFrame(
        [(i, row.tolist()) for i, row in enumerate(x)], "i long, features array<float>"
    )
    again = project_with_pipeline(reloaded, arrays, k).orderBy("i").toPandas()  # Spark ML's own transform
    assert np.allclose(again[[f"pc_{j + 1}" for j in range(k)]].to_numpy(), got, rtol=1e-9, atol=1e-12)
    from_saved = projection_of(reloaded)
    assert np.allclose(from_saved.mean, reduction.projection.mean) and from_saved.k == k


def test_the_curve_equals_mllib_pca(spark):
    x = low_rank(200, 10, 3)
    frame = spark.createDataFrame([(pack(row),) for row in x], "features binary")
    ours = fit(frame, feature_dim=10, k=3, variance=None).explained
    arrays = with_vectors(spark.createDataFrame([(row.tolist(),) for row in x], "features array<float>"))
    scaled = StandardScaler(inputCol="features_vec", outputCol="c", withMean=True, withStd=False).fit(arrays)
    mllib = PCA(k=10, inputCol="c", outputCol="p").fit(scaled.transform(arrays))
    assert np.allclose(ours, mllib.explainedVariance.toArray(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("at_once", [32, 8, 3, 2])
def test_partials_add_up_the_same_through_any_tree(spark, monkeypatch, at_once):
    from fruits import summaries

    monkeypatch.setattr(summaries, "GATHER_AT_ONCE", at_once)
    blocks = np.array_split(low_rank(230, 5, 2, seed=at_once).astype(np.float64), 23)
    expected = moments(blocks, 5)
    # 23 partials in 23 partitions: straight to the driver when at_once >= 23, else one or more levels of groups.
    frame = spark.createDataFrame(
        [(summaries.pickled(moments([block], 5))["summary"][0],) for block in blocks],
        summaries.PARTIALS_SCHEMA,
    ).repartition(23)
    total = summaries.add_up(frame)
    assert total.n == expected.n == 230
    np.testing.assert_allclose(total.total, expected.total, rtol=1e-12)
    np.testing.assert_allclose(total.gram, expected.gram, rtol=1e-12)
    assert summaries.add_up(frame.limit(0)) is None


def test_a_large_projection_travels_as_a_broadcast_not_inside_each_task(spark):
    from pyspark import cloudpickle

    from fruits.linalg import projecting
    from fruits.reduce import Projection, project, shipped_once

    components = np.random.default_rng(0).normal(size=(256, 400))  # 800 KB of float64
    mean = np.zeros(256)
    big = projecting([f"pc_{i + 1}" for i in range(400)], mean, components, keep_features=False)
    assert len(cloudpickle.dumps(big)) > 800_000
    shipped = shipped_once(spark, big)
    assert len(cloudpickle.dumps(shipped)) < 20_000  # what each task carries: the broadcast's handle

    x = np.random.default_rng(1).normal(size=(50, 256)).astype(np.float32)
    frame = spark.createDataFrame([(pack(row),) for row in x], "features binary")
    out = project(Projection(mean, components), frame, keep_features=False).toPandas()
    np.testing.assert_allclose(out.to_numpy(), x.astype(np.float64) @ components, rtol=1e-9, atol=1e-9)
