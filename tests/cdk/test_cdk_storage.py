"""The bucket factory and the four buckets, each property asserted on a bare stack."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match, Template
from fruits_infra.storage import FruitsStorage


def _storage(bare_stack, *, ephemeral=False):
    stack = bare_stack()
    storage = FruitsStorage(stack, "Storage", ephemeral=ephemeral)
    return stack, storage, Template.from_stack(stack)


@pytest.fixture
def built(bare_stack):
    return _storage(bare_stack)


def _bucket(stack, template, bucket):
    logical_id = stack.get_logical_id(bucket.node.default_child)
    return logical_id, template.to_json()["Resources"][logical_id]


def _all(storage):
    return {
        "logs": storage.logs_bucket,
        "input": storage.input_bucket,
        "results": storage.results_bucket,
        "artifacts": storage.artifacts_bucket,
    }


def test_four_buckets(built):
    _, _, template = built
    template.resource_count_is("AWS::S3::Bucket", 4)


@pytest.mark.parametrize("name", ["logs", "input", "results", "artifacts"])
def test_every_bucket_blocks_public_access_encrypts_and_aborts_multipart_uploads(built, name):
    stack, storage, template = built
    _, bucket = _bucket(stack, template, _all(storage)[name])
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    rules = props["LifecycleConfiguration"]["Rules"]
    assert {
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3},
        "Id": "abort-incomplete-multipart",
        "Status": "Enabled",
    } in rules


@pytest.mark.parametrize("name", ["logs", "input", "results", "artifacts"])
def test_every_bucket_policy_denies_requests_without_tls(built, name):
    stack, storage, template = built
    logical_id, _ = _bucket(stack, template, _all(storage)[name])
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": logical_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Principal": {"AWS": "*"},
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )


@pytest.mark.parametrize("name", ["input", "results", "artifacts"])
def test_data_buckets_log_access_to_the_logs_bucket(built, name):
    stack, storage, template = built
    logs_id, _ = _bucket(stack, template, storage.logs_bucket)
    _, bucket = _bucket(stack, template, _all(storage)[name])
    assert bucket["Properties"]["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": logs_id},
        "LogFilePrefix": f"s3-access/{name}/",
    }


def test_access_logs_are_delivered_through_the_bucket_policy_not_acls(built):
    stack, storage, template = built
    logs_id, logs = _bucket(stack, template, storage.logs_bucket)
    assert "AccessControl" not in logs["Properties"]
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": logs_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Principal": {"Service": "delivery.logs.amazonaws.com"},
                                "Action": "s3:PutObject",
                            }
                        ),
                        Match.object_like(
                            {"Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject"}
                        ),
                    ]
                )
            },
        },
    )


def test_versioning_on_input_and_results_only(built):
    stack, storage, template = built
    for name, bucket in _all(storage).items():
        _, resource = _bucket(stack, template, bucket)
        versioned = resource["Properties"].get("VersioningConfiguration") == {"Status": "Enabled"}
        assert versioned == (name in {"input", "results"}), name


def test_logs_expire(built):
    stack, storage, template = built
    _, logs = _bucket(stack, template, storage.logs_bucket)
    rules = logs["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {"ExpirationInDays": 90, "Id": "expire", "Status": "Enabled"} in rules


def test_buckets_are_retained_by_default(built):
    _, _, template = built
    buckets = template.find_resources("AWS::S3::Bucket")
    assert {b["DeletionPolicy"] for b in buckets.values()} == {"Retain"}
    assert not template.find_resources("Custom::S3AutoDeleteObjects")


def test_ephemeral_buckets_are_emptied_and_deleted(bare_stack):
    _, _, template = _storage(bare_stack, ephemeral=True)
    buckets = template.find_resources("AWS::S3::Bucket")
    assert {b["DeletionPolicy"] for b in buckets.values()} == {"Delete"}
    template.resource_count_is("Custom::S3AutoDeleteObjects", 4)


def test_versioned_buckets_clean_up_old_versions_and_expired_delete_markers(built):
    stack, storage, template = built
    for bucket in (storage.input_bucket, storage.results_bucket):
        _, resource = _bucket(stack, template, bucket)
        rules = resource["Properties"]["LifecycleConfiguration"]["Rules"]
        (rule,) = [r for r in rules if r["Id"] == "expire-noncurrent"]
        assert rule["ExpiredObjectDeleteMarker"] is True
        assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}


def test_ephemeral_data_buckets_send_no_access_logs_to_the_auto_deleted_logs_bucket(bare_stack):
    """S3 delivers access logs late: they would land after the logs bucket was emptied (BucketNotEmpty)."""
    stack, storage, template = _storage(bare_stack, ephemeral=True)
    for name, bucket in _all(storage).items():
        _, resource = _bucket(stack, template, bucket)
        assert "LoggingConfiguration" not in resource["Properties"], name
