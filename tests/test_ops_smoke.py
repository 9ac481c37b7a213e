"""`fruits smoke` against moto: the stack's real outputs, a fake cluster that writes what the job would.

moto does not run EMR steps, so `FakeJob` plays the cluster: it waits for the smoke step, reads the images the
CLI uploaded (through the step's own --input), publishes a committed run with the job's code (fruits.commits
over an S3 Store, so the layout is the real one), writes the logs EMR would upload, and completes the step.
"""

from __future__ import annotations

import gzip
import io
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from fruits import commits, layout
from fruits.listing import list_input
from fruits.ops import aws
from fruits.ops.cli import main
from fruits.storage import S3Store, StoreError, open_store
from tests.ops_stack import Deployment, set_step_state

pytestmark = pytest.mark.usefixtures("aws_env")

APP = "application_1700000000000_0003"
DRIVER = "container_1700000000000_0003_01_000001"


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@dataclass
class FakeJob:
    """Completes the first step on the deployment's cluster as the job would; records what it saw."""

    s3: Any
    emr: Any
    dep: Deployment
    outcome: str = "ok"  # "ok", "miscount" (counts that do not add up) or "fail" (the step fails)
    seen: dict[str, Any] = field(default_factory=dict)
    thread: threading.Thread | None = None

    def __enter__(self) -> FakeJob:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.thread is not None
        self.thread.join(timeout=30)

    def _run(self) -> None:
        cluster = self.dep.cluster_id
        for _ in range(1500):
            steps = self.emr.list_steps(ClusterId=cluster)["Steps"]
            if steps:
                break
            threading.Event().wait(0.02)
        else:
            return
        step = steps[0]
        args = step["Config"]["Args"]
        self.seen["args"] = args
        images = open_store(option(args, "--input"), s3_client=self.s3)
        keys = images.list_keys()
        good = [key for key in keys if images.read_bytes(key)[:2] == b"\xff\xd8"]  # JPEG magic
        self.seen["keys"] = keys
        self.seen["sizes"] = {key: Image.open(io.BytesIO(images.read_bytes(key))).size for key in good}
        production = list_input(self.dep.outputs()["InputUri"], s3_client=self.s3)
        self.seen["production_listing"] = (
            f"found {len(production.entries)} files" if production.entries else "input is empty"
        )
        self._write_logs(step["Id"])
        if self.outcome == "fail":
            set_step_state(cluster, step["Id"], "FAILED", "Step failed with exitCode 1.")
            return
        self._publish(args, keys, good)
        set_step_state(cluster, step["Id"], "COMPLETED")

    def _publish(self, args: list[str], keys: list[str], good: list[str]) -> None:
        out = open_store(option(args, "--output"), s3_client=self.s3)
        open_store(option(args, "--feature-store"), s3_client=self.s3).write_bytes("m/batch=x/_SUCCESS", b"")
        run_id = commits.new_run_id()
        prefix = layout.run_prefix(run_id)
        input_uri = option(args, "--input")
        rows = [f"{input_uri}{key},{key.split('/')[0]},0.5,-0.25\n" for key in good]
        out.write_bytes(prefix + layout.RESULTS_CSV, ("path,label,pc_1,pc_2\n" + "".join(rows)).encode())
        rejected = len(keys) - len(good)
        counts = {"found": len(keys), "featurized": len(good), "rejected": rejected, "reused": 0}
        if self.outcome == "miscount":
            counts["rejected"] = 0
        out.write_json(prefix + layout.MANIFEST_JSON, {"run_id": run_id, "counts": counts})
        for name in (layout.REJECTED_CSV, layout.EXPLAINED_VARIANCE_PNG, layout.PCA_SCATTER_PNG):
            out.write_bytes(prefix + name, b"x")
        payload = {"counts": counts, layout.COMMIT_MANIFEST_FIELD: layout.manifest_key(run_id)}
        commits.commit_run(out, run_id, payload)
        commits.publish_latest(out, run_id)

    def _write_logs(self, step_id: str) -> None:
        bucket, prefix = self.dep.buckets["logs"], self.dep.outputs()["LogUri"].split("/", 3)[3]
        base = f"{prefix}{self.dep.cluster_id}/"
        step_log = f"INFO Client: Submitted application {APP}\n"
        driver_log = "INFO fruits.job: run committed\n"
        for key, text in (
            (f"{base}steps/{step_id}/stderr.gz", step_log),
            (f"{base}containers/{APP}/{DRIVER}/stdout.gz", driver_log),
        ):
            self.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))


