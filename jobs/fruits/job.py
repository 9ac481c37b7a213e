"""The featurize-and-PCA run, stage by stage: extract, transform, load.

==========  ==============================================================  =====================
extract     list the input, each file an image to read or a reason           :mod:`fruits.listing`
            read each listed image once: bytes and content id                :mod:`fruits.reading`
transform   featurize what the feature store lacks (decode + CNN)            :mod:`fruits.featurize`
            reduce: center + PCA, k components                               :mod:`fruits.reduce`
load        write results.parquet, results.csv, rejected.csv                 :mod:`fruits.writing`
            quality report and plots                                         :mod:`fruits.quality`, plots
            commit the run, then publish its files at the output's root      :mod:`fruits.commits`
==========  ==============================================================  =====================

Each stage is a function that takes what it needs and returns what it made; :func:`run` calls them in order
under the output's lease (:mod:`fruits.lease`). Every output of a run goes under ``<output>/runs/<run_id>/``;
the run becomes current only when its commit object is created, so a run that dies at any point leaves the
previous result as it was. ``main(argv, spark)`` is what ``jobs/featurize_pca.py`` calls.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits import (
    calibration,
    commits,
    engines,
    failures,
    feature_store,
    fingerprint,
    identify,
    jvm_archive,
    layout,
    linalg,
    manifest,
    model_export,
    models,
    outcomes,
    plots,
    quality,
    reduce,
    summaries,
    writing,
)
from fruits.calibration import Calibration
from fruits.cluster_check import CheckFailed, run_check
from fruits.faults import checkpoint
from fruits.featurize import featurize, read_and_featurize
from fruits.hadoop_paths import literal
from fruits.lease import Lease, LeaseError, LeaseHeld
from fruits.listing import InputError, Listing, list_input
from fruits.liveness import Probe, local_process_probe, resource_manager_url, yarn_application_probe
from fruits.logs import configure_logging
from fruits.model_export import prepare_model, stored_feature_dim
from fruits.options import (
    JobOptions,
    UsageError,
    build_parser,
    check_command_line,
    check_locations,
    parse_options,
    wants_help,
)
from fruits.progress import StageTimer, report_progress
from fruits.reading import read_images
from fruits.session import INTERRUPTED, get_session, wait_for_cancelled_jobs
from fruits.storage import Store, StoreError, open_store, s3_region
from fruits.summaries import ClassSums

__all__ = [
    "PUBLISHED",
    "NothingFeaturized",
    "OutputDamaged",
    "OutputExists",
    "main",
    "reentrant_key",
    "run",
]

log = logging.getLogger(__name__)
PUBLISHED = list(layout.PUBLISHED_NAMES)
SCATTER_POINTS = 4000
LISTING_SCHEMA = "path string, label string, split string, size long, version string"
LEASE_HINT = (
    "wait for that run to end, or give --wait SECONDS to wait for it (a run that died holds the output until "
    "its lease expires: --lease-ttl)"
)


class OutputExists(UsageError):
    """The output already holds a committed result and --overwrite was not given."""


class OutputDamaged(UsageError):
    """The output's current commit is damaged and --overwrite was not given."""


class NothingFeaturized(UsageError):
    """Files were found but none could be featurized: with --allow-empty a no-op, else exit 2."""


def reentrant_key(sc: Any) -> str | None:
    """The lease's re-entrancy key: the YARN application id, shared by every attempt of one application.

    EMR_STEP_ID does not reach a cluster-mode driver's container; ``applicationId`` does, and in YARN it has no
    attempt number (``application_<cluster-ts>_<n>``). Outside YARN there are no attempts, so no key.
    """
    master = str(sc.master or "")
    return str(sc.applicationId) if master.startswith("yarn") else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- what every stage may read -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """The run's fixed facts: session, options, identity, where it writes, the model it uses."""

    spark: SparkSession
    options: JobOptions
    run_id: str
    started: dt.datetime
    out: Store
    store: Store
    timer: StageTimer
    weights: models.Weights
    model_key: str
    threads: int
    # litert-int8: chooses the images its model is calibrated on, when the feature store has none for its key yet
    calibrate: Callable[[], Calibration] | None = None

    def key_for(self, name: str) -> str:
        """Key of ``name`` inside this run's prefix."""
        return layout.run_prefix(self.run_id) + name

    @classmethod
    def start(cls, spark: SparkSession, options: JobOptions, run_id: str | None = None) -> RunContext:
        """Resolve the weights and the feature store's model key; nothing is read or written yet."""
        started = _now()
        weights = models.resolve_weights(
            options.weights, model=options.model, alpha=options.alpha, image_size=options.image_size
        )
        if not weights.pretrained:
            log.warning(manifest.RANDOM_WEIGHTS_WARNING)
            if options.engine in engines.CALIBRATED:
                log.warning(
                    "%s with random weights: their activations lie far below int8's resolution, so the "
                    "features are (nearly) all zero; good for timing only",
                    options.engine,
                )
        elif weights.kind == "imagenet":
            log.info("ImageNet weights: %s", weights.path or "not cached here, Keras downloads them")
        threads = options.threads or int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
        return cls(
            spark=spark,
            options=options,
            run_id=run_id or commits.new_run_id(started),
            started=started,
            out=open_store(options.output),
            store=open_store(options.store_uri),
            timer=StageTimer(),
            weights=weights,
            model_key=feature_store.model_key_for(options, weights),
            threads=threads,
        )

    def calibrating(self, found: Listing) -> RunContext:
        """For a calibrated engine (``litert-int8``): this context with what chooses its calibration images, from
        ``--calibration`` or else ``found`` (every file under the input, before ``--limit``), called only by a
        store's first run with its key (:mod:`fruits.calibration`); for the others, this context as it is."""
        if self.options.engine not in engines.CALIBRATED:
            return self
        return replace(self, calibrate=partial(calibration.choose, self.options, found))


# --- extract -------------------------------------------------------------------------------------------


def list_stage(ctx: RunContext) -> tuple[Listing, Listing]:
    """Every file under the input, judged from its name and size, and those this run takes (``--limit``: the
    first N, in path order); the first is what a calibrated engine calibrates from."""
    with ctx.timer.stage("list"):
        # An output or feature store inside the input: the job's own files are not listed (fruits.listing).
        found = list_input(
            ctx.options.input,
            max_file_mb=ctx.options.max_file_mb,
            output=ctx.options.output,
            feature_store=ctx.options.store_uri,
        )
        listing = replace(found, entries=found.entries[: ctx.options.limit]) if ctx.options.limit else found
    log.info(
        "input %s: %d files found, %d to read, %d rejected from the listing; %d hidden names skipped%s",
        ctx.options.input,
        len(listing.entries),
        len(listing.to_read),
        len(listing.rejected),
        listing.hidden,
        f", {listing.job_outputs} names of this job's own output skipped" if listing.job_outputs else "",
    )
    return found, listing


