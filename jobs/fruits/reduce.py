"""Dimension reduction with Spark MLlib: center, PCA, keep k components.

Spark's ``PCA`` does not subtract the mean when it projects, so a ``StandardScaler(withMean=True,
withStd=False)`` stage centers first. The PCA stage is fitted with every component (its cost is the covariance
matrix either way), which gives the full explained-variance curve for choosing k and for the plot; a
``VectorSlicer`` then keeps the first k. The saved ``PipelineModel`` projects new images without refitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import PCA, StandardScaler, VectorSlicer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

VECTOR_COL = "features_vec"
PCA_COL = "pca"


def pc_columns(k: int) -> list[str]:
    """Names of the projected components: ``pc_1 .. pc_k``."""
    return [f"pc_{i + 1}" for i in range(k)]


def choose_k(explained: Sequence[float], variance: float) -> int:
    """Smallest k whose cumulative explained variance reaches ``variance`` (all components if none does)."""
    if not explained:
        raise ValueError("empty explained-variance curve")
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    cumulative = np.cumsum(np.asarray(explained, dtype=float))
    # A tiny tolerance: a curve that sums to 0.9999999 must still reach 1.0.
    reached = np.nonzero(cumulative >= variance - 1e-9)[0]
    return int(reached[0]) + 1 if reached.size else len(explained)


@dataclass(frozen=True)
class Reduction:
    """The fitted pipeline and what it explains."""

    model: PipelineModel
    k: int
    explained: list[float]  # per component, over all components that were fitted


def with_vectors(frame: DataFrame) -> DataFrame:
    """Add the MLlib vector column the pipeline reads (``array_to_vector`` of ``features``)."""
    return frame.withColumn(VECTOR_COL, array_to_vector("features"))


def fit(features: DataFrame, *, feature_dim: int, k: int | None, variance: float | None) -> Reduction:
    """Fit center + PCA on ``features`` (a ``features`` array column); k given or chosen by ``variance``."""
    full = Pipeline(
        stages=[
            StandardScaler(inputCol=VECTOR_COL, outputCol="centered", withMean=True, withStd=False),
            PCA(k=feature_dim, inputCol="centered", outputCol="pca_all"),  # every component: the full curve
        ]
    ).fit(with_vectors(features))
    explained = [float(v) for v in full.stages[1].explainedVariance.toArray()]
    chosen = min(k, feature_dim) if k is not None else choose_k(explained, variance or 0.95)
    slicer = VectorSlicer(inputCol="pca_all", outputCol=PCA_COL, indices=list(range(chosen)))
    model = PipelineModel(stages=[*full.stages, slicer])
    return Reduction(model=model, k=chosen, explained=explained)


def project(model: PipelineModel, features: DataFrame, k: int) -> DataFrame:
    """Rows of ``features`` with ``pc_1..pc_k`` double columns added (the vector columns dropped)."""
    projected = model.transform(with_vectors(features))
    array = vector_to_array(F.col(PCA_COL))
    columns = [array[i].alias(name) for i, name in enumerate(pc_columns(k))]
    return projected.select(*features.columns, *columns)


def loaded_k(model: PipelineModel) -> int:
    """k of a saved pipeline (the slicer's width)."""
    return len(model.stages[-1].getIndices())
