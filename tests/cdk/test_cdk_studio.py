"""The analysts' EMR Studio (context ``studio``): absent by default, and when on, what EMR Studio's documentation
asks for: IAM auth, the tagged engine/workspace groups on 18888, a scoped service role, its users' policy, Livy
and Jupyter Enterprise Gateway on the cluster, and the notebook deployed to the Studio's own bucket."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App
from cdkapp import CDK_JSON, synthesize
from fruits_infra.config import DEFAULTS, FruitsConfig
from fruits_infra.storage import STUDIO_ACCESS_LOGS_PREFIX
from fruits_infra.studio import ENGINE_PORT, NOTEBOOKS_PREFIX, WORKSPACES_PREFIX

TAG = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}
ARTIFACTS = "FruitsDataStack-ArtifactsBucket"  # the export names of the artifacts bucket start so
LOGS_ARN = {"Fn::ImportValue": "FruitsDataStack-LogsBucketArn"}
STUDIO_OUTPUTS = {
    "StudioUrl",
    "StudioId",
    "StudioNotebooksUri",
    "StudioUserPolicyArn",
    "StudioServiceRoleArn",
    "StudioBucketName",
}


@pytest.fixture(scope="module")
def studio_app(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("studio"), studio=True)


@pytest.fixture(scope="module")
def studio(studio_app):
    return studio_app.template(studio_app.emr_stack)


def _one(template, kind):
    (logical_id, resource), *others = template.find_resources(kind).items()
    assert not others, f"more than one {kind}"
    return logical_id, resource["Properties"]


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _bucket(template):
    """Logical id of the Studio's own bucket."""
    return _one(template, "AWS::S3::Bucket")[0]


def _groups(template):
    """logical id -> properties of the two Studio groups (by their construct path)."""
    return {
        lid: r["Properties"]
        for lid, r in template.find_resources("AWS::EC2::SecurityGroup").items()
        if lid.startswith(("StudioEngineSg", "StudioWorkspaceSg"))
    }


def _group_id(template, prefix):
    (lid,) = [lid for lid in _groups(template) if lid.startswith(prefix)]
    return lid


# -- the key ---------------------------------------------------------------------------------------------


def test_the_key_is_off_by_default_in_cdk_json_and_the_config():
    assert CDK_JSON["context"]["studio"] is False and DEFAULTS["studio"] is False
    assert FruitsConfig.from_context(App().node).studio is False
    assert FruitsConfig.from_context(App(context={"studio": "true"}).node).studio is True


def test_off_no_studio_and_the_cluster_keeps_its_applications(full_app):
    emr = full_app.template(full_app.emr_stack)
    emr.resource_count_is("AWS::EMR::Studio", 0)
    emr.resource_count_is("Custom::CDKBucketDeployment", 0)
    assert _groups(emr) == {}
    _, cluster = _one(emr, "AWS::EMR::Cluster")
    assert cluster["Applications"] == [{"Name": "Hadoop"}, {"Name": "Spark"}]
    assert "livy-conf" not in [c["Classification"] for c in cluster["Configurations"]]
    assert not STUDIO_OUTPUTS & set(emr.to_json()["Outputs"])


def test_on_synthesizes_nag_clean(studio_app):
    assert studio_app.error is None
    assert studio_app.findings("error") == [] and studio_app.findings("warning") == []


# -- the Studio ------------------------------------------------------------------------------------------


def test_studio_uses_iam_auth_the_cluster_subnets_and_its_own_bucket(studio):
    _, props = _one(studio, "AWS::EMR::Studio")
    assert props["AuthMode"] == "IAM"
    assert "UserRole" not in props  # IAM authentication takes no user role
    assert props["DefaultS3Location"] == {
        "Fn::Join": ["", ["s3://", {"Ref": _bucket(studio)}, f"/{WORKSPACES_PREFIX}"]]
    }
    (vpc_id,) = studio.find_resources("AWS::EC2::VPC")
    assert props["VpcId"] == {"Ref": vpc_id}
    _, cluster = _one(studio, "AWS::EMR::Cluster")
    assert props["SubnetIds"][0] == cluster["Instances"]["Ec2SubnetId"]  # the cluster's private subnet ...
    subnets = studio.find_resources("AWS::EC2::Subnet")
    for subnet in props["SubnetIds"]:  # ... and every subnet is private and tagged for EMR's policies
        resource = subnets[subnet["Ref"]]["Properties"]
        assert resource["MapPublicIpOnLaunch"] is False and TAG in resource["Tags"]
    assert props["EngineSecurityGroupId"] == {"Fn::GetAtt": [_group_id(studio, "StudioEngineSg"), "GroupId"]}
    assert props["WorkspaceSecurityGroupId"] == {
        "Fn::GetAtt": [_group_id(studio, "StudioWorkspaceSg"), "GroupId"]
    }


