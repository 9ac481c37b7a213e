"""Pytest plugin: an in-process moto S3 server on 127.0.0.1, and stores on it or on a temporary folder.

Load it from tests/conftest.py with ``pytest_plugins = ["tests.moto_server"]``. Fixtures:

- ``moto_server`` (session): starts ``moto.server.ThreadedMotoServer`` on a free port once, stops it at the
  end; yields its endpoint URL. Server mode (not ``mock_aws``) so that boto3 talks real HTTP, as on a cluster.
- ``moto_env`` (function): points AWS_ENDPOINT_URL, fake credentials and us-east-1 at that server for one
  test, restored afterwards (monkeypatch); a profile or S3 endpoint from the caller's shell is hidden.
- ``moto_s3`` (function): a fresh, uniquely named bucket on the server, as a :class:`MotoS3`.
- ``store_uri`` (function, parametrised ``local`` / ``s3``): the root URI of an empty store, so one test body
  runs against a temporary folder and against S3.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"  # moto answers some APIs (EMR) for us-east-1 only; S3 tests use it too for one setting


@dataclass(frozen=True)
class MotoS3:
    """A bucket on the moto server and a client for it."""

    endpoint_url: str
    bucket: str
    client: Any

    def uri(self, prefix: str = "") -> str:
        """``s3://bucket/prefix`` for :func:`fruits.storage.open_store`."""
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto server running in this process for the whole session."""
    from moto.server import ThreadedMotoServer

    # Port 0 lets the OS pick a free port: parallel sessions on one machine do not collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 (through the environment, as the job and CLI read it) at the moto server for one test."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture
def moto_s3(moto_env: str) -> MotoS3:
    """A new empty bucket per test: tests never see each other's objects, with no backend reset needed."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_env, region_name=REGION)
    bucket = f"test-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=bucket)
    return MotoS3(endpoint_url=moto_env, bucket=bucket, client=client)


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Root of an empty store: a temporary folder, then a prefix in a moto bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket: MotoS3 = request.getfixturevalue("moto_s3")
    return bucket.uri("out/fruits")
