"""manifest.json: what a run read, how, what it produced, and how long each stage took."""

from __future__ import annotations

import platform
import socket
from typing import Any

from fruits.models import Weights
from fruits.options import JobOptions

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS (--weights none): features are NOT pretrained; for testing only"
FORMULA_EXAMPLES = 20


def versions(spark_version: str) -> dict[str, str]:
    """Versions of Python, Spark and the libraries that decide the numbers.

    Read from the installed distributions' metadata, never by importing them: importing TensorFlow costs seconds,
    and a run that found its exported model in the cache never needs it.
    """
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "spark": spark_version}
    distributions = {
        "numpy": ("numpy",),
        "pillow": ("pillow",),
        "tensorflow": ("tensorflow-cpu", "tensorflow"),
        "keras": ("keras",),
        "ai_edge_litert": ("ai-edge-litert",),
    }
    for name, candidates in distributions.items():
        found[name] = "not installed"
        for distribution in candidates:
            try:
                found[name] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    found["blas"] = numpy_blas()
    return found


def numpy_blas() -> str:
    """The BLAS/LAPACK that NumPy was built with (the PCA's products and ``eigh`` run there, not in MLlib's JNI
    BLAS): e.g. ``scipy-openblas 0.3.31.188.0``, bundled in the pinned numpy wheel on every node alike."""
    import numpy as np

    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def cumulative(explained: list[float]) -> list[float]:
    """Running sum of the explained-variance curve."""
    total, out = 0.0, []
    for value in explained:
        total += value
        out.append(total)
    return out


def build(
    *,
    run_id: str,
    options: JobOptions,
    counts: dict[str, int],
    skipped: dict[str, Any],
    formula_labels: list[str],
    feature_dim: int,
    model_source: str | None,
    calibration: dict[str, Any] | None,
    threads: int,
    weights: Weights,
    weights_sha: str | None,
    k: int,
    explained: list[float],
    fitted_here: bool,
    pca_notes: dict[str, Any] | None = None,
    quality: dict[str, Any] | None,
    identify: dict[str, Any] | None,
    feature_store: dict[str, Any],
    outputs: dict[str, str],
    timings: dict[str, float],
    background_timings: dict[str, float],
    versions: dict[str, str],
    spark_master: str,
    started_at: str,
    finished_at: str,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict."""
    curve = cumulative(explained)
    return {
        "run_id": run_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "input": options.input,
        "output": options.output,
        "limit": options.limit,
        "counts": counts,
        "skipped": skipped,
        # Labels results.csv keeps exactly but a spreadsheet may run as formulas (fruits.writing.formula_like).
        "labels_like_formulas": {"count": len(formula_labels), "examples": formula_labels[:FORMULA_EXAMPLES]},
        "model": {
            "name": options.model,
            "alpha": options.alpha,
            "image_size": options.image_size,
            "decode_size": options.decode_size,
            "feature_dim": feature_dim,
            "engine": options.engine,
            "batch_size": options.batch_size,
            "threads_per_task": threads,
            "prepared_from": model_source,  # local cache | feature store | built | None (nothing new to featurize)
            # litert-int8: the images its int8 ranges were set on (source, split, count, id); None for float
            "calibration": calibration,
        },
        "weights": {
            "source": weights.source,
            "kind": weights.kind,
            "pretrained": weights.pretrained,
            "sha256": weights_sha,
            **({"warning": RANDOM_WEIGHTS_WARNING} if not weights.pretrained else {}),
        },
        "pca": {
            "k": k,
            "requested_k": options.k,
            "requested_variance": options.variance,
            "fitted_in_this_run": fitted_here,
            "centered": True,
            "explained_by_k": curve[k - 1],
            "explained_variance": explained,
            "cumulative_explained_variance": curve,
            # rank (k never exceeds it), k_limited_by_rank, reused_from, not_reused (why --reuse-pca refitted)
            **(pca_notes or {}),
        },
        "quality": quality,
        "identify": identify,  # what `fruits identify` answers new photos with (fruits.identify.describe)
        "feature_store": feature_store,
        "outputs": outputs,
        "timings_seconds": timings,  # one after another: they add up to the run
        "background_seconds": background_timings,  # beside the stages above, not in their sum
        "versions": versions,
        "host": socket.gethostname(),
        "spark_master": spark_master,
    }