def scratch_objects(s3: Any, dep: Deployment) -> list[str]:
    """Every object under the three scratch roots (InputUri, ResultsUri, FeatureStoreUri + _smoke/)."""
    found = []
    outputs = dep.outputs()
    for key in ("InputUri", "ResultsUri", "FeatureStoreUri"):
        store = open_store(outputs[key], s3_client=s3)
        found += [store.uri_for(k) for k in store.list_keys("_smoke/")]
    return found


def test_smoke_passes_checks_and_cleans_up(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    with FakeJob(s3, emr, dep) as job:
        code = main(["smoke", "--poll", "0.05"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1].startswith("PASS")
    for check in ("step", "commit", "manifest", "results.csv", "logs"):
        assert any(line.startswith("ok") and f" {check} " in line for line in out.splitlines()), (check, out)
    assert f"{DRIVER}/stdout.gz" in out.splitlines()[-1]  # where the logs are
    # The step is the one the stack describes with the smoke's job options, into scratch prefixes under the stack's.
    outputs = dep.outputs()
    args = job.seen["args"]
    assert args[: len(dep.console_step_args())] == dep.console_step_args()
    for flag, output in (
        ("--input", "InputUri"),
        ("--output", "ResultsUri"),
        ("--feature-store", "FeatureStoreUri"),
    ):
        assert option(args, flag).startswith(outputs[output] + "_smoke/")
    assert option(args, "--limit") == "20" and "--overwrite" in args
    # What was uploaded: two labels of real JPEGs and a bad file; a production run's listing skips them all.
    labels = {key.split("/")[0] for key in job.seen["sizes"]}
    assert len(labels) >= 2 and len(job.seen["keys"]) > len(job.seen["sizes"])
    assert "input is empty" in job.seen["production_listing"]
    assert scratch_objects(s3, dep) == []


def test_smoke_keep_leaves_the_scratch_prefixes(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    with FakeJob(s3, emr, dep):
        assert main(["smoke", "--poll", "0.05", "--keep"]) == 0

    out = capsys.readouterr().out
    left = scratch_objects(s3, dep)
    assert any("/_commits/" in uri for uri in left) and any(uri.endswith(".jpg") for uri in left)
    assert "scratch kept" in out


def test_smoke_fails_when_the_counts_do_not_reconcile(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    with FakeJob(s3, emr, dep, outcome="miscount"):
        assert main(["smoke", "--poll", "0.05"]) == 1

    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("FAIL")
    assert any(line.startswith("FAIL") and " manifest " in line for line in out.splitlines()), out
    assert scratch_objects(s3, dep) == []


def test_smoke_fails_with_the_steps_reason(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    with FakeJob(s3, emr, dep, outcome="fail"):
        assert main(["smoke", "--poll", "0.05"]) == 1

    out = capsys.readouterr().out
    assert "FAILED: Step failed with exitCode 1." in out
    assert "INFO fruits.job: run committed" in out  # the driver log's tail explains a failure
    assert out.splitlines()[-1].startswith("FAIL") and f"{DRIVER}/stdout.gz" in out.splitlines()[-1]


def test_smoke_gives_up_after_the_timeout(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    assert main(["smoke", "--poll", "0.05", "--timeout", "0.005"]) == 1  # 0.3 s; moto's step stays RUNNING

    out = capsys.readouterr().out
    assert "still RUNNING after" in out and out.splitlines()[-1].startswith("FAIL")
    assert "/steps/s-" in out.splitlines()[-1]  # no application yet: the step log is where to look
    assert scratch_objects(s3, dep) == []


def test_smoke_on_a_terminated_cluster_uploads_nothing(emr: Any, s3: Any, dep: Deployment, capsys) -> None:
    emr.terminate_job_flows(JobFlowIds=[dep.cluster_id])

    assert main(["smoke"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clusterGeneration=" in err[0]
    assert scratch_objects(s3, dep) == []
    assert aws.cluster_state(emr, dep.cluster_id) == "TERMINATED"


def test_a_failed_cleanup_is_reported_and_keeps_the_verdict(
    emr: Any, s3: Any, dep: Deployment, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: S3Store, prefix: str) -> int:
        raise StoreError(f"could not delete 1 objects under {self.uri_for(prefix)}: AccessDenied")

    monkeypatch.setattr(S3Store, "delete_prefix", refuse)
    with FakeJob(s3, emr, dep):
        assert main(["smoke", "--poll", "0.05"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("PASS")
    assert any(line.startswith("scratch NOT deleted") and "AccessDenied" in line for line in out)
