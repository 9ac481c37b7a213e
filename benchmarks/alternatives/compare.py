"""Are two results.csv files the same result? Rows, labels, k, and every PC up to sign, within a stated tolerance.

Tolerance, per component i, relative to the column's largest magnitude:

- printing: the job writes 9 significant digits (``fruits.outputs.CSV_DIGITS``), so each of its values is off
  by up to half a unit in the 9th digit, 5e-9 of the value; we allow ``10 ** (1 - digits)`` = 1e-8.
- conditioning: both sides compute a float64 covariance from the same float32 features (the same model file and
  engine, one thread, one image per invoke) but sum in different orders and decompose it with different LAPACK
  routines (Spark: SVD of the covariance; numpy: eigh). A perturbation E of the covariance turns eigenvector i
  by about ||E|| / gap_i (Davis-Kahan), which moves its projections, relative to the column's scale, by about
  ||E|| / (gap_i * sqrt(lambda_i)) * sqrt(total variance). With ||E|| <= d * sqrt(n) * eps * total variance
  (d columns, n rows, float64 eps) and lambda, gap as fractions of the total (the explained-variance curve):
  ``d * sqrt(n) * eps / (gap_i * sqrt(f_i))``. It matters only for components whose eigenvalue nearly ties a
  neighbour's; there the component itself is not determined to 9 digits by either program.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EPSILON = float(np.finfo(np.float64).eps)


def read_results(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(paths without a ``file:`` scheme, labels, n x k matrix) of a ``path,label,pc_1..pc_k`` CSV."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    if header[:2] != ["path", "label"]:
        raise ValueError(f"{path}: header {header[:2]} is not path,label")
    paths = [row[0].removeprefix("file://").removeprefix("file:") for row in body]
    labels = [row[1] for row in body]
    values = np.array([[float(v) for v in row[2:]] for row in body], dtype=np.float64).reshape(len(body), -1)
    return paths, labels, values


def tolerances(explained: Sequence[float] | None, k: int, n: int, width: int, digits: int = 9) -> np.ndarray:
    """Allowed relative deviation of each of the first ``k`` components (see the module's docstring)."""
    printing = 10.0 ** (1 - digits)
    if not explained:
        return np.full(k, printing)
    curve = np.asarray(explained, dtype=np.float64)
    allowed = np.empty(k)
    for i in range(k):
        gaps = [abs(curve[i] - curve[j]) for j in (i - 1, i + 1) if 0 <= j < len(curve)]
        gap = max(min(gaps) if gaps else 1.0, 1e-300)
        conditioning = width * math.sqrt(n) * EPSILON / (gap * math.sqrt(max(curve[i], 1e-300)))
        allowed[i] = printing + conditioning
    return allowed


def compare(
    reference: tuple[list[str], list[str], np.ndarray],
    other: tuple[list[str], list[str], np.ndarray],
    *,
    explained: Sequence[float] | None = None,
    width: int | None = None,
    digits: int = 9,
) -> dict[str, object]:
    """Compare ``other`` with ``reference`` (both from :func:`read_results`); ``equal`` says whether all holds."""
    ref_paths, ref_labels, ref = reference
    paths, labels, values = other
    order = {p: i for i, p in enumerate(paths)}
    result: dict[str, object] = {
        "rows": len(ref_paths),
        "rows_other": len(paths),
        "k": ref.shape[1],
        "k_other": values.shape[1],
        "same_rows": sorted(ref_paths) == sorted(paths),
    }
    if not result["same_rows"] or ref.shape[1] != values.shape[1]:
        return {**result, "equal": False, "why": "different rows or k"}
    aligned = values[[order[p] for p in ref_paths]]
    result["same_labels"] = [labels[order[p]] for p in ref_paths] == ref_labels
    k = ref.shape[1]
    allowed = tolerances(explained, k, len(ref_paths), width or ref.shape[1], digits)
    deviations = np.zeros(k)
    for i in range(k):
        sign = 1.0 if float(ref[:, i] @ aligned[:, i]) >= 0 else -1.0
        scale = float(np.max(np.abs(ref[:, i])))
        error = float(np.max(np.abs(ref[:, i] - sign * aligned[:, i])))
        deviations[i] = error / scale if scale > 0 else error
    failing = [i + 1 for i in range(k) if deviations[i] > allowed[i]]
    return {
        **result,
        "max_relative_deviation": float(deviations.max()),
        "worst_component": int(deviations.argmax()) + 1,
        "max_deviation_over_tolerance": float((deviations / allowed).max()),
        "printing_tolerance": 10.0 ** (1 - digits),
        "conditioning_limited_components": int(np.sum(allowed > 2 * 10.0 ** (1 - digits))),
        "failing_components": failing[:20],
        "equal": bool(result["same_labels"]) and not failing,
    }


def compare_files(
    reference: Path, other: Path, *, explained: Sequence[float] | None = None, width: int | None = None
) -> dict[str, object]:
    """:func:`compare` of two CSV files."""
    return compare(read_results(reference), read_results(other), explained=explained, width=width)
