"""The `fruits` operator commands against moto in server mode on 127.0.0.1.

The server is the session's (`moto_server` in tests/moto_server.py: a ThreadedMotoServer in this process),
so the tests can reach into moto's EMR backend: moto's steps never change state by themselves, and a test
that wants a completed or failed step sets it there. moto's EMR always answers for us-east-1, so everything
here uses that region. A cluster created by a CloudFormation template comes up terminated in moto, so the
cluster is made with run_job_flow and a tiny stack only carries the real stack's output keys. The server is
shared with other test modules, so nothing is reset: each test gets its own buckets and cluster, and deletes
its stacks.
"""

from __future__ import annotations

import gzip
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.emr.models import emr_backends

from fruits.ops import aws
from fruits.ops.cli import main

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_env(moto_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """moto_env points boto3 at moto; also hide the developer's AWS files and work in a temporary folder."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.chdir(tmp_path)  # `fruits results` without --dest writes under the working directory
    # Werkzeug logs every request to stderr, which would mix with the CLI's one-line errors under test.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture
def s3() -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def emr() -> Any:
    return boto3.client("emr", region_name=REGION)


def make_cluster(emr: Any) -> str:
    """A cluster that stays WAITING (without KeepJobFlowAliveWhenNoSteps moto terminates it at once)."""
    return emr.run_job_flow(
        Name="fruits",
        ReleaseLabel="emr-7.13.0",
        Instances={
            "MasterInstanceType": "m5.xlarge",
            "InstanceCount": 1,
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]


@dataclass
class Deployment:
    """What the deployed stack would name: its buckets, cluster and URIs, unique to one test."""

    cluster_id: str
    results_bucket: str
    logs_bucket: str
    artifacts_bucket: str
    stacks: list[str] = field(default_factory=list)

    @property
    def results_uri(self) -> str:
        return f"s3://{self.results_bucket}/fruits/"

    @property
    def script_uri(self) -> str:
        return f"s3://{self.artifacts_bucket}/job/featurize_pca.py"

    @property
    def py_files_uri(self) -> str:
        return f"s3://{self.artifacts_bucket}/job/fruits.zip"

    def outputs(self, cluster_id: str | None = None) -> dict[str, str]:
        """The output keys the real stack provides, with this test's values."""
        return {
            "ClusterId": cluster_id or self.cluster_id,
            "InputUri": "s3://fruits-input/images/",
            "ResultsUri": self.results_uri,
            "FeatureStoreUri": f"s3://{self.results_bucket}/features/",
            "JobScriptUri": self.script_uri,
            "JobPyFilesUri": self.py_files_uri,
            "LogUri": f"s3://{self.logs_bucket}/emr/",
            "InputBucketName": "fruits-input",
            "ResultsBucketName": self.results_bucket,
            "ArtifactsBucketName": self.artifacts_bucket,
            "LogsBucketName": self.logs_bucket,
            "StepSparkSubmitOptions": f"--deploy-mode cluster --py-files {self.py_files_uri}",
            "StepApplicationLocation": self.script_uri,
        }

    def make_stack(self, name: str, outputs: dict[str, str]) -> None:
        """A one-resource stack whose only purpose is to carry `outputs` (deleted after the test)."""
        template = {
            "Resources": {
                "Marker": {
                    "Type": "AWS::SSM::Parameter",
                    "Properties": {
                        "Name": f"/test/{self.results_bucket}/{name}",
                        "Type": "String",
                        "Value": "x",
                    },
                }
            },
            "Outputs": {key: {"Value": value} for key, value in outputs.items()},
        }
        cfn = boto3.client("cloudformation", region_name=REGION)
        cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))
        self.stacks.append(name)