def formula_labels(listing: Listing) -> list[str]:
    """The labels to read that a spreadsheet may run as formulas, with a warning in the log when there are any."""
    formulas = writing.formula_like(entry.label for entry in listing.to_read)
    if formulas:
        log.warning(
            "%d labels start with =, +, -, @, a tab or a carriage return (%s): results.csv keeps them exactly, "
            "and a spreadsheet may run them as formulas; open it as the README says (What a run writes)",
            len(formulas),
            ", ".join(repr(label) for label in formulas[: manifest.FORMULA_EXAMPLES]),
        )
    return formulas


@dataclass(frozen=True)
class Catalog:
    """The images read: ``path, label, split, length, id, content, reason``, kept on the executors' disks."""

    images: DataFrame
    count: int


def task_count(images: int, per_task: int, slots: int) -> int:
    """How many tasks to cut ``images`` into: about ``per_task`` each, and a whole number of waves over the
    ``slots`` task slots, so that the last wave does not leave cores idle (5 tasks on 2 slots end on 1 core)."""
    wanted = max(1, math.ceil(images / per_task))
    return max(slots, math.ceil(wanted / slots) * slots)


def listed_frame(ctx: RunContext, listing: Listing) -> DataFrame:
    """The images to read as a DataFrame (``path, label, split, size, version``), one task per
    ``--images-per-task`` images (at least one per task slot)."""
    spark, entries = ctx.spark, listing.to_read
    frame = pd.DataFrame(
        {
            "path": [e.path for e in entries],
            "label": [e.label for e in entries],
            "split": [e.split for e in entries],
            "size": [e.size for e in entries],
            "version": [e.version for e in entries],
        }
    )
    partitions = task_count(len(entries), ctx.options.images_per_task, spark.sparkContext.defaultParallelism)
    listed = sliced_frame(spark, frame, LISTING_SCHEMA, partitions)
    # Rarely (a few images over many slots) equal slices make fewer partitions than slots: spread them then.
    # Known from the arithmetic: asking the DataFrame (listed.rdd) cost 0.17 s of a fresh JVM.
    return (
        listed if arrow_slices(len(entries), partitions)[1] >= partitions else listed.repartition(partitions)
    )


ARROW_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
ARROW_LOCAL_RELATION = "spark.sql.execution.arrow.localRelationThreshold"
ARROW_ENABLED = "spark.sql.execution.arrow.pyspark.enabled"
ARROW_FALLBACK = "spark.sql.execution.arrow.pyspark.fallback.enabled"


def arrow_slices(rows: int, partitions: int) -> tuple[int, int]:
    """(rows per Arrow batch, batches) when ``rows`` are cut into about ``partitions`` equal slices: the
    batches are :func:`sliced_frame`'s partitions (fewer than ``partitions`` when there are few rows)."""
    per_batch = max(1, math.ceil(rows / max(partitions, 1)))
    return per_batch, math.ceil(rows / per_batch)


def sliced_frame(spark: SparkSession, frame: pd.DataFrame, schema: str, partitions: int) -> DataFrame:
    """``frame`` as a DataFrame of about ``partitions`` contiguous partitions, without a shuffle.

    ``createDataFrame`` sends a pandas frame to the JVM in Arrow batches cut every ``maxRecordsPerBatch`` rows;
    above ``localRelationThreshold`` bytes it makes one partition per batch (below, a local relation of as many
    partitions as task slots). Both set for the call give the partitions directly, where ``repartition`` would
    cost a shuffle job before the first task of the run (0.3-0.4 s).
    """
    settings = {
        ARROW_ENABLED: "true",
        # Without Arrow the partitions would not be arrow_slices' (the run needs Arrow for mapInPandas anyway).
        ARROW_FALLBACK: "false",
        ARROW_BATCH_ROWS: str(arrow_slices(len(frame), partitions)[0]),
        ARROW_LOCAL_RELATION: "0",
    }
    # Session-wide settings: this runs before any background work of the run starts.
    previous = {key: spark.conf.get(key) for key in settings}
    try:
        for key, value in settings.items():
            spark.conf.set(key, value)
        return spark.createDataFrame(frame, schema)  # the rows reach the JVM here, under these settings
    finally:
        for key, value in previous.items():
            spark.conf.set(key, value)


def read_stage(ctx: RunContext, listing: Listing) -> Catalog:
    """Read every image to read once: its bytes and content id, or why it could not be read."""
    listed = listed_frame(ctx, listing)
    with ctx.timer.stage("read", f"({len(listing.to_read)} images, bytes and content ids)"):
        images = read_images(listed, ctx.options.max_file_mb * 1024 * 1024).persist(StorageLevel.DISK_ONLY)
        count = images.count()
    return Catalog(images, count)


# --- transform -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Featurized:
    """The feature store's batches this run reads, and how many distinct images it had to featurize itself."""

    batches: list[str]
    newly: int | None  # distinct new images to featurize; None: a one-pass run (every id read was new)
    new_ids: DataFrame  # ``id`` of each image featurized by this run (one pass: only those that got features)
    feature_dim: int | None  # known when this run prepared the model
    model_source: str | None  # where the model came from: "local cache", "feature store", "built", or None
    rows: DataFrame | None = None  # every image with its features or reason, when read and featurized at once


def featurize_stage(ctx: RunContext, catalog: Catalog, lease: Lease) -> Featurized:
    """Featurize the images whose content id the feature store lacks (identical bytes once) into a new batch."""
    spark, options, store, key = ctx.spark, ctx.options, ctx.store, ctx.model_key
    batches = feature_store.committed_batches(store, key)
    readable = catalog.images.where(F.col("id").isNotNull())
    stored = feature_store.read_features(spark, store, key, batches).select("id")
    todo = readable.join(stored, "id", "left_anti").select("id").distinct()
    todo_count = todo.count()
    log.info("%d images read: %d distinct new images to featurize", catalog.count, todo_count)
    lease.check()
    if not todo_count:
        return Featurized(batches, 0, todo, None, None)
    sc = spark.sparkContext
    folder = tempfile.mkdtemp(prefix="fruits-model-")  # lives as long as the session uses the shipped file
    with ctx.timer.stage("prepare model", f"({options.model}, {options.engine})"):
        artifact, source = prepare_model(spark, options, ctx.weights, store, key, folder, ctx.calibrate)
    partitions = task_count(todo_count, options.images_per_task, sc.defaultParallelism)
    with ctx.timer.stage("featurize", f"{todo_count} images"), report_progress(sc, "featurize", todo_count):
        checkpoint("featurize")
        if not batches and todo_count == readable.count():
            contents = readable.select("id", "content")  # a first run without duplicate bytes: no join needed
        else:
            first_path = readable.groupBy("id").agg(F.min("path").alias("path"))  # identical bytes: once
            wanted = first_path.join(todo, "id")
            contents = readable.join(wanted, ["id", "path"]).select("id", "content")
        features = featurize(
            contents.repartition(partitions),
            artifact,
            batch_size=options.batch_size,
            threads=ctx.threads,
            max_pixels=options.max_pixels,
        )
        batches = [*batches, feature_store.write_batch(features, store, key, ctx.run_id)]
    lease.check()
    return Featurized(batches, todo_count, todo, artifact.feature_dim, source)


