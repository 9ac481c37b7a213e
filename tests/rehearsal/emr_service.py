"""EMR's side of a step, for the rehearsal: its API for steps, its step runner, and its log pusher.

On EMR, a step is added through the EMR API (the console, ``fruits submit``, CloudFormation for the stack's own
step); the cluster runs steps one at a time (``StepConcurrencyLevel`` 1), each as ``command-runner.jar`` runs a
command on the primary node as the ``hadoop`` user; the step's state is COMPLETED when the command exits 0 and
FAILED otherwise; and the cluster copies the step's output and the YARN containers' logs to the cluster's
``LogUri`` (https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-manage-view-web-log-files.html):
``<LogUri><cluster-id>/steps/<step-id>/stderr.gz`` and
``<LogUri><cluster-id>/containers/<application-id>/<container-id>/stderr.gz``.

:class:`EmrService` does the same for the rehearsal's cluster, and answers the EMR API calls the operator CLI
makes (AddJobFlowSteps, ListSteps, DescribeStep, CancelSteps, DescribeCluster, ListClusters, in the JSON protocol
boto3 speaks:
``X-Amz-Target: ElasticMapReduce.<Operation>``), so ``fruits submit`` and ``fruits status`` run here against the
real cluster's steps. Its requests are not authorized (the operators' IAM is not what the rehearsal checks).
It pushes logs when a step ends, where EMR pushes them every few minutes.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_APPLICATION = re.compile(r"\b(application_\d+_\d+)\b")


@dataclass
class Step:
    """One step, as EMR keeps it."""

    id: str
    name: str
    action_on_failure: str
    jar: str
    args: list[str]
    state: str = "PENDING"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def describe(self, log_uri: str, cluster_id: str) -> dict[str, Any]:
        """The API's ``Step`` (DescribeStep) / ``StepSummary`` (ListSteps)."""
        timeline = {"CreationDateTime": self.created}
        if self.started:
            timeline["StartDateTime"] = self.started
        if self.ended:
            timeline["EndDateTime"] = self.ended
        status: dict[str, Any] = {"State": self.state, "StateChangeReason": {}, "Timeline": timeline}
        if self.state == "FAILED":
            status["FailureDetails"] = {
                "Reason": "Unknown Error.",
                "Message": f"Command exited with status {self.exit_code}",
                "LogFile": f"{log_uri}{cluster_id}/steps/{self.id}/stderr.gz",
            }
        return {
            "Id": self.id,
            "Name": self.name,
            "Config": {"Jar": self.jar, "Args": self.args, "Properties": {}},
            "ActionOnFailure": self.action_on_failure,
            "Status": status,
        }


