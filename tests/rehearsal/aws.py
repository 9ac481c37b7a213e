"""The AWS side of the rehearsal: moto's S3, IAM and CloudFormation on 127.0.0.1, set up as a deploy would.

:class:`MotoAws` starts :mod:`tests.rehearsal.s3_server` in its own process, creates the buckets the templates
name, puts the artifacts where the BucketDeployment would, makes an IAM user holding exactly the instance role's
S3 statements (the credentials every cluster process gets, as nodes get the instance profile's), and then turns
IAM enforcement on. Setup and assertions use an administrator user; the job never does.

moto 5.2.5 enforces identity policies on S3 actions and resources, but not Condition keys, and it checks a bulk
DeleteObjects against the bucket ARN where AWS checks s3:DeleteObject per key. :func:`moto_compensations` says
which statements are added for that, and why; everything else is the template's policy, unchanged.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests

from tests.cfn import Deployment
from tests.rehearsal.metadata import RoleCredentials

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Credentials:
    """An IAM user's access key, and the environment that hands it to an AWS SDK."""

    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The SDKs' standard variables (the default credential chain reads them first)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def moto_compensations(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Statements that make moto answer as AWS would for requests the template's policy already allows.

    AWS authorizes each key of a DeleteObjects request as s3:DeleteObject on that object's ARN; moto checks the
    bulk request against the bucket's ARN. So wherever the policy lets the role delete objects of a bucket,
    moto must also see s3:DeleteObject on that bucket's ARN. Nothing else is added.
    """
    buckets = set()
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement.get("Effect") == "Allow" and any(a in ("s3:DeleteObject", "s3:*") for a in actions):
            resources = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            buckets.update(r.split("/", 1)[0] for r in resources if r.startswith("arn:aws:s3:::"))
    if not buckets:
        return []
    return [
        {
            "Sid": "MotoBulkDeleteIsCheckedAgainstTheBucket",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": sorted(buckets),
        }
    ]


class MotoAws:
    """moto in its own process, with IAM users, buckets and artifacts made from a :class:`Deployment`."""

    def __init__(self, workdir: Path, region: str, host: str = "127.0.0.1") -> None:
        self.region = region
        self.audit_path = workdir / "s3-audit.jsonl"
        port_file = workdir / "moto.port"
        self.log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.rehearsal.s3_server", "--port-file", str(port_file),
             "--audit", str(self.audit_path), "--region", region, "--host", host],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start; see {workdir / 'moto.log'}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().strip())
        self.endpoint = f"http://{host}:{self.port}"
        # Before enforcement any key works; this one only creates the administrator.
        bootstrap = Credentials("AKIAREHEARSALSETUP00", "setup")
        self.admin = self._user(
            bootstrap, "rehearsal-admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
        )

    def client(self, service: str, credentials: Credentials | None = None) -> Any:
        """A boto3 client for ``service`` on the moto server (the administrator's by default)."""
        credentials = credentials or self.admin
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
        )

    def _user(self, caller: Credentials, name: str, statements: list[dict[str, Any]]) -> Credentials:
        iam = self.client("iam", caller)
        iam.create_user(UserName=name)
        document = {"Version": "2012-10-17", "Statement": statements}
        iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def user(self, name: str, statements: list[dict[str, Any]]) -> Credentials:
        """An IAM user holding exactly ``statements``."""
        return self._user(self.admin, name, statements)

    def instance_role(self, name: str, statements: list[dict[str, Any]]) -> RoleCredentials:
        """The instance profile's role holding exactly ``statements``, assumed as EC2 assumes it for a node.

        One session for the whole rehearsal (12 hours), so every request of the cluster carries one access key.
        """
        iam = self.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        role = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=43200
        )
        document = {"Version": "2012-10-17", "Statement": statements}
        iam.put_role_policy(RoleName=name, PolicyName="policy", PolicyDocument=json.dumps(document))
        session = self.client("sts").assume_role(
            RoleArn=role["Role"]["Arn"], RoleSessionName="i-rehearsal", DurationSeconds=43200
        )["Credentials"]
        return RoleCredentials(
            name,
            session["AccessKeyId"],
            session["SecretAccessKey"],
            session["SessionToken"],
            session["Expiration"],
        )

    def enforce_iam(self) -> None:
        """From now on every request must be signed by a user whose policy allows it."""
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def create_buckets(self, deployment: Deployment) -> None:
        """Every bucket the templates declare, in the stack's region."""
        s3 = self.client("s3")
        for name in deployment.buckets.values():
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})

    def deploy_artifacts(self, deployment: Deployment) -> list[str]:
        """Put what each BucketDeployment would put, with its deploy-time markers replaced; the URIs written."""
        s3 = self.client("s3")
        written = []
        for bucket_deployment in deployment.bucket_deployments:
            for source, markers in zip(bucket_deployment.sources, bucket_deployment.markers, strict=True):
                for key, data in _asset_files(source):
                    for marker, value in markers.items():
                        data = data.replace(marker.encode(), str(value).encode())
                    full_key = bucket_deployment.prefix + key
                    s3.put_object(Bucket=bucket_deployment.bucket, Key=full_key, Body=data)
                    written.append(f"s3://{bucket_deployment.bucket}/{full_key}")
        return written

    def upload_folder(self, folder: Path, uri: str) -> list[str]:
        """Upload every file under ``folder`` below the ``s3://bucket/prefix/`` URI; the keys written."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        s3 = self.client("s3")
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def put_stack_outputs(self, stack_name: str, outputs: dict[str, str]) -> None:
        """A stack in moto's CloudFormation that carries the synthesized stack's resolved outputs."""
        template = {
            "Resources": {"Marker": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {key: {"Value": value} for key, value in outputs.items()},
        }
        self.client("cloudformation").create_stack(StackName=stack_name, TemplateBody=json.dumps(template))

    def audit(self) -> list[dict[str, Any]]:
        """Every request the server answered so far, oldest first."""
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _asset_files(source: Path) -> Iterator[tuple[str, bytes]]:
    """(relative key, bytes) of each file of a folder asset, or of a zip asset's entries."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            yield path.relative_to(source).as_posix(), path.read_bytes()
        return
    with zipfile.ZipFile(io.BytesIO(source.read_bytes())) as archive:
        for name in sorted(archive.namelist()):
            if not name.endswith("/"):
                yield name, archive.read(name)