def read_and_featurize_stage(ctx: RunContext, listing: Listing, lease: Lease) -> Featurized:
    """A first run for this model: read, hash, decode and featurize every image in one pass, into a new batch."""
    spark, options, store, key = ctx.spark, ctx.options, ctx.store, ctx.model_key
    listed = listed_frame(ctx, listing)
    images = len(listing.to_read)
    folder = tempfile.mkdtemp(prefix="fruits-model-")  # lives as long as the session uses the shipped file
    with ctx.timer.stage("prepare model", f"({options.model}, {options.engine})"):
        artifact, source = prepare_model(spark, options, ctx.weights, store, key, folder, ctx.calibrate)
    sc = spark.sparkContext
    with (
        ctx.timer.stage("featurize", f"{images} images: read, decode, infer in one pass"),
        report_progress(sc, "featurize", images),
    ):
        checkpoint("featurize")
        made = read_and_featurize(
            listed,
            artifact,
            batch_size=options.batch_size,
            threads=ctx.threads,
            max_bytes=options.max_file_mb * 1024 * 1024,
            max_pixels=options.max_pixels,
        )
        # Written as they are made, straight into the new batch (no cache, no second pass over the images);
        # the rest of the run reads them back from there.
        batch = feature_store.write_rows(made, store, key, ctx.run_id)
        rows = feature_store.read_rows(spark, store, key, batch, made.schema)
    lease.check()
    # How many distinct images got features is counted by reconcile_stage, from the id and reason columns alone
    # (a row has features exactly when it has no reason): an image rejected at decoding is not featurized.
    distinct = rows.where(F.col("reason").isNull()).select("id").distinct()
    return Featurized([batch], None, distinct, artifact.feature_dim, source, rows)


@dataclass(frozen=True)
class Reconciled:
    """Every image with its features or a reason, what was rejected and why, and the counts."""

    rows: DataFrame  # path, label, split, length, id, features, reason (cached)
    rejected: DataFrame  # path, reason
    counts: dict[str, int]


def joined_rows(ctx: RunContext, catalog: Catalog, featurized: Featurized) -> DataFrame:
    """Each image read with its stored features or the reason it has none (the two-pass path)."""
    stored = feature_store.read_features(ctx.spark, ctx.store, ctx.model_key, featurized.batches)
    return (
        catalog.images.drop("content")
        .withColumnRenamed("reason", "read_reason")
        .join(stored, "id", "left")
        .select(
            "path",
            "label",
            "split",
            "length",
            "id",
            "features",
            # A reason only where there are no features, as in a one-pass batch.
            F.when(
                F.col("features").isNull(), F.coalesce("read_reason", "reason", F.lit("not featurized"))
            ).alias("reason"),
        )
        .cache()
    )


def sums_stage(ctx: RunContext, rows: DataFrame, feature_dim: int) -> summaries.Summaries:
    """The one pass over every row read: the sums of the PCA and the quality report, and the rows counted.

    A vector of another width fails the pass (:class:`fruits.linalg.WrongWidth`); one NaN or infinity anywhere
    makes its column's sum non-finite, which is checked here for free: either is a damaged feature-store file
    (:func:`_healed`), never committed as results.
    """
    with ctx.timer.stage("PCA", "(pass of sums)"):
        checkpoint("pca")
        sums = summaries.summarize(rows, feature_dim)
    # _healed looks for the damaged file behind it; if none explains it, this line is the run's last.
    linalg.require_finite("sum of the features (mean and covariance)", sums.total.total)
    return sums


def stored_width(good: DataFrame) -> int:
    """The width of the stored vectors themselves (a custom .keras model may not be the spec's width); 0 when
    no row has features (the run then stops at reconcile_stage)."""
    first = good.select(F.length("features")).first()
    return int(first[0]) // 4 if first else 0


def reconcile_stage(
    ctx: RunContext, listing: Listing, rows: DataFrame, featurized: Featurized, sums: summaries.Summaries
) -> Reconciled:
    """Count featurized and rejected files and check that they make ``found``; the rejected rows with reasons.

    ``rows`` holds every image read (``path, label, split, length, id, features, reason``); ``sums``, the pass
    over them, counted them.
    """
    with ctx.timer.stage("reconcile"):
        listed_rejects = [(entry.path, entry.reason) for entry in listing.rejected]
        rejected = rows.where(F.col("features").isNull()).select(
            "path", F.coalesce("reason", F.lit("not featurized")).alias("reason")
        )
        if listed_rejects:
            rejected = rejected.unionByName(
                ctx.spark.createDataFrame(listed_rejects, "path string, reason string")
            )
        featurized_rows, read = sums.total.n, sums.total.n + sums.unfeaturized
        if featurized.rows is not None:  # one pass over an empty store: each distinct id featurized was new
            newly, reused = featurized.new_ids.count(), 0
        elif not featurized.newly:  # nothing new: everything was reused
            newly, reused = 0, featurized_rows
        else:
            # One pass over the featurized rows: those whose features the store already held (identical bytes
            # under a new path too), and the distinct new images that got features (not those the decoder or
            # the model rejected).
            new = featurized.new_ids.withColumn("new", F.lit(True))
            marked = rows.where(F.col("features").isNotNull()).join(new, "id", "left")
            reused, newly = marked.agg(
                F.count(F.when(F.col("new").isNull(), 1)), F.countDistinct(F.when(F.col("new"), F.col("id")))
            ).first()
        counts = {
            "found": len(listing.entries),
            "featurized": int(featurized_rows),
            "rejected": len(listed_rejects) + int(read) - int(featurized_rows),
            "reused": int(reused),
            "newly_featurized": int(newly),
        }
    if counts["featurized"] == 0:
        raise NothingFeaturized(
            f"no image under {ctx.options.input} could be featurized ({counts['rejected']} rejected)"
        )
    if counts["featurized"] == 1:
        example = rejected.first()  # the reason the others could not be used, when there are others
        why = f", e.g. {example[0]}: {example[1]}" if example else ""
        raise InputError(
            f"only 1 image under {ctx.options.input} could be featurized ({counts['rejected']} rejected{why}): "
            "PCA needs at least 2 images"
        )
    if counts["featurized"] + counts["rejected"] != counts["found"] or (
        counts["reused"] + counts["newly_featurized"] > counts["featurized"]
    ):
        raise RuntimeError(f"counts do not reconcile: {counts}")
    return Reconciled(rows, rejected, counts)


@dataclass(frozen=True)
class Reduced:
    """The projection and how it was made."""

    pipeline: PipelineModel
    projection: reduce.Projection
    k: int
    explained: list[float]
    fitted_here: bool
    feature_dim: int
    training: dict[str, ClassSums]  # the Training rows' class sums, gathered in the same pass for the report
    notes: dict[str, Any]  # for the manifest's pca: the rank k was kept to, or why a pipeline was not reused


@dataclass(frozen=True)
class Reused:
    """The pipeline --reuse-pca projects with: the last committed run's, loaded before any work."""

    pipeline: PipelineModel
    projection: reduce.Projection
    explained: list[float]
    run_id: str


