"""The featurize-and-PCA run: extract (list, catalog), transform (featurize, reduce), load (publish).

``main(argv, spark)`` is what ``jobs/featurize_pca.py`` calls; tests call it with a local session. Every
output of a run goes under ``<output>/runs/<run_id>/``; the run becomes current only when its commit object is
created (see :mod:`fruits.commits`), so a run that dies at any point leaves the previous result as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import platform
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits import catalog, commits, engines, feature_store, models, outputs, plots, quality, reduce
from fruits.featurize import featurize
from fruits.lease import Lease, LeaseHeld
from fruits.options import JobOptions, UsageError, parse_options
from fruits.progress import StageTimer, report_progress
from fruits.storage import Store, open_store

log = logging.getLogger("fruits")
PUBLISHED = ["results.csv", "manifest.json", "rejected.csv", "explained_variance.png", "pca_scatter.png"]
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS (--weights none): features are NOT pretrained; for testing only"


class OutputExists(UsageError):
    """The output already holds a committed result and --overwrite was not given."""


def checkpoint(name: str) -> None:
    """Mark a point of the run; with FRUITS_KILL_AT=<name> the process kills itself there (kill tests)."""
    log.debug("checkpoint %s", name)
    if os.environ.get("FRUITS_KILL_AT") == name:
        log.warning("FRUITS_KILL_AT=%s: killing this run now", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def get_session(app_name: str = "fruits-featurize-pca") -> SparkSession:
    """The active session, or a local one using every core: the embedded default outside a cluster."""
    builder = SparkSession.builder.appName(app_name)
    if not _master_chosen():
        ship_package_to_local_workers()
        builder = (
            builder.master("local[*]")
            .config("spark.driver.memory", os.environ.get("FRUITS_DRIVER_MEMORY", "4g"))
            .config("spark.ui.showConsoleProgress", "true")
            .config("spark.sql.shuffle.partitions", "8")
        )
    return builder.getOrCreate()


def _master_chosen() -> bool:
    """Whether spark-submit or PYSPARK_SUBMIT_ARGS chose the master; then we must not set one.

    Asked before any JVM exists, so ``SparkConf()`` cannot tell (it is empty until a SparkContext starts).
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # started by spark-submit, whose JVM already has a master
        return True
    return "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")


def ship_package_to_local_workers() -> None:
    """Let local-mode Python workers import ``fruits`` from this checkout (a cluster gets ``--py-files``).

    Must run before the SparkContext starts: its workers inherit this process's PYTHONPATH.
    """
    # Workers must run this interpreter (the venv's), not whatever python3 is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if os.path.isdir(parent) and parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([parent, *paths])


def _weights_id(weights: models.Weights, spec: models.ModelSpec, alpha: float) -> tuple[str, str | None]:
    """(identifier for the feature store, sha256 for the manifest)."""
    if weights.kind == "file":
        return weights.sha256[:16], weights.sha256  # type: ignore[index]
    if weights.kind == "random":
        return "random-seed0", None
    sha = models.imagenet_weights_hash(spec, alpha)
    return (f"imagenet-{sha[:16]}" if sha else "imagenet"), sha


