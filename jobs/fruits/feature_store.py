"""The feature store: featurized vectors kept by content id, so a run featurizes only what is new.

Layout: ``<store>/<model_key>/batch=<run_id>/part-*.parquet`` with columns ``id, features, reason``. A batch
counts only once Spark has written its ``_SUCCESS`` marker (at job commit), so a run killed while writing
leaves a batch that readers ignore, and the next run featurizes those images again. Batches are never
modified; rejections are stored too, so a corrupt file is not decoded again by every run.
"""

from __future__ import annotations

import re

from pyspark.sql import DataFrame, SparkSession

from fruits.storage import Store

STORE_SCHEMA = "id string, features binary, reason string"  # features: float32 bytes (fruits.linalg.pack)
#: Part of every model key: a store written in another format is another store, never misread.
STORE_FORMAT = "f32"


def model_key(model: str, alpha: float, image_size: int, decode_size: int, weights_id: str) -> str:
    """Folder name for the settings that decide a feature vector (the engine does not: they agree)."""
    raw = f"{model}-a{alpha:g}-s{image_size}-d{decode_size}-w{weights_id}-{STORE_FORMAT}"
    return re.sub(r"[^A-Za-z0-9._=-]", "_", raw)


def committed_batches(store: Store, key: str) -> list[str]:
    """Names (``batch=<run_id>``) of the complete batches for ``key``, oldest first."""
    batches = [name for name in store.list_dirs(key) if name.startswith("batch=")]
    return sorted(name for name in batches if store.exists(f"{key}/{name}/_SUCCESS"))


def read_features(spark: SparkSession, store: Store, key: str, batches: list[str]) -> DataFrame:
    """All stored rows of ``batches``, one per content id."""
    if not batches:
        return spark.createDataFrame([], STORE_SCHEMA)
    paths = [store.uri_for(f"{key}/{name}") for name in batches]
    # Two batches can hold the same id only if two runs featurized it concurrently; either row is right.
    return spark.read.schema(STORE_SCHEMA).parquet(*paths).dropDuplicates(["id"])


def write_batch(frame: DataFrame, store: Store, key: str, run_id: str) -> str:
    """Append ``frame`` as a new batch named after the run; returns the batch name."""
    name = f"batch={run_id}"
    frame.select("id", "features", "reason").write.mode("errorifexists").parquet(
        store.uri_for(f"{key}/{name}")
    )
    return name
