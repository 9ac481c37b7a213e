"""`fruits status` and `fruits runs` with autorun: a triggered run is an EMR step (on the stack's cluster or on a
transient one) plus its outcome record, and is shown like any other. Against moto, with the real stack's outputs
and the output the autorun stack adds (tests/ops_stack.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fruits import commits, layout, outcomes
from fruits.ops.cli import main
from fruits.storage import open_store
from tests.ops_stack import Deployment, set_cluster_state, set_step_state

pytestmark = pytest.mark.usefixtures("aws_env")

STACK = "FruitsEmrStack-auto"
PREFIX = "fruits-featurize-run-"


def _autorun_stack(dep: Deployment) -> None:
    dep.make_stack(STACK, {**dep.outputs(), "AutorunClusterNamePrefix": PREFIX})


def _transient(emr: Any, execution: str) -> str:
    return emr.run_job_flow(
        Name=f"{PREFIX}{execution}",
        ReleaseLabel="emr-7.13.0",
        Instances={
            "MasterInstanceType": "m5.xlarge",
            "InstanceCount": 1,
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]


def _triggered_step(emr: Any, dep: Deployment, cluster: str, execution: str) -> str:
    """The step the state machine adds (its arguments up to the trigger, as cdk/fruits_infra/step.py spells them)."""
    script = dep.outputs()["StepApplicationLocation"]
    args = ["timeout", "--kill-after=60", "14400", "spark-submit", "--deploy-mode", "cluster", script]
    args += ["--skip-unchanged", "--allow-empty", "--wait", "1800", "--trigger", execution]
    step = {
        "Name": f"fruits-autorun-{execution}",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args},
    }
    return emr.add_job_flow_steps(JobFlowId=cluster, Steps=[step])["StepIds"][0]


def _record(s3: Any, dep: Deployment, started: datetime, status: str, execution: str, **fields: Any) -> None:
    record = outcomes.Outcome(
        run_id=commits.new_run_id(started),
        status=status,
        exit_code=2 if status == outcomes.FAILED else 0,
        reason=fields.pop("reason", None),
        started_at=started.isoformat(),
        finished_at=(started + timedelta(minutes=3)).isoformat(),
        input="s3://input/images/",
        output=dep.results_uri,
        trigger=execution,
        **fields,
    )
    assert outcomes.write(open_store(dep.results_uri, s3_client=s3), record)


def test_status_follows_a_triggered_run_on_its_transient_cluster(
    emr: Any, s3: Any, dep: Deployment, capsys
) -> None:
    _autorun_stack(dep)
    set_cluster_state(dep.cluster_id, "TERMINATED")  # idle-terminated: the usual state with autorun
    cluster = _transient(emr, "exec-1")
    step_id = _triggered_step(emr, dep, cluster, "exec-1")
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    set_step_state(cluster, step_id, "COMPLETED", started=started)
    since = {"number": 4, "run_id": commits.new_run_id(started - timedelta(days=1)), "committed_at": "..."}
    _record(
        s3,
        dep,
        started + timedelta(minutes=1),
        outcomes.UNCHANGED,
        "exec-1",
        details={"unchanged_since": since},
    )

    assert (
        main(["status", "--stack", STACK]) == 0
    )  # the newest job step is the triggered one, no redeploy error
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"succeeded: nothing new since commit 4 (run {since['run_id']}): no run committed"
    assert lines[1].split()[:2] == ["step", step_id] and lines[2].split()[1] == cluster
    assert "triggered runs start their own" in captured.err

    assert main(["status", step_id, "--stack", STACK]) == 0  # found by its id on the transient cluster
    assert capsys.readouterr().out.splitlines()[0].startswith("succeeded: nothing new since commit 4")


def test_a_failed_triggered_run_exits_1_with_its_reason(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    _autorun_stack(dep)
    step_id = _triggered_step(emr, dep, dep.cluster_id, "exec-2")  # the stack's cluster was up: it ran there
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    set_step_state(dep.cluster_id, step_id, "FAILED", "Step failed with exitCode 2.", started=started)
    _record(s3, dep, started + timedelta(minutes=1), outcomes.FAILED, "exec-2", reason="S3 refused a request")

    assert main(["status", "--stack", STACK]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "failed: S3 refused a request"


def test_without_autorun_a_terminated_cluster_still_gets_the_redeploy_advice(dep: Deployment, capsys) -> None:
    set_cluster_state(dep.cluster_id, "TERMINATED")
    assert main(["status"]) == 2
    assert "cannot run steps again" in capsys.readouterr().err


def test_runs_names_the_trigger_of_triggered_runs(s3: Any, dep: Deployment, capsys) -> None:
    store = open_store(dep.results_uri, s3_client=s3)
    t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    for minutes, trigger in ((1, None), (2, "exec-3")):
        run_id = commits.new_run_id(t0 + timedelta(minutes=minutes))
        store.write_bytes(layout.run_prefix(run_id) + layout.MANIFEST_JSON, b"{}")
        payload = {"counts": {"found": minutes}, **({"trigger": trigger} if trigger else {})}
        commits.commit_run(store, run_id, payload, now=t0 + timedelta(minutes=minutes))

    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "TRIGGER"
    assert lines[1].split()[-1] == "-" and lines[2].split()[-1] == "exec-3"