def reuse_stage(ctx: RunContext, previous: dict[str, Any] | None) -> tuple[Reused | None, str | None]:
    """With --reuse-pca, the last committed run's pipeline, or None and why it is not used.

    A pipeline that cannot be reused (no committed run yet, fitted on another model's features, missing or
    unreadable) is replaced by a new fit, with a warning and a note in the manifest: the run can always make
    correct numbers, and a cluster's defaults that carry --reuse-pca keep working across a model change or a
    lost folder (the next run reuses the new pipeline). An explicit --k that is not the pipeline's k is refused
    instead: the options contradict each other, and only the user knows which one was meant.
    """
    options = ctx.options
    if not options.reuse_pca:
        return None, None
    if previous is None:
        why = "no committed run to reuse yet"
    else:
        run_id = previous["run_id"]
        stored_key = (previous.get("feature_store") or {}).get("model_key")
        uri = ctx.out.uri_for(previous["run_prefix"] + "pca_model")
        why = f"run {run_id} was fitted on {stored_key} features, this run's are {ctx.model_key}"
        if stored_key in (None, ctx.model_key):
            try:
                reused = _load_reused(ctx, previous, uri)
            except Exception as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
                why = f"run {run_id}'s pipeline {uri} cannot be read ({first})"
            else:
                if options.k is not None and options.k != reused.projection.k:
                    raise UsageError(
                        f"--k {options.k} is not the k = {reused.projection.k} of run {run_id}'s pipeline, which "
                        f"--reuse-pca projects with: drop --k to reuse it, or --reuse-pca to fit {options.k} "
                        "components"
                    )
                return reused, None
    log.warning("--reuse-pca: %s; fitting a new pipeline", why)
    return None, why


def _load_reused(ctx: RunContext, previous: dict[str, Any], uri: str) -> Reused:
    pipeline = PipelineModel.load(literal(uri))  # a reader: glob characters in the output are plain
    projection = reduce.projection_of(pipeline)
    key = previous.get(layout.COMMIT_MANIFEST_FIELD) or previous["run_prefix"] + layout.MANIFEST_JSON
    explained = [float(value) for value in ctx.out.read_json(key)["pca"]["explained_variance"]]
    if len(explained) < projection.k or len(projection.mean) != projection.components.shape[0]:
        raise ValueError(f"its manifest's curve has {len(explained)} components for k = {projection.k}")
    return Reused(pipeline, projection, explained, previous["run_id"])


def reduce_stage(
    ctx: RunContext,
    sums: summaries.Summaries,
    feature_dim: int,
    reused: Reused | None,
    not_reused: str | None,
) -> Reduced:
    """Fit center + PCA from the pass of sums (or project with the pipeline :func:`reuse_stage` loaded);
    :func:`save_pipeline_stage` saves it in the run's prefix."""
    options, notes = ctx.options, {} if not_reused is None else {"not_reused": not_reused}
    if reused is not None and len(reused.projection.mean) != feature_dim:
        notes["not_reused"] = (
            f"run {reused.run_id}'s pipeline expects {len(reused.projection.mean)} features, these have "
            f"{feature_dim}"
        )
        log.warning("--reuse-pca: %s; fitting a new pipeline", notes["not_reused"])
        reused = None
    with ctx.timer.stage("PCA", "(fit)"):
        if reused is not None:
            notes["reused_from"] = reused.run_id
            reduced = Reduced(
                reused.pipeline,
                reused.projection,
                reused.projection.k,
                reused.explained,
                False,
                feature_dim,
                sums.training,
                notes,
            )
        else:
            try:
                fit = reduce.fit_moments(ctx.spark, sums.total, k=options.k, variance=options.variance)
            except reduce.NoVariance:
                raise InputError(
                    f"the {sums.total.n} images featurized under {options.input} all have the same features "
                    "(copies of one image?): PCA needs at least 2 different images"
                ) from None
            notes["rank"] = fit.rank
            if options.k is not None and fit.k < options.k:
                notes["k_limited_by_rank"] = True
                log.warning(
                    "--k %d is above the rank of the features (%d, from %d images): keeping %d components; "
                    "the others would be directions of no variance",
                    options.k,
                    fit.rank,
                    sums.total.n,
                    fit.k,
                )
            reduced = Reduced(
                fit.model, fit.projection, fit.k, fit.explained, True, feature_dim, sums.training, notes
            )
    log.info(
        "PCA: k = %d components explain %.1f%% of the variance (products and eigh in NumPy on %s)",
        reduced.k,
        100 * manifest.cumulative(reduced.explained)[reduced.k - 1],
        manifest.numpy_blas(),
    )
    return reduced


def save_pipeline_stage(ctx: RunContext, reduced: Reduced) -> None:
    """Save the Spark ML pipeline in the run's prefix, in the background.

    Nothing in the run loads it (the run projects with the NumPy projection), so its writer, seven small Spark
    jobs that keep the driver waiting ~1 s, runs beside the next stages; the commit waits for it
    (StageTimer.join). Started after the report's classifiers are fitted: their eigendecompositions ran 60 %
    slower beside it.
    """
    uri = ctx.out.uri_for(ctx.key_for("pca_model"))
    ctx.timer.background("save PCA model", lambda: reduced.pipeline.write().overwrite().save(uri))


# --- load ----------------------------------------------------------------------------------------------


def write_stage(ctx: RunContext, projected: DataFrame, reconciled: Reconciled, k: int) -> None:
    """results.parquet, results.csv and rejected.csv in the run's prefix, each sorted by path."""
    with ctx.timer.stage("write results"):
        checkpoint("write")
        keep = ["path", "label", "split", "id"] + (["features"] if ctx.options.keep_features else [])
        parquet = ctx.out.uri_for(ctx.key_for("results.parquet"))
        table = projected.select(*keep, *reduce.pc_columns(k))
        if ctx.options.keep_features:  # the public format: an array of floats, as array_to_vector reads it
            table = writing.features_as_arrays(table)
        table.orderBy("path").write.parquet(parquet)
        counts = reconciled.counts
        # From the persisted projection, not a re-read of the Parquet just written.
        writing.write_single_csv(
            writing.csv_frame(projected, k), ctx.out, ctx.key_for(layout.RESULTS_CSV), counts["featurized"]
        )
        writing.write_single_csv(
            reconciled.rejected, ctx.out, ctx.key_for(layout.REJECTED_CSV), counts["rejected"]
        )


def fit_quality_stage(ctx: RunContext, reduced: Reduced) -> quality.Classifiers | None:
    """The quality report's classifiers, fitted on the driver from the pass of sums (None: no report); its
    scoring happens in the projection's pass (:func:`project_stage`), its tally in :func:`quality_stage`."""
    with ctx.timer.stage("quality report", "(fit)"):
        projection = reduced.projection
        return quality.fit_classifiers(reduced.training, projection.mean, projection.components)


