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


def _flow_log(app):
    (flow_log,) = app.template(app.emr_stack).find_resources("AWS::EC2::FlowLog").values()
    return flow_log["Properties"]


def test_ephemeral_buckets_go_and_none_logs_into_the_auto_deleted_logs_bucket(ephemeral):
    data = ephemeral.template(ephemeral.data_stack)
    buckets = data.find_resources("AWS::S3::Bucket")
    assert {b["DeletionPolicy"] for b in buckets.values()} == {"Delete"}
    assert not [k for k, b in buckets.items() if "LoggingConfiguration" in b["Properties"]]
    # Flow logs reach S3 as files every 5 minutes, possibly after the logs bucket was emptied: an ephemeral
    # environment sends them to a log group of this stack instead, deleted with it.
    flow_log = _flow_log(ephemeral)
    assert flow_log["LogDestinationType"] == "cloud-watch-logs" and "LogDestination" not in flow_log
    group = ephemeral.template(ephemeral.emr_stack).to_json()["Resources"][flow_log["LogGroupName"]["Ref"]]
    assert group["DeletionPolicy"] == "Delete" and group["Properties"]["RetentionInDays"] <= 30
    assert ephemeral.findings("error") == [] and ephemeral.findings("warning") == []


def test_flow_logs_go_to_the_logs_bucket_and_show_the_path_to_s3(full_app):
    flow_log = _flow_log(full_app)
    assert flow_log["LogDestinationType"] == "s3"
    assert flow_log["LogDestination"]["Fn::Join"][1][-1] == "/vpc-flow-logs/"
    assert flow_log["ResourceType"] == "VPC"
    # traffic-path 7 = "through a gateway VPC endpoint": what shows S3 traffic does not cross the NAT.
    assert flow_log["LogFormat"].endswith("${log-status} ${pkt-dst-aws-service} ${traffic-path}")
    assert flow_log["LogFormat"].startswith("${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr}")


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
        # The clean-up function's lines are the teardown's: its group outlives the stack (its events expire).
        kept = logical_id.startswith("ManagedGroupsCleanup")
        assert group["DeletionPolicy"] == ("Retain" if kept else "Delete"), logical_id
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
