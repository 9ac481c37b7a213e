"""Teardown as the README documents it: what `cdk destroy` deletes, keeps, and leaves behind."""

from __future__ import annotations

import pytest
from cdkapp import synthesize


@pytest.fixture(scope="module")
def ephemeral(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("ephemeral"), ephemeral=True)


def _key(app):
    (key,) = app.template(app.emr_stack).find_resources("AWS::KMS::Key").values()
    return key


def test_the_disk_key_is_kept_by_default_and_scheduled_for_deletion_when_ephemeral(full_app, ephemeral):
    assert _key(full_app)["DeletionPolicy"] == "Retain"
    key = _key(ephemeral)
    assert key["DeletionPolicy"] == "Delete" and key["Properties"]["PendingWindowInDays"] == 7


def test_ephemeral_buckets_go_and_none_logs_into_the_auto_deleted_logs_bucket(ephemeral):
    data = ephemeral.template(ephemeral.data_stack)
    buckets = data.find_resources("AWS::S3::Bucket")
    assert {b["DeletionPolicy"] for b in buckets.values()} == {"Delete"}
    assert not [k for k, b in buckets.items() if "LoggingConfiguration" in b["Properties"]]
    # Flow logs reach the logs bucket within a minute, before the data stack (deleted after this one) empties it.
    (flow_log,) = ephemeral.template(ephemeral.emr_stack).find_resources("AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["MaxAggregationInterval"] == 60
    assert ephemeral.findings("error") == [] and ephemeral.findings("warning") == []


@pytest.mark.parametrize("stack", ["data_stack", "emr_stack"])
def test_every_function_logs_to_a_log_group_that_expires_and_goes_with_the_stack(full_app, stack):
    template = full_app.template(getattr(full_app, stack)).to_json()["Resources"]
    functions = {k: r for k, r in template.items() if r["Type"] == "AWS::Lambda::Function"}
    assert functions
    for logical_id, function in functions.items():
        if "LoggingConfig" not in function["Properties"]:
            # CDK's own singleton helpers (auto-delete objects, default security group) log for seconds per deploy.
            continue
        group = template[function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]]
        assert group["Properties"]["RetentionInDays"] <= 30, logical_id
        assert group["DeletionPolicy"] == "Delete", logical_id
    deployments = [k for k in functions if k.startswith("CustomCDKBucketDeployment")]
    for logical_id in deployments:
        assert "LoggingConfig" in functions[logical_id]["Properties"], "the BucketDeployment handler's logs"


def test_instances_require_imdsv2(full_app):
    (config,) = (
        full_app.template(full_app.emr_stack).find_resources("AWS::EMR::SecurityConfiguration").values()
    )
    assert config["Properties"]["SecurityConfiguration"]["InstanceMetadataServiceConfiguration"] == {
        "MinimumInstanceMetadataServiceVersion": 2,
        "HttpPutResponseHopLimit": 1,
    }
