"""A dead holder's lease is taken over at once: its process on this host is gone, or its YARN app ended."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from fruits.lease import Lease, LeaseHeld
from fruits.liveness import (
    identity,
    local_process_probe,
    process_start,
    resource_manager_url,
    yarn_application_probe,
)
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


def serve(server: HTTPServer):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def resource_manager():
    server = serve(HTTPServer(("127.0.0.1", 0), FakeResourceManager))
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def self_signed_certificate(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (as a ResourceManager with TLS would present one) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "resourcemanager")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "rm.pem", directory / "rm.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def https_resource_manager(tmp_path):
    """A ResourceManager serving its REST API over HTTPS only; yields (URL, its certificate's PEM file)."""
    cert_file, key_file = self_signed_certificate(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), FakeResourceManager)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    serve(server)
    yield f"https://127.0.0.1:{server.server_port}", cert_file
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
        yarn_application_probe(f"http://127.0.0.1:{port}", timeout=1)(
            holder(reentrant_key="application_1_0001")
        )
        is None
    )


HTTP_ONLY_CONF = {
    "yarn.resourcemanager.hostname": "ip-10-40-1-5.ec2.internal",
    "yarn.resourcemanager.webapp.address": "ip-10-40-1-5.ec2.internal:8088",
    "yarn.resourcemanager.webapp.https.address": "ip-10-40-1-5.ec2.internal:8090",
}


@pytest.mark.parametrize(
    ("conf", "url"),
    [
        (HTTP_ONLY_CONF, "http://ip-10-40-1-5.ec2.internal:8088"),
        ({**HTTP_ONLY_CONF, "yarn.http.policy": "HTTP_ONLY"}, "http://ip-10-40-1-5.ec2.internal:8088"),
        ({**HTTP_ONLY_CONF, "yarn.http.policy": "HTTPS_ONLY"}, "https://ip-10-40-1-5.ec2.internal:8090"),
        # YARN's defaults bind every interface: the RM's host name is what a client connects to.
        ({"yarn.resourcemanager.hostname": "rm.internal", "yarn.resourcemanager.webapp.https.address":
          "0.0.0.0:8090", "yarn.http.policy": "HTTPS_ONLY"}, "https://rm.internal:8090"),
        ({"yarn.resourcemanager.webapp.address": "0.0.0.0:8088"}, None),  # no host to connect to
        ({"yarn.http.policy": "HTTPS_ONLY", "yarn.resourcemanager.webapp.address": "rm:8088"}, None),
        ({}, None),
    ],
)  # fmt: skip
def test_the_resource_managers_url_follows_yarns_http_policy(conf, url):
    assert resource_manager_url(conf.get) == url


def test_an_https_only_resource_manager_is_asked_over_https(https_resource_manager, monkeypatch):
    url, certificate = https_resource_manager
    monkeypatch.setenv("SSL_CERT_FILE", certificate)  # the node's trust store holds the cluster's certificate
    probe = yarn_application_probe(url)
    assert (
        probe(holder(reentrant_key="application_1_0003"))
        == "its YARN application application_1_0003 is KILLED"
    )
    assert probe(holder(reentrant_key="application_1_0002")) is None


def test_an_untrusted_certificate_leaves_it_to_the_ttl(https_resource_manager, caplog):
    url, _ = https_resource_manager
    with caplog.at_level("INFO", logger="fruits.liveness"):
        assert yarn_application_probe(url, timeout=2)(holder(reentrant_key="application_1_0003")) is None
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


def test_a_url_without_scheme_is_refused():
    with pytest.raises(ValueError, match="http:// or https://"):
        yarn_application_probe("127.0.0.1:8088")


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
