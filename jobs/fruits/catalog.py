"""What is in the input: every file, its content id, label and split.

Spark's ``binaryFile`` source reads the images, but it silently skips zero-byte files, so the input is also
listed without reading it (``os.scandir`` locally, ``ListObjectsV2`` pages of 1,000 keys on S3; other Hadoop
file systems through Spark's JVM), so that ``found = featurized + rejected`` holds for every file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.images import SUPPORTED_EXTENSIONS, is_supported

SUPPORTED_PATTERN = r"(?i)\.(" + "|".join(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS) + r")$"
# Spark plans file scans as if opening a file cost reading 4 MB; with ~5 KB images that makes one task per
# 32 files. A cost near a small image's size packs thousands of images into a read task.
SMALL_FILE_OPEN_COST = str(64 * 1024)
DEFAULT_OPEN_COST = 4 * 1024 * 1024


class InputError(ValueError):
    """The input location is missing, unreadable or holds no files."""


class EmptyInput(InputError):
    """The input location holds no files (an S3 prefix with no objects, an empty folder)."""


@dataclass
class InputScan:
    """Counts from listing the input; the odd files are kept by name (they are few)."""

    files: int = 0
    empty: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def add(self, path: str, size: int) -> None:
        """Count one listed file, keeping its name if it cannot be an image."""
        self.files += 1
        if not is_supported(path):
            self.unsupported.append(path)
        elif size == 0:
            self.empty.append(path)


def _hidden(relative: str) -> bool:
    # Spark's file index skips names starting with "_" or "." (e.g. _SUCCESS, .DS_Store); so do we.
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def _list_local(root: str) -> Iterator[tuple[str, int]]:
    """(Spark-style ``file:`` path, size) of every file under ``root``."""
    if not os.path.exists(root):
        raise InputError(f"input not found: {root}")
    if os.path.isfile(root):
        yield f"file:{os.path.abspath(root)}", os.path.getsize(root)
        return
    stack = [os.path.abspath(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith(("_", ".")):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield f"file:{entry.path}", entry.stat().st_size


def _list_s3(uri: str) -> Iterator[tuple[str, int]]:
    """(``s3://`` path, size) of every object under the prefix, 1,000 keys a request."""
    from fruits.storage import make_s3_client

    parsed = urlparse(uri)
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    pages = make_s3_client().get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or _hidden(key[len(prefix) :]):
                continue  # "folder" markers and hidden files, as Spark skips them
            yield f"{parsed.scheme}://{parsed.netloc}/{key}", int(item["Size"])


def _list_hadoop(spark: SparkSession, uri: str) -> Iterator[tuple[str, int]]:
    """Any other Hadoop file system (hdfs://, ...) through Spark's JVM: one py4j round trip per file."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        raise InputError(f"input not found: {uri}")
    root = fs.makeQualified(path).toUri().getPath().rstrip("/")
    files = fs.listFiles(path, True)
    while files.hasNext():
        status = files.next()
        if not _hidden(status.getPath().toUri().getPath()[len(root) :]):
            yield status.getPath().toString(), status.getLen()


def scan_input(spark: SparkSession, uri: str) -> InputScan:
    """List every file under ``uri`` recursively without reading it; raise InputError when there is none."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        listing = _list_local(uri.removeprefix("file://").removeprefix("file:"))
    elif scheme in ("s3", "s3a", "s3n"):
        listing = _list_s3(uri)
    else:
        listing = _list_hadoop(spark, uri)
    scan = InputScan()
    for path, size in listing:
        scan.add(path, size)
    if scan.files == 0:
        raise EmptyInput(f"input is empty: no files under {uri}")
    return scan


def label_column(path: Column) -> Column:
    """The parent folder's name, spaces kept (Spark's paths are not URL-encoded)."""
    return F.regexp_extract(path, r"([^/]+)/[^/]+$", 1)


def split_column(path: Column) -> Column:
    """``Training``/``Test`` from the grandparent folder (any case), else null."""
    parent = F.lower(F.regexp_extract(path, r"([^/]+)/[^/]+/[^/]+$", 1))
    return F.when(parent == "training", "Training").when(parent == "test", "Test")


def catalog(spark: SparkSession, uri: str, limit: int | None = None) -> DataFrame:
    """path, label, split, length, content id (sha256, computed in the JVM) and the bytes of each image.

    The result is persisted on the executors' disks: the bytes are read from storage once, hashed, and the
    images still to featurize are taken from there instead of being read again.
    """
    if spark._jsparkSession.sessionState().conf().filesOpenCostInBytes() == DEFAULT_OPEN_COST:
        spark.conf.set("spark.sql.files.openCostInBytes", SMALL_FILE_OPEN_COST)  # only if nobody chose one
    images = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
    images = images.where(F.col("path").rlike(SUPPORTED_PATTERN))
    if limit:
        images = images.limit(limit)
    path = F.col("path")
    return images.select(
        path,
        label_column(path).alias("label"),
        split_column(path).alias("split"),
        F.col("length"),
        F.sha2("content", 256).alias("id"),
        F.col("content"),
    ).persist(StorageLevel.DISK_ONLY)


def contents(images: DataFrame, wanted: DataFrame, everything: bool = False) -> DataFrame:
    """``id, content`` of the catalog rows named by ``wanted`` (``path, id``): the images to featurize.

    ``everything`` says that ``wanted`` is every catalog row (a first run): then no join is needed.
    """
    if everything:
        return images.select("id", "content")
    return images.join(wanted.select("path", "id"), ["path", "id"]).select("id", "content")
