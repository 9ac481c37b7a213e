"""Shrinkage LDA, the NumPy side: fitted from class sums, scored as ``x @ weights + bias``.

Kept apart from :mod:`fruits.quality` (which scores it over a run's rows with Spark) so that what needs only the
arithmetic imports only NumPy: the Python workers that mark rows, and ``fruits identify``, which must answer
without starting Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # summaries imports pyspark; only its class sums' fields are read here
    from fruits.summaries import ClassSums

#: The two spaces a run's classifier is fitted in: all features, and the k principal components.
SPACES = ("full", "pca")


@dataclass(frozen=True)
class LinearClassifier:
    """``argmax(x @ weights + bias)`` over ``classes``."""

    classes: list[str]
    weights: np.ndarray  # (dim, classes)
    bias: np.ndarray  # (classes,)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(rows, classes): each class's discriminant for each row (float64)."""
        return np.asarray(vectors, dtype=np.float64) @ self.weights + self.bias

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """The predicted class of each row."""
        return np.asarray(self.classes, dtype=object)[np.argmax(self.scores(vectors), axis=1)]

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(rows, classes): each class's posterior probability under the LDA's model (classes as Gaussians with
        one shared covariance and the Training priors): the softmax of :meth:`scores`, whose argmax is
        :meth:`predict`'s."""
        scores = self.scores(vectors)
        scores -= scores.max(axis=1, keepdims=True)  # exp of the largest is 1: no overflow
        odds = np.exp(scores)
        return odds / odds.sum(axis=1, keepdims=True)

    def ranked(self, vectors: np.ndarray, count: int) -> list[list[tuple[str, float]]]:
        """Per row, its ``count`` most probable classes, best first, with their :meth:`probabilities` (equal
        ones in the order of :attr:`classes`)."""
        probabilities = self.probabilities(vectors)
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
        return [
            [(self.classes[i], float(row[i])) for i in order]
            for row, order in zip(probabilities, best, strict=True)
        ]


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


@dataclass(frozen=True)
class Candidates:
    """The LDA of every shrinkage for one space and one fit, stacked so that one product scores them all."""

    classes: list[str]
    weights: np.ndarray  # (dim, shrinkages * classes)
    bias: np.ndarray  # (shrinkages * classes,)

    @classmethod
    def of(cls, sums: ClassSums, shrinkages: tuple[float, ...]) -> Candidates:
        gaussian = pooled(sums)
        models = [lda(gaussian, alpha) for alpha in shrinkages]
        return cls(
            gaussian.classes, np.hstack([m.weights for m in models]), np.concatenate([m.bias for m in models])
        )

    @property
    def count(self) -> int:
        """How many candidates (shrinkages) are stacked."""
        return len(self.bias) // len(self.classes)

    def pick(self, index: int) -> LinearClassifier:
        """Candidate ``index`` alone: the very weights :meth:`correct` scored it with."""
        if not 0 <= index < self.count:
            raise IndexError(f"candidate {index} of {self.count}")
        columns = slice(index * len(self.classes), (index + 1) * len(self.classes))
        return LinearClassifier(
            list(self.classes), self.weights[:, columns].copy(), self.bias[columns].copy()
        )

    def correct(self, vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(rows, shrinkages) booleans: whether each candidate classifies each row right."""
        index = {label: i for i, label in enumerate(self.classes)}
        truth = np.array([index.get(label, -1) for label in labels])
        scores = (np.asarray(vectors, dtype=np.float64) @ self.weights + self.bias).reshape(
            len(vectors), -1, len(self.classes)
        )
        return scores.argmax(axis=2) == truth[:, None]
