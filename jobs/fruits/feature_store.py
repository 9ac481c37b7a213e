"""The feature store: featurized vectors kept by content id, so a run featurizes only what is new.

Layout: ``<store>/<model_key>/batch=<run_id>/part-*.parquet`` with columns ``id, features, reason``
(``features``: float32 bytes, :func:`fruits.linalg.pack`); a batch written in one pass by a run that read and
featurized everything at once also keeps each row's provenance (``path, label, split, length``). A batch
counts only once Spark has written its ``_SUCCESS`` marker (at job commit), so a run killed while writing
leaves a batch that readers ignore, and the next run featurizes those images again. Batches are never
modified; rejections are stored too, so a corrupt file is not decoded again by every run.

A damaged file (truncated or otherwise unreadable, changed since Spark wrote it, vectors of another width,
NaN or infinity) is found when a run's reading of the store fails (:func:`find_damaged`, which then reads every
file once, only on that path: a healthy store costs nothing), and set aside (:func:`set_aside`) under
``<store>/<model_key>/_set_aside/``, out of every batch and hidden from Spark's readers, never deleted: the
next reading of the store lacks its images, which are featurized again.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from fruits import calibration
from fruits.engines import CALIBRATED
from fruits.hadoop_paths import literal
from fruits.layout import STORE_FORMAT as STORE_FORMAT  # the store's folder names: the layout owns them
from fruits.layout import model_key as model_key
from fruits.linalg import FEATURE_DTYPE
from fruits.models import Weights
from fruits.storage import Store, open_store

STORE_SCHEMA = "id string, features binary, reason string"  # features: float32 bytes (fruits.linalg.pack)


def weights_id(weights: Weights) -> str:
    """How the feature store tells weights apart (their file's hash when known)."""
    if weights.kind == "random":
        return "random-seed0"
    if weights.kind == "file":
        return str(weights.sha256)[:16]
    return f"imagenet-{weights.sha256[:16]}" if weights.sha256 else "imagenet"


def model_key_for(options: Any, weights: Weights) -> str:
    """THE model key of a run with ``options`` (fruits.options.JobOptions) and resolved ``weights``: the job and
    ``--check`` (:mod:`fruits.cluster_check`) both take it from here. The float engines share one; a calibrated
    engine's (:data:`fruits.engines.CALIBRATED`) adds its quantization and its calibration's spec
    (:func:`fruits.calibration.spec`: source and count, not the images), known before anything is read and
    unchanged as the input grows."""
    quantized = CALIBRATED.get(options.engine)
    if quantized:
        quantized += f"-{calibration.spec(options)}"
    return model_key(
        options.model, options.alpha, options.image_size, options.decode_size, weights_id(weights), quantized
    )


def _writer(frame: DataFrame) -> DataFrameWriter:
    """A batch is written once, never over another; its 5 KB feature values are all distinct, so Parquet's
    dictionary encoding would only be tried and dropped (measured: 0.5 s of 1.3 at 20,000 rows)."""
    return frame.write.mode("errorifexists").option("parquet.enable.dictionary", "false")


def committed_batches(store: Store, key: str) -> list[str]:
    """Names (``batch=<run_id>``) of the complete batches for ``key``, oldest first."""
    batches = [name for name in store.list_dirs(key) if name.startswith("batch=")]
    return sorted(name for name in batches if store.exists(f"{key}/{name}/_SUCCESS"))


def read_features(spark: SparkSession, store: Store, key: str, batches: list[str]) -> DataFrame:
    """All stored rows of ``batches``, one per content id."""
    if not batches:
        return spark.createDataFrame([], STORE_SCHEMA)
    paths = [literal(store.uri_for(f"{key}/{name}")) for name in batches]
    # One id twice: identical bytes under two paths in a one-pass batch, or two runs featurizing at once. Either
    # row is right. Rows without an id are files a one-pass run could not read: they are not features.
    rows = spark.read.schema(STORE_SCHEMA).parquet(*paths)
    return rows.where(F.col("id").isNotNull()).dropDuplicates(["id"])


def write_rows(rows: DataFrame, store: Store, key: str, run_id: str) -> str:
    """Write a one-pass run's rows as its new batch, provenance included (``path, label, split, length`` beside
    ``id, features, reason``); returns the batch name. Readers of features see only the store's columns."""
    name = f"batch={run_id}"
    _writer(rows).parquet(store.uri_for(f"{key}/{name}"))
    return name


def read_rows(spark: SparkSession, store: Store, key: str, batch: str, schema: StructType) -> DataFrame:
    """Every row :func:`write_rows` wrote into ``batch``, with its provenance; ``schema``: the written rows' own,
    so that Spark does not infer it from a file's footer (a job of its own, and a read of S3)."""
    return spark.read.schema(schema).parquet(literal(store.uri_for(f"{key}/{batch}")))


def write_batch(frame: DataFrame, store: Store, key: str, run_id: str) -> str:
    """Append ``frame`` as a new batch named after the run; returns the batch name."""
    name = f"batch={run_id}"
    _writer(frame.select("id", "features", "reason")).parquet(store.uri_for(f"{key}/{name}"))
    return name


# --- damaged files ---------------------------------------------------------------------------------------

#: Where damaged files are moved: inside the model's folder, outside every batch, hidden from Spark (a ``_``).
SET_ASIDE_DIR = "_set_aside"


@dataclass(frozen=True)
class Damage:
    """A damaged file of the store: its key and what is wrong with it."""

    key: str
    problem: str


def _read_by_spark(name: str) -> bool:
    """Whether Spark's file index reads a file or folder of this name (it skips ``.x``, ``_x`` but not ``_a=b``)."""
    return not (
        name.startswith(".") or (name.startswith("_") and "=" not in name) or name.endswith("._COPYING_")
    )


def data_files(store: Store, key: str, batches: list[str]) -> list[str]:
    """Keys of the files Spark reads as data of ``batches`` (not ``_SUCCESS``, not Hadoop's ``.crc`` files)."""
    found = []
    for batch in batches:
        prefix = f"{key}/{batch}/"
        found += [k for k in store.list_keys(prefix) if all(map(_read_by_spark, k[len(prefix) :].split("/")))]
    return found


def _checksum_problem(data: bytes, crc: bytes) -> str | None:
    """Why ``data`` does not match Hadoop's checksum file of it (``.<name>.crc``: ``crc\\0``, the bytes per
    checksum, then the CRC-32 of each chunk), or None. A local file changed since it was written fails Spark's
    read with a ChecksumException, however valid its new bytes are."""
    if len(crc) < 8 or crc[:4] != b"crc\0":
        return "its checksum file is not one Hadoop writes"
    (chunk,) = struct.unpack(">i", crc[4:8])
    stored = [value for (value,) in struct.iter_unpack(">I", crc[8 : 8 + 4 * ((len(crc) - 8) // 4)])]
    actual = [zlib.crc32(data[at : at + chunk]) for at in range(0, len(data), chunk)] if chunk > 0 else []
    return None if stored == actual else "changed since it was written (its checksum does not match)"


def inspect_file(data: bytes, crc: bytes | None = None) -> tuple[str | None, dict[int, int], int]:
    """(why the file cannot be read as a batch, or None; how many vectors it holds of each size in bytes; how
    many of them hold NaN or infinity) of the bytes of one batch file and of its checksum file, if any."""
    try:
        problem, sizes, nonfinite = _inspect_table(data)
    except Exception as error:  # ArrowInvalid, OSError, a name that is not UTF-8...: what the reader says
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        return f"not a readable Parquet file ({first})", {}, 0
    if problem is None and crc is not None:
        problem = _checksum_problem(data, crc)
    return problem, sizes, nonfinite


def _inspect_table(data: bytes) -> tuple[str | None, dict[int, int], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    expected = {"id": pa.string(), "features": pa.binary(), "reason": pa.string()}
    for name, kind in expected.items():
        if name in table.column_names and table.schema.field(name).type != kind:
            return f"its column {name} holds {table.schema.field(name).type}, not {kind}", {}, 0
    if "features" not in table.column_names:
        return None, {}, 0
    vectors = [value for value in table.column("features").to_pylist() if value is not None]
    sizes = Counter(len(value) for value in vectors)
    nonfinite = 0
    for size in sizes:
        if size % FEATURE_DTYPE.itemsize == 0:
            same = b"".join(value for value in vectors if len(value) == size)
            values = np.frombuffer(same, dtype=FEATURE_DTYPE).reshape(-1, size // FEATURE_DTYPE.itemsize)
            nonfinite += int((~np.isfinite(values).all(axis=1)).sum())
    return None, dict(sizes), nonfinite


@dataclass(frozen=True)
class Inspected:
    """What :func:`inspect_key` found in one file: its problem (or None), vectors by size in bytes, non-finite."""

    key: str
    problem: str | None
    sizes: dict[int, int]
    nonfinite: int


def inspect_key(store: Store, key: str) -> Inspected | None:
    """:func:`inspect_file` of the file at ``key`` (and of its checksum file); None when it is gone."""
    from fruits.storage import NotFound

    folder, _, name = key.rpartition("/")
    try:
        data = store.read_bytes(key)
    except NotFound:
        return None  # gone since it was listed: nothing to set aside
    try:
        crc: bytes | None = store.read_bytes(f"{folder}/.{name}.crc")
    except NotFound:
        crc = None
    return Inspected(key, *inspect_file(data, crc))


def judge(inspected: list[Inspected], width: int | None) -> list[Damage]:
    """The damaged files among ``inspected``: unreadable, vectors of another width than ``width`` (None: the
    width most vectors have), or vectors holding NaN or infinity."""
    if width is not None:
        expected = width * FEATURE_DTYPE.itemsize
    else:
        totals: Counter[int] = Counter()
        for found in inspected:
            totals.update(found.sizes)
        expected = totals.most_common(1)[0][0] if totals else 0
    damaged = []
    for found in inspected:
        other = sorted((size, count) for size, count in found.sizes.items() if size != expected)
        if found.problem:
            damaged.append(Damage(found.key, found.problem))
        elif other:
            size, count = other[0]
            values, wanted = size / FEATURE_DTYPE.itemsize, expected // FEATURE_DTYPE.itemsize
            damaged.append(
                Damage(found.key, f"{count} vectors of {values:g} values, the model's have {wanted}")
            )
        elif found.nonfinite:
            damaged.append(Damage(found.key, f"{found.nonfinite} vectors hold NaN or infinity"))
    return damaged


_INSPECTED_SCHEMA = "inspected binary"  # one pickled Inspected a row


def find_damaged(
    spark: SparkSession, store: Store, key: str, batches: list[str], width: int | None
) -> list[Damage]:
    """The damaged files of ``batches`` (:func:`judge`): each file read once, in Spark tasks, through the store
    itself (not Hadoop, which fails on the first damaged file). Reads the whole store: call it only when
    reading the store failed."""
    keys = data_files(store, key, batches)
    if not keys:
        return []
    root = store.root

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        opened = open_store(root)
        for frame in frames:
            found = [inspect_key(opened, name) for name in frame["key"]]
            yield pd.DataFrame({"inspected": [pickle.dumps(item) for item in found if item is not None]})

    frame = spark.createDataFrame(pd.DataFrame({"key": keys}), "key string")
    frame = frame.repartition(min(len(keys), 4 * spark.sparkContext.defaultParallelism))
    rows = frame.mapInPandas(run, _INSPECTED_SCHEMA).toPandas()["inspected"]
    return judge([pickle.loads(blob) for blob in rows], width)  # written by the tasks just above


def set_aside(store: Store, key: str, damaged: list[Damage]) -> list[tuple[Damage, str]]:
    """Move each damaged file (with its checksum file) to ``<key>/_set_aside/<batch>/...``; (damage, new key)
    for each. Moved, never deleted: what went wrong can still be looked at."""
    moved = []
    for damage in damaged:
        target = f"{key}/{SET_ASIDE_DIR}/{damage.key[len(key) + 1 :]}"
        suffix = 1
        while store.exists(target if suffix == 1 else f"{target}.{suffix}"):
            suffix += 1
        target = target if suffix == 1 else f"{target}.{suffix}"
        folder, _, name = damage.key.rpartition("/")
        crc, target_folder, _, target_name = f"{folder}/.{name}.crc", *target.rpartition("/")
        store.copy(damage.key, target)
        if store.exists(crc):
            store.copy(crc, f"{target_folder}/.{target_name}.crc")
            store.delete(crc)
        store.delete(damage.key)
        moved.append((damage, target))
    return moved