def project_stage(
    ctx: RunContext, good: DataFrame, reduced: Reduced, classifiers: quality.Classifiers | None
) -> DataFrame:
    """The PCs of every featurized row, and the quality report's marks from the same vectors (one pass over the
    features for both), kept for the writers, the report and the plots; computed by the first writer."""
    beside = quality.marking(classifiers) if classifiers else None
    projected = reduce.project(reduced.projection, good, ctx.options.keep_features, beside)
    return projected.persist(StorageLevel.MEMORY_AND_DISK)


def quality_stage(
    ctx: RunContext, projected: DataFrame, reduced: Reduced, classifiers: quality.Classifiers | None
) -> quality.Tally | None:
    """Test accuracy with PCA and with all features when the input has Training/ and Test/: the tally of the marks
    the projection's pass made (and the shrinkages it chose, for the classifiers the run keeps)."""
    with ctx.timer.stage("quality report", "(tally)"):
        tally = quality.tallied(projected, classifiers) if classifiers else None
    report = tally.report if tally else None
    if report:
        log.info(
            "quality: test accuracy %.1f%% with %d PCA components, %.1f%% with all %d features",
            100 * report["test_accuracy_pca"],
            reduced.k,
            100 * report["test_accuracy_full_features"],
            reduced.feature_dim,
        )
    return tally


def identify_stage(
    ctx: RunContext,
    projected: DataFrame,
    reduced: Reduced,
    classifiers: quality.Classifiers | None,
    tally: quality.Tally | None,
    featurized: int,
) -> dict[str, Any]:
    """What `fruits identify` answers new photos with (:mod:`fruits.identify`), in the run's prefix: the known
    images' components, written by the executors from the persisted projection, and the projection and the
    report's own classifiers as arrays; returns the manifest's section naming them."""
    with ctx.timer.stage("identify files"):
        uri = ctx.out.uri_for(ctx.key_for(layout.IDENTIFY_KNOWN))
        writing.write_known(projected, uri, reduced.k, featurized)
        chosen = classifiers.chosen(tally.chosen) if classifiers and tally else None
        shrinkage = {s: classifiers.shrinkages[i] for s, i in tally.chosen.items()} if chosen else None
        arrays = identify.model_npz(reduced.projection.mean, reduced.projection.components, chosen)
        ctx.out.write_bytes(ctx.key_for(layout.IDENTIFY_MODEL), arrays, "application/octet-stream")
        pointer = model_export.kept_pointer(ctx.store, ctx.model_key, ctx.options.engine)
    options = ctx.options
    return identify.describe(
        model_key=ctx.model_key,
        feature_store=options.store_uri,
        model_file=pointer,
        classifiers=chosen,
        shrinkage=shrinkage,
        no_classifier=identify.no_classifier_reason(any(sums.counts for sums in reduced.training.values())),
        known_images=featurized,
        k=reduced.k,
        feature_dim=reduced.feature_dim,
        decode_size=options.decode_size,
        max_file_mb=options.max_file_mb,
        max_pixels=options.max_pixels,
    )


def _scatter_sample(results: DataFrame, total: int, limit: int = SCATTER_POINTS) -> pd.DataFrame:
    """A bounded random sample of (label, pc_1, pc_2) for the scatter plot: never the whole table."""
    columns = ["label", "pc_1"] + (["pc_2"] if "pc_2" in results.columns else [])
    fraction = min(1.0, 1.2 * limit / max(total, 1))
    return results.select(*columns).sample(fraction=fraction, seed=7).limit(limit).toPandas()


def plot_stage(ctx: RunContext, results: DataFrame, reduced: Reduced, featurized: int) -> None:
    """explained_variance.png and pca_scatter.png in the run's prefix, drawn in the background.

    Only the commit reads them: matplotlib's half second runs beside the quality report's tally and the manifest
    (the one thread that draws; pyplot is not shared), and the commit waits for it (StageTimer.join). Started
    before the writers, it slowed them more than it saved (measured).
    """
    note = "" if ctx.weights.pretrained else "  [RANDOM WEIGHTS]"

    def draw() -> None:
        variance_png = plots.explained_variance_png(reduced.explained, reduced.k, ctx.options.variance, note)
        ctx.out.write_bytes(ctx.key_for(layout.EXPLAINED_VARIANCE_PNG), variance_png, "image/png")
        scatter_png = plots.scatter_png(_scatter_sample(results, featurized), note)
        ctx.out.write_bytes(ctx.key_for(layout.PCA_SCATTER_PNG), scatter_png, "image/png")

    ctx.timer.background("plots", draw)


