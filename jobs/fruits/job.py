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
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits import catalog, commits, engines, feature_store, manifest, models, outputs, plots, quality, reduce
from fruits.featurize import featurize
from fruits.layout import PUBLISHED_NAMES
from fruits.lease import Lease, LeaseHeld
from fruits.options import JobOptions, UsageError, build_parser, parse_options
from fruits.progress import StageTimer, report_progress
from fruits.session import get_session, ship_package_to_local_workers
from fruits.storage import Store, open_store, s3_region

__all__ = [
    "PUBLISHED",
    "NothingFeaturized",
    "OutputExists",
    "main",
    "reentrant_key",
    "run",
    "ship_package_to_local_workers",
]

log = logging.getLogger(__name__)
PUBLISHED = list(PUBLISHED_NAMES)
SCATTER_POINTS = 4000


class OutputExists(UsageError):
    """The output already holds a committed result and --overwrite was not given."""


class NothingFeaturized(UsageError):
    """Files were found but none could be featurized: with --allow-empty a no-op, else exit 2."""


def _nothing_to_featurize(options: JobOptions) -> None:
    """The one line an --allow-empty run logs instead of failing (a first deploy with an empty bucket)."""
    log.warning("nothing to featurize under %s: no run committed", options.input)


def reentrant_key(sc: Any) -> str | None:
    """The lease's re-entrancy key: the YARN application id, shared by every attempt of one application.

    EMR_STEP_ID does not reach a cluster-mode driver's container; ``applicationId`` does, and in YARN it has no
    attempt number (``application_<cluster-ts>_<n>``). Outside YARN there are no attempts, so no key.
    """
    master = str(sc.master or "")
    return str(sc.applicationId) if master.startswith("yarn") else None


