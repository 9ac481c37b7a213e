"""`fruits status`: one step's state with what explains it (its run, or its failure and logs), as plain data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fruits import commits

from . import aws, logs, runs


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _find_step(emr: aws.EmrClient, outputs: aws.StackOutputs, step_id: str | None) -> dict[str, Any]:
    if step_id is None:
        return aws.latest_job_step(emr, outputs)
    return aws.describe_step(emr, outputs["ClusterId"], step_id)


def step_report(
    emr: aws.EmrClient,
    s3: aws.S3Client,
    outputs: aws.StackOutputs,
    step_id: str | None,
    log_lines: int = 20,
    cluster_state: str | None = None,
) -> dict[str, Any]:
    """Everything `fruits status` shows, as JSON-ready values.

    `published` says whether the step published a run of its own: False when it completed but the latest
    commit is missing or older than the step (a run with nothing to do, e.g. the job's --allow-empty).
    Logs are looked up once the step has started: the step's stderr names the YARN application, whose
    application master container holds the driver's log.
    """
    cluster_id = outputs["ClusterId"]
    step = _find_step(emr, outputs, step_id)
    status = step["Status"]
    state = status["State"]
    timeline = status.get("Timeline", {})
    report: dict[str, Any] = {
        "cluster_id": cluster_id,
        "cluster_state": cluster_state,
        "step_id": step["Id"],
        "name": step.get("Name"),
        "state": state,
        "created": _iso(timeline.get("CreationDateTime")),
        "started": _iso(timeline.get("StartDateTime")),
        "ended": _iso(timeline.get("EndDateTime")),
    }
    if state == "COMPLETED":
        store = runs.results_store(s3, outputs["ResultsUri"])
        commit = commits.latest_commit(store)
        predates = commit is not None and runs.commit_predates(commit, timeline.get("StartDateTime"))
        report.update(
            commit=commit,
            results_uri=outputs["ResultsUri"],
            run_uri=runs.run_uri(store, commit) if commit else None,
            commit_predates_step=predates,
            published=commit is not None and not predates,
        )
    elif state in aws.FAILED_STEP_STATES:
        failure = status.get("FailureDetails", {})
        report["reason"] = (
            failure.get("Message")
            or failure.get("Reason")
            or status.get("StateChangeReason", {}).get("Message")
        )
        report["failure_log"] = failure.get("LogFile")
    if state != "PENDING":
        found = logs.step_logs(s3, outputs["LogUri"], cluster_id, step["Id"])
        # Tails only where they explain something: a failure, or a run that published nothing.
        explain = state in aws.FAILED_STEP_STATES or (state == "COMPLETED" and not report["published"])
        report.update(
            stderr_uri=found.step_stderr_uri,
            application_id=found.application_id,
            containers_uri=found.containers_uri,
            driver_stderr_uri=found.driver_stderr_uri,
        )
        if explain:  # None: not uploaded (yet)
            report["stderr_tail"] = (
                None if found.step_stderr is None else logs.tail(found.step_stderr, log_lines)
            )
            report["driver_stderr_tail"] = (
                None if found.driver_stderr is None else logs.tail(found.driver_stderr, log_lines)
            )
    return report
