"""The job's S3 clients take their region from the environment the cluster sets (YARN containers have no config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fruits import models, storage


@pytest.fixture
def no_aws_config(tmp_path, monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def test_aws_region_is_used_although_botocore_ignores_it(no_aws_config, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert storage.s3_region() == ("eu-west-3", "AWS_REGION")
    assert storage.make_s3_client().meta.region_name == "eu-west-3"


def test_aws_default_region_is_the_second_choice(no_aws_config, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    assert storage.make_s3_client().meta.region_name == "ap-southeast-2"


def test_without_any_region_the_fallback_is_named(no_aws_config):
    region, source = storage.s3_region()
    assert region == "us-east-1" and source.startswith("fallback")


def test_s3_weights_are_downloaded_with_the_job_s3_client(moto_s3, tmp_path, monkeypatch):
    body = b"\x89HDF\r\n\x1a\n" + b"h5 bytes"  # an HDF5 signature: the job checks that an .h5 is one
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key="models/custom.h5", Body=body)
    made = []

    def recording_client():
        made.append(True)
        return moto_s3.client

    monkeypatch.setattr(storage, "make_s3_client", recording_client)
    weights = models.resolve_weights(f"s3://{moto_s3.bucket}/models/custom.h5", cache_dir=str(tmp_path))
    assert made and Path(weights.path).read_bytes() == body
