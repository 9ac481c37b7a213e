"""boto3 logic behind the `fruits` operator commands.

Every function takes the client it needs (CloudFormation, EMR or S3) instead of making one, so the CLI decides
the session (profile, region, endpoint) and the tests point the same code at moto. Errors an operator can act
on are raised as `OpsError` with one readable sentence; the CLI prints it and exits 2.

What this module relies on (the contracts with the CDK stack and the job):
- the stack's outputs name the cluster, the job's script and `--py-files` archive, the results and log URIs;
- the job publishes a run by writing `_commits/<8-digit number>.json` under the results URI; the highest
  number is the current run, and the commit names the run prefix that holds its files;
- EMR copies a step's logs to `<LogUri><cluster-id>/steps/<step-id>/stderr.gz`.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

# boto3 clients are generated at runtime; these aliases only say which service a parameter expects.
CloudFormationClient = Any
EmrClient = Any
S3Client = Any

DEFAULT_STACK = "FruitsEmrStack"
DEFAULT_STEP_NAME = "fruits-featurize-pca"

# EMR accepts steps while a cluster starts (they wait as PENDING), so only the ending states are refused.
USABLE_CLUSTER_STATES = frozenset({"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"})
ENDED_CLUSTER_STATES = frozenset({"TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"})

# Step states after which nothing more will happen; the ones in FAILED_STEP_STATES make `status` exit 1.
FINAL_STEP_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED"})
FAILED_STEP_STATES = FINAL_STEP_STATES - {"COMPLETED"}

# The files an analyst wants from a run, under its run prefix. results.csv and the manifest define a run; the
# others are reported as missing rather than failing the download (an older job may not have written them).
RUN_FILES = ("results.csv", "manifest.json", "rejected.csv", "explained_variance.png", "pca_scatter.png")
REQUIRED_RUN_FILES = frozenset({"results.csv", "manifest.json"})

COMMITS_DIR = "_commits/"
_COMMIT_NAME = re.compile(r"^(\d+)\.json$")


class OpsError(Exception):
    """A problem the operator can act on (no such stack, output, run...): printed as one line, exit code 2."""


# --- stack outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackOutputs:
    """The outputs of the deployed stack, with lookups that name the stack and the key when one is missing."""

    stack_name: str
    values: dict[str, str]

    def __getitem__(self, key: str) -> str:
        try:
            return self.values[key]
        except KeyError:
            have = ", ".join(sorted(self.values)) or "none"
            raise OpsError(
                f"stack {self.stack_name} has no output {key!r} (it has: {have}); "
                "is it the Fruits EMR stack, deployed from this version?"
            ) from None


def stack_outputs(cfn: CloudFormationClient, stack_name: str) -> StackOutputs:
    """Read a stack's outputs; a missing stack becomes an `OpsError` instead of a ValidationError trace."""
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as err:
        # CloudFormation answers an unknown stack with a generic ValidationError "... does not exist".
        if "does not exist" in str(err):
            raise OpsError(
                f"no such stack: {stack_name} (check --stack, the region and the account)"
            ) from None
        raise
    if not stacks:
        raise OpsError(f"no such stack: {stack_name}")
    outputs = stacks[0].get("Outputs", [])
    return StackOutputs(stack_name, {o["OutputKey"]: o["OutputValue"] for o in outputs})


# --- S3 locations ----------------------------------------------------------------------------------------


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix/"); a non-empty prefix always ends with "/"."""
    match = re.match(r"^s3a?://([^/]+)/?(.*)$", uri)
    if not match:
        raise OpsError(f"not an s3:// URI: {uri!r}")
    bucket, prefix = match.groups()
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def step_stderr_uri(log_uri: str, cluster_id: str, step_id: str) -> str:
    """Where EMR copies a step's stderr (LogUri may be given with or without its trailing slash)."""
    return f"{log_uri.rstrip('/')}/{cluster_id}/steps/{step_id}/stderr.gz"


def read_log_tail(s3: S3Client, uri: str, lines: int = 20) -> list[str] | None:
    """The last lines of a (gzipped) log object, or None while it is not there or not readable.

    EMR uploads step logs every few minutes, so a missing log right after a failure is normal, not an error.
    """
    bucket, key = split_s3_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key.rstrip("/"))["Body"].read()
    except ClientError:
        return None
    try:
        text = gzip.decompress(body).decode("utf-8", errors="replace")
    except (OSError, EOFError):
        # A log still being written (truncated gzip) or one stored uncompressed: show what is there.
        text = body.decode("utf-8", errors="replace")
    return text.splitlines()[-lines:] if lines > 0 else []  # [-0:] would be every line


# --- the cluster and its steps ---------------------------------------------------------------------------