def publish_stage(
    ctx: RunContext, document: dict[str, Any], lease: Lease, input_fingerprint: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """Write the manifest, commit the run (with its input fingerprint and trigger, when it has them), then replace
    the top-level files; returns the commit, and a warning when the run is committed but its top-level copies
    could not be made (:func:`publish_copies`)."""
    ctx.out.write_json(ctx.key_for(layout.MANIFEST_JSON), document)
    checkpoint("commit")
    lease.check()  # a writer that lost its lease must not commit; the conditional commit guards the rest
    commit = commits.commit_run(
        ctx.out,
        ctx.run_id,
        {
            "counts": document["counts"],
            layout.COMMIT_MANIFEST_FIELD: layout.manifest_key(ctx.run_id),
            "feature_store": document["feature_store"],
            "k": document["pca"]["k"],
            "model": ctx.options.model,
            "pretrained": ctx.weights.pretrained,
            **({fingerprint.COMMIT_FIELD: input_fingerprint} if input_fingerprint else {}),
            **({"trigger": ctx.options.trigger} if ctx.options.trigger else {}),
        },
    )
    # Committed: from here on nothing fails the run, whose results are complete under runs/<run_id>/.
    stale = publish_copies(ctx.out, ctx.run_id, f"commit {commit['number']}")
    if ctx.options.keep_runs:
        try:
            removed = commits.prune_runs(ctx.out, ctx.options.keep_runs)
            log.info("retention: removed %d old runs", len(removed))
        except Exception as error:
            log.warning(
                "retention: old runs could not be removed (%s); the next run tries again", _cause(error)
            )
    return commit, stale


def _cause(error: BaseException) -> str:
    """An error in a few words: a full disk with its path, else its first line."""
    return failures.no_space(error) or (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def publish_copies(out: Store, run_id: str, what: str) -> str | None:
    """Copy a committed run's files to the output's root; None, or the warning the run ends with when that
    failed (a full disk, a refused write).

    The run is committed either way (exit 0). Readers never see a mix of two runs at the root: once the root's
    manifest.json is gone (it goes first, see :func:`fruits.commits.publish_latest`) the copies made are removed;
    before that nothing was replaced, and the root still shows one (older) run whole. The warning points to the
    run's own folder, which ``fruits results`` reads; the next run on this output writes the copies again
    (:func:`heal_published`).
    """
    try:
        commits.publish_latest(out, run_id, PUBLISHED)
        return None
    except Exception as error:
        cause = _cause(error)
        log.warning("the top-level copies of run %s could not be written", run_id, exc_info=True)
    try:
        shown = commits.published_run(out)
    except Exception:
        shown = None
    if shown is not None:
        root = f"the output's root still shows run {shown}, whole"
    else:
        try:
            commits.unpublish(out, PUBLISHED)
            root = "the output's root now shows no run's files"
        except Exception:
            root = "the output's root may mix two runs' files"
    return (
        f"run {run_id} is committed ({what}), but its top-level copies could not be written ({cause}): {root}; "
        f"read {out.uri_for(layout.run_prefix(run_id))} (fruits results does); the next run on this output "
        "writes them again"
    )


def heal_published(out: Store, latest: dict[str, Any]) -> None:
    """Make the output's root show the current commit's run when it does not (a publication that failed or was
    interrupted after its commit); a failure here is a warning, never the run's."""
    run_id = latest.get("run_id")
    if not isinstance(run_id, str) or commits.published_run(out) == run_id:
        return
    stale = publish_copies(out, run_id, f"commit {latest.get('number')}")
    if stale:
        log.warning("%s", stale)
    else:
        log.info("the output's top-level copies now show the current run %s again", run_id)


# --- the run -------------------------------------------------------------------------------------------


def _lease_probes(spark: SparkSession) -> list[Probe]:
    """How a run recognises a dead holder: its process on this host, or (on YARN) its ended application."""
    probes: list[Probe] = [local_process_probe]
    if str(spark.sparkContext.master or "").startswith("yarn"):
        url = resource_manager_url(spark.sparkContext._jsc.hadoopConfiguration().get)
        if url:
            probes.append(yarn_application_probe(url))
    return probes


@contextmanager
def held_lease(ctx: RunContext) -> Iterator[Lease]:
    """The output's lease, held for the block (waiting up to --wait for another run)."""
    lease = Lease(
        ctx.out,
        owner=ctx.run_id,
        ttl_seconds=ctx.options.lease_ttl,
        reentrant_key=reentrant_key(ctx.spark.sparkContext),
        step_id=os.environ.get("EMR_STEP_ID"),  # only for the holder's description (client mode)
        probes=_lease_probes(ctx.spark),
        hint=LEASE_HINT,
    )
    lease.acquire(wait=ctx.options.wait > 0, timeout=ctx.options.wait)
    try:
        yield lease
    finally:
        lease.release()


def _nothing_to_featurize(options: JobOptions) -> None:
    """The one line an --allow-empty run logs instead of failing (a first deploy with an empty bucket)."""
    log.warning("nothing to featurize under %s: no run committed", options.input)


def _previous_commit(ctx: RunContext) -> dict[str, Any] | None:
    """The output's current commit, read under the lease. A damaged one (:class:`fruits.commits.DamagedCommit`)
    is one line naming it without --overwrite; with it, the new run is published over it (the next number)."""
    try:
        return commits.latest_commit(ctx.out)
    except commits.DamagedCommit as damaged:
        if not ctx.options.overwrite:
            raise OutputDamaged(
                f"{damaged}; the job never writes such an object: give --overwrite to publish a new run over "
                "it (the damaged object is kept, and superseded)"
            ) from None
        log.warning("%s; --overwrite: the new run is published over it", damaged)
        return None


def run(
    spark: SparkSession, options: JobOptions, run_id: str | None = None
) -> dict[str, Any] | fingerprint.Unchanged | None:
    """Featurize, reduce and publish one run (``run_id``: its id, else a new one) under the output's lease;
    returns its manifest.

    None when there was nothing to featurize and ``--allow-empty`` was given; :class:`fruits.fingerprint.Unchanged`
    when ``--skip-unchanged`` was given and nothing is new since the latest commit. Nothing is committed then.
    """
    if any(uri.startswith(("s3://", "s3a://")) for uri in (options.input, options.output, options.store_uri)):
        region, source = s3_region()
        log.info("AWS region for S3: %s (%s)", region, source)
    if spark.conf.get(ARROW_BATCH_ROWS) == "10000":
        # Arrow's default 10,000 rows a batch is far too many images; the content per row is a whole file.
        spark.conf.set(ARROW_BATCH_ROWS, str(max(options.batch_size * 4, 256)))
    spark.conf.set(ARROW_ENABLED, "true")  # listings and samples via Arrow
    ctx = RunContext.start(spark, options, run_id)

    found, listing = list_stage(ctx)  # extract (1): nothing is read yet
    if not listing.entries:
        if options.allow_empty:
            _nothing_to_featurize(options)
            return None
        raise InputError(f"input is empty: no files under {options.input}")
    ctx = ctx.calibrating(found)
    try:
        _enough_to_read(options, listing)
        with held_lease(ctx) as lease:
            # Read under the lease: a run that waited for another must see what that run committed.
            previous = _previous_commit(ctx)
            if previous:
                heal_published(ctx.out, previous)
            if previous and not options.overwrite:
                raise OutputExists(
                    f"{options.output} already holds run {previous['run_id']} (commit {previous['number']}); "
                    "give --overwrite to publish a new run over it"
                )
            reuse = reuse_stage(ctx, previous)  # before any work: a pipeline that cannot be used is known now
            return _healed(ctx, listing, lease, reuse, previous)
    except fingerprint.NothingNew as same:
        log.info(
            "nothing new since commit %s (run %s): no run committed",
            same.commit.get("number"),
            same.commit.get("run_id"),
        )
        manifest_document = None
        try:
            manifest_document = commits.read_run_manifest(ctx.out, same.commit.get("run_id"))
        except Exception as error:  # the record's metrics are a courtesy: never fail a run with nothing to do
            log.warning("could not read the manifest of run %s: %s", same.commit.get("run_id"), error)
        # Without its manifest, the commit still knows k (and the record's reader needs it).
        metrics = outcomes.metrics_of(manifest_document) or outcomes.metrics_of(
            {"pca": {"k": same.commit.get("k")}}
        )
        return fingerprint.Unchanged(same.commit, len(listing.entries), metrics)
    except NothingFeaturized:
        if not options.allow_empty:
            raise
        _nothing_to_featurize(options)
        return None
    except calibration.NoCalibrationImages as error:
        if options.calibration:
            raise
        # Calibrating on the input: when none of its images can be read or decoded, none can be featurized.
        if not options.allow_empty:
            raise NothingFeaturized(f"no image under {options.input} could be featurized: {error}") from None
        _nothing_to_featurize(options)
        return None


def _enough_to_read(options: JobOptions, listing: Listing) -> None:
    """PCA needs 2 images: fewer to read is the user's to fix, said before any work (none: NothingFeaturized).

    With --allow-empty one image is left to decoding, which tells whether it is an image (then one line, exit 2)
    or nothing could be featurized (a no-op, as the flag promises).
    """
    rejected = len(listing.rejected)
    if not listing.to_read:
        raise NothingFeaturized(
            f"no image under {options.input} could be featurized ({rejected} rejected from the listing)"
        )
    if len(listing.to_read) == 1 and not options.allow_empty:
        limited = f", --limit {options.limit}" if options.limit else ""
        raise InputError(
            f"only 1 image to featurize under {options.input} ({listing.to_read[0].path}; {rejected} other "
            f"files rejected{limited}): PCA needs at least 2 images"
        )


def _healed(
    ctx: RunContext,
    listing: Listing,
    lease: Lease,
    reuse: tuple[Reused | None, str | None],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run, after setting aside the damaged feature-store files that made it fail, if any.

    Nothing is checked before: a damaged file makes the first reading of the store fail (Spark cannot read it,
    a vector of another width fails the pass of sums, a NaN makes its sums NaN), so a healthy store costs nothing.
    Then every file of the batches this run found is read once (:func:`fruits.feature_store.find_damaged`), the
    damaged ones are moved aside with one warning each, this run's own uncommitted work is removed, and the run
    starts again: the images of the files set aside are featurized again. A failure that no damaged file
    explains is raised as it was.
    """
    prior = feature_store.committed_batches(ctx.store, ctx.model_key)  # written before this run
    moved: list[tuple[feature_store.Damage, str]] = []
    try:
        document, input_fingerprint = _extract_transform_load(
            ctx, listing, lease, reuse, prior, moved, previous
        )
    except (*USER_ERRORS, LeaseError, fingerprint.NothingNew):
        raise
    except Exception:
        moved = _set_aside_damaged(ctx, prior) if prior else []
        if not moved:
            raise
    else:
        # Never retried: the run may be committed from its first write.
        return _published(ctx, document, lease, input_fingerprint)
    lease.check()
    # This run's own work only, never committed: its run folder and its batch, made again now.
    ctx.out.delete_prefix(layout.run_prefix(ctx.run_id))
    ctx.store.delete_prefix(f"{ctx.model_key}/batch={ctx.run_id}/")
    prior = feature_store.committed_batches(ctx.store, ctx.model_key)
    document, input_fingerprint = _extract_transform_load(ctx, listing, lease, reuse, prior, moved, previous)
    return _published(ctx, document, lease, input_fingerprint)


def _set_aside_damaged(ctx: RunContext, batches: list[str]) -> list[tuple[feature_store.Damage, str]]:
    """Find and set aside the damaged files of ``batches``: [(damage, new key)], one warning line each."""
    store, key = ctx.store, ctx.model_key
    with ctx.timer.stage("heal the feature store"):
        try:
            width = stored_feature_dim(store, key)
            moved = feature_store.set_aside(
                store, key, feature_store.find_damaged(ctx.spark, store, key, batches, width)
            )
        except Exception as error:  # the run's own failure is the one to report
            log.warning(
                "could not look for damaged files in the feature store %s: %s", store.uri_for(key), error
            )
            return []
    for damage, target in moved:
        log.warning(
            "feature store: %s is damaged (%s): set aside as %s; its images are featurized again",
            store.uri_for(damage.key),
            damage.problem,
            store.uri_for(target),
        )
    return moved


def fingerprint_stage(
    ctx: RunContext, listing: Listing, images: DataFrame, previous: dict[str, Any] | None
) -> str | None:
    """With ``--skip-unchanged``: the run's input fingerprint (fruits.fingerprint), or NothingNew when it is the
    latest commit's. None (nothing computed) without the option."""
    if not ctx.options.skip_unchanged:
        return None
    with ctx.timer.stage("fingerprint"):
        found = fingerprint.combine(
            fingerprint.options_part(ctx.options, ctx.model_key),
            fingerprint.listing_part((entry.path, entry.reason) for entry in listing.rejected),
            fingerprint.images_part(images),
        )
    if previous is not None and previous.get(fingerprint.COMMIT_FIELD) == found:
        raise fingerprint.NothingNew(previous)
    return found


def _extract_transform_load(
    ctx: RunContext,
    listing: Listing,
    lease: Lease,
    reuse: tuple[Reused | None, str | None],
    prior: list[str],
    set_aside: list[tuple[feature_store.Damage, str]],
    previous: dict[str, Any] | None,
) -> tuple[dict[str, Any], str | None]:
    """The run up to its manifest (nothing committed): (manifest, the input's fingerprint with --skip-unchanged)."""
    persisted: list[DataFrame] = []
    formulas = formula_labels(listing)
    try:
        if not prior:
            # Nothing stored for this model yet: every image is new, read and featurize it in one pass.
            featurized = read_and_featurize_stage(ctx, listing, lease)  # extract + transform
            assert featurized.rows is not None
            rows = featurized.rows
            input_fingerprint = fingerprint_stage(ctx, listing, rows, previous)
        else:
            catalog = read_stage(ctx, listing)  # extract (2)
            persisted.append(catalog.images)
            # Before anything is featurized: a run with nothing new ends here.
            input_fingerprint = fingerprint_stage(ctx, listing, catalog.images, previous)
            featurized = featurize_stage(ctx, catalog, lease)  # transform
            rows = joined_rows(ctx, catalog, featurized)
        persisted.append(rows)
        good = rows.where(F.col("features").isNotNull())
        # The model's own width when known (a stored vector of another width is damage), else the vectors'.
        feature_dim = (
            featurized.feature_dim or stored_feature_dim(ctx.store, ctx.model_key) or stored_width(good)
        )
        sums = sums_stage(ctx, rows, feature_dim)
        reconciled = reconcile_stage(ctx, listing, rows, featurized, sums)
        reduced = reduce_stage(ctx, sums, feature_dim, *reuse)
        lease.check()
        classifiers = fit_quality_stage(ctx, reduced)
        save_pipeline_stage(ctx, reduced)
        # Written, scored and plotted: projected once (without the 5 KB of features a row unless they are kept).
        projected = project_stage(ctx, good, reduced, classifiers)
        persisted.append(projected)
        write_stage(ctx, projected, reconciled, reduced.k)  # load
        plot_stage(ctx, projected, reduced, reconciled.counts["featurized"])
        tally = quality_stage(ctx, projected, reduced, classifiers)
        kept = identify_stage(ctx, projected, reduced, classifiers, tally, reconciled.counts["featurized"])
        ctx.timer.join()  # before anything is committed: a failed save fails the run
    finally:
        ctx.timer.join(raise_failure=False)  # a failing run stops no writer halfway, and keeps its own error
        for frame in reversed(persisted):
            frame.unpersist()
    document = manifest.build(
        run_id=ctx.run_id,
        options=ctx.options,
        counts=reconciled.counts,
        skipped={
            "hidden": listing.hidden,
            "examples": listing.hidden_examples,
            "job_outputs": listing.job_outputs,
        },
        formula_labels=formulas,
        feature_dim=reduced.feature_dim,
        model_source=featurized.model_source,
        calibration=model_export.calibration_of(kept["model_file"]),  # the model's own record: any run's
        threads=ctx.threads,
        weights=ctx.weights,
        weights_sha=ctx.weights.sha256,
        k=reduced.k,
        explained=reduced.explained,
        fitted_here=reduced.fitted_here,
        pca_notes=reduced.notes,
        quality=tally.report if tally else None,
        identify=kept,
        feature_store={
            "uri": ctx.options.store_uri,
            "model_key": ctx.model_key,
            "batches": featurized.batches,
            # damaged files moved out of the batches by this run (their images were featurized again)
            "set_aside": len(set_aside),
            "set_aside_files": [
                {
                    "file": ctx.store.uri_for(damage.key),
                    "problem": damage.problem,
                    "now": ctx.store.uri_for(to),
                }
                for damage, to in set_aside
            ],
        },
        outputs={
            name: ctx.out.uri_for(ctx.key_for(name))
            for name in [
                *PUBLISHED,
                "results.parquet",
                "pca_model",
                layout.IDENTIFY_MODEL,
                layout.IDENTIFY_KNOWN,
            ]
        },
        timings=ctx.timer.seconds,
        background_timings=ctx.timer.background_seconds,
        versions=manifest.versions(ctx.spark.version),
        spark_master=ctx.spark.sparkContext.master,
        started_at=ctx.started.isoformat(),
        finished_at=_now().isoformat(),
    )
    return document, input_fingerprint


def _published(
    ctx: RunContext, document: dict[str, Any], lease: Lease, input_fingerprint: str | None
) -> dict[str, Any]:
    """Commit the run whose manifest is ``document`` (with its input fingerprint, when it has one) and publish its
    files; returns the manifest."""
    commit, stale = publish_stage(ctx, document, lease, input_fingerprint)
    counts = document["counts"]
    log.info(
        "run %s committed as #%d: found %d = featurized %d + rejected %d (reused %d, newly featurized %d)",
        ctx.run_id,
        commit["number"],
        *(counts[n] for n in ("found", "featurized", "rejected", "reused", "newly_featurized")),
    )
    results = ctx.key_for(layout.RESULTS_CSV) if stale else layout.RESULTS_CSV  # the copies failed: the run's
    log.info("results: %s", ctx.out.uri_for(results))
    if stale:
        log.warning("%s", stale)  # the run's last word (its outcome record follows)
    return document


# --- entry point ---------------------------------------------------------------------------------------

#: Errors a user can cause and fix: one line on stderr, exit status 2.
USER_ERRORS = (UsageError, InputError, LeaseHeld, models.WeightsError, StoreError, CheckFailed)
#: A run stopped by Ctrl-C: the shell's status for SIGINT (128 + 2), and its one last line.
INTERRUPTED_STATUS = 130
INTERRUPTED_LINE = "featurize_pca: interrupted"


def failure(error: BaseException, writing: Sequence[str] = ()) -> tuple[int, str]:
    """(exit status, the one line to print) for an error that ended a run; ``writing``: where the run wrote, named
    when a full disk's error names no path."""
    if isinstance(error, KeyboardInterrupt) or INTERRUPTED.is_set():
        return INTERRUPTED_STATUS, "interrupted"  # also a Spark call that failed as Ctrl-C cancelled its job
    if isinstance(error, USER_ERRORS):
        return 2, str(error)
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:
        # An S3 refusal (access denied, no such bucket): the request and AWS's answer, in one line.
        return 2, f"S3 refused a request ({response['Error'].get('Code', '')}): {error}"
    full = failures.no_space(error, writing)
    if full:
        return 1, f"{full} (free space there, or write to a larger disk)"
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return 1, f"{type(error).__name__}: {first} (the full trace is in the log above)"


def outcome_of(
    options: JobOptions,
    run_id: str,
    started: dt.datetime,
    code: int,
    reason: str | None,
    result: Any,
    spark: Any,
) -> outcomes.Outcome:
    """The outcome record of a run that ended with exit status ``code`` (``result``: what it returned)."""
    unchanged = result if isinstance(result, fingerprint.Unchanged) else None
    if code:
        status = outcomes.FAILED
    elif options.check:
        status = outcomes.CHECKED
    elif unchanged is not None:
        status = outcomes.UNCHANGED
    else:
        status = outcomes.NOTHING_TO_DO if result is None else outcomes.SUCCEEDED
    document = result if isinstance(result, dict) and not options.check else {}
    commit = None
    if document:
        latest = commits.latest_commit(open_store(options.output))
        commit = latest["number"] if latest and latest.get("run_id") == run_id else None
    details = result if options.check and isinstance(result, dict) else None
    if unchanged is not None:
        details = {
            "unchanged_since": {k: unchanged.commit.get(k) for k in ("number", "run_id", "committed_at")}
        }
    return outcomes.Outcome(
        run_id=run_id,
        status=status,
        exit_code=code,
        reason=reason,
        started_at=started.isoformat(),
        finished_at=_now().isoformat(),
        input=options.input,
        output=options.output,
        application_id=reentrant_key(spark.sparkContext) if spark is not None else None,
        host=outcomes.this_host(),
        counts=unchanged.counts if unchanged is not None else document.get("counts"),
        commit=commit,
        details=details,
        trigger=options.trigger or None,
        metrics=unchanged.metrics if unchanged is not None else outcomes.metrics_of(document or None),
    )


def _output_store(options: JobOptions) -> Store | None:
    """The output's store for the outcome record; None for an output the job cannot address (``gs://``...),
    refused in one line already."""
    try:
        return open_store(options.output)
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Run the job: 0 on success, 2 with a one-line error for what a user can fix, 130 when interrupted
    (Ctrl-C), 1 for anything else.

    Options are checked before Spark starts (when no session is given); the full trace of an unexpected
    failure goes to the log, and stderr ends with one line saying what failed (a full disk: the path), after
    everything else the run logs. Every run whose options parsed leaves its outcome under the output
    (:mod:`fruits.outcomes`), success or failure.
    """
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        build_parser().print_help()
        return 0
    session, options, result, checked = None, None, None, False
    started, run_id = _now(), commits.new_run_id()
    code, reason = 0, None
    try:
        if spark is None:
            checked = check_command_line(argv)  # fail fast, before a JVM starts
            plots.preload()  # while the JVM starts
        session = spark or get_session()
        options = parse_options(argv, dict(session.sparkContext.getConf().getAll()))
        check_locations(options, network=not checked)  # the input's S3 request is made once
        if options.check:
            result = run_check(session, options, run_id)
            log.info("check passed: this cluster can run the job")
        else:
            result = run(session, options, run_id=run_id)
    except (Exception, KeyboardInterrupt) as error:
        code, reason = failure(error, [options.output, options.store_uri] if options else [])
        if code == 1:
            log.exception("the run failed")
    finally:
        if INTERRUPTED.is_set():
            wait_for_cancelled_jobs(session.sparkContext if session is not None else None)
        out = _output_store(options) if options is not None else None
        if options is not None and out is not None:
            record = outcome_of(options, run_id, started, code, reason, result, session)
            uri = outcomes.write(out, record)
            if uri:
                log.info("outcome: %s (%s)", record.status, uri)
        if spark is None and session is not None and not INTERRUPTED.is_set():
            # The first local run on a machine: let its JVM write the class archive.
            jvm_archive.finish(session)
        if reason is not None:  # the last line, after everything else the run logs
            line = INTERRUPTED_LINE if code == INTERRUPTED_STATUS else f"featurize_pca: error: {reason}"
            print(line, file=sys.stderr)
    return code
