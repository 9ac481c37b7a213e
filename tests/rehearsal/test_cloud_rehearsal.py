"""The cloud rehearsal: a first deploy's scenario, on the cluster tests/rehearsal/conftest.py builds.

The tests run in file order, as the scenario of a first deploy and its first weeks:

1. the bootstrap action installed exactly the pins, from the wheelhouse, with no network beyond the subnet, and
   the cluster's user can read and run what it installed;
2. the stack's own step (CloudFormation adds it with the cluster) checks the cluster, commits nothing, and its
   driver fits its YARN container, measured;
3. an analyst's step on the still-empty input fails, and ``fruits status`` reads it as failed, with the reason;
4. images uploaded, ``fruits submit`` runs the job: a run committed, ``fruits status`` reads it as succeeded;
5. a bare console step (the script alone: the cluster's spark-defaults make it a cluster-mode YARN application)
   with ``--k 5``, reusing the S3 feature store; the operator downloads the latest run;
6. a driver killed while featurizing (its application master's process, from outside): YARN reports the
   application FAILED, nothing is committed; its node leaves the cluster, and the next step's driver, on the
   other node, takes the output's lease over at once by asking the ResourceManager;
7. two runs started together (as two notebooks or a second console step would): exactly one commits;
8. the step the autorun state machine adds (read from its synthesized definition) after 10 % more images were
   uploaded: only they are featurized; the same step again commits nothing (``unchanged``);
9. the audit: every S3 request of the instance role was allowed, and every request of the job's boto3 client was
   signed for the stack's region.

Every step's exit status is judged as EMR judges it (0: COMPLETED, else FAILED) and its YARN application's final
status is read from the ResourceManager.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fruits_infra.instances import DRIVER_HEAP_MB, DRIVER_OVERHEAD_MB

from tests import cfn
from tests.conftest import write_image
from tests.rehearsal import network, node
from tests.rehearsal.conftest import REPO, STEP_TIMEOUT, Rehearsal
from tests.rehearsal.hadoop import PeakMemory, container_log, processes_in

pytestmark = [pytest.mark.rehearsal, pytest.mark.slow]

sys.path.insert(0, str(REPO / "scripts"))
import cluster_requirements  # noqa: E402

pins = cluster_requirements.pins

MiB = 1024 * 1024
#: The driver's container must keep this share of its size free at its peak (docs/sizing.md).
DRIVER_MARGIN = 0.25


def _application(output: str) -> str:
    ids = [word for word in output.replace("\n", " ").split() if word.startswith("application_")]
    assert ids, output[-3000:]
    return ids[-1].rstrip(".,)")


def _step(rehearsal: Rehearsal, args: list[str], name: str, *, watch_memory: bool = False) -> dict[str, Any]:
    """Add a step through EMR's API and wait for it: its state, exit status, output, application and report."""
    assert rehearsal.emr is not None
    step_id = rehearsal.emr.add({"Name": name, "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args}})
    memory = None
    if watch_memory:
        memory = PeakMemory(lambda: [p for a in _running_apps(rehearsal) for p in _am_dirs(rehearsal, a)])
    step = rehearsal.emr.wait(step_id, STEP_TIMEOUT)
    output = step.log.read_text(errors="replace") if step.log else ""
    application = _application(output)
    app = rehearsal.hadoop.wait_for_application(application, timeout=120)
    result = {"id": step_id, "state": step.state, "exit": step.exit_code, "output": output, "app": app}
    if memory is not None:
        result["driver_peak"] = memory.stop()
    print(
        f"--- step {name} ({step_id}): {step.state}, exit {step.exit_code}, {application} {app['finalStatus']}"
    )
    return result


def _running_apps(rehearsal: Rehearsal) -> list[str]:
    try:
        return [a["id"] for a in rehearsal.hadoop.applications() if a["state"] == "RUNNING"]
    except OSError:
        return []


def _am_dirs(rehearsal: Rehearsal, application: str) -> list[Path]:
    container = rehearsal.hadoop.am_container(application)
    return rehearsal.container_dirs(application, container) if container else []


def _console_args(rehearsal: Rehearsal, *extra: str) -> list[str]:
    """A console step as the README tells analysts: the deploy mode and the application location."""
    outputs = rehearsal.outputs
    return [
        "spark-submit",
        "--deploy-mode",
        outputs["StepDeployMode"],
        outputs["StepApplicationLocation"],
        *extra,
    ]


def _driver_log(rehearsal: Rehearsal, application: str, name: str = "stdout") -> str:
    """The driver's log as its node keeps it: stdout is the job's (Python's stderr merged in), stderr Spark's."""
    container = rehearsal.hadoop.am_container(application)
    path = container and container_log(node.STATE / "nodes", application, container, name)
    return path.read_text(errors="replace") if path else ""


def _commits(rehearsal: Rehearsal) -> list[dict[str, Any]]:
    bucket, _, prefix = rehearsal.outputs["ResultsUri"].removeprefix("s3://").partition("/")
    s3 = rehearsal.aws.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}_commits/").get("Contents", [])
    return [json.loads(s3.get_object(Bucket=bucket, Key=i["Key"])["Body"].read()) for i in listed]


def _read(rehearsal: Rehearsal, key: str) -> bytes:
    bucket, _, prefix = rehearsal.outputs["ResultsUri"].removeprefix("s3://").partition("/")
    return rehearsal.aws.client("s3").get_object(Bucket=bucket, Key=prefix + key)["Body"].read()


def _outcomes(rehearsal: Rehearsal) -> list[dict[str, Any]]:
    bucket, _, prefix = rehearsal.outputs["ResultsUri"].removeprefix("s3://").partition("/")
    s3 = rehearsal.aws.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}_outcomes/").get("Contents", [])
    return [
        json.loads(s3.get_object(Bucket=bucket, Key=i["Key"])["Body"].read())
        for i in sorted(listed, key=lambda i: i["Key"])
    ]


