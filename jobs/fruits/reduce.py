"""Reduce: center and project the features on their first k principal components, as a Spark ML pipeline.

The fit computes the covariance matrix as one matrix product per partition (``X_p^T X_p``, level-3 BLAS in
NumPy on the executors), sums the partitions' products on the driver (one ``d x d`` matrix each, never the
rows), and takes its exact eigen-decomposition (LAPACK ``syevd``). That is the same principal components and
explained-variance curve as MLlib's ``PCA`` (which builds the covariance row by row with level-2 BLAS and then
runs a full SVD), in a fraction of the time: a width-1,280 covariance of 20,000 rows is ~33 billion
multiply-adds, about a second as one matrix product on two cores.

The result is still a plain Spark ML :class:`~pyspark.ml.PipelineModel` — ``StandardScalerModel`` (centering)
then ``PCAModel`` with the first k components — which ``PipelineModel.load`` reloads and which projects new
rows without refitting (``features_vec`` = ``array_to_vector(features)``). The full curve over all components
is kept for choosing k and for the plot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import cloudpickle
from pyspark.ml import PipelineModel
from pyspark.ml.common import _py2java
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

from fruits.linalg import (  # the reduction's pure parts, used here and re-exported
    Beside,
    Moments,
    choose_k,
    moments,
    pc_columns,
    principal_components,
    projecting,
    rank,
    unpack,
)
from fruits.summaries import PARTIALS_SCHEMA, add_up, one_partition_per_slot, pickled

VECTOR_COL = "features_vec"
CENTERED_COL = "centered"
PCA_COL = "pca"


def distributed_moments(features: DataFrame, dim: int) -> Moments:
    """:class:`Moments` of the packed ``features`` column: one partial per task slot, added up by
    :func:`fruits.summaries.add_up`, so the driver receives a few d x d matrices, never the rows."""
    features = one_partition_per_slot(features)

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield pickled(moments((unpack(frame["features"]) for frame in frames if len(frame)), dim))

    total = add_up(features.select("features").mapInPandas(run, PARTIALS_SCHEMA))
    return total or Moments(0, np.zeros(dim), np.zeros((dim, dim)))


@dataclass(frozen=True)
class Projection:
    """What projecting needs: the mean to subtract and the first k components (as columns)."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (d, k)

    @property
    def k(self) -> int:
        return int(self.components.shape[1])


@dataclass(frozen=True)
class Reduction:
    """The fitted pipeline, the same projection as arrays, and what it explains."""

    model: PipelineModel
    projection: Projection
    k: int
    explained: list[float]  # per component, over all components
    rank: int  # of the centered rows: k never exceeds it


class NoVariance(ValueError):
    """Every row has the same features: there is no direction to project on."""


def pipeline_model(spark: SparkSession, mean: np.ndarray, components: np.ndarray) -> PipelineModel:
    """centering (``StandardScalerModel``) + projection (``PCAModel``) as a Spark ML pipeline.

    Spark has no public constructor for fitted models, so they are made in the JVM (their constructors are
    ``private[ml]`` in Scala, public in bytecode) and wrapped; the pipeline saves and loads as any other.
    """
    sc = spark.sparkContext
    jvm = sc._jvm
    dim, k = components.shape

    def dense_vector(values: np.ndarray):  # type: ignore[no-untyped-def]
        return _py2java(sc, DenseVector(values.astype(np.float64)))

    scaler_java = jvm.org.apache.spark.ml.feature.StandardScalerModel(
        "centering", dense_vector(np.ones(dim)), dense_vector(mean)
    )
    scaler = StandardScalerModel(scaler_java)
    scaler._transfer_params_from_java()
    scaler = scaler.setInputCol(VECTOR_COL).setOutputCol(CENTERED_COL)
    scaler._set(withMean=True, withStd=False)
    scaler._transfer_params_to_java()

    # Column-major values, as Spark's DenseMatrix stores them.
    matrix = _py2java(sc, DenseMatrix(dim, k, components.T.ravel().astype(np.float64)))
    pca_java = jvm.org.apache.spark.ml.feature.PCAModel("pca", matrix, dense_vector(np.zeros(k)))
    pca = PCAModel(pca_java)
    pca._transfer_params_from_java()
    pca = pca.setInputCol(CENTERED_COL).setOutputCol(PCA_COL)
    pca._set(k=k)
    pca._transfer_params_to_java()
    return PipelineModel(stages=[scaler, pca])


