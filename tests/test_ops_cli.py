"""The `fruits` operator commands against moto in server mode on 127.0.0.1, with the real stack's outputs.

The stack, its outputs and the moto fixtures are in tests/ops_stack.py (a plugin loaded by conftest.py). moto's steps never change state by
themselves: a test that wants a completed or failed step sets it in moto's backend. Runs are published with
the job's own code (fruits.commits over an S3 Store), so the layout the CLI reads is the one the job writes.
"""

from __future__ import annotations

import gzip
import json
import shlex
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fruits import commits, layout, outcomes
from fruits.ops import aws, runs
from fruits.ops.cli import main
from fruits.ops.status import step_report
from fruits.storage import Store, open_store
from tests.ops_stack import Deployment, make_cluster, set_cluster_state, set_step_state

pytestmark = pytest.mark.usefixtures("aws_env")

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def results(s3: Any, dep: Deployment) -> Store:
    """The deployment's output root, as the job opens it."""
    return open_store(dep.results_uri, s3_client=s3)


def publish_run(
    s3: Any,
    dep: Deployment,
    minutes: int,
    counts: dict[str, int] | None = None,
    files: tuple[str, ...] = layout.PUBLISHED_NAMES,
) -> dict[str, Any]:
    """Write a run's files under its prefix, then commit it with the job's commit_run; returns the commit."""
    store = results(s3, dep)
    run_id = commits.new_run_id(T0 + timedelta(minutes=minutes))
    for name in files:
        store.write_bytes(layout.run_prefix(run_id) + name, f"{run_id}:{name}".encode())
    payload = {"counts": counts or {}, layout.COMMIT_MANIFEST_FIELD: layout.manifest_key(run_id)}
    return commits.commit_run(store, run_id, payload, now=T0 + timedelta(minutes=minutes, seconds=30))


def job_steps(emr: Any, cluster: str) -> list[dict[str, Any]]:
    return emr.list_steps(ClusterId=cluster)["Steps"]


