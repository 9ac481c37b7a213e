"""Property-based: S3 prefixes of any shape, written and read back by Spark (S3A) through the job's own code.

Run as a script by tests/test_hostile_inputs.py, in a process of its own: its Spark (SPARK_HOME, with S3A; its
settings in PYSPARK_SUBMIT_ARGS) needs the S3A jars on its classpath from the start, which the tests' shared
session does not have. Argument: the bucket on moto. Exit status 0 when every example held; Hypothesis prints the
failing one otherwise.
"""

from __future__ import annotations

import csv
import io
import secrets
import sys

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# Everything a URL parser or Hadoop's Path could misread, and Hadoop's glob characters ('*', '?', '[', ']', '{',
# '}'), which the job escapes wherever Spark reads a path back (fruits.hadoop_paths).
PREFIX_CHARACTERS = st.characters(
    codec="utf-8",
    categories=("L", "N", "P", "S", "Zs"),
    include_characters="#%+&;=@$,:'*?[]{} \t",
    exclude_characters="/\\\n\r",
)
PREFIXES = st.lists(
    st.text(PREFIX_CHARACTERS, min_size=1, max_size=6).filter(lambda part: part not in (".", "..")),
    min_size=1,
    max_size=3,
).map("/".join)


def main(bucket: str) -> int:
    from pyspark.sql import SparkSession

    from fruits import feature_store, writing
    from fruits.linalg import pack
    from fruits.storage import make_s3_client, open_store

    spark = SparkSession.builder.getOrCreate()  # master and S3A from PYSPARK_SUBMIT_ARGS
    spark.sparkContext.setLogLevel("ERROR")
    client = make_s3_client()

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(prefix=PREFIXES, labels=st.lists(st.text(PREFIX_CHARACTERS, max_size=5), min_size=1, max_size=4))
    @example(
        prefix="results#2/a%41+b c?[1]{x,y}", labels=["=1", 'é, "x"']
    )  # the prefix, always tried
    def holds(prefix: str, labels: list[str]) -> None:
        root = f"{secrets.token_hex(3)} {prefix}"
        store = open_store(f"s3://{bucket}/{root}")
        rows = [(f"id{i}", pack([float(i), 0.5]), None) for i in range(len(labels))]
        batch = feature_store.write_batch(
            spark.createDataFrame(rows, feature_store.STORE_SCHEMA), store, "m", "20261125T134501Z-3f9a1c"
        )  # Spark's Parquet writer, through S3A, under the exact prefix
        assert feature_store.committed_batches(store, "m") == [batch]  # found by the store's own listing
        back = feature_store.read_features(spark, store, "m", [batch]).collect()
        assert sorted((row.id, bytes(row.features)) for row in back) == sorted((r[0], r[1]) for r in rows)
        table = spark.createDataFrame(
            [(f"s3://x/{label}", label) for label in labels], "path string, label string"
        )
        writing.write_single_csv(table, store, "results.csv", len(labels))  # Spark's CSV writer, then a copy
        written = csv.DictReader(io.StringIO(store.read_bytes("results.csv").decode("utf-8"), newline=""))
        assert sorted((row["path"], row["label"]) for row in written) == sorted(table.collect())
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
            for item in page.get("Contents", [])
        ]
        assert keys and all(key.startswith(root + "/") for key in keys), keys  # nothing beside the prefix
        assert f"{root}/results.csv" in keys and f"{root}/m/{batch}/_SUCCESS" in keys, keys

    holds()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