def _versions(spark: SparkSession) -> dict[str, str]:
    import numpy
    import PIL

    found = {"python": platform.python_version(), "spark": spark.version, "numpy": numpy.__version__}
    found["pillow"] = PIL.__version__
    for module in ("tensorflow", "keras", "ai_edge_litert"):
        try:
            found[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            found[module] = "not installed"
    return found


def _prepare_model(spark: SparkSession, options: JobOptions, weights: models.Weights, folder: str):
    """Build the feature model once on the driver, export it for the engine and ship it to every node."""
    spec = models.get_spec(options.model)
    model = models.build_feature_model(
        spec,
        image_size=options.image_size,
        decode_size=options.decode_size,
        alpha=options.alpha,
        weights=weights,
    )
    dim = int(model.output_shape[-1])
    exported = engines.export(model, options.engine, folder, spec.name)
    # Name the shipped file by its content: workers cache models by file name, and Spark refuses to ship a
    # different file under a name it has already shipped in this session.
    stem, extension = os.path.splitext(exported)
    path = f"{stem}-{models.sha256_file(exported)[:16]}{extension}"
    os.replace(exported, path)
    spark.sparkContext.addFile(path)
    return engines.ModelArtifact(options.engine, os.path.basename(path), options.decode_size, dim), dim


def _rejected_frame(spark: SparkSession, rows: DataFrame, scan: catalog.InputScan) -> DataFrame:
    """path, reason for every file that was found but not featurized."""
    listed = [(p, "empty file (0 bytes)") for p in scan.empty]
    listed += [(p, "unsupported file type (not .jpg, .jpeg or .png)") for p in scan.unsupported]
    decoded = rows.where(F.col("features").isNull()).select(
        "path", F.coalesce("reason", F.lit("not featurized")).alias("reason")
    )
    if not listed:
        return decoded
    return decoded.unionByName(spark.createDataFrame(listed, "path string, reason string"))


def _scatter_sample(results: DataFrame, total: int, limit: int = 4000):
    """A bounded random sample of (label, pc_1, pc_2) for the scatter plot: never the whole table."""
    columns = ["label", "pc_1"] + (["pc_2"] if "pc_2" in results.columns else [])
    fraction = min(1.0, 1.2 * limit / max(total, 1))
    return results.select(*columns).sample(fraction=fraction, seed=7).limit(limit).toPandas()


def run(spark: SparkSession, options: JobOptions) -> dict[str, Any]:
    """Featurize, reduce and publish one run; returns its manifest."""
    started = _now()
    run_id = commits.new_run_id(started)
    timer = StageTimer()
    out = open_store(options.output)
    store = open_store(options.store_uri)
    sc = spark.sparkContext
    if spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "10000":
        # Arrow's default 10,000 rows a batch is far too many images; the content per row is a whole file.
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max(options.batch_size * 4, 256)))
    threads = options.threads or int(sc.getConf().get("spark.task.cpus", "1"))

    with timer.stage("list input"):
        scan = catalog.scan_input(spark, options.input)
    log.info(
        "input %s: %d files (%d empty, %d unsupported)",
        options.input,
        scan.files,
        len(scan.empty),
        len(scan.unsupported),
    )

    lease = Lease(
        out, owner=run_id, ttl_seconds=options.lease_ttl, reentrant_key=os.environ.get("EMR_STEP_ID")
    )
    lease.acquire(wait=options.wait > 0, timeout=options.wait)
    try:
        # Read under the lease: a run that waited for another must see what that run committed.
        previous = commits.latest_commit(out)
        if previous and not options.overwrite:
            raise OutputExists(
                f"{options.output} already holds run {previous['run_id']} (commit {previous['number']}); "
                "give --overwrite to publish a new run over it"
            )
        manifest = _run_locked(
            spark, options, run_id, started, timer, out, store, scan, previous, threads, lease
        )
    finally:
        lease.release()
    return manifest