def test_groups_are_tagged_and_only_workspaces_reach_the_engine_on_18888(studio):
    groups = _groups(studio)
    assert len(groups) == 2
    for props in groups.values():
        assert TAG in props["Tags"]
        assert "SecurityGroupIngress" not in props  # no inline ingress: nothing from anywhere else
    engine, workspace = _group_id(studio, "StudioEngineSg"), _group_id(studio, "StudioWorkspaceSg")
    ingress = [r["Properties"] for r in studio.find_resources("AWS::EC2::SecurityGroupIngress").values()]
    to_engine = [r for r in ingress if r["GroupId"] == {"Fn::GetAtt": [engine, "GroupId"]}]
    assert to_engine == [
        {
            "IpProtocol": "tcp",
            "FromPort": ENGINE_PORT,
            "ToPort": ENGINE_PORT,
            "GroupId": {"Fn::GetAtt": [engine, "GroupId"]},
            "SourceSecurityGroupId": {"Fn::GetAtt": [workspace, "GroupId"]},
            "Description": to_engine[0]["Description"],
        }
    ]
    assert not [r for r in ingress if r["GroupId"] == {"Fn::GetAtt": [workspace, "GroupId"]}]
    egress = [r["Properties"] for r in studio.find_resources("AWS::EC2::SecurityGroupEgress").values()]
    (to_engine_out,) = [r for r in egress if r["GroupId"] == {"Fn::GetAtt": [workspace, "GroupId"]}]
    assert (to_engine_out["FromPort"], to_engine_out["ToPort"]) == (ENGINE_PORT, ENGINE_PORT)
    assert to_engine_out["DestinationSecurityGroupId"] == {"Fn::GetAtt": [engine, "GroupId"]}
    inline = groups[workspace]["SecurityGroupEgress"]
    assert [(r["CidrIp"], r["FromPort"], r["ToPort"]) for r in inline] == [("0.0.0.0/0", 443, 443)]


def test_the_cluster_is_deleted_before_the_studio_groups(studio):
    (cluster,) = studio.find_resources("AWS::EMR::Cluster").values()
    assert {_group_id(studio, "StudioEngineSg"), _group_id(studio, "StudioWorkspaceSg")} <= set(
        cluster["DependsOn"]
    )


# -- its service role ------------------------------------------------------------------------------------


def _service_role(studio):
    _, props = _one(studio, "AWS::EMR::Studio")
    role_id = props["ServiceRole"]["Fn::GetAtt"][0]
    role = studio.find_resources("AWS::IAM::Role")[role_id]["Properties"]
    statements = [
        st
        for policy in studio.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    return role, statements


def test_service_role_is_for_emr_with_a_confused_deputy_guard_and_no_managed_policy(studio):
    role, _ = _service_role(studio)
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "elasticmapreduce.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert "aws:SourceArn" in trust["Condition"]["ArnLike"]
    assert "ManagedPolicyArns" not in role


def test_service_role_touches_network_interfaces_and_groups_only_when_tagged(studio):
    _, statements = _service_role(studio)
    for st in statements:
        actions = _as_list(st["Action"])
        assert not any(a.endswith("*") for a in actions), st  # no wildcard actions
        assert all(a.split(":")[0] in {"ec2", "elasticmapreduce", "secretsmanager", "s3"} for a in actions)
        mutating = [a for a in actions if a.startswith("ec2:") and not a.startswith("ec2:Describe")]
        exempt = {
            "ec2:ModifyNetworkInterfaceAttribute",
            "ec2:CreateTags",
        }  # AWS: keep these as in the example
        if set(mutating) - exempt:
            conditions = json.dumps(st.get("Condition", {}))
            assert "for-use-with-amazon-emr-managed-policies" in conditions, st
        if "secretsmanager:GetSecretValue" in actions:
            assert "aws:ResourceTag/for-use-with-amazon-emr-managed-policies" in json.dumps(st["Condition"])


def test_service_role_s3_access_is_the_workspaces_prefix_of_the_studios_bucket(studio):
    _, statements = _service_role(studio)
    bucket_arn = {"Fn::GetAtt": [_bucket(studio), "Arn"]}
    s3 = [st for st in statements if any(a.startswith("s3:") for a in _as_list(st["Action"]))]
    objects = [st for st in s3 if "s3:PutObject" in _as_list(st["Action"])]
    assert objects == [
        {
            "Sid": "StudioLocationObjects",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": {"Fn::Join": ["", [bucket_arn, f"/{WORKSPACES_PREFIX}*"]]},
        }
    ]
    (bucket,) = [st for st in s3 if st is not objects[0]]
    assert set(bucket["Action"]) == {"s3:ListBucket", "s3:GetEncryptionConfiguration"}
    assert bucket["Resource"] == bucket_arn
    assert ARTIFACTS not in json.dumps(statements)  # nothing of the bucket whose bootstrap runs as root


def test_the_studios_bucket_is_the_apps_kind_and_logs_into_the_logs_bucket(studio_app, studio):
    bucket = studio.find_resources("AWS::S3::Bucket")[_bucket(studio)]
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"  # analysts' notebooks outlive the stack unless ephemeral
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    assert props["LoggingConfiguration"]["LogFilePrefix"] == STUDIO_ACCESS_LOGS_PREFIX
    # ... which the data stack's logs bucket policy lets S3 deliver there.
    data = studio_app.template(studio_app.data_stack)
    statements = [
        st
        for policy in data.find_resources("AWS::S3::BucketPolicy").values()
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        if st.get("Sid") == "StudioBucketAccessLogs"
    ]
    (grant,) = statements
    assert grant["Principal"] == {"Service": "logging.s3.amazonaws.com"} and grant["Action"] == "s3:PutObject"
    assert grant["Resource"]["Fn::Join"][1][-1] == f"/{STUDIO_ACCESS_LOGS_PREFIX}*"
    assert "aws:SourceAccount" in grant["Condition"]["StringEquals"]


# -- its users' policy -----------------------------------------------------------------------------------


def _user_policy(studio):
    _, props = _one(studio, "AWS::IAM::ManagedPolicy")
    return {st["Sid"]: st for st in props["PolicyDocument"]["Statement"]}


def test_the_users_policy_opens_this_studio_only_and_passes_only_its_service_role(studio):
    statements = _user_policy(studio)
    (studio_id, _) = _one(studio, "AWS::EMR::Studio")
    opening = statements["OpenThisStudio"]
    assert "elasticmapreduce:CreateStudioPresignedUrl" in opening["Action"]
    assert opening["Resource"] == {"Fn::GetAtt": [studio_id, "Arn"]}
    _, props = _one(studio, "AWS::EMR::Studio")
    passing = statements["PassStudioServiceRole"]
    assert passing["Action"] == "iam:PassRole" and passing["Resource"] == props["ServiceRole"]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "elasticmapreduce.amazonaws.com"}}
    # Only one statement names the presigned URL, and nothing creates clusters or secrets.
    actions = [a for st in statements.values() for a in _as_list(st["Action"])]
    assert actions.count("elasticmapreduce:CreateStudioPresignedUrl") == 1
    assert not {"elasticmapreduce:RunJobFlow", "secretsmanager:CreateSecret", "iam:CreateRole"} & set(actions)
    assert not any(a.endswith("*") for a in actions)