def cluster_state(emr: EmrClient, cluster_id: str) -> str:
    """The cluster's current state (RUNNING, WAITING, TERMINATED...)."""
    try:
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    except ClientError as err:
        raise OpsError(f"cluster {cluster_id} from the stack outputs is not found: {err}") from None
    return cluster["Status"]["State"]


def ensure_cluster_usable(emr: EmrClient, cluster_id: str) -> str:
    """Refuse a cluster that cannot run a step any more; return its state."""
    state = cluster_state(emr, cluster_id)
    if state in ENDED_CLUSTER_STATES:
        raise OpsError(
            f"cluster {cluster_id} is {state}: it cannot run steps; redeploy the stack to get a new cluster"
        )
    if state not in USABLE_CLUSTER_STATES:
        raise OpsError(f"cluster {cluster_id} is in state {state}, which does not accept steps")
    return state


def spark_submit_args(script_uri: str, py_files_uri: str, job_args: Sequence[str]) -> list[str]:
    """The command-runner.jar arguments that run the job.

    maxAppAttempts=1: a second YARN attempt of the driver would find the first attempt's lease on the results
    and fail or wait; EMR's step retry is the operator's decision, not YARN's.
    """
    return [
        "spark-submit",
        "--deploy-mode",
        "cluster",
        "--py-files",
        py_files_uri,
        "--conf",
        "spark.yarn.maxAppAttempts=1",
        script_uri,
        *job_args,
    ]


def job_step(name: str, args: Sequence[str]) -> dict[str, Any]:
    """The EMR step definition; CONTINUE so a failed run leaves the cluster up for the next one."""
    return {
        "Name": name,
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": list(args)},
    }


def submit_job(emr: EmrClient, outputs: StackOutputs, job_args: Sequence[str], name: str) -> tuple[str, str]:
    """Add the job step to the stack's cluster if the cluster can run it; return (cluster, step)."""
    cluster_id = outputs["ClusterId"]
    args = spark_submit_args(outputs["JobScriptUri"], outputs["JobPyFilesUri"], job_args)
    ensure_cluster_usable(emr, cluster_id)
    response = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[job_step(name, args)])
    return cluster_id, response["StepIds"][0]


def _steps(emr: EmrClient, cluster_id: str) -> Iterator[dict[str, Any]]:
    """The cluster's steps, newest first (the order EMR lists them in)."""
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        yield from page.get("Steps", [])


def latest_job_step(emr: EmrClient, cluster_id: str, script_uri: str) -> dict[str, Any]:
    """The newest step that runs our job script.

    Matched on the script in the arguments rather than on the step name, because `--name` may rename a run
    and other teams' steps may share the cluster.
    """
    for step in _steps(emr, cluster_id):
        if script_uri in step.get("Config", {}).get("Args", []):
            return step
    raise OpsError(f"no step of the Fruits job on cluster {cluster_id} yet (run `fruits submit`)")


def describe_step(emr: EmrClient, cluster_id: str, step_id: str) -> dict[str, Any]:
    """One step by id, with a clear error when the cluster does not know it."""
    try:
        step = emr.describe_step(ClusterId=cluster_id, StepId=step_id).get("Step")
    except ClientError as err:
        raise OpsError(f"no step {step_id} on cluster {cluster_id}: {err}") from None
    if not step:
        raise OpsError(f"no step {step_id} on cluster {cluster_id}")
    return step


