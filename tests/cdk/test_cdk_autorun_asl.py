"""The autorun state machine, as synthesized, executed by a real ASL interpreter (aws-local-stepfunctions) with its
tasks on moto: every path a triggered run can take (asl_harness.py says how)."""

from __future__ import annotations

import json
import os
import secrets

import pytest
from asl_harness import Cloud, JobPlay, TaskError, TaskServer, definition, execute, interpreter_missing
from cdkapp import REPO, synthesize

from fruits import outcomes

pytestmark = pytest.mark.usefixtures("moto_env")

COUNTS = {"found": 20, "featurized": 18, "rejected": 2, "reused": 16, "newly_featurized": 2}
METRICS = {"k": 7, "test_accuracy_pca": 0.9, "test_accuracy_full_features": 0.95}


@pytest.fixture(scope="module")
def emr_template(tmp_path_factory):
    missing = interpreter_missing(REPO)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI installs it (npm ci)")
        pytest.skip(missing)
    app = synthesize(tmp_path_factory.mktemp("autorun"), autorun=True)
    return app.template(app.emr_stack).to_json()


@pytest.fixture
def run(emr_template, moto_server):
    """``run(play, execution_input, prepare, failures=, edit=)``: a fresh cloud, the definition resolved on it
    (then ``edit``-ed, to shorten a timeout), one execution with the tasks' ``failures`` injected."""
    servers = []

    def go(play: JobPlay, execution_input: dict, prepare=lambda cloud: None, failures=None, edit=None):
        cloud = Cloud(moto_server, emr_template)
        prepare(cloud)
        server = TaskServer(cloud, play, failures)
        servers.append(server)
        machine = definition(emr_template, cloud.names)
        if edit is not None:
            edit(machine)
        name = f"exec-{secrets.token_hex(4)}"
        result = execute(REPO, machine, server.url, execution_input, name)
        return cloud, server, result, name

    yield go
    for server in servers:
        server.close()


def _integrations(server: TaskServer) -> list[str]:
    return [integration for integration, _ in server.calls]