def checkpoint(name: str) -> None:
    """Mark a point of the run; with FRUITS_KILL_AT=<name> the process kills itself there (kill tests)."""
    log.debug("checkpoint %s", name)
    if os.environ.get("FRUITS_KILL_AT") == name:
        log.warning("FRUITS_KILL_AT=%s: killing this run now", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _weights_id(weights: models.Weights) -> tuple[str, str | None]:
    """(identifier for the feature store, sha256 for the manifest)."""
    if weights.kind == "file":
        return weights.sha256[:16], weights.sha256  # type: ignore[index]
    if weights.kind == "random":
        return "random-seed0", None
    # ImageNet: the hash of Keras' file when it was found on disk, else just "imagenet" (Keras downloads it).
    sha = weights.sha256
    return (f"imagenet-{sha[:16]}" if sha else "imagenet"), sha


def _export_model(
    spark: SparkSession, options: JobOptions, weights: models.Weights, folder: str
) -> engines.ModelArtifact:
    """Build the feature model once on the driver, export it for the engine and ship it to every node."""
    model = models.build_feature_model(
        models.get_spec(options.model),
        image_size=options.image_size,
        decode_size=options.decode_size,
        alpha=options.alpha,
        weights=weights,
    )
    exported = engines.export(model, options.engine, folder, options.model)
    # Name the shipped file by its content: workers cache models by file name, and Spark refuses to ship a
    # different file under a name it has already shipped in this session.
    stem, extension = os.path.splitext(exported)
    path = f"{stem}-{models.sha256_file(exported)[:16]}{extension}"
    os.replace(exported, path)
    spark.sparkContext.addFile(path)
    return engines.ModelArtifact(
        options.engine, os.path.basename(path), options.decode_size, int(model.output_shape[-1])
    )


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


def _scatter_sample(results: DataFrame, total: int, limit: int = SCATTER_POINTS) -> pd.DataFrame:
    """A bounded random sample of (label, pc_1, pc_2) for the scatter plot: never the whole table."""
    columns = ["label", "pc_1"] + (["pc_2"] if "pc_2" in results.columns else [])
    fraction = min(1.0, 1.2 * limit / max(total, 1))
    return results.select(*columns).sample(fraction=fraction, seed=7).limit(limit).toPandas()


@dataclass
class Run:
    """One run holding the output's lease; each method is a stage, called in order by :meth:`execute`."""

    spark: SparkSession
    options: JobOptions
    run_id: str
    out: Store
    scan: catalog.InputScan
    previous: dict[str, Any] | None
    lease: Lease
    started: dt.datetime = field(default_factory=_now)
    timer: StageTimer = field(default_factory=StageTimer)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        options = self.options
        self.prefix = f"runs/{self.run_id}"
        self.store = open_store(options.store_uri)
        self.spec = models.get_spec(options.model)
        self.threads = options.threads or int(self.spark.sparkContext.getConf().get("spark.task.cpus", "1"))
        self.weights = models.resolve_weights(
            options.weights, model=options.model, alpha=options.alpha, image_size=options.image_size
        )
        if not self.weights.pretrained:
            log.warning(manifest.RANDOM_WEIGHTS_WARNING)
        elif self.weights.kind == "imagenet":
            log.info("ImageNet weights: %s", self.weights.path or "not cached here, Keras downloads them")
        weights_id, self.weights_sha = _weights_id(self.weights)
        self.key = feature_store.model_key(
            options.model, options.alpha, options.image_size, options.decode_size, weights_id
        )
        self.feature_dim = self.spec.feature_dim(options.alpha)

    def key_for(self, name: str) -> str:
        """Key of ``name`` inside this run's prefix."""
        return f"{self.prefix}/{name}"

    def catalog(self) -> DataFrame:
        """Read and hash every image once; the catalog (with the bytes) stays on the executors' disks."""
        with self.timer.stage("catalog", "(read and hash every image)"):
            images = catalog.catalog(self.spark, self.options.input, self.options.limit)
            self.counts["images"] = images.count()
        return images

    def featurize_new(self, images: DataFrame) -> list[str]:
        """Featurize the images whose content id the store lacks; returns the store batches to read."""
        batches = feature_store.committed_batches(self.store, self.key)
        stored = feature_store.read_features(self.spark, self.store, self.key, batches)
        todo = (
            images.join(stored.select("id"), "id", "left_anti")
            .groupBy("id")
            .agg(F.min("path").alias("path"))  # identical bytes under two paths: featurized once
        )
        todo_count = todo.count()
        self.counts["newly_featurized"] = todo_count
        self.counts["reused"] = self.counts["images"] - images.join(todo, "id", "left_semi").count()
        log.info(
            "%d images: %d reused from the feature store, %d distinct images to featurize",
            self.counts["images"],
            self.counts["reused"],
            todo_count,
        )
        self.lease.check()
        if not todo_count:
            return batches
        sc = self.spark.sparkContext
        with tempfile.TemporaryDirectory(prefix="fruits-model-") as folder:
            with self.timer.stage("prepare model", f"({self.options.model}, {self.options.engine})"):
                artifact = _export_model(self.spark, self.options, self.weights, folder)
                self.feature_dim = artifact.feature_dim
            partitions = max(sc.defaultParallelism, math.ceil(todo_count / self.options.images_per_task))
            with (
                self.timer.stage("featurize", f"{todo_count} images"),
                report_progress(sc, "featurize", todo_count),
            ):
                checkpoint("featurize")
                everything = todo_count == self.counts["images"]  # first run, no duplicate bytes
                contents = catalog.contents(images, todo, everything).repartition(partitions)
                features = featurize(
                    contents,
                    artifact,
                    batch_size=self.options.batch_size,
                    threads=self.threads,
                    max_pixels=self.options.max_pixels,
                )
                batches = [*batches, feature_store.write_batch(features, self.store, self.key, self.run_id)]
        self.lease.check()
        return batches

    def reconcile(self, rows: DataFrame) -> DataFrame:
        """Count featurized and rejected files, check they add up to what was found; returns rejected rows."""
        rejected = _rejected_frame(self.spark, rows, self.scan)
        self.counts["featurized"] = rows.where(F.col("features").isNotNull()).count()
        self.counts["rejected"] = rejected.count()
        self.counts["found"] = self.counts["images"] + len(self.scan.empty) + len(self.scan.unsupported)
        featurized, rejected_count, found = (self.counts[n] for n in ("featurized", "rejected", "found"))
        if featurized == 0:
            raise NothingFeaturized(
                f"no image under {self.options.input} could be featurized ({rejected_count} rejected)"
            )
        if featurized + rejected_count != found:
            raise RuntimeError(f"counts do not reconcile: {featurized} + {rejected_count} != {found}")
        return rejected

    def reduce(self, good: DataFrame) -> tuple[PipelineModel, int, list[float], bool]:
        """Fit center + PCA (or load the previous run's pipeline with --reuse-pca) and save it in the run."""
        with self.timer.stage("PCA"):
            checkpoint("pca")
            if self.options.reuse_pca and self.previous:
                previous_prefix = self.previous["run_prefix"].rstrip("/")
                pipeline = PipelineModel.load(self.out.uri_for(f"{previous_prefix}/pca_model"))
                explained = json.loads(self.out.read_bytes(self.previous["manifest"]))["pca"][
                    "explained_variance"
                ]
                k, fitted_here = reduce.loaded_k(pipeline), False
            else:
                if self.options.reuse_pca:
                    log.warning("--reuse-pca: no committed run to reuse yet; fitting a new pipeline")
                fit = reduce.fit(
                    good, feature_dim=self.feature_dim, k=self.options.k, variance=self.options.variance
                )
                pipeline, k, explained, fitted_here = fit.model, fit.k, fit.explained, True
            pipeline.write().overwrite().save(self.out.uri_for(self.key_for("pca_model")))
        log.info(
            "PCA: k = %d components explain %.1f%% of the variance",
            k,
            100 * manifest.cumulative(explained)[k - 1],
        )
        self.lease.check()
        return pipeline, k, explained, fitted_here

    def write_tables(self, projected: DataFrame, rejected: DataFrame, k: int) -> DataFrame:
        """results.parquet, results.csv and rejected.csv in the run's prefix; returns the parquet rows."""
        with self.timer.stage("write results"):
            checkpoint("write")
            keep = ["path", "label", "split", "id"] + (["features"] if self.options.keep_features else [])
            parquet = self.out.uri_for(self.key_for("results.parquet"))
            projected.select(*keep, *reduce.pc_columns(k)).orderBy("path").write.parquet(parquet)
            results = self.spark.read.parquet(parquet)
            outputs.write_single_csv(
                outputs.csv_frame(results, k),
                self.out,
                self.key_for("results.csv"),
                self.counts["featurized"],
            )
            outputs.write_single_csv(
                rejected.orderBy("path"), self.out, self.key_for("rejected.csv"), self.counts["rejected"]
            )
        return results

    def quality_report(self, projected: DataFrame, k: int) -> dict[str, Any] | None:
        """Test accuracy with PCA and with all features when the input has Training/ and Test/."""
        with self.timer.stage("quality report"):
            report = quality.report(projected.select("label", "split", "features", *reduce.pc_columns(k)), k)
        if report:
            log.info(
                "quality: test accuracy %.1f%% with %d PCA components, %.1f%% with all %d features",
                100 * report["test_accuracy_pca"],
                k,
                100 * report["test_accuracy_full_features"],
                self.feature_dim,
            )
        return report

    def draw(self, results: DataFrame, explained: list[float], k: int) -> None:
        """explained_variance.png and pca_scatter.png in the run's prefix."""
        note = "" if self.weights.pretrained else "  [RANDOM WEIGHTS]"
        with self.timer.stage("plots"):
            variance_png = plots.explained_variance_png(explained, k, self.options.variance, note)
            self.out.write_bytes(self.key_for("explained_variance.png"), variance_png, "image/png")
            sample = _scatter_sample(results, self.counts["featurized"])
            self.out.write_bytes(
                self.key_for("pca_scatter.png"), plots.scatter_png(sample, note), "image/png"
            )

    def publish(self, document: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest, commit the run, then replace the top-level files; returns the commit."""
        self.out.write_json(self.key_for("manifest.json"), document)
        checkpoint("commit")
        self.lease.check()  # a writer that lost its lease must not commit; the conditional commit guards the rest
        commit = commits.commit_run(
            self.out,
            self.run_id,
            {
                "counts": document["counts"],
                "manifest": self.key_for("manifest.json"),
                "feature_store": document["feature_store"],
                "k": document["pca"]["k"],
                "model": self.options.model,
                "pretrained": self.weights.pretrained,
            },
        )
        commits.publish_latest(self.out, self.run_id, PUBLISHED)
        if self.options.keep_runs:
            removed = commits.prune_runs(self.out, self.options.keep_runs)
            log.info("retention: removed %d old runs", len(removed))
        return commit

    def execute(self) -> dict[str, Any]:
        """All stages in order; returns the manifest."""
        images = self.catalog()
        batches = self.featurize_new(images)
        rows = images.join(
            feature_store.read_features(self.spark, self.store, self.key, batches), "id", "left"
        )
        rows = rows.cache()
        try:
            rejected = self.reconcile(rows)
            good = rows.where(F.col("features").isNotNull())
            pipeline, k, explained, fitted_here = self.reduce(good)
            projected = reduce.project(pipeline, good, k)
            results = self.write_tables(projected, rejected, k)
            report = self.quality_report(projected, k)
            self.draw(results, explained, k)
        finally:
            rows.unpersist()
            images.unpersist()
        counts = {
            name: self.counts[name]
            for name in ("found", "featurized", "rejected", "reused", "newly_featurized")
        }
        document = manifest.build(
            run_id=self.run_id,
            options=self.options,
            counts=counts,
            feature_dim=self.feature_dim,
            threads=self.threads,
            weights=self.weights,
            weights_sha=self.weights_sha,
            k=k,
            explained=explained,
            fitted_here=fitted_here,
            quality=report,
            feature_store={"uri": self.options.store_uri, "model_key": self.key, "batches": batches},
            outputs={
                name: self.out.uri_for(self.key_for(name))
                for name in [*PUBLISHED, "results.parquet", "pca_model"]
            },
            timings=self.timer.seconds,
            versions=manifest.versions(self.spark.version),
            spark_master=self.spark.sparkContext.master,
            started_at=self.started.isoformat(),
            finished_at=_now().isoformat(),
        )
        commit = self.publish(document)
        log.info(
            "run %s committed as #%d: found %d = featurized %d + rejected %d (reused %d, newly featurized %d)",
            self.run_id,
            commit["number"],
            *(counts[n] for n in ("found", "featurized", "rejected", "reused", "newly_featurized")),
        )
        log.info("results: %s", self.out.uri_for("results.csv"))
        return document


def run(spark: SparkSession, options: JobOptions) -> dict[str, Any] | None:
    """Featurize, reduce and publish one run under the output's lease; returns its manifest.

    None when there was nothing to featurize and ``--allow-empty`` was given: nothing is committed then.
    """
    started = _now()
    run_id = commits.new_run_id(started)
    if any(uri.startswith(("s3://", "s3a://")) for uri in (options.input, options.output, options.store_uri)):
        region, source = s3_region()
        log.info("AWS region for S3: %s (%s)", region, source)
    out = open_store(options.output)
    if spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "10000":
        # Arrow's default 10,000 rows a batch is far too many images; the content per row is a whole file.
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max(options.batch_size * 4, 256)))
    timer = StageTimer()
    with timer.stage("list input"):
        try:
            scan = catalog.scan_input(spark, options.input)
        except catalog.EmptyInput:
            if not options.allow_empty:
                raise
            _nothing_to_featurize(options)
            return None
    log.info(
        "input %s: %d files (%d empty, %d unsupported)",
        options.input,
        scan.files,
        len(scan.empty),
        len(scan.unsupported),
    )
    lease = Lease(
        out,
        owner=run_id,
        ttl_seconds=options.lease_ttl,
        reentrant_key=reentrant_key(spark.sparkContext),
        step_id=os.environ.get("EMR_STEP_ID"),  # only for the holder's description (client mode)
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
        return Run(spark, options, run_id, out, scan, previous, lease, started=started, timer=timer).execute()
    except NothingFeaturized:
        if not options.allow_empty:
            raise
        _nothing_to_featurize(options)
        return None
    finally:
        lease.release()


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Run the job; 0 on success, 2 with a one-line error for bad options or input."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
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