@pytest.fixture
def dep(emr: Any, s3: Any) -> Iterator[Deployment]:
    """The stack under its default name: fresh buckets, a waiting cluster and the outputs naming them."""
    suffix = secrets.token_hex(4)
    deployment = Deployment(
        cluster_id=make_cluster(emr),
        results_bucket=f"fruits-results-{suffix}",
        logs_bucket=f"fruits-logs-{suffix}",
        artifacts_bucket=f"fruits-artifacts-{suffix}",
    )
    for bucket in (deployment.results_bucket, deployment.logs_bucket, deployment.artifacts_bucket):
        s3.create_bucket(Bucket=bucket)
    deployment.make_stack(aws.DEFAULT_STACK, deployment.outputs())
    yield deployment
    cfn = boto3.client("cloudformation", region_name=REGION)
    for name in deployment.stacks:
        cfn.delete_stack(StackName=name)


def set_step_state(cluster: str, step_id: str, state: str, reason: str | None = None) -> None:
    """Move a step the way EMR would; moto leaves steps where they were created (RUNNING/PENDING)."""
    backend = emr_backends[DEFAULT_ACCOUNT_ID][REGION]
    (step,) = [s for s in backend.clusters[cluster].steps if s.id == step_id]
    step.state = state
    if reason is not None:
        # moto serialises this attribute as Status.StateChangeReason.Message.
        step.last_state_change_reason = reason


def put_run(
    s3: Any,
    dep: Deployment,
    number: int,
    run_id: str,
    counts: dict[str, int],
    files: tuple[str, ...] = aws.RUN_FILES,
) -> None:
    """Write a run's files under its prefix, then the commit object that publishes it (the job's order)."""
    prefix = "fruits/"
    for name in files:
        key = f"{prefix}runs/{run_id}/{name}"
        s3.put_object(Bucket=dep.results_bucket, Key=key, Body=f"{run_id}:{name}".encode())
    commit = {
        "number": number,
        "run_id": run_id,
        "run_prefix": f"runs/{run_id}/",
        "committed_at": f"2026-01-0{number}T10:00:00+00:00",
        "counts": counts,
        "manifest": f"runs/{run_id}/manifest.json",
    }
    key = f"{prefix}_commits/{number:08d}.json"
    s3.put_object(Bucket=dep.results_bucket, Key=key, Body=json.dumps(commit).encode())


def job_steps(emr: Any, cluster: str) -> list[dict[str, Any]]:
    return emr.list_steps(ClusterId=cluster)["Steps"]