def test_the_users_policy_reads_s3_and_writes_nothing(studio):
    statements = _user_policy(studio)
    s3 = {a for st in statements.values() for a in _as_list(st["Action"]) if a.startswith("s3:")}
    assert s3 == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject"}
    assert statements["StudioObjects"]["Resource"] == {
        "Fn::Join": ["", [{"Fn::GetAtt": [_bucket(studio), "Arn"]}, "/*"]]
    }
    assert statements["EmrLogs"]["Resource"] == {"Fn::Join": ["", [LOGS_ARN, "/emr/*"]]}


# -- the cluster and the notebook ------------------------------------------------------------------------


def test_cluster_gets_livy_and_jupyter_enterprise_gateway_and_cluster_mode_sessions(studio):
    _, cluster = _one(studio, "AWS::EMR::Cluster")
    names = [a["Name"] for a in cluster["Applications"]]
    assert {"Spark", "Livy", "JupyterEnterpriseGateway"} <= set(names)
    (livy,) = [c for c in cluster["Configurations"] if c["Classification"] == "livy-conf"]
    assert livy["ConfigurationProperties"] == {"livy.spark.deploy-mode": "cluster"}


def test_the_notebook_is_deployed_to_the_studios_bucket(studio_app, studio):
    _, deployment = _one(studio, "Custom::CDKBucketDeployment")
    assert deployment["DestinationBucketName"] == {"Ref": _bucket(studio)}
    assert deployment["DestinationBucketKeyPrefix"] == NOTEBOOKS_PREFIX
    assert deployment["Prune"] is True  # only notebooks/: Workspaces live beside it
    (zip_key,) = deployment["SourceObjectKeys"]
    asset = studio_app.outdir / f"asset.{zip_key.removesuffix('.zip')}"
    deployed = {p.relative_to(asset).as_posix() for p in asset.rglob("*") if p.is_file()}
    assert "fruits_chain.ipynb" in deployed
    assert not [name for name in deployed if ".ipynb_checkpoints" in name]


def test_outputs_name_the_studio_the_notebook_the_users_policy_and_the_service_role(studio):
    outputs = studio.to_json()["Outputs"]
    assert set(outputs) >= STUDIO_OUTPUTS
    assert outputs["StudioNotebooksUri"]["Value"] == {
        "Fn::Join": ["", ["s3://", {"Ref": _bucket(studio)}, f"/{NOTEBOOKS_PREFIX}"]]
    }
    (policy_id, _) = _one(studio, "AWS::IAM::ManagedPolicy")
    assert outputs["StudioUserPolicyArn"]["Value"] == {"Ref": policy_id}
    _, props = _one(studio, "AWS::EMR::Studio")
    assert outputs["StudioServiceRoleArn"]["Value"] == props["ServiceRole"]
    assert outputs["StudioBucketName"]["Value"] == {"Ref": _bucket(studio)}
