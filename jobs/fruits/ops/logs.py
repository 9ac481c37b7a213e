"""Where EMR puts a step's logs and the driver's, and reading their tails from S3.

In YARN cluster mode (the job's deploy mode) the step's own stderr holds only what the `spark-submit` client
printed: the application id and its state reports. The driver runs in the YARN application master, whose
container logs EMR archives under the cluster's log URI::

    <LogUri><cluster-id>/steps/<step-id>/stderr.gz                            the spark-submit client
    <LogUri><cluster-id>/containers/<application-id>/<container-id>/stdout.gz  the driver's Python: the job's log
    <LogUri><cluster-id>/containers/<application-id>/<container-id>/stderr.gz  the driver's JVM: Spark's log

The job's own output (its log and the one line it prints when it fails) is in the application master's
**stdout**: Spark's PythonRunner starts the Python driver with its stderr merged into its stdout
(``redirectErrorStream``), and YARN keeps a container's stdout apart from its stderr. The cloud rehearsal found
this: the driver's stderr held Spark's log only. The application master is the first container of its attempt
(`container_..._<attempt>_000001`, YARN's numbering). EMR copies logs to S3 periodically, so a log may be
missing for a few minutes after a step ends.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

S3Client = Any

# spark-submit (YARN client) prints "Submitted application application_1700000000000_0001" and then reports
# with "tracking URL: http://...:20888/proxy/application_1700000000000_0001/".
_SUBMITTED = re.compile(r"Submitted application (application_\d+_\d+)")
_APPLICATION = re.compile(r"\b(application_\d+_\d+)\b")
# container_[e<epoch>_]<cluster timestamp>_<application>_<attempt>_<container>; the AM is container 000001.
_AM_CONTAINER = re.compile(r"^container_(?:e\d+_)?\d+_\d+_(\d+)_0*1$")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    match = re.match(r"^s3a?://([^/]+)/?(.*)$", uri)
    if not match:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, key = match.groups()
    return bucket, key


def _base(log_uri: str, cluster_id: str) -> str:
    # LogUri may be given with or without its trailing slash.
    return f"{log_uri.rstrip('/')}/{cluster_id}/"


def step_stderr_uri(log_uri: str, cluster_id: str, step_id: str) -> str:
    """Where EMR copies a step's stderr."""
    return f"{_base(log_uri, cluster_id)}steps/{step_id}/stderr.gz"


def containers_uri(log_uri: str, cluster_id: str, application_id: str) -> str:
    """The folder of an application's container logs."""
    return f"{_base(log_uri, cluster_id)}containers/{application_id}/"


def read_log(s3: S3Client, uri: str) -> str | None:
    """The text of a (gzipped) log object, or None while it is not there or not readable."""
    bucket, key = split_s3_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError:
        return None
    try:
        return gzip.decompress(body).decode("utf-8", errors="replace")
    except (OSError, EOFError):
        # A log still being written (truncated gzip) or one stored uncompressed: show what is there.
        return body.decode("utf-8", errors="replace")


def tail(text: str, lines: int) -> list[str]:
    """The last `lines` lines ([-0:] would be every line)."""
    return text.splitlines()[-lines:] if lines > 0 else []


def application_id(step_stderr: str) -> str | None:
    """The YARN application the step submitted, from the spark-submit client's output."""
    match = _SUBMITTED.search(step_stderr) or _APPLICATION.search(step_stderr)
    return match.group(1) if match else None


def driver_log_uri(s3: S3Client, log_uri: str, cluster_id: str, application_id: str) -> str | None:
    """The driver's log (the job's output): the application master's stdout, of the last attempt; None until
    uploaded."""
    bucket, prefix = split_s3_uri(containers_uri(log_uri, cluster_id, application_id))
    masters: list[tuple[int, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            container = common["Prefix"][len(prefix) :].rstrip("/")
            match = _AM_CONTAINER.match(container)
            if match:
                masters.append((int(match.group(1)), container))
    if not masters:
        return None
    return f"s3://{bucket}/{prefix}{max(masters)[1]}/stdout.gz"


@dataclass(frozen=True)
class StepLogs:
    """What is known about a step's logs: locations always, contents once EMR has uploaded them."""

    step_stderr_uri: str
    step_stderr: str | None
    application_id: str | None
    containers_uri: str | None
    driver_log_uri: str | None
    driver_log: str | None


def step_logs(s3: S3Client, log_uri: str, cluster_id: str, step_id: str) -> StepLogs:
    """The step's stderr and, through the application id it names, the driver's log."""
    step_uri = step_stderr_uri(log_uri, cluster_id, step_id)
    step_text = read_log(s3, step_uri)
    app = application_id(step_text) if step_text else None
    folder = driver_uri = driver_text = None
    if app:
        folder = containers_uri(log_uri, cluster_id, app)
        driver_uri = driver_log_uri(s3, log_uri, cluster_id, app)
        driver_text = read_log(s3, driver_uri) if driver_uri else None
    return StepLogs(step_uri, step_text, app, folder, driver_uri, driver_text)
