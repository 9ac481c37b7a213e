"""Quality report: how well a linear classifier separates the classes, on the k components and on all features.

Runs only when the input has Fruits-360's ``Training/`` and ``Test/`` splits. The classifier is regularized
linear discriminant analysis (LDA): each class a Gaussian with its own mean and one shared covariance, shrunk
towards a multiple of the identity. It is fitted from sums alone — per class the count and the sum of the
vectors, and one Gram matrix ``X^T X`` — gathered in ONE pass over every Training row (no sample, no iterations),
and scored in one pass over every Test row, so the report costs about as much as the PCA whatever the number of
rows or classes. (Multinomial logistic regression in MLlib needed dozens of passes and grew with the number of
classes: 66 s at 20,000 images and 103 classes.)

The shrinkage is chosen on the Training rows themselves: one in five (by a hash of the path) is held out, each
candidate is scored on it (ties go to the larger shrinkage), the best is refitted on all Training rows. Test rows whose class never appears in
Training count as errors. The manifest gets the overall and per-class test accuracy with the k components and
with all features, the classifier's name and the shrinkage chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.linalg import pc_columns, unpack

CLASSIFIER = "shrinkage LDA: one shared covariance, fitted on every Training row, scored on every Test row"
SHRINKAGES = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)
HOLDOUT_BUCKETS = 5  # one Training row in five helps choose the shrinkage


@dataclass
class ClassSums:
    """Per-class counts and vector sums, and the Gram matrix of every vector: all LDA needs. Additive."""

    dim: int
    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    gram: np.ndarray | None = None

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Add a batch of (label, vector) rows."""
        x = np.asarray(vectors, dtype=np.float64)
        self.gram = (self.gram if self.gram is not None else np.zeros((self.dim, self.dim))) + x.T @ x
        for label in np.unique(labels):
            rows = x[labels == label]
            self.counts[label] = self.counts.get(label, 0) + len(rows)
            self.sums[label] = self.sums.get(label, np.zeros(self.dim)) + rows.sum(axis=0)

    def __add__(self, other: ClassSums) -> ClassSums:
        merged = ClassSums(self.dim, dict(self.counts), dict(self.sums), self.gram)
        for label, count in other.counts.items():
            merged.counts[label] = merged.counts.get(label, 0) + count
            merged.sums[label] = merged.sums.get(label, np.zeros(self.dim)) + other.sums[label]
        if other.gram is not None:
            merged.gram = other.gram if merged.gram is None else merged.gram + other.gram
        return merged


@dataclass(frozen=True)
class LinearClassifier:
    """``argmax(x @ weights + bias)`` over ``classes``."""

    classes: list[str]
    weights: np.ndarray  # (dim, classes)
    bias: np.ndarray  # (classes,)

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """The predicted class of each row."""
        scores = np.asarray(vectors, dtype=np.float64) @ self.weights + self.bias
        return np.asarray(self.classes, dtype=object)[np.argmax(scores, axis=1)]


@dataclass(frozen=True)
class PooledGaussian:
    """Class means and priors, and the eigendecomposition of the pooled within-class covariance: every
    shrinkage's LDA follows from it with matrix products only (one ``eigh`` for all candidates)."""

    classes: list[str]
    means: np.ndarray  # (classes, dim)
    log_priors: np.ndarray  # (classes,)
    eigenvalues: np.ndarray  # (dim,)
    eigenvectors: np.ndarray  # (dim, dim)
    level: float  # mean variance: the shrinkage target is level * I


def pooled(sums: ClassSums) -> PooledGaussian:
    """The pooled Gaussian of the class sums."""
    classes = sorted(sums.counts)
    if len(classes) < 2:
        raise ValueError("LDA needs at least two classes")
    n = sum(sums.counts.values())
    counts = np.array([sums.counts[c] for c in classes], dtype=np.float64)
    means = np.stack([sums.sums[c] / sums.counts[c] for c in classes])
    assert sums.gram is not None
    scatter = sums.gram - (means * counts[:, None]).T @ means  # within-class scatter
    covariance = scatter / max(n - len(classes), 1)
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    values = np.clip(values, 0.0, None)
    return PooledGaussian(classes, means, np.log(counts / n), values, vectors, float(values.mean()) or 1.0)


def lda(gaussian: PooledGaussian, shrinkage: float) -> LinearClassifier:
    """LDA with the pooled covariance shrunk by ``shrinkage`` towards its mean variance:
    ``(1 - s) * Sigma + s * level * I``, inverted through the eigendecomposition."""
    q = gaussian.eigenvectors
    scale = (1 - shrinkage) * gaussian.eigenvalues + shrinkage * gaussian.level
    solved = q @ ((q.T @ gaussian.means.T) / scale[:, None])  # (dim, classes): Sigma_s^-1 mu_c
    bias = -0.5 * np.einsum("cd,dc->c", gaussian.means, solved) + gaussian.log_priors
    return LinearClassifier(gaussian.classes, solved, bias)


def fit_lda(sums: ClassSums, shrinkage: float) -> LinearClassifier:
    """LDA from class sums: pooled within-class covariance shrunk by ``shrinkage`` towards its mean variance."""
    return lda(pooled(sums), shrinkage)


def _stack(column: pd.Series) -> np.ndarray:
    return unpack(column)