def test_uploads_on_a_stopped_cluster_run_on_a_transient_twin_that_is_terminated(run):
    def prepare(cloud):
        cloud.stop_shared_cluster()
        cloud.upload(3)

    play = JobPlay(outcomes.SUCCEEDED, COUNTS, METRICS)
    cloud, server, result, name = run(play, {"trigger": "window"}, prepare)
    assert result["status"] == "SUCCEEDED", result
    clusters = cloud.clusters()
    transient = clusters[f"fruits-featurize-run-{name}"]
    # The same cluster as the stack's: release, applications, bootstrap, configurations, roles, logs.
    (_, request) = next(call for call in server.calls if call[0] == "elasticmapreduce:createCluster.sync")
    assert transient["ReleaseLabel"] == request["ReleaseLabel"] == "emr-7.13.0"
    assert {a["Name"] for a in transient["Applications"]} == {"Hadoop", "Spark"}
    assert transient["Status"]["State"] == "TERMINATED"  # ended after the run
    assert {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"} in transient["Tags"]
    # The step ran there, with the job's options as the job reads them.
    (options,) = play.seen
    assert options.trigger == name and options.skip_unchanged and options.allow_empty and options.wait == 1800
    steps = cloud.emr.list_steps(ClusterId=transient["Id"])["Steps"]
    assert [s["Name"] for s in steps] == [f"fruits-autorun-{name}"]
    assert cloud.pending() == 0 and cloud.lock_holder() is None
    ((message, status),) = cloud.messages()
    assert status == "succeeded" and message["trigger"] == name
    assert message["outcome"]["counts"] == COUNTS and message["cluster"] == {
        "id": transient["Id"],
        "transient": True,
    }
    dims = {"StateMachine": "fruits-autorun"}
    metrics = server.metrics()
    assert metrics["Found"] == [(20, dims)] and metrics["NewlyFeaturized"] == [(2, dims)]
    assert metrics["K"] == [(7, dims)] and metrics["TestAccuracyPca"] == [(0.9, dims)]
    assert metrics["Runs"] == [(1, {**dims, "Status": "succeeded"})]
    assert "reportError" not in result["output"]  # every report task was taken (moto answered each call)
    assert cloud.metric_sum("Found", dims) >= 20  # and the datapoints are there


def test_the_stacks_cluster_when_it_is_up_and_it_is_left_running(run):
    cloud, server, result, name = run(
        JobPlay(outcomes.SUCCEEDED, COUNTS, METRICS), {"trigger": "window"}, lambda c: c.upload()
    )
    assert result["status"] == "SUCCEEDED", result
    integrations = _integrations(server)
    assert "elasticmapreduce:createCluster.sync" not in integrations
    assert "elasticmapreduce:terminateCluster.sync" not in integrations
    shared = cloud.emr.describe_cluster(ClusterId=cloud.shared)["Cluster"]
    assert shared["Status"]["State"] not in ("TERMINATING", "TERMINATED")
    assert [s["Name"] for s in cloud.emr.list_steps(ClusterId=cloud.shared)["Steps"]] == [
        f"fruits-autorun-{name}"
    ]


def test_a_failed_step_still_terminates_the_transient_cluster_reports_and_fails_the_execution(run):
    play = JobPlay(outcomes.FAILED, reason="S3 refused a request (AccessDenied): ...")
    cloud, server, result, name = run(play, {"trigger": "schedule"}, lambda c: c.stop_shared_cluster())
    # FAILED: what the alarm counts (AWS/States ExecutionsFailed of this state machine).
    assert result["status"] == "FAILED" and result["error"] == "RunFailed", result
    transient = cloud.clusters()[f"fruits-featurize-run-{name}"]
    assert transient["Status"]["State"] == "TERMINATED"
    assert result["states"][-3:] == ["Release the run lock", "Did the run fail?", "Run failed"]
    assert cloud.lock_holder() is None
    ((message, status),) = cloud.messages()
    assert status == "failed" and message["outcome"]["reason"].startswith("S3 refused")
    metrics = server.metrics()
    assert metrics == {"Runs": [(1, {"StateMachine": "fruits-autorun", "Status": "failed"})]}  # no counts


def test_a_job_killed_outright_leaves_no_record_and_is_reported_failed(run):
    cloud, _server, result, name = run(
        JobPlay("killed"), {"trigger": "schedule"}, lambda c: c.stop_shared_cluster()
    )
    assert result["status"] == "FAILED", result
    assert "No outcome record" in result["states"], result["states"]
    assert cloud.clusters()[f"fruits-featurize-run-{name}"]["Status"]["State"] == "TERMINATED"
    ((message, status),) = cloud.messages()
    assert status == "failed" and "no outcome record" in message["outcome"]["reason"]


def test_a_window_with_nothing_pending_ends_at_once_without_a_cluster_or_the_lock(run):
    cloud, server, result, _ = run(JobPlay(), {"trigger": "window"}, lambda c: c.stop_shared_cluster())
    assert result["status"] == "SUCCEEDED", result
    assert result["states"] == [
        "Started by the window?",
        "Count the pending uploads",
        "Uploads pending?",
        "Nothing pending",
    ]
    assert _integrations(server) == ["aws-sdk:sqs:getQueueAttributes"]
    assert cloud.clusters() == {} and cloud.messages() == []


def test_pending_uploads_with_nothing_new_commit_nothing_and_say_unchanged(run):
    unchanged = {**COUNTS, "reused": 18, "newly_featurized": 0}

    def prepare(cloud):
        cloud.stop_shared_cluster()
        cloud.upload()

    cloud, server, result, name = run(
        JobPlay(outcomes.UNCHANGED, unchanged, METRICS), {"trigger": "window"}, prepare
    )
    assert result["status"] == "SUCCEEDED", result
    assert cloud.clusters()[f"fruits-featurize-run-{name}"]["Status"]["State"] == "TERMINATED"
    ((message, status),) = cloud.messages()
    assert status == "unchanged" and message["outcome"]["commit"] is None
    metrics = server.metrics()
    assert metrics["Runs"] == [(1, {"StateMachine": "fruits-autorun", "Status": "unchanged"})]
    assert metrics["NewlyFeaturized"][0][0] == 0 and metrics["Reused"][0][0] == 18


def test_a_run_while_another_holds_the_lock_ends_busy_and_leaves_the_uploads_pending(run):
    holders = []

    def prepare(cloud):
        cloud.upload(2)
        holders.append(cloud.hold_lock(running=True))

    cloud, server, result, _ = run(JobPlay(), {"trigger": "window"}, prepare)
    assert result["status"] == "SUCCEEDED" and result["states"][-1] == "Busy", result
    assert cloud.lock_holder() == holders[0] and cloud.pending() == 2
    assert "elasticmapreduce:addStep.sync" not in _integrations(server)


def test_a_lock_left_by_an_execution_that_ended_is_taken_over(run):
    def prepare(cloud):
        cloud.upload()
        cloud.hold_lock(running=False)

    cloud, server, result, _name = run(
        JobPlay(outcomes.SUCCEEDED, COUNTS, METRICS), {"trigger": "window"}, prepare
    )
    assert result["status"] == "SUCCEEDED", result
    assert "Take over the run lock" in result["states"] and "elasticmapreduce:addStep.sync" in _integrations(
        server
    )
    assert cloud.lock_holder() is None


def test_the_outcome_record_is_read_where_the_job_writes_it(run):
    cloud, server, result, name = run(JobPlay(outcomes.SUCCEEDED, COUNTS, METRICS), {}, lambda c: None)
    assert result["status"] == "SUCCEEDED", result
    (_, get) = next(call for call in server.calls if call[0] == "aws-sdk:s3:getObject")
    assert (get["Bucket"], get["Key"]) == (cloud.buckets["results"], f"results/_triggered/{name}.json")
    record = json.loads(cloud.s3.get_object(Bucket=get["Bucket"], Key=get["Key"])["Body"].read())
    assert record["trigger"] == name and record["status"] == "succeeded"


def _pending_on_a_stopped_cluster(cloud):
    cloud.stop_shared_cluster()
    cloud.upload(2)


def test_a_transient_cluster_that_does_not_start_fails_the_execution_and_is_reported(run):
    # What createCluster.sync ends with when EMR gives up on the cluster (a bootstrap action failed): the cluster
    # ended itself (TERMINATED_WITH_ERRORS), so there is nothing to terminate.
    bootstrap = TaskError(
        "States.TaskFailed",
        json.dumps(
            {
                "Cluster": {
                    "Status": {
                        "State": "TERMINATED_WITH_ERRORS",
                        "StateChangeReason": {
                            "Code": "BOOTSTRAP_FAILURE",
                            "Message": "bootstrap action 1 failed",
                        },
                    }
                }
            }
        ),
    )
    failures = {"elasticmapreduce:createCluster.sync": bootstrap}
    cloud, server, result, _ = run(JobPlay(), {"trigger": "window"}, _pending_on_a_stopped_cluster, failures)
    assert result["status"] == "FAILED" and result["error"] == "RunFailed", result  # the alarm counts it
    assert "Cluster did not start" in result["states"]
    integrations = _integrations(server)
    assert integrations.count("elasticmapreduce:createCluster.sync") == 1  # not retried: each try is a start
    assert "elasticmapreduce:addStep.sync" not in integrations
    assert "elasticmapreduce:terminateCluster.sync" not in integrations  # no id, and EMR ended it
    assert cloud.lock_holder() is None
    # The purge came before the start (by design: the job lists what was uploaded before it): the uploads are no
    # longer pending, the next window does nothing, and the operator the alarm told starts a run by hand.
    assert cloud.pending() == 0
    ((message, status),) = cloud.messages()
    assert status == "failed" and "cluster did not start" in message["outcome"]["reason"]
    assert message["cluster"] == {"id": "none", "transient": False}
    assert server.metrics() == {"Runs": [(1, {"StateMachine": "fruits-autorun", "Status": "failed"})]}


@pytest.mark.parametrize("job", [outcomes.SUCCEEDED, outcomes.FAILED])
def test_a_transient_cluster_that_cannot_be_terminated_fails_the_execution_after_bounded_retries(run, job):
    failures = {
        "elasticmapreduce:terminateCluster.sync": TaskError(
            "EMR.AmazonElasticMapReduceException", "ThrottlingException: Rate exceeded"
        )
    }
    play = JobPlay(
        job, COUNTS if job == outcomes.SUCCEEDED else None, METRICS if job == outcomes.SUCCEEDED else None
    )
    cloud, server, result, name = run(play, {"trigger": "schedule"}, _pending_on_a_stopped_cluster, failures)
    # Not a silent success: the execution fails with its own error (the alarm fires), after the lock's release.
    assert result["status"] == "FAILED" and result["error"] == "ClusterNotTerminated", result
    assert "fruits-featurize-run-<execution name>" in result["cause"]
    assert result["states"][-3:] == ["Release the run lock", "Did the run fail?", "Cluster not terminated"]
    assert cloud.lock_holder() is None
    terminations = [p for i, p in server.calls if i == "elasticmapreduce:terminateCluster.sync"]
    transient = cloud.clusters()[f"fruits-featurize-run-{name}"]
    assert terminations == [{"ClusterId": transient["Id"]}] * 3  # TERMINATE_ATTEMPTS, then it gives up
    # Left up (the failures never reached EMR): its idle timeout is the backstop the cause names.
    assert transient["Status"]["State"] not in ("TERMINATING", "TERMINATED")
    (_, request) = next(call for call in server.calls if call[0] == "elasticmapreduce:createCluster.sync")
    assert (
        request["AutoTerminationPolicy"] == {"IdleTimeout": 900}
        and "15-minute idle timeout" in result["cause"]
    )
    # The run's own outcome went out before the clean-up, as it was.
    ((_message, status),) = cloud.messages()
    assert status == job


def test_a_step_past_its_time_budget_is_reported_timed_out_and_its_cluster_terminated(run):
    stated = {}

    def shorten(machine):
        step = machine["States"]["Run the job"]
        stated["timeout"] = step["TimeoutSeconds"]
        step["TimeoutSeconds"] = 1  # the interpreter's own timeout fires, as Step Functions' would

    cloud, server, result, name = run(
        JobPlay("hung"), {"trigger": "window"}, _pending_on_a_stopped_cluster, edit=shorten
    )
    assert stated["timeout"] == (240 + 15) * 60  # autorunTimeoutMinutes' default plus the step's grace
    assert result["status"] == "FAILED" and result["error"] == "RunFailed", result
    assert "Step timed out" in result["states"] and "Read the run's outcome" not in result["states"]
    assert cloud.clusters()[f"fruits-featurize-run-{name}"]["Status"]["State"] == "TERMINATED"
    assert cloud.lock_holder() is None
    ((message, status),) = cloud.messages()
    assert status == "failed" and "did not end within 240 minutes" in message["outcome"]["reason"]
    assert server.metrics() == {"Runs": [(1, {"StateMachine": "fruits-autorun", "Status": "failed"})]}