def one_error_line(err: str) -> str:
    """The CLI's error output must be exactly one line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- submit ----------------------------------------------------------------------------------------------


def test_submit_adds_the_spark_submit_step_from_the_outputs(emr: Any, dep: Deployment, capsys) -> None:
    code = main(["submit", "--", "--k", "50", "--limit", "1000"])

    out = capsys.readouterr().out
    (step,) = job_steps(emr, dep.cluster_id)
    assert code == 0
    assert out.strip() == step["Id"]  # stdout is only the step id, for STEP=$(fruits submit)
    assert step["Name"] == aws.DEFAULT_STEP_NAME
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == [
        "spark-submit",
        "--deploy-mode",
        "cluster",
        "--py-files",
        dep.py_files_uri,
        "--conf",
        "spark.yarn.maxAppAttempts=1",
        dep.script_uri,
        "--k",
        "50",
        "--limit",
        "1000",
    ]


def test_submit_uses_the_named_stack_and_step_name(emr: Any, dep: Deployment, capsys) -> None:
    other_cluster = make_cluster(emr)
    dep.make_stack("FruitsEmrStack-staging", dep.outputs(other_cluster))

    code = main(["submit", "--stack", "FruitsEmrStack-staging", "--name", "nightly"])

    assert code == 0
    assert job_steps(emr, dep.cluster_id) == []
    (step,) = job_steps(emr, other_cluster)
    assert step["Name"] == "nightly"
    assert step["Config"]["Args"][-1] == dep.script_uri  # no job options: the script is the last argument


def test_submit_wait_reports_the_final_state(emr: Any, dep: Deployment, capsys) -> None:
    # Fail the step from another thread while the CLI polls, as EMR would some time after submission.
    def fail_the_step() -> None:
        for _ in range(200):
            steps = job_steps(emr, dep.cluster_id)
            if steps:
                set_step_state(dep.cluster_id, steps[0]["Id"], "FAILED", "Step failed with exitCode 1.")
                return
            threading.Event().wait(0.02)

    failer = threading.Thread(target=fail_the_step)
    failer.start()
    code = main(["submit", "--wait", "--poll", "0.05"])
    failer.join()

    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out
    assert "Step failed with exitCode 1." in out


def test_wait_for_step_polls_until_a_final_state(emr: Any, dep: Deployment) -> None:
    step_id = emr.add_job_flow_steps(JobFlowId=dep.cluster_id, Steps=[aws.job_step("x", ["true"])])[
        "StepIds"
    ][0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            set_step_state(dep.cluster_id, step_id, "COMPLETED")

    step = aws.wait_for_step(emr, dep.cluster_id, step_id, poll_seconds=7, sleep=sleep)

    assert step["Status"]["State"] == "COMPLETED"
    assert sleeps == [7, 7]


# --- status ----------------------------------------------------------------------------------------------


def test_status_completed_reports_the_latest_commit(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    main(["submit"])
    step_id = capsys.readouterr().out.strip()
    set_step_state(dep.cluster_id, step_id, "COMPLETED")
    put_run(s3, dep, 1, "run-a", {"found": 10, "reused": 0, "featurized": 10, "rejected": 0})
    put_run(s3, dep, 2, "run-b", {"found": 11, "reused": 10, "featurized": 1, "rejected": 2})

    code = main(["status", step_id])

    out = capsys.readouterr().out
    assert code == 0
    assert "COMPLETED" in out
    assert "run run-b" in out
    assert "found 11  reused 10  featurized 1  rejected 2" in out
    assert f"s3://{dep.results_bucket}/fruits/runs/run-b/" in out

    assert main(["status", step_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "COMPLETED"
    assert report["commit"]["counts"] == {"found": 11, "reused": 10, "featurized": 1, "rejected": 2}
    assert report["run_uri"] == f"s3://{dep.results_bucket}/fruits/runs/run-b/"


def test_status_without_id_follows_the_newest_job_step(emr: Any, dep: Deployment, capsys) -> None:
    main(["submit", "--name", "first"])
    main(["submit", "--name", "second"])
    # Another team's step, newer than ours, must not be mistaken for the job.
    emr.add_job_flow_steps(JobFlowId=dep.cluster_id, Steps=[aws.job_step("someone-else", ["echo", "hi"])])
    capsys.readouterr()

    assert main(["status", "--json"]) == 0

    assert json.loads(capsys.readouterr().out)["name"] == "second"


@pytest.mark.parametrize("log_uploaded", [True, False], ids=["log-uploaded", "log-not-yet-uploaded"])
def test_status_failed_exits_1_and_names_the_stderr_log(
    emr: Any, s3: Any, dep: Deployment, capsys, log_uploaded: bool
) -> None:
    main(["submit"])
    step_id = capsys.readouterr().out.strip()
    set_step_state(dep.cluster_id, step_id, "FAILED", "Step failed with exitCode 1.")
    stderr_key = f"emr/{dep.cluster_id}/steps/{step_id}/stderr.gz"
    if log_uploaded:
        log = (
            "\n".join(f"line {i}" for i in range(100)) + "\nValueError: no images under s3://fruits-input/\n"
        )
        s3.put_object(Bucket=dep.logs_bucket, Key=stderr_key, Body=gzip.compress(log.encode()))

    code = main(["status", step_id])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out
    assert "Step failed with exitCode 1." in out
    assert f"s3://{dep.logs_bucket}/{stderr_key}" in out
    if log_uploaded:
        assert "ValueError: no images under s3://fruits-input/" in out
        assert "line 79" not in out  # only the tail
    else:
        assert "not readable yet" in out


def test_status_of_a_running_step_exits_0(dep: Deployment, capsys) -> None:
    main(["submit"])
    capsys.readouterr()

    assert main(["status"]) == 0
    assert "RUNNING" in capsys.readouterr().out


# --- results ---------------------------------------------------------------------------------------------


def test_results_downloads_the_latest_commit(s3: Any, dep: Deployment, tmp_path: Path, capsys) -> None:
    put_run(s3, dep, 1, "run-a", {"found": 1, "reused": 0, "featurized": 1, "rejected": 0})
    put_run(s3, dep, 2, "run-b", {"found": 2, "reused": 1, "featurized": 1, "rejected": 0})
    # A newer run that wrote files but never committed (died, or still publishing) must be ignored.
    s3.put_object(Bucket=dep.results_bucket, Key="fruits/runs/run-c/results.csv", Body=b"run-c:results.csv")

    code = main(["results", "--dest", str(tmp_path / "out")])

    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(aws.RUN_FILES)
    for name in aws.RUN_FILES:
        assert (tmp_path / "out" / name).read_text() == f"run-b:{name}"


def test_results_downloads_a_given_run_and_reports_missing_plots(
    s3: Any, dep: Deployment, tmp_path: Path, capsys
) -> None:
    put_run(s3, dep, 1, "run-a", {}, files=("results.csv", "manifest.json", "rejected.csv"))
    put_run(s3, dep, 2, "run-b", {})

    code = main(["results", "--run", "run-a"])  # default destination under the working directory

    err = capsys.readouterr().err
    dest = tmp_path / "fruits-results" / "run-a"
    assert code == 0
    assert (dest / "results.csv").read_text() == "run-a:results.csv"
    assert not (dest / "pca_scatter.png").exists()
    assert "explained_variance.png" in err and "pca_scatter.png" in err


def test_results_unknown_run_exits_2(s3: Any, dep: Deployment, capsys) -> None:
    put_run(s3, dep, 1, "run-a", {})

    assert main(["results", "--run", "run-zzz"]) == 2
    assert "unknown run run-zzz" in one_error_line(capsys.readouterr().err)


# --- runs ------------------------------------------------------------------------------------------------


def test_runs_lists_commits_in_order(s3: Any, dep: Deployment, capsys) -> None:
    # Written out of order, with a stray object the listing must skip.
    put_run(s3, dep, 3, "run-c", {"found": 30, "reused": 20, "featurized": 10, "rejected": 1})
    put_run(s3, dep, 1, "run-a", {"found": 10, "reused": 0, "featurized": 10, "rejected": 0})
    put_run(s3, dep, 2, "run-b", {"found": 20, "reused": 10, "featurized": 10, "rejected": 0})
    s3.put_object(Bucket=dep.results_bucket, Key="fruits/_commits/README", Body=b"not a commit")

    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert lines[0].split() == [
        "NUMBER",
        "RUN",
        "ID",
        "COMMITTED",
        "AT",
        "FOUND",
        "REUSED",
        "FEATURIZED",
        "REJECTED",
    ]
    assert [line.split()[:2] for line in lines[1:3]] == [["1", "run-a"], ["2", "run-b"]]
    assert lines[3].split()[:3] == ["*", "3", "run-c"]  # the current run is marked
    assert lines[3].split()[-4:] == ["30", "20", "10", "1"]

    assert main(["runs", "--json"]) == 0
    assert [c["number"] for c in json.loads(capsys.readouterr().out)] == [1, 2, 3]


def test_latest_commit_is_the_highest_number_not_the_last_name(s3: Any, dep: Deployment) -> None:
    # S3 lists names lexically: "100000000.json" comes before "99999999.json" once the padding runs out.
    for number in (99_999_999, 100_000_000):
        body = {"number": number, "run_id": f"run-{number}", "run_prefix": f"runs/run-{number}/"}
        s3.put_object(
            Bucket=dep.results_bucket, Key=f"fruits/_commits/{number:08d}.json", Body=json.dumps(body)
        )

    assert aws.latest_commit(s3, dep.results_uri)["number"] == 100_000_000


# --- error paths -----------------------------------------------------------------------------------------


def test_no_such_stack_exits_2(dep: Deployment, capsys) -> None:
    assert main(["runs", "--stack", "NoSuchStack"]) == 2
    assert "no such stack: NoSuchStack" in one_error_line(capsys.readouterr().err)


def test_missing_output_key_exits_2_and_adds_no_step(emr: Any, dep: Deployment, capsys) -> None:
    outputs = dep.outputs()
    del outputs["JobPyFilesUri"]
    dep.make_stack("OldStack", outputs)

    assert main(["submit", "--stack", "OldStack"]) == 2
    assert "no output 'JobPyFilesUri'" in one_error_line(capsys.readouterr().err)
    assert job_steps(emr, dep.cluster_id) == []


def test_submit_to_a_terminated_cluster_exits_2(emr: Any, dep: Deployment, capsys) -> None:
    emr.terminate_job_flows(JobFlowIds=[dep.cluster_id])

    assert main(["submit"]) == 2
    assert f"cluster {dep.cluster_id} is TERMINATED" in one_error_line(capsys.readouterr().err)
    assert job_steps(emr, dep.cluster_id) == []


@pytest.mark.parametrize("command", [["runs"], ["runs", "--json"], ["results"]])
def test_no_commits_yet_exits_2(dep: Deployment, capsys, command: list[str]) -> None:
    assert main(command) == 2
    assert f"no commits yet under {dep.results_uri}" in one_error_line(capsys.readouterr().err)


def test_status_with_no_job_step_exits_2(dep: Deployment, capsys) -> None:
    assert main(["status"]) == 2
    assert "no step of the Fruits job" in one_error_line(capsys.readouterr().err)


def test_status_unknown_step_exits_2(dep: Deployment, capsys) -> None:
    assert main(["status", "s-NOSUCHSTEP"]) == 2
    assert "no step s-NOSUCHSTEP" in one_error_line(capsys.readouterr().err)


def test_job_options_without_submit_are_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "--", "--k", "5"])
    assert exit_info.value.code == 2


# --- what moto cannot show -------------------------------------------------------------------------------


class FailedStepEmr:
    """An EMR client whose one step failed with FailureDetails, which moto never fills in."""

    def __init__(self, step_id: str) -> None:
        self.step = {
            "Id": step_id,
            "Name": "fruits-featurize-pca",
            "Status": {
                "State": "FAILED",
                "StateChangeReason": {"Message": "generic"},
                "FailureDetails": {
                    "Reason": "Unknown error.",
                    "Message": "ValueError: no images under the input",
                    "LogFile": "s3://logs/emr/j-1/containers/application_1/container_1/stderr.gz",
                },
                "Timeline": {},
            },
        }

    def describe_step(self, ClusterId: str, StepId: str) -> dict[str, Any]:  # boto3 spells them so
        return {"Step": self.step}


def test_failure_details_are_preferred_and_their_log_kept(s3: Any, dep: Deployment) -> None:
    outputs = aws.StackOutputs("FruitsEmrStack", dep.outputs())

    report = aws.step_report(FailedStepEmr("s-1"), s3, outputs, "s-1")

    assert report["reason"] == "ValueError: no images under the input"
    assert report["failure_log"].endswith("container_1/stderr.gz")
    assert report["stderr_uri"] == f"s3://{dep.logs_bucket}/emr/{dep.cluster_id}/steps/s-1/stderr.gz"
    assert report["stderr_tail"] is None  # not uploaded yet


def test_a_commit_older_than_the_step_is_flagged() -> None:
    commit = {"committed_at": "2026-01-02T10:00:00+00:00"}
    started = datetime(2026, 1, 2, 11, 0, tzinfo=UTC)

    assert aws.commit_predates(commit, started)
    assert not aws.commit_predates(commit, datetime(2026, 1, 2, 9, 0, tzinfo=UTC))
    assert not aws.commit_predates(commit, None)  # moto and a pending step have no start time
    assert not aws.commit_predates({"committed_at": "garbled"}, started)