def submitted(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run `fruits submit ...` and return the step id it printed."""
    assert main(["submit", *args]) == 0
    return capsys.readouterr().out.strip()


def one_error_line(err: str) -> str:
    """The CLI's error output must be exactly one line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- the fake stack is the real one ----------------------------------------------------------------------


def test_the_test_stack_has_every_output_of_the_real_stack(dep: Deployment) -> None:
    from fruits_infra.stacks import OUTPUT_KEYS  # on sys.path once the app is synthesized

    outputs = dep.outputs()
    assert set(OUTPUT_KEYS) <= set(outputs)
    assert all(isinstance(value, str) and value for value in outputs.values())
    # Resolved with this test's resources, as CloudFormation would: no intrinsic function is left.
    assert outputs["ClusterId"] == dep.cluster_id
    assert outputs["ResultsUri"].startswith(f"s3://{dep.buckets['results']}/")
    assert outputs["StepApplicationLocation"].startswith(f"s3://{dep.buckets['artifacts']}/")


# --- submit ----------------------------------------------------------------------------------------------


def test_submit_adds_the_step_the_stack_describes(emr: Any, dep: Deployment, capsys) -> None:
    step_id = submitted(capsys, ["--", "--k", "50", "--limit", "1000"])

    (step,) = job_steps(emr, dep.cluster_id)
    stack_step = dep.stack_step()  # the AWS::EMR::Step of the synthesized template
    assert step["Id"] == step_id  # stdout is only the step id, for STEP=$(fruits submit)
    assert step["Name"] == aws.DEFAULT_STEP_NAME
    assert step["ActionOnFailure"] == stack_step["ActionOnFailure"]
    assert step["Config"]["Jar"] == stack_step["Jar"]
    assert step["Config"]["Args"] == [*dep.console_step_args(), "--k", "50", "--limit", "1000"]
    # The same script in the same deploy mode as the stack's own step, which runs the job's --check (bounded
    # by timeout) instead of a production run; both wait for the application.
    script = dep.outputs()["StepApplicationLocation"]
    spark_submit = stack_step["Args"].index("spark-submit")
    assert (
        script in stack_step["Args"]
        and stack_step["Args"][spark_submit : spark_submit + 3] == step["Config"]["Args"][:3]
    )
    assert stack_step["Args"][-1] == "--check" and "--check" not in step["Config"]["Args"]


def test_job_options_replace_the_stacks_step_arguments(emr: Any, dep: Deployment, capsys) -> None:
    outputs = dep.outputs()
    outputs["StepArguments"] = shlex.join(["--k", "7", "--overwrite"])  # as stacks.py publishes a list
    dep.make_stack("WithArguments", outputs)
    script = outputs["StepApplicationLocation"]

    submitted(capsys, ["--stack", "WithArguments"])
    submitted(capsys, ["--stack", "WithArguments", "--", "--variance", "0.9"])
    submitted(capsys, ["--stack", "WithArguments", "--"])

    newest_first = [step["Config"]["Args"] for step in job_steps(emr, dep.cluster_id)]
    tails = [args[args.index(script) + 1 :] for args in reversed(newest_first)]
    assert tails == [["--k", "7", "--overwrite"], ["--variance", "0.9"], []]


def test_submit_uses_the_named_stack_and_step_name(emr: Any, dep: Deployment, capsys) -> None:
    other_cluster = make_cluster(emr)
    dep.make_stack("FruitsEmrStack-staging", dep.outputs(other_cluster))

    submitted(capsys, ["--stack", "FruitsEmrStack-staging", "--name", "nightly"])

    assert job_steps(emr, dep.cluster_id) == []
    (step,) = job_steps(emr, other_cluster)
    assert step["Name"] == "nightly"


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


def _raw_step(emr: Any, cluster: str) -> str:
    step = {"Name": "x", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {"Jar": "j", "Args": ["true"]}}
    return emr.add_job_flow_steps(JobFlowId=cluster, Steps=[step])["StepIds"][0]


def test_wait_for_step_polls_until_a_final_state(emr: Any, dep: Deployment) -> None:
    step_id = _raw_step(emr, dep.cluster_id)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            set_step_state(dep.cluster_id, step_id, "COMPLETED")

    step = aws.wait_for_step(emr, dep.cluster_id, step_id, poll_seconds=7, sleep=sleep)

    assert step["Status"]["State"] == "COMPLETED"
    assert sleeps == [7, 7]


def test_wait_for_step_gives_up_after_the_timeout(emr: Any, dep: Deployment) -> None:
    step_id = _raw_step(emr, dep.cluster_id)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    step = aws.wait_for_step(emr, dep.cluster_id, step_id, 10, sleep, timeout=35, clock=lambda: now[0])

    assert step["Status"]["State"] not in aws.FINAL_STEP_STATES
    assert now[0] == 40  # polled at 0, 10, 20, 30 and 40 s: the first poll past the deadline returns


# --- a terminated cluster --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(aws.ENDED_CLUSTER_STATES))
def test_submit_to_an_ended_cluster_prints_the_redeploy_command(
    emr: Any, dep: Deployment, capsys, state: str
) -> None:
    outputs = dep.outputs()  # the real stack's outputs: RedeployCommand as the CDK app spells it
    dep.make_stack("Generations", outputs)
    set_cluster_state(dep.cluster_id, state)

    assert main(["submit", "--stack", "Generations"]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert f"cluster {dep.cluster_id} is {state}" in line
    assert "without a new cluster generation would roll back" in line
    assert f"as: {outputs[aws.REDEPLOY_OUTPUT]}  (" in line
    assert outputs[aws.REDEPLOY_OUTPUT].endswith(
        f"-c clusterGeneration={int(outputs[aws.GENERATION_OUTPUT]) + 1}"
    )
    assert f'"clusterGeneration": {int(outputs[aws.GENERATION_OUTPUT]) + 1} in cdk.json' in line
    assert job_steps(emr, dep.cluster_id) == []


@pytest.mark.parametrize(
    ("stack", "command"),
    [
        ("Generations", "npx cdk deploy Generations -c clusterGeneration=4"),
        # A stage's stack: without -c stage=dev, cdk would find no stack of that name.
        ("FruitsEmrStack-dev", "npx cdk deploy FruitsEmrStack-dev -c stage=dev -c clusterGeneration=4"),
    ],
)
def test_a_stack_without_the_redeploy_output_gets_the_command_built(
    emr: Any, dep: Deployment, capsys, stack: str, command: str
) -> None:
    outputs = dep.outputs()
    outputs.pop(aws.REDEPLOY_OUTPUT)  # deployed before the output existed
    outputs[aws.GENERATION_OUTPUT] = "3"
    dep.make_stack(stack, outputs)
    emr.terminate_job_flows(JobFlowIds=[dep.cluster_id])

    assert main(["submit", "--stack", stack]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert f"as: {command}  (" in line and '"clusterGeneration": 4 in cdk.json' in line


def test_without_a_generation_output_the_advice_says_where_n_is(emr: Any, dep: Deployment, capsys) -> None:
    outputs = dep.outputs()
    outputs.pop(aws.GENERATION_OUTPUT, None)  # a stack deployed before cluster generations
    dep.make_stack("Older", outputs)
    emr.terminate_job_flows(JobFlowIds=[dep.cluster_id])

    assert main(["submit", "--stack", "Older"]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert "has no ClusterGeneration output" in line
    assert "npx cdk deploy Older -c clusterGeneration=<n+1>" in line
    assert '"clusterGeneration" in cdk.json' in line


def test_status_on_a_terminated_cluster_shows_the_last_step_then_the_advice(
    emr: Any, dep: Deployment, capsys
) -> None:
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "COMPLETED")
    emr.terminate_job_flows(JobFlowIds=[dep.cluster_id])

    assert main(["status"]) == 2

    captured = capsys.readouterr()
    assert step_id in captured.out and "COMPLETED" in captured.out
    assert "npx cdk deploy FruitsEmrStack -c clusterGeneration=" in one_error_line(captured.err)


def test_status_on_a_terminated_cluster_without_job_steps(emr: Any, dep: Deployment, capsys) -> None:
    emr.terminate_job_flows(JobFlowIds=[dep.cluster_id])

    assert main(["status"]) == 2
    assert "is TERMINATED" in one_error_line(capsys.readouterr().err)


# --- status ----------------------------------------------------------------------------------------------


def test_status_completed_reports_the_run_it_published(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "COMPLETED", started=T0)
    publish_run(s3, dep, 1, {"found": 10, "reused": 0, "featurized": 10, "rejected": 0})
    latest = publish_run(s3, dep, 2, {"found": 11, "reused": 10, "featurized": 1, "rejected": 2})

    code = main(["status", step_id])

    out = capsys.readouterr().out
    run_uri = f"{dep.results_uri}{latest['run_prefix']}"
    assert code == 0
    assert "COMPLETED" in out
    assert f"run {latest['run_id']}" in out
    assert "found 11  reused 10  featurized 1  rejected 2" in out
    assert run_uri in out
    assert "without publishing" not in out

    assert main(["status", step_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "COMPLETED" and report["published"] is True
    assert report["commit"]["counts"] == {"found": 11, "reused": 10, "featurized": 1, "rejected": 2}
    assert report["run_uri"] == run_uri


@pytest.mark.parametrize("earlier_run", [True, False], ids=["older-commit", "no-commit"])
def test_status_completed_without_a_new_commit_says_so(
    emr: Any, s3: Any, dep: Deployment, capsys, earlier_run: bool
) -> None:
    # e.g. the job's --allow-empty: nothing to featurize, exit 0, no commit.
    if earlier_run:
        publish_run(s3, dep, 0, {"found": 3})
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "COMPLETED", started=T0 + timedelta(hours=1))

    assert main(["status", step_id]) == 0

    out = capsys.readouterr().out
    assert "completed without publishing a run" in out
    assert main(["status", step_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["published"] is False
    assert report["commit_predates_step"] is earlier_run


def test_status_without_id_follows_the_newest_job_step(emr: Any, dep: Deployment, capsys) -> None:
    submitted(capsys, ["--name", "first"])
    submitted(capsys, ["--name", "second"])
    # Another team's step, newer than ours, must not be mistaken for the job.
    _raw_step(emr, dep.cluster_id)

    assert main(["status", "--json"]) == 0

    assert json.loads(capsys.readouterr().out)["name"] == "second"


def put_log(s3: Any, dep: Deployment, key: str, text: str) -> str:
    """A gzipped log object in the logs bucket, as EMR uploads them; returns its URI."""
    s3.put_object(Bucket=dep.buckets["logs"], Key=key, Body=gzip.compress(text.encode()))
    return f"s3://{dep.buckets['logs']}/{key}"


def log_key(dep: Deployment, *parts: str) -> str:
    """A key under the stack's LogUri (whatever its prefix is)."""
    prefix = dep.outputs()["LogUri"].split("/", 3)[3]
    return prefix + "/".join(parts)


SPARK_SUBMIT_REPORT = """\
26/01/01 10:00:01 INFO Client: Requesting a new application from cluster with 3 NodeManagers
26/01/01 10:00:02 INFO Client: Submitted application {app}
26/01/01 10:00:03 INFO Client: Application report for {app} (state: ACCEPTED)
\t tracking URL: http://ip-10-0-0-1.ec2.internal:20888/proxy/{app}/
Exception in thread "main" org.apache.spark.SparkException: Application {app} finished with failed status
"""


@pytest.mark.parametrize("log_uploaded", [True, False], ids=["log-uploaded", "log-not-yet-uploaded"])
def test_status_failed_exits_1_and_names_the_step_log(
    emr: Any, s3: Any, dep: Deployment, capsys, log_uploaded: bool
) -> None:
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "FAILED", "Step failed with exitCode 1.")
    stderr_key = log_key(dep, dep.cluster_id, "steps", step_id, "stderr.gz")
    if log_uploaded:
        log = "\n".join(f"line {i}" for i in range(100)) + "\nspark-submit: the last line\n"
        put_log(s3, dep, stderr_key, log)

    code = main(["status", step_id])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out
    assert "Step failed with exitCode 1." in out
    assert f"s3://{dep.buckets['logs']}/{stderr_key}" in out
    if log_uploaded:
        assert "spark-submit: the last line" in out
        assert "line 79" not in out  # only the tail
    else:
        assert "not readable yet" in out


@pytest.mark.parametrize(
    "containers",
    [
        ("container_1700000000000_0007_01_000001", "container_1700000000000_0007_01_000002"),
        # After a ResourceManager restart the ids carry an epoch.
        ("container_e02_1700000000000_0007_01_000002", "container_e02_1700000000000_0007_01_000001"),
    ],
    ids=["plain", "with-epoch"],
)
def test_status_shows_the_drivers_container_log(
    emr: Any, s3: Any, dep: Deployment, capsys, containers: tuple[str, str]
) -> None:
    app = "application_1700000000000_0007"
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "FAILED", "Step failed with exitCode 1.")
    put_log(
        s3,
        dep,
        log_key(dep, dep.cluster_id, "steps", step_id, "stderr.gz"),
        SPARK_SUBMIT_REPORT.format(app=app),
    )
    uris = {}
    for container in containers:
        text = f"{container} says hello\nValueError: no images under s3://input/images/ ({container})\n"
        key = log_key(dep, dep.cluster_id, "containers", app, container, "stdout.gz")
        uris[container] = put_log(s3, dep, key, text)
        # The container's stderr is the JVM's (Spark's log): not the driver's log the status shows.
        put_log(
            s3, dep, log_key(dep, dep.cluster_id, "containers", app, container, "stderr.gz"), "JVM noise\n"
        )
    (driver,) = [c for c in containers if c.endswith("_000001")]  # the application master

    assert main(["status", step_id]) == 1

    out = capsys.readouterr().out
    assert f"driver    {uris[driver]}" in out
    assert f"ValueError: no images under s3://input/images/ ({driver})" in out
    (executor,) = [c for c in containers if c != driver]
    assert executor not in out

    assert main(["status", step_id, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["application_id"] == app
    assert report["driver_log_uri"] == uris[driver]
    assert "JVM noise" not in out


def test_status_names_the_driver_folder_until_the_container_log_arrives(
    emr: Any, s3: Any, dep: Deployment, capsys
) -> None:
    app = "application_1700000000000_0042"
    step_id = submitted(capsys, [])
    put_log(
        s3,
        dep,
        log_key(dep, dep.cluster_id, "steps", step_id, "stderr.gz"),
        SPARK_SUBMIT_REPORT.format(app=app),
    )

    assert main(["status", step_id]) == 0  # still RUNNING in moto

    out = capsys.readouterr().out
    folder = f"s3://{dep.buckets['logs']}/{log_key(dep, dep.cluster_id, 'containers', app)}/"
    assert f"driver    not uploaded yet; it will be under {folder}" in out


def test_status_of_a_running_step_exits_0(dep: Deployment, capsys) -> None:
    submitted(capsys, [])

    assert main(["status"]) == 0
    assert "RUNNING" in capsys.readouterr().out


def put_outcome(s3: Any, dep: Deployment, minutes: float, status: str, **fields: Any) -> outcomes.Outcome:
    """The outcome record of a run that started ``minutes`` after T0, as the job writes it."""
    started = T0 + timedelta(minutes=minutes)
    record = outcomes.Outcome(
        run_id=commits.new_run_id(started),
        status=status,
        exit_code=fields.pop("exit_code", 0 if status != outcomes.FAILED else 2),
        reason=fields.pop("reason", None),
        started_at=started.isoformat(),
        finished_at=(started + timedelta(minutes=2)).isoformat(),
        input="s3://input/images/",
        output=dep.results_uri,
        **fields,
    )
    assert outcomes.write(results(s3, dep), record)
    return record


def test_a_completed_step_whose_run_failed_is_read_as_failed(
    emr: Any, s3: Any, dep: Deployment, capsys
) -> None:
    """A step that only handed its application to YARN completes whatever the job does: its record tells."""
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "COMPLETED", started=T0)
    put_outcome(s3, dep, 1, outcomes.FAILED, reason="input is empty: no files under s3://input/images/")

    assert main(["status", step_id]) == 1

    out = capsys.readouterr().out
    assert out.splitlines()[0] == "failed: input is empty: no files under s3://input/images/"
    assert main(["status", step_id, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "failed" and report["run_outcome"]["exit_code"] == 2


@pytest.mark.parametrize(
    ("status", "first_line"),
    [
        (outcomes.CHECKED, "succeeded: the cluster check passed: this cluster can run the job"),
        (
            outcomes.NOTHING_TO_DO,
            "succeeded: nothing to featurize under s3://input/images/: no run committed",
        ),
    ],
)
def test_a_step_that_committed_nothing_names_why(
    emr: Any, s3: Any, dep: Deployment, capsys, status: str, first_line: str
) -> None:
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "COMPLETED", started=T0)
    put_outcome(s3, dep, 0.5, status)

    assert main(["status", step_id]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(first_line)


def test_a_committed_run_is_named_with_its_counts(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "COMPLETED", started=T0)
    counts = {"found": 11, "featurized": 9, "rejected": 2}
    record = put_outcome(s3, dep, 1, outcomes.SUCCEEDED, counts=counts, commit=3)

    assert main(["status", step_id]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"succeeded: run {record.run_id} committed as #3: found 11 = featurized 9 + rejected 2"
    )


def test_the_steps_own_application_picks_its_record(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    """Two runs started while the step ran (another client's beside the step's): the step's application decides."""
    app = "application_1700000000000_0007"
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "FAILED", "Step failed with exitCode 1.", started=T0)
    put_log(
        s3,
        dep,
        log_key(dep, dep.cluster_id, "steps", step_id, "stderr.gz"),
        SPARK_SUBMIT_REPORT.format(app=app),
    )
    put_outcome(s3, dep, 1, outcomes.FAILED, reason="the step's own reason", application_id=app)
    put_outcome(
        s3, dep, 2, outcomes.FAILED, reason="somebody else's", application_id="application_1700000000000_0008"
    )

    assert main(["status", step_id]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "failed: the step's own reason"


def test_a_failed_step_without_a_record_takes_the_jobs_line_from_the_driver_log(
    emr: Any, s3: Any, dep: Deployment, capsys
) -> None:
    """A run whose output is elsewhere (or killed outright) leaves no record here: the driver's log says why."""
    app = "application_1700000000000_0009"
    step_id = submitted(capsys, [])
    set_step_state(dep.cluster_id, step_id, "FAILED", "Step failed with exitCode 1.", started=T0)
    put_log(
        s3,
        dep,
        log_key(dep, dep.cluster_id, "steps", step_id, "stderr.gz"),
        SPARK_SUBMIT_REPORT.format(app=app),
    )
    driver = (
        "INFO starting\nfeaturize_pca: error: output is in use: s3://r/results/ is held by 'x'\nINFO exit\n"
    )
    put_log(
        s3,
        dep,
        log_key(
            dep, dep.cluster_id, "containers", app, "container_1700000000000_0009_01_000001", "stdout.gz"
        ),
        driver,
    )

    assert main(["status", step_id]) == 1
    assert (
        capsys.readouterr().out.splitlines()[0] == "failed: output is in use: s3://r/results/ is held by 'x'"
    )


def test_a_running_step_is_named_running(dep: Deployment, capsys) -> None:
    step_id = submitted(capsys, [])

    assert main(["status", step_id]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"running: step {step_id} is RUNNING")


# --- results ---------------------------------------------------------------------------------------------


def test_results_downloads_the_latest_commit(s3: Any, dep: Deployment, tmp_path: Path, capsys) -> None:
    publish_run(s3, dep, 1)
    latest = publish_run(s3, dep, 2)
    # A newer run that wrote files but never committed (died, or still publishing) must be ignored.
    newer = commits.new_run_id(T0 + timedelta(minutes=3))
    results(s3, dep).write_bytes(layout.run_prefix(newer) + "results.csv", b"uncommitted")

    assert main(["results", "--dest", str(tmp_path / "out")]) == 0

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(layout.PUBLISHED_NAMES)
    for name in layout.PUBLISHED_NAMES:
        assert (tmp_path / "out" / name).read_text() == f"{latest['run_id']}:{name}"


def test_results_downloads_a_given_run_and_reports_missing_plots(
    s3: Any, dep: Deployment, tmp_path: Path, capsys
) -> None:
    first = publish_run(s3, dep, 1, files=("results.csv", "manifest.json", "rejected.csv"))
    publish_run(s3, dep, 2)

    assert main(["results", "--run", first["run_id"]]) == 0  # default destination under the working directory

    err = capsys.readouterr().err
    dest = tmp_path / "fruits-results" / first["run_id"]
    assert (dest / "results.csv").read_text() == f"{first['run_id']}:results.csv"
    assert not (dest / "pca_scatter.png").exists()
    assert "explained_variance.png" in err and "pca_scatter.png" in err


def test_results_of_a_run_without_its_results_csv_exits_2(s3: Any, dep: Deployment, capsys) -> None:
    publish_run(s3, dep, 1, files=("manifest.json",))

    assert main(["results"]) == 2
    assert "is committed but" in one_error_line(capsys.readouterr().err)


def test_results_unknown_run_exits_2(s3: Any, dep: Deployment, capsys) -> None:
    publish_run(s3, dep, 1)

    assert main(["results", "--run", "run-zzz"]) == 2
    assert "unknown run run-zzz" in one_error_line(capsys.readouterr().err)


# --- runs ------------------------------------------------------------------------------------------------


def test_runs_lists_commits_in_order(s3: Any, dep: Deployment, capsys) -> None:
    published = [
        publish_run(s3, dep, 1, {"found": 10, "reused": 0, "featurized": 10, "rejected": 0}),
        publish_run(s3, dep, 2, {"found": 20, "reused": 10, "featurized": 10, "rejected": 0}),
        publish_run(s3, dep, 3, {"found": 30, "reused": 20, "featurized": 10, "rejected": 1}),
    ]
    s3.put_object(Bucket=dep.buckets["results"], Key="results/_commits/README", Body=b"not a commit")

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
    assert [line.split()[:2] for line in lines[1:3]] == [
        ["1", published[0]["run_id"]],
        ["2", published[1]["run_id"]],
    ]
    assert lines[3].split()[:3] == ["*", "3", published[2]["run_id"]]  # the current run is marked
    assert lines[3].split()[-4:] == ["30", "20", "10", "1"]

    assert main(["runs", "--json"]) == 0
    assert [c["number"] for c in json.loads(capsys.readouterr().out)] == [1, 2, 3]


def test_runs_and_results_know_only_the_jobs_commit_names(s3: Any, dep: Deployment, capsys) -> None:
    # The CLI once accepted any number (`1.json`), the job only 8 digits: a stray `1.json` was a run to one
    # and nothing to the other. Now both read fruits.commits.
    real = publish_run(s3, dep, 1)
    stray = {"number": 2, "run_id": "stray", "run_prefix": "runs/stray/", "committed_at": "x"}
    for name in ("2.json", "000000002.json"):
        s3.put_object(Bucket=dep.buckets["results"], Key=f"results/_commits/{name}", Body=json.dumps(stray))

    assert main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)

    assert listed == commits.list_commits(results(s3, dep))
    assert [c["run_id"] for c in listed] == [real["run_id"]]
    assert main(["results", "--run", "stray"]) == 2


def test_latest_commit_is_the_highest_number_not_the_last_name(s3: Any, dep: Deployment) -> None:
    # S3 lists names lexically: "100000000.json" comes before "99999999.json" once the padding runs out.
    store = results(s3, dep)
    for number in (99_999_999, 100_000_000):
        run_id = commits.new_run_id(T0 + timedelta(minutes=number % 7))
        commit = {"number": number, "run_id": run_id, "run_prefix": layout.run_prefix(run_id)}
        store.write_json(layout.commit_key(number), commit)

    assert runs.find_commit(store, None)["number"] == 100_000_000


# --- error paths -----------------------------------------------------------------------------------------


def test_no_such_stack_exits_2(dep: Deployment, capsys) -> None:
    assert main(["runs", "--stack", "NoSuchStack"]) == 2
    assert "no such stack: NoSuchStack" in one_error_line(capsys.readouterr().err)


def test_missing_output_key_exits_2_and_adds_no_step(emr: Any, dep: Deployment, capsys) -> None:
    outputs = dep.outputs()
    del outputs["StepSparkSubmitOptions"]
    dep.make_stack("OldStack", outputs)

    assert main(["submit", "--stack", "OldStack"]) == 2
    assert "no output 'StepSparkSubmitOptions'" in one_error_line(capsys.readouterr().err)
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


@pytest.mark.parametrize("argv", [["runs", "--", "--k", "5"], ["status", "--"]])
def test_job_options_without_submit_are_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
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

    report = step_report(FailedStepEmr("s-1"), s3, outputs, "s-1")

    log_uri = dep.outputs()["LogUri"]
    assert report["reason"] == "ValueError: no images under the input"
    assert report["failure_log"].endswith("container_1/stderr.gz")
    assert report["stderr_uri"] == f"{log_uri}{dep.cluster_id}/steps/s-1/stderr.gz"
    assert report["stderr_tail"] is None  # not uploaded yet


def test_a_commit_older_than_the_step_is_flagged() -> None:
    commit = {"committed_at": "2026-01-02T10:00:00+00:00"}
    started = datetime(2026, 1, 2, 11, 0, tzinfo=UTC)

    assert runs.commit_predates(commit, started)
    assert not runs.commit_predates(commit, datetime(2026, 1, 2, 9, 0, tzinfo=UTC))
    assert not runs.commit_predates(commit, None)  # moto and a pending step have no start time
    assert not runs.commit_predates({"committed_at": "garbled"}, started)