class EmrService:
    """The EMR API for one cluster, and its step runner.

    ``start_step(args, name)`` starts a step's command on the primary node and returns (process, its log);
    ``container_logs(application_id)`` lists (container id, log name, local file) of an application;
    ``put_log(key, data)`` writes one object under the cluster's log bucket.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        cluster_name: str,
        log_uri: str,
        start_step: Callable[[list[str], str], tuple[subprocess.Popen[bytes], Path]],
        container_logs: Callable[[str], list[tuple[str, str, Path]]],
        put_log: Callable[[str, bytes], None],
        address: str,
    ) -> None:
        self.cluster_id = cluster_id
        self.cluster_name = cluster_name
        self.created = time.time()
        self.log_uri = log_uri
        self._start_step = start_step
        self._container_logs = container_logs
        self._put_log = put_log
        self.steps: list[Step] = []
        self._ids = (f"s-REHEARSAL{n:08d}" for n in itertools.count(1))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.runner = threading.Thread(target=self._run_steps, name="emr-steps", daemon=True)
        self.runner.start()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                operation = self.headers.get("X-Amz-Target", "").removeprefix("ElasticMapReduce.")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                status, answer = service.call(operation, body)
                data = json.dumps(answer, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.endpoint = f"http://{address}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, name="emr-api", daemon=True).start()

    # --- the API ------------------------------------------------------------------------------------------

    def call(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One API call: (HTTP status, answer)."""
        if operation == "ListClusters":  # the one cluster (no filter but CreatedAfter is rehearsed)
            after = float(body.get("CreatedAfter") or 0)
            found = [] if after > self.created else [self._summary()]
            return 200, {"Clusters": found}
        cluster = body.get("ClusterId") or body.get("JobFlowId")
        if cluster != self.cluster_id:
            return 400, {
                "__type": "InvalidRequestException",
                "Message": f"Cluster id '{cluster}' is not valid.",
            }
        if operation == "DescribeCluster":
            return 200, {"Cluster": self._summary()}
        if operation == "AddJobFlowSteps":
            return 200, {"StepIds": [self.add(step) for step in body["Steps"]]}
        if operation == "ListSteps":
            wanted = set(body.get("StepStates") or [])
            with self._lock:
                steps = [s for s in reversed(self.steps) if not wanted or s.state in wanted]  # newest first
            return 200, {"Steps": [s.describe(self.log_uri, self.cluster_id) for s in steps]}
        if operation == "DescribeStep":
            step = self.find(body["StepId"])
            if step is None:
                return 400, {
                    "__type": "InvalidRequestException",
                    "Message": f"Step id '{body['StepId']}' is not valid.",
                }
            return 200, {"Step": step.describe(self.log_uri, self.cluster_id)}
        if operation == "CancelSteps":
            return 200, {"CancelStepsInfoList": [self.cancel(step_id) for step_id in body["StepIds"]]}
        return 400, {"__type": "InvalidRequestException", "Message": f"{operation} is not rehearsed"}

    def _summary(self) -> dict[str, Any]:
        busy = any(step.state in ("PENDING", "RUNNING") for step in self.steps)
        state = "RUNNING" if busy else "WAITING"
        return {"Id": self.cluster_id, "Name": self.cluster_name, "Status": {"State": state}}

    def add(self, request: dict[str, Any]) -> str:
        """Queue a step (AddJobFlowSteps); its id."""
        jar = request["HadoopJarStep"]["Jar"]
        if jar != "command-runner.jar":
            raise ValueError(f"only command-runner.jar steps are rehearsed, got {jar}")
        step = Step(
            next(self._ids), request["Name"], request.get("ActionOnFailure", "CONTINUE"), jar,
            list(request["HadoopJarStep"]["Args"]),
        )  # fmt: skip
        with self._lock:
            self.steps.append(step)
        self._wake.set()
        return step.id

    def find(self, step_id: str) -> Step | None:
        """The step with this id, if any."""
        with self._lock:
            return next((s for s in self.steps if s.id == step_id), None)

    def cancel(self, step_id: str) -> dict[str, str]:
        """CancelSteps: a pending step is cancelled; a running one is interrupted (SEND_INTERRUPT)."""
        step = self.find(step_id)
        if step is None:
            return {"StepId": step_id, "Status": "FAILED", "Reason": "no such step"}
        if step.state == "PENDING":
            step.state = "CANCELLED"
        elif step.state == "RUNNING" and step.process is not None:
            step.process.terminate()
        return {"StepId": step_id, "Status": "SUBMITTED", "Reason": ""}

    def wait(self, step_id: str, timeout: float) -> Step:
        """The step once it ended (or as it is after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        step = self.find(step_id)
        assert step is not None, step_id
        while step.state in ("PENDING", "RUNNING") and time.monotonic() < deadline:
            time.sleep(1)
        return step

    # --- the step runner and the log pusher ---------------------------------------------------------------

    def _run_steps(self) -> None:
        while not self._stopping:
            self._wake.wait(timeout=1)
            self._wake.clear()
            with self._lock:
                step = next((s for s in self.steps if s.state == "PENDING"), None)
            if step is None:
                continue
            step.state, step.started = "RUNNING", time.time()
            try:
                step.process, step.log = self._start_step(step.args, step.id)
                step.exit_code = step.process.wait()
                interrupted = step.exit_code in (-15, 143) and step.state == "RUNNING"
                step.state = (
                    "COMPLETED" if step.exit_code == 0 else ("CANCELLED" if interrupted else "FAILED")
                )
            except Exception as error:  # a step that cannot even start fails, as on EMR
                step.exit_code, step.state = -1, "FAILED"
                step.log = step.log or Path("/dev/null")
                print(f"rehearsal EMR: step {step.id} could not start: {error}")
            step.ended = time.time()
            self.push_logs(step)
            self._wake.set()

    def push_logs(self, step: Step) -> None:
        """The step's output and its application's container logs to the cluster's log bucket, gzipped."""
        prefix = f"{self.cluster_id}/"
        output = step.log.read_bytes() if step.log and step.log.exists() else b""
        self._put_log(f"{prefix}steps/{step.id}/stderr.gz", gzip.compress(output))
        self._put_log(f"{prefix}steps/{step.id}/stdout.gz", gzip.compress(b""))
        for application in sorted(set(_APPLICATION.findall(output.decode(errors="replace")))):
            for container, name, path in self._container_logs(application):
                key = f"{prefix}containers/{application}/{container}/{name}.gz"
                self._put_log(key, gzip.compress(path.read_bytes()))

    def stop(self) -> None:
        """Stop serving (running steps are left to the cluster's teardown)."""
        self._stopping = True
        self._wake.set()
        self.server.shutdown()
        self.server.server_close()


def epoch(value: float | None) -> datetime | None:
    """An API timestamp as a datetime (for assertions)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)
