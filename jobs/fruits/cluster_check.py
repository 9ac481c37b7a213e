"""``--check``: can this cluster run the job? Every part a run relies on, exercised once; nothing committed.

The stack's own step runs this instead of a production run, so a deploy (or a cluster replacement) proves the
cluster works in a couple of minutes without featurizing anyone's images or taking the output's lease:

==============  ===========================================================================================
options         the cluster's job defaults parse (the job's own parser: they were checked at synth, too)
weights         the weights file the bootstrap placed is there and loads as the configured model's
input           the input can be listed (its files are counted, none is read)
output          the output can be written: this run's outcome record is written there, with conditional
                writes' support checked on a scratch object
model           the feature model is prepared as a first run prepares it (built and converted on the driver,
                kept in the feature store under the run's own model key), so the first real run finds it ready;
                for ``litert-int8`` that means calibrated as that run would be (reading only its calibration
                images, when the store has no model for the key yet), or, when the calibration source is the
                input and it holds no image yet, not prepared: the report says so, and the executors are checked
                with the float model of the same runtime (the first run calibrates)
executors       a few synthetic images are featurized on the executors with that model: their Python, its
                packages and the shipped model work where the work runs
==============  ===========================================================================================

Each step logs one line; the first failure ends the check with one line naming the step and its reason.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.sql import SparkSession

from fruits import calibration, engines, feature_store, layout, model_export, models
from fruits.featurize import featurize
from fruits.linalg import unpack
from fruits.listing import Listing, list_input
from fruits.model_export import prepare_model
from fruits.options import JobOptions
from fruits.storage import open_store

log = logging.getLogger(__name__)

#: Synthetic images per executor task slot: enough that every executor of a small cluster featurizes some.
IMAGES_PER_SLOT = 2


class CheckFailed(RuntimeError):
    """One step of the check failed; the message names the step and why."""


def synthetic_jpeg(index: int, size: int = 100) -> bytes:
    """A small JPEG whose colour depends on ``index``: real bytes for the real decoder."""
    colour = ((37 * index) % 256, (91 * index + 60) % 256, (53 * index + 120) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _step(
    name: str, report: dict[str, Any], work: Any, shown: Callable[[Any], Any] = lambda value: value
) -> Any:
    """``work()``'s value; ``shown(value)`` goes into the report and the log. CheckFailed naming the step."""
    try:
        value = work()
    except CheckFailed:
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise CheckFailed(f"check failed at {name}: {first}") from error
    report[name] = shown(value)
    log.info("check: %s ok: %s", name, report[name])
    return value


def run_check(spark: SparkSession, options: JobOptions, run_id: str) -> dict[str, Any]:
    """Run every step of the check (module docstring); the report, one entry per step. Raises CheckFailed."""
    report: dict[str, Any] = {"options": "parsed"}
    weights = _step(
        "weights",
        report,
        lambda: models.resolve_weights(
            options.weights, model=options.model, alpha=options.alpha, image_size=options.image_size
        ),
    )
    report["weights"] = {"kind": weights.kind, "path": weights.path, "sha256": weights.sha256}
    found = _step(
        "input",
        report,
        lambda: list_input(options.input, max_file_mb=options.max_file_mb),
        lambda listing: f"{len(listing.entries)} files",
    )
    _step("output", report, lambda: _check_output(options, run_id))
    folder = tempfile.mkdtemp(prefix="fruits-check-")
    artifact, _ = _step(
        "model",
        report,
        lambda: _prepare(spark, options, weights, found, folder),
        lambda prepared: prepared[1],
    )
    _step("executors", report, lambda: _check_executors(spark, options, artifact))
    return report


def _prepare(
    spark: SparkSession,
    options: JobOptions,
    weights: models.Weights,
    found: Listing,
    folder: str,
) -> tuple[engines.ModelArtifact, dict[str, Any]]:
    """The model a real run with ``options`` would use, under its key (feature_store.model_key_for), and the
    report's ``model`` entry, which says which model the executors are checked with."""
    store = open_store(options.store_uri)
    key = feature_store.model_key_for(options, weights)
    calibrate = partial(calibration.choose, options, found) if options.engine in engines.CALIBRATED else None
    try:
        artifact, source = prepare_model(spark, options, weights, store, key, folder, calibrate)
    except calibration.NoCalibrationImages as error:
        if options.calibration:
            raise
        # A deploy before the first images: nothing to calibrate on yet, and that is no fault of the cluster.
        float_engine = engines.uncalibrated(options.engine)
        fallback = replace(options, engine=float_engine)
        artifact, source = prepare_model(
            spark, fallback, weights, store, feature_store.model_key_for(fallback, weights), folder
        )
        log.warning(
            "check: %s not prepared (%s): executors checked with %s", options.engine, error, float_engine
        )
        return artifact, {
            "engine": options.engine,
            "from": f"not prepared: {error}; the first run with images calibrates it",
            "model_key": key,
            "checked_with": {"engine": float_engine, "from": source, "features": artifact.feature_dim},
        }
    return artifact, {
        "engine": options.engine,
        "from": source,
        "features": artifact.feature_dim,
        "model_key": key,
        "calibration": (
            model_export.calibration_of(model_export.kept_pointer(store, key, options.engine))
            if calibrate
            else None
        ),
    }


def _check_output(options: JobOptions, run_id: str) -> str:
    """A create-only write and a conditional delete of a scratch object: what commits and the lease need."""
    out = open_store(options.output)
    key = f"{layout.CHECKS_PREFIX}{run_id}.json"
    etag = out.put_if_absent(key, b'{"check": true}\n')
    if etag is None:
        raise CheckFailed(f"check failed at output: {out.uri_for(key)} already exists")
    if out.put_if_absent(key, b"{}") is not None:
        raise CheckFailed(
            f"check failed at output: {out.uri_for(key)} was written twice by a create-only write"
        )
    if not out.delete_if_match(key, etag):
        raise CheckFailed(f"check failed at output: the conditional delete of {out.uri_for(key)} was refused")
    return f"{out.uri_for()} writable (create-only and conditional writes)"


def _check_executors(spark: SparkSession, options: JobOptions, artifact: Any) -> str:
    slots = max(spark.sparkContext.defaultParallelism, 1)
    images = slots * IMAGES_PER_SLOT
    frame = pd.DataFrame(
        {"id": [f"check-{i}" for i in range(images)], "content": [synthetic_jpeg(i) for i in range(images)]}
    )
    rows = featurize(
        spark.createDataFrame(frame, "id string, content binary").repartition(slots),
        artifact,
        batch_size=options.batch_size,
        threads=options.threads or 1,
        max_pixels=options.max_pixels,
    ).toPandas()  # a handful of rows: the check's own synthetic images
    failed = rows[rows["features"].isna()]
    if len(failed):
        raise CheckFailed(f"check failed at executors: {failed.iloc[0]['reason']}")
    vectors = unpack(rows["features"])
    if vectors.shape != (images, artifact.feature_dim) or not np.isfinite(vectors).all():
        raise CheckFailed(f"check failed at executors: features of shape {vectors.shape} or not finite")
    return f"{images} synthetic images featurized on {slots} task slots, {artifact.feature_dim} features each"
