"""The NumPy side of the reduction: what executors compute, with nothing heavier than NumPy and pandas.

Kept apart from :mod:`fruits.reduce` (which builds Spark ML models) so that the functions Spark ships to the
Python workers import only this module: a worker then never loads ``pyspark.ml``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: How a feature vector travels and is stored inside the job: little-endian float32 bytes in a binary column.
#: (An array<float> column costs Spark a per-element conversion on every pass: 3.5x slower in and out of Python.)
FEATURE_DTYPE = np.dtype("<f4")


class NonFiniteStatistics(ValueError):
    """The PCA's fitted statistics hold NaN or infinity: some feature vector did, and nothing may be committed."""


def require_finite(what: str, *arrays: np.ndarray) -> None:
    """Raise :class:`NonFiniteStatistics` naming ``what`` unless every value of ``arrays`` is finite."""
    if not all(np.isfinite(array).all() for array in arrays):
        raise NonFiniteStatistics(
            f"the PCA's {what} is not finite (NaN or infinity): a feature vector holds a non-finite value; "
            "nothing was committed"
        )


def pack(vector: np.ndarray) -> bytes:
    """One feature vector as the job keeps it: float32 little-endian bytes."""
    return np.asarray(vector, dtype=FEATURE_DTYPE).tobytes()


class WrongWidth(ValueError):
    """A packed vector that is not as wide as the model's: a damaged feature-store file, never a model's output."""


def unpack(column: pd.Series, width: int | None = None) -> np.ndarray:
    """A column of packed feature vectors as one ``(rows, width)`` float32 array.

    With ``width``, every vector must have exactly that many values (:class:`WrongWidth` otherwise): without
    the check, vectors of 1,279 and 1,281 values would pass as two of 1,280.
    """
    if not len(column):
        return np.zeros((0, width or 0), dtype=FEATURE_DTYPE)
    values = column.tolist()
    if width is not None:
        size = width * FEATURE_DTYPE.itemsize
        wrong = next((len(value) for value in values if len(value) != size), None)
        if wrong is not None:
            raise WrongWidth(
                f"a stored feature vector has {wrong // FEATURE_DTYPE.itemsize} values, not {width}"
            )
    return np.frombuffer(b"".join(values), dtype=FEATURE_DTYPE).reshape(len(column), -1)


def width(packed: bytes) -> int:
    """The number of components of one packed feature vector."""
    return len(packed) // FEATURE_DTYPE.itemsize


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


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a symmetric matrix, row by row: all it holds, in about half its bytes."""
    return matrix[np.triu_indices(len(matrix))]


def symmetric(triangle: np.ndarray, dim: int) -> np.ndarray:
    """The ``(dim, dim)`` symmetric matrix whose :func:`upper_triangle` is ``triangle``."""
    rows, cols = np.triu_indices(dim)
    matrix = np.empty((dim, dim), dtype=triangle.dtype)
    matrix[rows, cols] = triangle
    matrix[cols, rows] = triangle
    return matrix


def _moments(n: int, total: np.ndarray, triangle: np.ndarray) -> Moments:
    return Moments(n, total, symmetric(triangle, len(total)))


@dataclass(frozen=True)
class Moments:
    """What the covariance needs from the rows: their count, their sum and their Gram matrix ``X^T X``.

    Pickled with the Gram matrix's upper triangle only: a ``gram`` that is not symmetric comes back symmetrized
    (never the case for sums of ``X^T X``, which NumPy computes as a symmetric update)."""

    n: int
    total: np.ndarray  # (d,)
    gram: np.ndarray  # (d, d), symmetric

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.gram + other.gram)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as partials travel to the driver (fruits.summaries): the Gram matrix's upper triangle only.
        # Every megabyte of a partial costs about 14 ms on its way through the JVM (measured at d = 1,280).
        return (_moments, (self.n, self.total, upper_triangle(self.gram)))


def moments(batches: Iterable[np.ndarray], dim: int) -> Moments:
    """Count, sum and ``X^T X`` of row batches (each ``(rows, dim)``), accumulated in float64."""
    total, gram, n = np.zeros(dim), np.zeros((dim, dim)), 0
    for batch in batches:
        x = np.asarray(batch, dtype=np.float64)
        if x.size == 0:
            continue
        n += x.shape[0]
        total += x.sum(axis=0)
        gram += x.T @ x  # one level-3 product per batch
    return Moments(n, total, gram)


def rank(m: Moments, explained: np.ndarray) -> int:
    """The numerical rank of the centered rows: how many components ``explained`` (their explained-variance
    ratios, :func:`principal_components`) holds that rounding alone cannot make.

    At most ``n - 1`` and the width. Rounding in the covariance is relative to the rows' squared length (the
    mean's share cancels in it), so that is the scale of the tolerance, as NumPy's ``matrix_rank`` takes the
    largest singular value: a component whose variance is below ``width * eps`` of it is noise.
    """
    if m.n < 2:
        return 0
    mean = m.total / m.n
    total = (np.trace(m.gram) - m.n * float(mean @ mean)) / (m.n - 1)
    values = np.asarray(explained, dtype=float) * max(total, 0.0)
    scale = max(np.trace(m.gram) / m.n, float(values.max(initial=0.0)))
    tolerance = len(mean) * np.finfo(float).eps * scale
    return int(min(np.count_nonzero(values > tolerance), m.n - 1))


def principal_components(m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components as columns by decreasing variance, explained variance ratio of every component).

    Each component's sign is chosen so that its largest coefficient is positive: a fixed convention, so the
    same data gives the same signs on every run (an eigenvector's sign is otherwise arbitrary).
    """
    if m.n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {m.n}")
    mean = m.total / m.n
    require_finite("sum of the features (mean and covariance)", m.total, m.gram)  # eigh would fail obscurely
    covariance = (m.gram - m.n * np.outer(mean, mean)) / (m.n - 1)
    covariance = (covariance + covariance.T) / 2  # exact symmetry for the symmetric solver
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    total = values.sum()
    explained = values / total if total > 0 else np.zeros_like(values)
    require_finite("fit (mean, components, explained variance)", mean, vectors, explained)
    return mean, vectors, explained


#: Columns computed per batch beside the PCs, from the same vectors: ``(frame, x, pcs) -> {name: column}``.
Beside = Callable[[pd.DataFrame, np.ndarray, np.ndarray], dict[str, Any]]


def projecting(  # type: ignore[no-untyped-def]
    names: list[str],
    mean: np.ndarray,
    components: np.ndarray,
    keep_features: bool = True,
    beside: Beside | None = None,
):
    """mapInPandas function: each batch's rows with ``(x - mean) @ components`` added as the columns ``names``
    (and without ``features`` unless ``keep_features``: what follows seldom needs 5 KB a row); ``beside``
    adds more columns from the same unpacked vectors (the quality report's marks), saving a pass over them."""

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if not len(frame):
                continue
            x = unpack(frame["features"]).astype(np.float64)
            pcs = (x - mean) @ components
            kept = frame if keep_features else frame.drop(columns=["features"])
            parts = [kept, pd.DataFrame(pcs, columns=names, index=kept.index)]
            if beside:
                parts.append(pd.DataFrame(beside(frame, x, pcs), index=kept.index))
            # one concat, not a column inserted per component: at k in the hundreds that was 4x slower and
            # pandas warned of a fragmented frame once per batch
            yield pd.concat(parts, axis=1)

    return run