def wait_for_step(
    emr: EmrClient,
    cluster_id: str,
    step_id: str,
    poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the step reaches a final state and return it.

    Our own loop rather than boto3's `step_complete` waiter: that waiter raises on FAILED and gives up after
    a fixed time, while a featurization run can take hours and a failure is a result to report, not an error.
    """
    while True:
        step = describe_step(emr, cluster_id, step_id)
        if step["Status"]["State"] in FINAL_STEP_STATES:
            return step
        sleep(poll_seconds)


# --- commits and runs ------------------------------------------------------------------------------------


def _commit_keys(s3: S3Client, bucket: str, prefix: str) -> list[tuple[int, str]]:
    """(number, key) of every commit object, in commit order; other objects under _commits/ are ignored."""
    found = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + COMMITS_DIR)
    for page in pages:
        for obj in page.get("Contents", []):
            match = _COMMIT_NAME.match(obj["Key"][len(prefix + COMMITS_DIR) :])
            if match:
                found.append((int(match.group(1)), obj["Key"]))
    # Numeric, not lexical: the names are zero-padded today, but a ninth digit must not sort first.
    return sorted(found)


def _read_json(s3: S3Client, bucket: str, key: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def _no_commits(results_uri: str) -> OpsError:
    return OpsError(f"no commits yet under {results_uri}: no run of the job has completed and published")


def list_commits(s3: S3Client, results_uri: str) -> list[dict[str, Any]]:
    """Every commit object under the results URI, oldest first."""
    bucket, prefix = split_s3_uri(results_uri)
    return [_read_json(s3, bucket, key) for _, key in _commit_keys(s3, bucket, prefix)]


def latest_commit(s3: S3Client, results_uri: str) -> dict[str, Any]:
    """The current commit (highest number); reads only that one object."""
    bucket, prefix = split_s3_uri(results_uri)
    keys = _commit_keys(s3, bucket, prefix)
    if not keys:
        raise _no_commits(results_uri)
    return _read_json(s3, bucket, keys[-1][1])


def find_commit(s3: S3Client, results_uri: str, run_id: str | None) -> dict[str, Any]:
    """The latest commit, or the one that published `run_id`.

    Only committed runs count: a run prefix without a commit is a run that died or is still writing, and its
    files may be incomplete.
    """
    if run_id is None:
        return latest_commit(s3, results_uri)
    commits = list_commits(s3, results_uri)
    if not commits:
        raise _no_commits(results_uri)
    for commit in reversed(commits):
        if commit.get("run_id") == run_id:
            return commit
    raise OpsError(f"unknown run {run_id}: no commit under {results_uri} names it (see `fruits runs`)")


def run_uri(results_uri: str, commit: dict[str, Any]) -> str:
    """The S3 URI of the committed run's own prefix."""
    bucket, prefix = split_s3_uri(results_uri)
    return f"s3://{bucket}/{prefix}{commit['run_prefix']}"


@dataclass(frozen=True)
class Download:
    """What `download_run` fetched and what the run did not have."""

    files: list[Path]
    missing: list[str]


def download_run(s3: S3Client, results_uri: str, commit: dict[str, Any], dest: Path) -> Download:
    """Copy the run's results, manifest, rejects and plots into `dest`.

    Files come from the run prefix the commit names, not from the top-level copies: those are replaced after
    each commit, so during a new run's publication they may already belong to a newer run than the commit we
    read.
    """
    bucket, prefix = split_s3_uri(results_uri)
    run_prefix = prefix + commit["run_prefix"]
    dest.mkdir(parents=True, exist_ok=True)
    files, missing = [], []
    for name in RUN_FILES:
        target = dest / name
        try:
            s3.download_file(bucket, run_prefix + name, str(target))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey"}:
                raise
            if name in REQUIRED_RUN_FILES:
                raise OpsError(
                    f"run {commit.get('run_id')} is committed but s3://{bucket}/{run_prefix}{name} is missing"
                ) from None
            missing.append(name)
            continue
        files.append(target)
    return Download(files, missing)


def commit_predates(commit: dict[str, Any], started: datetime | None) -> bool:
    """True when the commit was made before the step started, i.e. it is not the step's own run.

    False when either time is unknown or unparsable: the check only adds a warning and must not break status.
    """
    if started is None:
        return False
    try:
        committed = datetime.fromisoformat(str(commit["committed_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return False
    if committed.tzinfo is None or started.tzinfo is None:
        return False
    return committed < started


# --- status ----------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def step_report(
    emr: EmrClient, s3: S3Client, outputs: StackOutputs, step_id: str | None, log_lines: int = 20
) -> dict[str, Any]:
    """Everything `fruits status` shows, as plain JSON-ready values.

    Which outputs are read depends on the state, so a stack missing LogUri can still report a completed run.
    """
    cluster_id = outputs["ClusterId"]
    if step_id is None:
        step = latest_job_step(emr, cluster_id, outputs["JobScriptUri"])
    else:
        step = describe_step(emr, cluster_id, step_id)
    status = step["Status"]
    timeline = status.get("Timeline", {})
    report: dict[str, Any] = {
        "cluster_id": cluster_id,
        "step_id": step["Id"],
        "name": step.get("Name"),
        "state": status["State"],
        "created": _iso(timeline.get("CreationDateTime")),
        "started": _iso(timeline.get("StartDateTime")),
        "ended": _iso(timeline.get("EndDateTime")),
    }
    if status["State"] == "COMPLETED":
        results_uri = outputs["ResultsUri"]
        try:
            commit = latest_commit(s3, results_uri)
        except OpsError:
            # A step can complete without publishing (e.g. nothing to do); the state is still the answer.
            commit = None
        report["commit"] = commit
        report["results_uri"] = results_uri
        if commit is not None:
            report["run_uri"] = run_uri(results_uri, commit)
            report["commit_predates_step"] = commit_predates(commit, timeline.get("StartDateTime"))
    elif status["State"] in FAILED_STEP_STATES:
        failure = status.get("FailureDetails", {})
        report["reason"] = (
            failure.get("Message")
            or failure.get("Reason")
            or status.get("StateChangeReason", {}).get("Message")
        )
        report["failure_log"] = failure.get("LogFile")
        stderr_uri = step_stderr_uri(outputs["LogUri"], cluster_id, step["Id"])
        report["stderr_uri"] = stderr_uri
        report["stderr_tail"] = read_log_tail(s3, stderr_uri, log_lines)
    return report
