"""The job against S3 as on the cluster: local Spark with emr-7.13.0's S3A, reading and writing moto's buckets
(shared by the hostile-input and damaged-store tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def put_tree_on_s3(moto_s3, local: Path, prefix: str) -> None:
    """Every file of a local tree as an object, and every folder as the console's empty marker ('name/')."""
    for path in sorted(local.rglob("*")):
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=key + "/", Body=b"")
        else:
            moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=key, Body=path.read_bytes())


def s3a_spark_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    """pyspark's Spark with emr-7.13.0's Hadoop client and S3A, built as the cloud rehearsal builds it (its jars
    from scripts/fetch-jars.sh) but in this test session's cache, never over the rehearsal's own (another
    checkout's rehearsal may be using it): skips without Maven or the jars."""
    done = subprocess.run(
        [str(Path(__file__).parents[1] / "scripts" / "fetch-jars.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"no S3A jars for Spark (scripts/fetch-jars.sh: {done.stderr.strip()[-200:]})")
    from tests.rehearsal import node

    monkeypatch.setattr(node, "STATE", Path(os.environ["FRUITS_CACHE"]) / "s3a-spark")
    return node.spark_home(Path(done.stdout.strip().splitlines()[-1]))


#: Local Spark reading and writing s3:// through S3A against moto, as the cloud rehearsal configures it
#: (credentials from the environment: S3A's default chain reads AWS_ACCESS_KEY_ID).
S3A_CONF = {
    "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
    "spark.hadoop.fs.s3a.path.style.access": "true",
    "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
    "spark.hadoop.fs.s3a.retry.limit": "3",
    "spark.hadoop.fs.s3a.attempts.maximum": "3",
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
}


def s3a_submit_args(endpoint: str) -> str:
    settings = " ".join(f"--conf {key}={value}" for key, value in S3A_CONF.items())
    return f"--master local[2] --driver-memory 1g --conf spark.hadoop.fs.s3a.endpoint={endpoint} {settings} pyspark-shell"


def s3a_env(moto_s3, home: Path) -> dict[str, str]:
    """The environment a job process needs to run with :func:`s3a_spark_home`'s Spark against ``moto_s3``."""
    return {"PYSPARK_SUBMIT_ARGS": s3a_submit_args(moto_s3.endpoint_url), "SPARK_HOME": str(home)}
