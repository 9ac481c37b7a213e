"""`fruits status`: one step's outcome (succeeded, failed or still running) with what explains it, as plain data.

Every step waits for its YARN application (the stack's step, a console step, ``fruits submit``), so EMR's step
state is the run's: COMPLETED when the job exited 0, FAILED otherwise. What the run did, or why it failed, comes
from its outcome record under the results (fruits.outcomes: every run whose options parsed writes one), found by
the YARN application the step's log names or, until EMR has copied that log, by when the run started (a cluster
runs one step at a time). A record wins over the step's state: a step that only handed its application to YARN
(``spark.yarn.submit.waitAppCompletion=false``) completes even when the job fails, and its record says so. Without
a record (a run killed outright writes none, or the step's --output points elsewhere) the driver log's last
error line, then EMR's own reason, say why.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fruits import commits, outcomes

from . import aws, logs, runs

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
#: A run starts after its step: its driver waits for YARN and Python (minutes on a busy cluster).
_RUN_STARTS_WITHIN = timedelta(minutes=30)
_JOB_ERROR = re.compile(r"featurize_pca: error: (.*)$")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


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
    cluster_id, step = aws.find_job_step(emr, outputs, step_id)
    if cluster_id != outputs["ClusterId"]:  # a triggered run's transient cluster
        cluster_state = aws.cluster_state(emr, cluster_id)
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
        try:
            commit = commits.latest_commit(store)
        except commits.DamagedCommit as error:
            commit = None
            report["commit_damaged"] = f"{error}; {runs.DAMAGED_COMMIT_FIX}"
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
    found = None
    if state != "PENDING":
        found = logs.step_logs(s3, outputs["LogUri"], cluster_id, step["Id"])
        # Tails only where they explain something: a failure, or a run that published nothing.
        explain = state in aws.FAILED_STEP_STATES or (state == "COMPLETED" and not report["published"])
        report.update(
            stderr_uri=found.step_stderr_uri,
            application_id=found.application_id,
            containers_uri=found.containers_uri,
            driver_log_uri=found.driver_log_uri,
        )
        if explain:  # None: not uploaded (yet)
            report["stderr_tail"] = (
                None if found.step_stderr is None else logs.tail(found.step_stderr, log_lines)
            )
            report["driver_log_tail"] = (
                None if found.driver_log is None else logs.tail(found.driver_log, log_lines)
            )
    record = None
    if state != "PENDING":
        record = run_record(s3, outputs, timeline, found.application_id if found else None)
    report["run_outcome"] = record.to_json() if record else None
    report["outcome"], report["summary"] = judge(report, record, found.driver_log if found else None)
    return report


def run_record(
    s3: aws.S3Client, outputs: aws.StackOutputs, timeline: dict[str, Any], application_id: str | None
) -> outcomes.Outcome | None:
    """The outcome record of the step's run: the one of its YARN application, else the newest that started
    while the step ran. None when there is none (yet)."""
    begun = timeline.get("StartDateTime")
    if begun is None:
        return None
    ended = timeline.get("EndDateTime") or datetime.now(UTC)
    begun, ended = _aware(begun), _aware(ended)
    store = runs.results_store(s3, outputs["ResultsUri"])
    records = outcomes.read_between(
        store, begun - timedelta(minutes=1), min(ended, begun + _RUN_STARTS_WITHIN)
    )
    if application_id:
        records = [r for r in records if r.application_id in (application_id, None)]
    return records[-1] if records else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def judge(report: dict[str, Any], record: outcomes.Outcome | None, driver_log: str | None) -> tuple[str, str]:
    """(succeeded | failed | running, one line saying what happened) for a step's report."""
    state = report["state"]
    if state in ("PENDING", "RUNNING", "CANCEL_PENDING"):
        since = f" since {report['started']}" if report.get("started") else ""
        return RUNNING, f"step {report['step_id']} is {state}{since}; its run is not over"
    if record is not None and record.status == outcomes.FAILED:
        return FAILED, record.reason or f"the job exited with status {record.exit_code}"
    if state in aws.FAILED_STEP_STATES:
        reason = _driver_error(driver_log) or report.get("reason") or f"EMR reports the step {state}"
        return FAILED, reason
    if record is None:
        if report.get("published"):
            commit = report["commit"]
            return SUCCEEDED, f"run {commit['run_id']} committed as #{commit['number']}"
        return SUCCEEDED, (
            "completed without publishing a run, and no outcome record of it is under the results "
            "(a step with another --output writes it there; see the driver log)"
        )
    if record.status == outcomes.CHECKED:
        return SUCCEEDED, "the cluster check passed: this cluster can run the job (nothing was committed)"
    if record.status == outcomes.NOTHING_TO_DO:
        return SUCCEEDED, f"nothing to featurize under {record.input}: no run committed"
    if record.status == outcomes.UNCHANGED:
        since = (record.details or {}).get("unchanged_since") or {}
        return SUCCEEDED, (
            f"nothing new since commit {since.get('number')} (run {since.get('run_id')}): no run committed"
        )
    counts = record.counts or {}
    found = " = ".join(
        [
            f"found {counts.get('found')}",
            f"featurized {counts.get('featurized')} + rejected {counts.get('rejected')}",
        ]
    )
    return SUCCEEDED, f"run {record.run_id} committed as #{record.commit}: {found}"


def _driver_error(driver_log: str | None) -> str | None:
    """The job's own one-line error, the last line it printed before failing."""
    for line in reversed((driver_log or "").splitlines()):
        match = _JOB_ERROR.search(line)
        if match:
            return match.group(1).strip()
    return None