def _manifest(rehearsal: Rehearsal) -> dict[str, Any]:
    return json.loads(_read(rehearsal, _commits(rehearsal)[-1]["run_prefix"] + "manifest.json"))


def _reconciles(manifest: dict[str, Any]) -> None:
    counts = manifest["counts"]
    assert counts["found"] == counts["featurized"] + counts["rejected"], counts


def _on_core_node(app: dict[str, Any]) -> str:
    """The core node that ran the application master: cluster mode, never the primary."""
    host = app["amHostHttpAddress"].split(":")[0]
    assert host in {h.name for h in network.CORE}, app
    return host


# --- 1. the bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_installed_exactly_the_pins_from_the_wheelhouse_with_no_network(
    rehearsal: Rehearsal,
) -> None:
    code, log = rehearsal.bootstrap
    assert code == 0, log[-3000:]
    assert f"packages={rehearsal.outputs['WheelhouseUri']}" in log  # the stack's wheelhouse, not PyPI
    assert "runtime installed" in log
    frozen = subprocess.run(
        [node.CLUSTER_PYTHON, "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert cluster_requirements.pins(cluster_requirements.LOCK.read_text()).items() <= pins(frozen).items()
    # The weights came over HTTPS from their real URL, and had the digest the stack pins.
    (_, args) = rehearsal.deployment.bootstrap_actions[0]
    assert rehearsal.downloads.requests == [
        args[args.index("--weights-url") + 1].split("googleapis.com", 1)[1]
    ]
    assert f"sha256 {args[args.index('--weights-sha256') + 1]} (as pinned)" in log
    # Nothing beyond the subnet answers: the cluster has no egress, as the wheelhouse assumes.
    probe = node.run_on(
        network.PRIMARY, rehearsal.hadoop_user, ["curl", "-sS", "--max-time", "5", "https://pypi.org/simple/"],
        env=node.base_env(rehearsal.hadoop_user), log=rehearsal.workdir / "egress-probe.log", timeout=30,
    )  # fmt: skip
    assert probe[0] != 0, probe[1]


def test_the_cluster_user_can_read_and_run_what_the_bootstrap_installed(rehearsal: Rehearsal) -> None:
    weights = next(Path("/opt/fruits").rglob("*.h5"))
    script = (
        "import numpy, pandas, pyarrow, PIL, ai_edge_litert, keras, boto3, tensorflow; "
        f"open({str(weights)!r}, 'rb').read(8); print('ok')"
    )
    code, output = node.run_on(
        network.CORE[0], rehearsal.yarn_user, [node.CLUSTER_PYTHON, "-c", script],
        env=node.base_env(rehearsal.yarn_user), log=rehearsal.workdir / "yarn-user-imports.log", timeout=300,
    )  # fmt: skip
    assert code == 0 and output.strip().endswith("ok"), output[-2000:]
    code, output = node.run_on(
        network.CORE[0], rehearsal.yarn_user, ["touch", str(weights.parent / "planted")],
        env=node.base_env(rehearsal.yarn_user), log=rehearsal.workdir / "yarn-user-write.log", timeout=30,
    )  # fmt: skip
    assert code != 0, "the cluster user must not write the bootstrap's folders"
    for path in (Path("/opt/fruits"), *Path("/opt/fruits").rglob("*")):
        info = path.stat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, f"{path} must be root-owned and read-only"


# --- 2. the stack's step ----------------------------------------------------------------------------------


def test_the_stacks_step_checks_the_cluster_commits_nothing_and_fits_its_container(
    rehearsal: Rehearsal,
) -> None:
    (args,) = rehearsal.deployment.steps.values()
    step = _step(rehearsal, args, "stack-step", watch_memory=True)
    assert (step["state"], step["exit"]) == ("COMPLETED", 0), step["output"][-4000:]
    assert step["app"]["finalStatus"] == "SUCCEEDED"
    _on_core_node(step["app"])
    assert _commits(rehearsal) == [], "a deploy must not start a production run"
    (record,) = _outcomes(rehearsal)
    assert record["status"] == "checked" and record["application_id"] == step["app"]["id"]
    assert record["details"]["model"]["from"] == "built"  # the first run will find the model ready
    # The driver's container: the heap and the overhead the stack sizes; its peak (TensorFlow imported and the
    # model converted in the driver's Python, inside the overhead) keeps a quarter of it free.
    container = (DRIVER_HEAP_MB + DRIVER_OVERHEAD_MB) * MiB
    rehearsal.notes["driver_peak_check_mib"] = step["driver_peak"] // MiB
    print(
        f"driver container peak, first run (model built): {step['driver_peak'] / MiB:.0f} MiB of {container // MiB}"
    )
    assert 0 < step["driver_peak"] <= (1 - DRIVER_MARGIN) * container


# --- 3. a failing step ------------------------------------------------------------------------------------


def test_a_step_on_an_empty_input_fails_and_fruits_status_reads_it_as_failed(rehearsal: Rehearsal) -> None:
    step = _step(rehearsal, _console_args(rehearsal), "empty-input")
    assert step["state"] == "FAILED" and step["exit"] != 0
    assert step["app"]["finalStatus"] == "FAILED"
    assert "User application exited with status 2" in step["app"]["diagnostics"]
    assert "featurize_pca: error: input is empty" in _driver_log(rehearsal, step["app"]["id"])
    done = rehearsal.fruits("status", step["id"], "--stack", rehearsal.stack)
    assert done.returncode == 1, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("failed: input is empty: no files under"), done.stdout
    assert step["app"]["id"] in done.stdout  # where the driver's log is
    report = json.loads(rehearsal.fruits("status", step["id"], "--stack", rehearsal.stack, "--json").stdout)
    assert report["outcome"] == "failed" and report["run_outcome"]["exit_code"] == 2


# --- 4. fruits submit -------------------------------------------------------------------------------------


def test_fruits_submit_publishes_a_run_and_status_reads_it_as_succeeded(rehearsal: Rehearsal) -> None:
    uploaded = rehearsal.aws.upload_folder(Path(os.environ["FRUITS_DATA"]), rehearsal.outputs["InputUri"])
    done = rehearsal.fruits(
        "submit", "--stack", rehearsal.stack, "--wait", "--poll", "5", timeout=STEP_TIMEOUT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[1].startswith("succeeded: run "), done.stdout
    (commit,) = _commits(rehearsal)
    manifest = _manifest(rehearsal)
    _reconciles(manifest)
    assert manifest["counts"]["found"] == len(uploaded)
    assert manifest["weights"]["pretrained"] is True and manifest["spark_master"] == "yarn"
    for name in ("results.csv", "manifest.json", "rejected.csv", "explained_variance.png", "pca_scatter.png"):
        assert _read(rehearsal, name) == _read(rehearsal, commit["run_prefix"] + name), f"published {name}"
    assert "README.md" in _read(rehearsal, "rejected.csv").decode()  # found, and rejected with a reason
    record = _outcomes(rehearsal)[-1]
    assert (record["status"], record["commit"]) == ("succeeded", 1)
    assert record["application_id"].startswith("application_") and record["host"].startswith("core-")


# --- 5. a bare console step; the operator's download -------------------------------------------------------


def test_the_script_alone_runs_in_cluster_mode_from_the_clusters_defaults(rehearsal: Rehearsal) -> None:
    step = _step(
        rehearsal, ["spark-submit", rehearsal.outputs["StepApplicationLocation"], "--k", "5"], "bare-k5"
    )
    assert (step["state"], step["app"]["finalStatus"]) == ("COMPLETED", "SUCCEEDED"), step["output"][-4000:]
    _on_core_node(step["app"])  # spark.submit.deployMode=cluster came from spark-defaults
    manifest = _manifest(rehearsal)
    assert manifest["pca"]["k"] == 5 and manifest["counts"]["newly_featurized"] == 0  # the S3 feature store
    header = _read(rehearsal, "results.csv").decode().splitlines()[0]
    assert header == "path,label," + ",".join(f"pc_{i}" for i in range(1, 6))


def test_the_operator_downloads_the_latest_run(rehearsal: Rehearsal) -> None:
    dest = rehearsal.workdir / "downloaded"
    done = rehearsal.fruits("results", "--stack", rehearsal.stack, "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert (dest / "results.csv").read_bytes() == _read(rehearsal, "results.csv")
    assert json.loads((dest / "manifest.json").read_text())["run_id"] == _commits(rehearsal)[-1]["run_id"]


# --- 6. a driver killed ------------------------------------------------------------------------------------


def test_a_driver_killed_while_featurizing_fails_and_the_next_step_takes_over_at_once(
    rehearsal: Rehearsal,
) -> None:
    before = _commits(rehearsal)
    new_images = rehearsal.workdir / "new-images"
    for i in range(4):  # new bytes, so that the next run has something to featurize
        write_image(new_images / "Training" / "Plum Rehearsal" / f"p{i}.jpg", (90, 20, 110), seed=100 + i)
    rehearsal.aws.upload_folder(new_images, rehearsal.outputs["InputUri"])

    killed: dict[str, Any] = {}

    def kill_when_featurizing() -> None:
        while "app" not in killed:
            for application in _running_apps(rehearsal):
                if "featurize " in _driver_log(rehearsal, application):
                    folders = _am_dirs(rehearsal, application)
                    jvms = [p for f in folders for p in processes_in(f) if _is_application_master(p)]
                    for pid in jvms:
                        os.kill(pid, signal.SIGKILL)
                    killed.update(app=application, pids=jvms)
            threading.Event().wait(0.5)

    killer = threading.Thread(target=kill_when_featurizing, daemon=True)
    killer.start()
    step = _step(rehearsal, _console_args(rehearsal), "killed")
    killer.join(timeout=5)
    assert killed.get("pids"), "the application master was never seen featurizing"
    assert step["state"] == "FAILED" and step["app"]["id"] == killed["app"]
    assert step["app"]["finalStatus"] == "FAILED"  # one attempt (spark.yarn.maxAppAttempts=1)
    assert _commits(rehearsal) == before, "a killed run must not publish"
    # Its node leaves the cluster (as a node EMR scales in): the next driver runs on the other node, where the
    # killed driver's process means nothing; only the ResourceManager can say it is gone.
    gone_host = next(h for h in network.CORE if h.name == _on_core_node(step["app"]))
    rehearsal.hadoop.stop_nodemanager(gone_host)
    try:
        after = _step(rehearsal, _console_args(rehearsal), "after-kill")
    finally:
        rehearsal.hadoop.start_nodemanager(gone_host)
    assert (after["state"], after["app"]["finalStatus"]) == ("COMPLETED", "SUCCEEDED"), after["output"][
        -4000:
    ]
    assert _on_core_node(after["app"]) != gone_host.name
    driver = _driver_log(rehearsal, after["app"]["id"])
    assert f"its YARN application {killed['app']} is FAILED" in driver, (
        "the lease was not taken over through YARN"
    )
    assert len(_commits(rehearsal)) == len(before) + 1
    manifest = _manifest(rehearsal)
    _reconciles(manifest)
    assert manifest["counts"]["newly_featurized"] == 4


def _is_application_master(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"org.apache.spark.deploy.yarn.ApplicationMaster" in handle.read()
    except OSError:
        return False


# --- 7. two runs at once -----------------------------------------------------------------------------------


def test_two_runs_started_together_publish_exactly_one_commit(rehearsal: Rehearsal) -> None:
    """EMR runs one step at a time; two notebooks (or a step beside a notebook) do not wait for each other."""
    before = len(_commits(rehearsal))
    started = [rehearsal.start_step(_console_args(rehearsal), f"together-{i}") for i in (1, 2)]
    codes = sorted(process.wait(timeout=STEP_TIMEOUT) for process, _ in started)
    outputs = [log.read_text(errors="replace") for _, log in started]
    assert codes[0] == 0 and codes[1] != 0, codes
    apps = [rehearsal.hadoop.application(_application(output)) for output in outputs]
    assert sorted(app["finalStatus"] for app in apps) == ["FAILED", "SUCCEEDED"]
    (refused,) = [app for app in apps if app["finalStatus"] == "FAILED"]
    assert "output is in use" in _driver_log(rehearsal, refused["id"])
    assert len(_commits(rehearsal)) == before + 1


# --- 8. a triggered run ------------------------------------------------------------------------------------


def _triggered_step_args(rehearsal: Rehearsal, execution: str) -> list[str]:
    """The step the autorun state machine adds: its "Job arguments" state's States.Array, read from the
    synthesized definition, with the execution's name where the definition takes ``$$.Execution.Name``."""
    resolver = cfn.Resolver(rehearsal.workdir / "cdk.out", rehearsal.deployment.region)
    ((stack, _, machine),) = resolver.resources("AWS::StepFunctions::StateMachine")
    document = json.loads(resolver.resolve(stack, machine["Properties"]["DefinitionString"]))
    expression = document["States"]["Job arguments"]["Parameters"]["args.$"]
    return [execution if item == "$$.Execution.Name" else item for item in _states_array(expression)]


def _states_array(expression: str) -> list[str]:
    """The items of ``States.Array('a', 'b\\'c', $$.Execution.Name)``: quoted literals and bare paths."""
    assert expression.startswith("States.Array(") and expression.endswith(")"), expression
    body, items, i = expression[len("States.Array(") : -1], [], 0
    while i < len(body):
        if body[i] in ", ":
            i += 1
        elif body[i] == "'":
            j, text = i + 1, []
            while body[j] != "'":
                text.append(body[j + 1] if body[j] == "\\" else body[j])
                j += 2 if body[j] == "\\" else 1
            items.append("".join(text))
            i = j + 1
        else:
            j = body.find(",", i)
            items.append(body[i : len(body) if j < 0 else j].strip())
            i = len(body) if j < 0 else j
    return items


def test_a_triggered_run_featurizes_only_the_new_images_and_a_second_one_commits_nothing(
    rehearsal: Rehearsal,
) -> None:
    before = _manifest(rehearsal)["counts"]
    new_images = rehearsal.workdir / "tenth"
    count = -(-before["featurized"] // 10)  # 10 % more images
    for i in range(count):
        write_image(new_images / "Training" / "Kiwi Rehearsal" / f"k{i}.jpg", (120, 160, 40), seed=500 + i)
    rehearsal.aws.upload_folder(new_images, rehearsal.outputs["InputUri"])
    commits_before = len(_commits(rehearsal))

    step = _step(rehearsal, _triggered_step_args(rehearsal, "rehearsal-window-1"), "triggered")
    assert (step["state"], step["app"]["finalStatus"]) == ("COMPLETED", "SUCCEEDED"), step["output"][-4000:]
    manifest = _manifest(rehearsal)
    _reconciles(manifest)
    assert (
        manifest["counts"]["newly_featurized"] == count
        and manifest["counts"]["reused"] == before["featurized"]
    )
    record = json.loads(_read(rehearsal, "_triggered/rehearsal-window-1.json"))
    assert record["status"] == "succeeded" and record["counts"] == manifest["counts"]

    again = _step(rehearsal, _triggered_step_args(rehearsal, "rehearsal-window-2"), "triggered-again")
    assert again["state"] == "COMPLETED", again["output"][-4000:]
    assert len(_commits(rehearsal)) == commits_before + 1, "a run with nothing new commits nothing"
    assert json.loads(_read(rehearsal, "_triggered/rehearsal-window-2.json"))["status"] == "unchanged"


# --- 9. the audit -----------------------------------------------------------------------------------------


def test_every_s3_request_was_allowed_and_signed_for_the_stack_region(rehearsal: Rehearsal) -> None:
    requests = [r for r in rehearsal.aws.audit() if r["access_key"] == rehearsal.instance_role_key]
    assert requests, "the audit saw no request of the instance role"
    denied = sorted(
        {f"{r['status']} {r['method']} {r['path']}?{r['query']}" for r in requests if r["status"] == 403}
    )
    assert not denied, "requests the instance role's policy denied:\n" + "\n".join(denied[:40])
    regions = {r["region"] for r in requests if "Boto3" in r["agent"] or "Botocore" in r["agent"]}
    assert regions == {rehearsal.deployment.region}, f"boto3 requests were signed for {regions}"
    print(json.dumps(rehearsal.notes, indent=2))