def with_vectors(frame: DataFrame) -> DataFrame:
    """Add the MLlib vector column the pipeline reads (``array_to_vector`` of ``features``)."""
    return frame.withColumn(VECTOR_COL, array_to_vector("features"))


def fit(features: DataFrame, *, feature_dim: int, k: int | None, variance: float | None) -> Reduction:
    """Fit center + PCA on ``features`` (a packed ``features`` column); k given or chosen by ``variance``."""
    return fit_moments(
        features.sparkSession, distributed_moments(features, feature_dim), k=k, variance=variance
    )


def fit_moments(spark: SparkSession, sums: Moments, *, k: int | None, variance: float | None) -> Reduction:
    """Center + PCA from the rows' :class:`Moments` (gathered by the caller, e.g. with other sums in one pass).

    k is at most the rows' rank (:func:`fruits.linalg.rank`): the components past it are directions of no
    variance, arbitrary and different on every machine, not data. :class:`NoVariance` when the rank is 0.
    """
    mean, components, explained = principal_components(sums)
    curve = [float(v) for v in explained]
    top = rank(sums, explained)
    if top == 0:
        raise NoVariance(f"all {sums.n} rows have the same features")
    chosen = min(k if k is not None else choose_k(curve, variance or 0.95), top)
    projection = Projection(mean, components[:, :chosen])
    model = pipeline_model(spark, projection.mean, projection.components)
    return Reduction(model=model, projection=projection, k=chosen, explained=curve, rank=top)


def projection_of(model: PipelineModel) -> Projection:
    """The mean and components of a saved pipeline (centering + PCA, and the k-slicer of earlier versions)."""
    scaler, pca = model.stages[0], model.stages[1]
    components = pca.pc.toArray()
    if len(model.stages) > 2:  # earlier versions: PCA over every component, then a VectorSlicer
        components = components[:, list(model.stages[2].getIndices())]
    return Projection(np.asarray(scaler.mean.toArray()), components)


def project_with_pipeline(model: PipelineModel, features: DataFrame, k: int) -> DataFrame:
    """Rows of ``features`` with ``pc_1..pc_k`` added by the Spark ML pipeline itself (what a reader of the saved
    model does; :func:`project` gives the same numbers faster)."""
    projected = model.transform(with_vectors(features))
    array = vector_to_array(F.col(PCA_COL))
    columns = [array[i].alias(name) for i, name in enumerate(pc_columns(k))]
    return projected.select(*features.columns, *columns)


def project(
    projection: Projection,
    features: DataFrame,
    keep_features: bool = True,
    beside: tuple[Beside, list[StructField]] | None = None,
) -> DataFrame:
    """Rows of ``features`` with ``pc_1..pc_k`` double columns added: ``(x - mean) @ components`` per batch.

    A batch at a time with NumPy (one matrix product) rather than row by row in the JVM: the same numbers as the
    saved pipeline's ``transform`` (tests check it), without Spark's per-row vector conversions. ``beside``: more
    columns from the same vectors and their fields (:data:`fruits.linalg.Beside`).
    """
    names = pc_columns(projection.k)
    mean, components = projection.mean, projection.components
    # A new schema: DataFrame.schema is cached, and StructType.add would change it in place.
    fields = [f for f in features.schema.fields if keep_features or f.name != "features"]
    more, more_fields = beside or (None, [])
    schema = StructType([*fields, *(StructField(name, DoubleType()) for name in names), *more_fields])
    run = shipped_once(features.sparkSession, projecting(names, mean, components, keep_features, more))
    return features.mapInPandas(run, schema)


def shipped_once(
    spark: SparkSession, function: Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]
) -> Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``function`` for ``mapInPandas``, sent to each executor once as a broadcast instead of inside every task.

    What the projection closes over is large: k x d components (7.6 MB at k = 745, d = 1,280) and the quality
    report's classifiers (d x 5 x classes per fit, about 10 MB at 100 classes). Inside the closure it went with
    every task, and Spark warned of each stage's "task of very large size".
    """
    payload = spark.sparkContext.broadcast(cloudpickle.dumps(function))

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return cloudpickle.loads(payload.value)(frames)

    return run


def loaded_k(model: PipelineModel) -> int:
    """k of a saved pipeline: its slicer's width (pipelines of earlier versions) or its PCA stage's k."""
    last = model.stages[-1]
    if hasattr(last, "getIndices"):
        return len(last.getIndices())
    return int(last.getK())
