"""What is in the input: every file, its content id, label and split.

Spark's ``binaryFile`` source reads the images, but it silently skips zero-byte files; a streaming listing
through Hadoop's FileSystem (the same one Spark uses, so ``s3://`` works on EMR) finds those, so that
``found = featurized + rejected`` holds for every file under the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.images import SUPPORTED_EXTENSIONS

SUPPORTED_PATTERN = r"(?i)\.(" + "|".join(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS) + r")$"
CATALOG_COLUMNS = ("path", "label", "split", "length", "id")


class InputError(ValueError):
    """The input location is missing, unreadable or holds no files."""


@dataclass
class InputScan:
    """Counts from listing the input; the odd files are kept by name (they are few)."""

    files: int = 0
    empty: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def _hidden(relative: str) -> bool:
    # Spark's file index skips names starting with "_" or "." (e.g. _SUCCESS, .DS_Store); so do we.
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def scan_input(spark: SparkSession, uri: str) -> InputScan:
    """List every file under ``uri`` recursively without reading it; raise InputError when there is none."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(conf)
    if not fs.exists(path):
        raise InputError(f"input not found: {uri}")
    root = fs.makeQualified(path).toUri().getPath().rstrip("/")
    scan = InputScan()
    files = fs.listFiles(path, True)
    while files.hasNext():
        status = files.next()
        name = status.getPath().toString()
        if _hidden(status.getPath().toUri().getPath()[len(root) :]):
            continue
        scan.files += 1
        if not name.lower().endswith(SUPPORTED_EXTENSIONS):
            scan.unsupported.append(name)
        elif status.getLen() == 0:
            scan.empty.append(name)
    if scan.files == 0:
        raise InputError(f"input is empty: no files under {uri}")
    return scan


def label_column(path: Column) -> Column:
    """The parent folder's name (spaces kept), as :func:`fruits.images.label_from_path` computes it."""
    return F.regexp_extract(path, r"([^/]+)/[^/]+$", 1)


def split_column(path: Column) -> Column:
    """``Training``/``Test`` from the grandparent folder (any case), else null."""
    parent = F.lower(F.regexp_extract(path, r"([^/]+)/[^/]+/[^/]+$", 1))
    return F.when(parent == "training", "Training").when(parent == "test", "Test")


def _images(spark: SparkSession, uri: str) -> DataFrame:
    frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
    return frame.where(F.col("path").rlike(SUPPORTED_PATTERN))


def catalog(spark: SparkSession, uri: str, limit: int | None = None) -> DataFrame:
    """path, label, split, length and content id (sha256 of the bytes, computed in the JVM) of each image."""
    images = _images(spark, uri)
    if limit:
        images = images.limit(limit)
    path = F.col("path")
    return images.select(
        path,
        label_column(path).alias("label"),
        split_column(path).alias("split"),
        F.col("length"),
        F.sha2("content", 256).alias("id"),
    )


def contents(spark: SparkSession, uri: str, wanted: DataFrame) -> DataFrame:
    """``id, content`` for the rows of ``wanted`` (``path, id``): the bytes of the images still to featurize."""
    images = _images(spark, uri).select("path", "content")
    return images.join(wanted.select("path", "id"), "path").select("id", "content")
