"""The rehearsal's S3 server: IAM enforced as moto does it, signatures checked as S3 checks them.

The server corrects how moto verifies SigV4 (every signed header, the request line as sent); these tests make
sure that correction accepts what S3 accepts and still refuses what S3 refuses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from tests.rehearsal.aws import Credentials, MotoAws, moto_compensations

REGION = "eu-west-3"
BUCKET = "rehearsal-bucket"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoAws, Credentials]]:
    aws = MotoAws(Path(tmp_path_factory.mktemp("s3-server")), REGION)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="images/Red Apple/a b.jpg", Body=b"jpeg")
    s3.put_object(Bucket=BUCKET, Key="other/x", Body=b"x")
    statements = [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:DeleteObject"],
            "Resource": f"arn:aws:s3:::{BUCKET}/images/*",
        },
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{BUCKET}"},
    ]
    reader = aws.user("reader", statements)
    aws.enforce_iam()
    yield aws, reader
    aws.stop()


def _java_style_get(
    aws: MotoAws, who: Credentials, key: str, user_agent: str, sent_agent: str
) -> requests.Response:
    """A GET signed as the AWS SDK for Java v1 signs it: User-Agent among the signed headers."""

    class SignsUserAgent(S3SigV4Auth):
        def headers_to_sign(self, request: AWSRequest):  # type: ignore[no-untyped-def]
            headers = super().headers_to_sign(request)
            headers["user-agent"] = request.headers["User-Agent"]
            return headers

    url = f"{aws.endpoint}/{BUCKET}/{requests.utils.quote(key)}"
    request = AWSRequest(method="GET", url=url, headers={"User-Agent": user_agent})
    request.context["timestamp"] = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    SignsUserAgent(BotoCredentials(who.access_key, who.secret_key), "s3", REGION).add_auth(request)
    headers = {**dict(request.headers.items()), "User-Agent": sent_agent}
    return requests.get(url, headers=headers, timeout=10)


def _signed_get(aws: MotoAws, who: Credentials, key: str, region: str) -> requests.Response:
    """A GET signed for ``region`` as any SDK signs it."""
    url = f"{aws.endpoint}/{BUCKET}/{requests.utils.quote(key)}"
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(BotoCredentials(who.access_key, who.secret_key), "s3", region).add_auth(request)
    return requests.get(url, headers=dict(request.headers.items()), timeout=10)


def test_a_request_signed_for_another_region_is_refused_as_s3_refuses_it(server) -> None:
    aws, reader = server
    refused = _signed_get(aws, reader, "images/Red Apple/a b.jpg", "us-east-1")
    assert refused.status_code == 400 and refused.headers["x-amz-bucket-region"] == REGION
    assert b"AuthorizationHeaderMalformed" in refused.content
    assert f"the region 'us-east-1' is wrong; expecting '{REGION}'".encode() in refused.content
    assert _signed_get(aws, reader, "images/Red Apple/a b.jpg", REGION).status_code == 200


def test_boto3_without_the_region_pays_a_refused_request_that_the_audit_shows(server) -> None:
    """botocore follows S3's answer (it re-signs for the region S3 names), as it does against S3 itself."""
    aws, reader = server
    client = boto3.client(
        "s3", endpoint_url=aws.endpoint, region_name="us-east-1",
        aws_access_key_id=reader.access_key, aws_secret_access_key=reader.secret_key,
    )  # fmt: skip
    assert client.get_object(Bucket=BUCKET, Key="images/Red Apple/a b.jpg")["Body"].read() == b"jpeg"
    mine = [r for r in aws.audit() if r["access_key"] == reader.access_key]
    assert [(r["status"], r["region"]) for r in mine[-2:]] == [(400, "us-east-1"), (200, REGION)]


def test_a_request_that_signs_user_agent_is_accepted_with_a_key_that_has_spaces(server) -> None:
    aws, reader = server
    agent = "Hadoop 3.3.4, aws-sdk-java/1.12.262"
    response = _java_style_get(aws, reader, "images/Red Apple/a b.jpg", agent, agent)
    assert response.status_code == 200 and response.content == b"jpeg"


def test_a_tampered_signed_header_is_refused(server) -> None:
    aws, reader = server
    response = _java_style_get(aws, reader, "images/Red Apple/a b.jpg", "aws-sdk-java/1", "curl/8")
    assert response.status_code == 403 and b"SignatureDoesNotMatch" in response.content


def test_a_wrong_secret_is_refused(server) -> None:
    aws, reader = server
    client = aws.client("s3", Credentials(reader.access_key, "not-the-secret"))
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        client.get_object(Bucket=BUCKET, Key="images/Red Apple/a b.jpg")


def test_the_policy_is_enforced_and_audited(server) -> None:
    aws, reader = server
    client = aws.client("s3", reader)
    assert client.get_object(Bucket=BUCKET, Key="images/Red Apple/a b.jpg")["Body"].read() == b"jpeg"
    with pytest.raises(ClientError, match="AccessDenied"):
        client.get_object(Bucket=BUCKET, Key="other/x")
    denied = [r for r in aws.audit() if r["access_key"] == reader.access_key and r["status"] == 403]
    assert any(r["path"] == f"/{BUCKET}/other/x" and r["region"] == REGION for r in denied)


def test_moto_compensation_covers_only_buckets_where_the_policy_deletes() -> None:
    statements = [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::in/images/*"},
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": ["arn:aws:s3:::out/*"],
        },
    ]
    (added,) = moto_compensations(statements)
    assert added["Action"] == ["s3:DeleteObject"] and added["Resource"] == ["arn:aws:s3:::out"]
    assert moto_compensations(statements[:1]) == []