def _moments(full_dim: int, k: int, role_of: Any) -> Any:
    """mapInPandas function: per partition, the class sums of the fit and holdout parts (full and k dims)."""

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        parts = {role: (ClassSums(full_dim), ClassSums(k)) for role in ("fit", "holdout")}
        for frame in frames:
            if not len(frame):
                continue
            roles = role_of(frame["path"])
            for role, (full, reduced) in parts.items():
                chosen = frame[roles == role]
                if len(chosen):
                    labels = chosen["label"].to_numpy(dtype=object)
                    full.add(labels, _stack(chosen["features"]))
                    reduced.add(labels, chosen[pc_columns(k)].to_numpy(dtype=np.float64))
        yield pd.DataFrame({"sums": [_pickle(parts)]})

    return run


def _pickle(value: object) -> bytes:
    import pickle

    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)  # written by this module's own executors


def _holdout(paths: pd.Series) -> np.ndarray:
    """'holdout' for one path in five (a stable hash, the same on every run), else 'fit'."""
    import zlib

    buckets = np.array([zlib.crc32(path.encode("utf-8")) % HOLDOUT_BUCKETS for path in paths])
    return np.where(buckets == 0, "holdout", "fit")


def _merge(a: dict[str, tuple[ClassSums, ClassSums]], b: dict[str, tuple[ClassSums, ClassSums]]) -> Any:
    return {role: (a[role][0] + b[role][0], a[role][1] + b[role][1]) for role in a}


def _correct_counts(
    rows: DataFrame, models: dict[str, tuple[LinearClassifier, str]], k: int, holdout_only: bool = False
) -> pd.DataFrame:
    """label, rows, and per model (``name -> (classifier, "full" | "pca")``) how many rows it got right.

    One distributed pass; only the small per-class table comes back. ``holdout_only``: score only the Training
    rows held out to choose the shrinkage.
    """

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if holdout_only and len(frame):
                frame = frame[_holdout(frame["path"]) == "holdout"]
            if not len(frame):
                continue
            labels = frame["label"].to_numpy(dtype=object)
            out: dict[str, Any] = {"label": labels}
            for name, (model, space) in models.items():
                vectors = _stack(frame["features"]) if space == "full" else frame[pc_columns(k)].to_numpy()
                out[name] = (model.predict(vectors) == labels).astype(np.int64)
            yield pd.DataFrame(out)

    schema = "label string, " + ", ".join(f"{name} long" for name in models)
    scored = rows.select("path", "label", "features", *pc_columns(k)).mapInPandas(run, schema)
    sums = [F.sum(name).alias(name) for name in models]
    return scored.groupBy("label").agg(F.count("*").alias("rows"), *sums).toPandas()  # one row per class


def _choose_shrinkage(train: DataFrame, fit: dict[str, ClassSums], k: int) -> dict[str, float]:
    """The shrinkage that classifies the held-out Training rows best, for each space; on a tie the largest,
    as the more regularized choice (a small holdout often scores several candidates alike)."""
    gaussians = {space: pooled(fit[space]) for space in ("full", "pca")}
    candidates = {
        f"{space}_{i}": (lda(gaussians[space], alpha), space)
        for space in ("full", "pca")
        for i, alpha in enumerate(SHRINKAGES)
    }
    scores = _correct_counts(train, candidates, k, holdout_only=True)
    return {
        space: SHRINKAGES[
            max(range(len(SHRINKAGES)), key=lambda i, s=space: (int(scores[f"{s}_{i}"].sum()), i))
        ]
        for space in ("full", "pca")
    }


def report(rows: DataFrame, k: int, full_dim: int) -> dict[str, Any] | None:
    """Test accuracy with the k components and with all ``full_dim`` features, or None without two classes in
    Training and rows in Test.

    ``rows`` has ``path``, ``label``, ``split``, ``features`` (array) and ``pc_1..pc_k``.
    """
    train = rows.where(F.col("split") == "Training")
    test = rows.where(F.col("split") == "Test")
    slots = rows.sparkSession.sparkContext.defaultParallelism
    if train.rdd.getNumPartitions() > slots:
        train = train.coalesce(slots)  # one set of class sums (a d x d Gram matrix among them) per task slot
    parts = (
        train.select("path", "label", "features", *pc_columns(k))
        .mapInPandas(_moments(full_dim, k, _holdout), "sums binary")
        .rdd.map(lambda row: _unpickle(row["sums"]))
        .treeReduce(_merge, depth=2)
    )
    fit = {"full": parts["fit"][0], "pca": parts["fit"][1]}
    everything = {"full": fit["full"] + parts["holdout"][0], "pca": fit["pca"] + parts["holdout"][1]}
    if len(everything["full"].counts) < 2:
        return None
    if len(fit["full"].counts) >= 2 and parts["holdout"][0].counts:
        chosen = _choose_shrinkage(train, fit, k)
    else:  # too few Training rows to hold any out
        chosen = {"full": SHRINKAGES[2], "pca": SHRINKAGES[2]}
    final = {space: (fit_lda(everything[space], chosen[space]), space) for space in ("full", "pca")}
    table = _correct_counts(test, final, k)
    test_rows = int(table["rows"].sum())
    if not test_rows:
        return None
    per_class = {
        str(row.label): {
            "test_images": int(row.rows),
            "accuracy_pca": int(row.pca) / int(row.rows),
            "accuracy_full_features": int(row.full) / int(row.rows),
        }
        for row in table.itertuples()
    }
    return {
        "classifier": CLASSIFIER,
        "shrinkage": chosen,
        "train_images": int(sum(everything["full"].counts.values())),
        "test_images": test_rows,
        "classes": len(everything["full"].counts),
        "test_labels_unseen_in_training": sorted(set(per_class) - set(everything["full"].counts)),
        "test_accuracy_pca": int(table["pca"].sum()) / test_rows,
        "test_accuracy_full_features": int(table["full"].sum()) / test_rows,
        "per_class": per_class,
        "k": k,
    }
