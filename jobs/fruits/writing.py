"""Write a run's tables: results.parquet, ONE results.csv and ONE rejected.csv, and the known images of
``fruits identify``.

Spark writes CSV as a folder of part files; with ``repartition(1)`` there is one part, sorted and written by one
task, which is then copied to its final name inside the run's own prefix, so the file analysts open is a single
plain CSV.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

from fruits.linalg import pc_columns, unpack
from fruits.storage import Store

# Significant digits, not decimals: features of an untrained network are ~1e-17 and must not print as 0.
CSV_DIGITS = 9


def result_columns(k: int) -> list[str]:
    """The header of results.csv: ``path, label, pc_1 .. pc_k``."""
    return ["path", "label", *pc_columns(k)]


def csv_frame(results: DataFrame, k: int) -> DataFrame:
    """results.csv's columns: plain unquoted numbers with 9 significant digits (:func:`write_single_csv`
    sorts the rows)."""
    path, label, *pcs = result_columns(k)
    formatted = [F.format_string(f"%.{CSV_DIGITS}g", F.col(name)).alias(name) for name in pcs]
    return results.select(path, label, *formatted)


def features_as_arrays(frame: DataFrame) -> DataFrame:
    """``frame`` with its packed ``features`` (float32 bytes) as ``array<float>``, for results.parquet readers."""
    schema = StructType(
        [
            StructField(f.name, ArrayType(FloatType())) if f.name == "features" else f
            for f in frame.schema.fields
        ]
    )

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for part in frames:
            if len(part):
                yield part.assign(features=list(unpack(part["features"])))

    return frame.mapInPandas(run, schema)


#: Known images per file of ``identify/known.parquet``: Fruits-360's 90,000 make one file (34 MB at k = 91); a run
#: of millions writes several, each by its own task, never one task for all.
KNOWN_ROWS_PER_FILE = 250_000


def write_known(projected: DataFrame, uri: str, k: int, rows: int) -> None:
    """``identify/known.parquet`` (:mod:`fruits.identify`): ``path, label`` and the k components as one
    ``array<float>`` (``pcs``) of every featurized row (``rows`` of them), in one Parquet file per
    :data:`KNOWN_ROWS_PER_FILE` rows, each sorted by path.

    ``projected`` must be persisted and already computed (the run's writers computed it): ``coalesce`` then reads
    its cached blocks and nothing is projected again. The cast is the JVM's, no Python pass.
    """
    pcs = F.array(*(F.col(name) for name in pc_columns(k))).cast("array<float>").alias("pcs")
    (
        projected.select("path", "label", pcs)
        .coalesce(max(1, math.ceil(rows / KNOWN_ROWS_PER_FILE)))
        .sortWithinPartitions("path")
        .write.option("parquet.enable.dictionary", "false")  # distinct paths and floats: nothing to share
        .parquet(uri)
    )


def write_single_csv(frame: DataFrame, store: Store, key: str, rows: int, order_by: str = "path") -> None:
    """Write ``frame`` (``rows`` long) as ONE CSV file with a header at ``key``, its rows sorted by
    ``order_by``, through a scratch folder."""
    if rows == 0:  # Spark writes no header for an empty frame
        store.write_bytes(key, (",".join(frame.columns) + "\n").encode(), content_type="text/csv")
        return
    scratch = f"{key}.parts"
    (
        # ONE task writes the file, so it sorts it too: a global orderBy would first sample every row in a job
        # of its own to cut ranges that coalesce(1) then puts back together.
        frame.repartition(1)
        .sortWithinPartitions(order_by)
        .write.mode("overwrite")
        .option("header", True)
        .option("escape", '"')  # RFC 4180: a quote inside a quoted field is doubled
        # Spark trims leading and trailing spaces when writing CSV unless told not to: "x.jpg " is another file.
        .option("ignoreLeadingWhiteSpace", False)
        .option("ignoreTrailingWhiteSpace", False)
        .csv(store.uri_for(scratch))
    )
    parts = [name for name in store.list_keys(scratch) if name.rsplit("/", 1)[-1].startswith("part-")]
    if len(parts) != 1:
        raise RuntimeError(f"expected one CSV part under {scratch}, found {len(parts)}")
    store.copy(parts[0], key)
    store.delete_prefix(scratch)