def _run_locked(
    spark: SparkSession,
    options: JobOptions,
    run_id: str,
    started: dt.datetime,
    timer: StageTimer,
    out: Store,
    store: Store,
    scan: catalog.InputScan,
    previous: dict[str, Any] | None,
    threads: int,
    lease: Lease,
) -> dict[str, Any]:
    sc = spark.sparkContext
    run_prefix = f"runs/{run_id}"
    spec = models.get_spec(options.model)
    weights = models.resolve_weights(options.weights)
    if not weights.pretrained:
        log.warning(RANDOM_WEIGHTS_WARNING)
    weights_id, weights_sha = _weights_id(weights, spec, options.alpha)
    key = feature_store.model_key(
        options.model, options.alpha, options.image_size, options.decode_size, weights_id
    )

    with timer.stage("catalog", "(read and hash every image)"):
        scratch = f"{run_prefix}/catalog.parquet"
        catalog.catalog(spark, options.input, options.limit).write.parquet(out.uri_for(scratch))
        images = spark.read.parquet(out.uri_for(scratch))
        found_images = images.count()
    batches = feature_store.committed_batches(store, key)
    stored = feature_store.read_features(spark, store, key, batches)
    todo = (
        images.join(stored.select("id"), "id", "left_anti")
        .groupBy("id")
        .agg(F.min("path").alias("path"))  # identical bytes under two paths: featurized once
    )
    todo_count = todo.count()
    reused = found_images - images.join(todo.select("id"), "id", "left_semi").count()
    log.info(
        "%d images: %d reused from the feature store, %d distinct images to featurize",
        found_images,
        reused,
        todo_count,
    )
    lease.check()

    feature_dim = spec.feature_dim(options.alpha)
    if todo_count:
        with tempfile.TemporaryDirectory(prefix="fruits-model-") as folder:
            with timer.stage("prepare model", f"({options.model}, {options.engine})"):
                artifact, feature_dim = _prepare_model(spark, options, weights, folder)
            partitions = max(sc.defaultParallelism, math.ceil(todo_count / options.images_per_task))
            with (
                timer.stage("featurize", f"{todo_count} images"),
                report_progress(sc, "featurize", todo_count),
            ):
                checkpoint("featurize")
                contents = catalog.contents(spark, options.input, todo).repartition(partitions)
                features = featurize(
                    contents,
                    artifact,
                    batch_size=options.batch_size,
                    threads=threads,
                    max_pixels=options.max_pixels,
                )
                batches.append(feature_store.write_batch(features, store, key, run_id))
    lease.check()

    rows = images.join(feature_store.read_features(spark, store, key, batches), "id", "left").cache()
    good = rows.where(F.col("features").isNotNull())
    featurized = good.count()
    rejected = _rejected_frame(spark, rows, scan)
    rejected_count = rejected.count()
    found = found_images + len(scan.empty) + len(scan.unsupported)
    if featurized == 0:
        raise UsageError(f"no image under {options.input} could be featurized ({rejected_count} rejected)")
    if featurized + rejected_count != found:
        raise RuntimeError(f"counts do not reconcile: {featurized} + {rejected_count} != {found}")

    with timer.stage("PCA"):
        checkpoint("pca")
        if options.reuse_pca and previous:
            pipeline = PipelineModel.load(out.uri_for(f"{previous['run_prefix'].rstrip('/')}/pca_model"))
            k = reduce.loaded_k(pipeline)
            explained = json.loads(out.read_bytes(previous["manifest"]))["pca"]["explained_variance"]
            fitted_here = False
        else:
            if options.reuse_pca:
                log.warning("--reuse-pca: no committed run to reuse yet; fitting a new pipeline")
            reduction = reduce.fit(good, feature_dim=feature_dim, k=options.k, variance=options.variance)
            pipeline, k, explained = reduction.model, reduction.k, reduction.explained
            fitted_here = True
        pipeline.write().overwrite().save(out.uri_for(f"{run_prefix}/pca_model"))
    cumulative = [sum(explained[: i + 1]) for i in range(len(explained))]
    log.info("PCA: k = %d components explain %.1f%% of the variance", k, 100 * cumulative[k - 1])
    lease.check()

    with timer.stage("write results"):
        checkpoint("write")
        projected = reduce.project(pipeline, good, k)
        keep = ["path", "label", "split", "id"] + (["features"] if options.keep_features else [])
        projected.select(*keep, *[f"pc_{i + 1}" for i in range(k)]).orderBy("path").write.parquet(
            out.uri_for(f"{run_prefix}/results.parquet")
        )
        results = spark.read.parquet(out.uri_for(f"{run_prefix}/results.parquet"))
        outputs.write_single_csv(outputs.csv_frame(results, k), out, f"{run_prefix}/results.csv", featurized)
        outputs.write_single_csv(rejected.orderBy("path"), out, f"{run_prefix}/rejected.csv", rejected_count)

    quality_report = None
    with timer.stage("quality report"):
        quality_report = quality.report(
            projected.select("label", "split", "features", *[f"pc_{i + 1}" for i in range(k)]), k
        )
    if quality_report:
        log.info(
            "quality: test accuracy %.1f%% with %d PCA components, %.1f%% with all %d features",
            100 * quality_report["test_accuracy_pca"],
            k,
            100 * quality_report["test_accuracy_full_features"],
            feature_dim,
        )

    note = "  [RANDOM WEIGHTS]" if not weights.pretrained else ""
    with timer.stage("plots"):
        out.write_bytes(
            f"{run_prefix}/explained_variance.png",
            plots.explained_variance_png(explained, k, options.variance, note),
            "image/png",
        )
        out.write_bytes(
            f"{run_prefix}/pca_scatter.png",
            plots.scatter_png(_scatter_sample(results, featurized), note),
            "image/png",
        )
    rows.unpersist()
    out.delete_prefix(scratch)

    counts = {
        "found": found,
        "featurized": featurized,
        "rejected": rejected_count,
        "reused": reused,
        "newly_featurized": todo_count,
    }
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "started_at": started.isoformat(),
        "input": options.input,
        "output": options.output,
        "limit": options.limit,
        "counts": counts,
        "model": {
            "name": options.model,
            "alpha": options.alpha,
            "image_size": options.image_size,
            "decode_size": options.decode_size,
            "feature_dim": feature_dim,
            "engine": options.engine,
            "batch_size": options.batch_size,
            "threads_per_task": threads,
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
            "explained_variance": explained,
            "cumulative_explained_variance": cumulative,
            "explained_by_k": cumulative[k - 1],
            "centered": True,
        },
        "quality": quality_report,
        "feature_store": {"uri": options.store_uri, "model_key": key, "batches": batches},
        "outputs": {
            name: out.uri_for(f"{run_prefix}/{name}") for name in [*PUBLISHED, "results.parquet", "pca_model"]
        },
        "timings_seconds": timer.seconds,
        "versions": _versions(spark),
        "host": socket.gethostname(),
        "spark_master": sc.master,
    }
    manifest["finished_at"] = _now().isoformat()
    out.write_json(f"{run_prefix}/manifest.json", manifest)

    checkpoint("commit")
    lease.check()  # a writer that lost its lease must not commit; the conditional commit guards the rest
    commit = commits.commit_run(
        out,
        run_id,
        {
            "counts": counts,
            "manifest": f"{run_prefix}/manifest.json",
            "feature_store": manifest["feature_store"],
            "k": k,
            "model": options.model,
            "pretrained": weights.pretrained,
        },
    )
    commits.publish_latest(out, run_id, PUBLISHED)
    if options.keep_runs:
        removed = commits.prune_runs(out, options.keep_runs)
        log.info("retention: removed %d old runs", len(removed))
    log.info(
        "run %s committed as #%d: found %d = featurized %d + rejected %d (reused %d, newly featurized %d)",
        run_id,
        commit["number"],
        found,
        featurized,
        rejected_count,
        reused,
        todo_count,
    )
    log.info("results: %s", out.uri_for("results.csv"))
    return manifest


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Run the job; 0 on success, 2 with a one-line error for bad options or input."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        from fruits.options import build_parser

        build_parser().print_help()
        return 0
    session = spark or get_session()
    try:
        options = parse_options(argv, dict(session.sparkContext.getConf().getAll()))
        run(session, options)
    except (UsageError, catalog.InputError, LeaseHeld, models.WeightsError) as error:
        print(f"featurize_pca: error: {error}", file=sys.stderr)
        return 2
    return 0
