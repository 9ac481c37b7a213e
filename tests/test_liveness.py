"""A dead holder's lease is taken over at once: its process on this host is gone, or its YARN app ended."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from fruits.lease import Lease, LeaseHeld
from fruits.liveness import identity, local_process_probe, process_start, yarn_application_probe
from fruits.storage import open_store


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def holder(**changes) -> dict:
    return {**identity(), "owner": "someone", "expires_at": time.time() + 3600, **changes}


def test_a_live_process_is_not_gone():
    assert local_process_probe(holder()) is None


def test_a_process_that_exited_is_gone():
    pid = dead_pid()
    assert local_process_probe(holder(pid=pid)) == f"its process {pid} on {socket.gethostname()} is gone"


def test_a_reused_pid_is_recognised_by_its_start_time():
    reason = local_process_probe(holder(process_start=str(int(process_start(1) or 0) + 12345)))
    assert reason and "belongs to another process" in reason


@pytest.mark.parametrize(
    "changes", [{"host": "another-host"}, {"boot_id": "another-boot"}, {"boot_id": None}, {"pid": "x"}]
)
def test_another_host_or_boot_cannot_be_judged(changes):
    assert local_process_probe(holder(**{"pid": dead_pid(), **changes})) is None


YARN_STATES = {
    "application_1_0001": "FINISHED",
    "application_1_0002": "RUNNING",
    "application_1_0003": "KILLED",
}


class FakeResourceManager(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        app = self.path.rsplit("/", 1)[-1]
        if not self.path.startswith("/ws/v1/cluster/apps/") or app not in YARN_STATES:
            self.send_error(404)
            return
        body = json.dumps({"app": {"id": app, "state": YARN_STATES[app]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def resource_manager():
    server = HTTPServer(("127.0.0.1", 0), FakeResourceManager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize(
    ("application", "gone"),
    [("application_1_0001", True), ("application_1_0002", False), ("application_1_0003", True),
     ("application_1_0404", False), (None, False)],
)  # fmt: skip
def test_yarn_probe_asks_the_resource_manager(resource_manager, application, gone):
    probe = yarn_application_probe(resource_manager)
    reason = probe(holder(host="another-node", reentrant_key=application))
    assert bool(reason) == gone
    if gone:
        assert application in reason


def test_an_unreachable_resource_manager_leaves_it_to_the_ttl():
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    assert (
        yarn_application_probe(f"127.0.0.1:{port}", timeout=1)(holder(reentrant_key="application_1_0001"))
        is None
    )


def test_lease_of_a_dead_local_process_is_taken_over_at_once(tmp_path, caplog):
    store = open_store(str(tmp_path))
    dead = Lease(store, "killed-run", ttl_seconds=3600, background=False).acquire()
    body = json.loads(store.read_bytes("_lease.json"))
    store.write_bytes("_lease.json", json.dumps({**body, "pid": dead_pid()}).encode())  # as if killed
    dead._etag = None  # the killed run never releases
    with caplog.at_level("WARNING"):
        taken = Lease(store, "next-run", ttl_seconds=60, background=False).acquire()
    assert taken.held and json.loads(store.read_bytes("_lease.json"))["owner"] == "next-run"
    assert any(
        "taking over the lease of 'killed-run' at once: its process" in r.getMessage() for r in caplog.records
    )


def test_a_live_holder_still_blocks_with_the_callers_hint(tmp_path):
    store = open_store(str(tmp_path))
    Lease(store, "running", ttl_seconds=3600, background=False).acquire()
    with pytest.raises(LeaseHeld, match="give --wait SECONDS"):
        Lease(store, "second", ttl_seconds=60, background=False, hint="give --wait SECONDS").acquire()
