"""EC2's instance metadata service (IMDSv2) at 169.254.169.254, serving the instance profile's role credentials.

On EMR every process of a node (the bootstrap's aws CLI, spark-submit, YARN's containers, boto3 in the driver)
finds its credentials the same way: the SDKs' default chains end at the instance metadata service, which hands
out temporary credentials of the role in the node's instance profile
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-security-credentials.html). The rehearsal
does the same, so no credentials are ever put in a process's environment: the role is the template's instance
role in moto's IAM, assumed through moto's STS. Only IMDSv2 is answered (a PUT for a token first), as the
cluster's security configuration requires (``MinimumInstanceMetadataServiceVersion: 2``).
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.rehearsal.network import METADATA_ADDRESS

TOKEN_HEADER = "X-aws-ec2-metadata-token"
ROLE_PATH = "/latest/meta-data/iam/security-credentials/"


@dataclass(frozen=True)
class RoleCredentials:
    """Temporary credentials of the instance profile's role (what STS AssumeRole returned)."""

    role: str
    access_key: str
    secret_key: str
    token: str
    expiration: datetime


class MetadataService:
    """The metadata service on :data:`METADATA_ADDRESS` port 80, in the rehearsal's network namespace."""

    def __init__(self, credentials: RoleCredentials, region: str, host: str = METADATA_ADDRESS) -> None:
        self.credentials = credentials
        self.region = region
        self.requests: list[str] = []
        tokens: set[str] = set()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # the requests are kept, not printed
                return

            def _send(self, status: int, body: str, kind: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                service.requests.append(f"PUT {self.path}")
                if self.path != "/latest/api/token" or not self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._send(400, "")
                    return
                token = secrets.token_urlsafe(32)
                tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                service.requests.append(f"GET {self.path}")
                if self.headers.get(TOKEN_HEADER) not in tokens:
                    self._send(401, "")  # IMDSv1 is off on the cluster
                    return
                creds = service.credentials
                answers = {
                    ROLE_PATH: creds.role,
                    ROLE_PATH + creds.role: json.dumps(
                        {
                            "Code": "Success",
                            "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "Type": "AWS-HMAC",
                            "AccessKeyId": creds.access_key,
                            "SecretAccessKey": creds.secret_key,
                            "Token": creds.token,
                            "Expiration": creds.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        }
                    ),
                    "/latest/meta-data/placement/region": service.region,
                    "/latest/dynamic/instance-identity/document": json.dumps({"region": service.region}),
                }
                if self.path in answers:
                    self._send(200, answers[self.path])
                else:
                    self._send(404, "")

        self.server = ThreadingHTTPServer((host, 80), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
