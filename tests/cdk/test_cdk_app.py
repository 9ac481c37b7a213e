"""The full app, synthesized once per module: nag, IAM scoping, cluster, step, outputs and the artifact contract."""

from __future__ import annotations

import json
import shlex

import pytest
from aws_cdk.assertions import Capture, Match
from cdkapp import synthesize
from fruits_infra.stacks import OUTPUT_KEYS

VARIANTS = {
    "ephemeral-fleets-spot-tls-weights": {
        "ephemeral": True,
        "instanceMode": "fleets",
        "taskSpotCount": 2,
        "inTransitCertificatesUri": "s3://my-certs-bucket/emr/certs.zip",
        "weightsUri": "s3://my-models-bucket/models/mobilenet_v2.h5",
        "stepArguments": ["--k", "50"],
    },
    "existing-vpc-no-step-groups-spot": {
        "vpcId": "vpc-0123456789abcdef0",
        "subnetIds": ["subnet-0123456789abcdef0"],
        "deployStep": False,
        "taskSpotCount": 1,
        "managedScaling": False,
    },
}


# -- cdk-nag: errors and warnings, default context and variants -------------------------------------------


def test_nag_no_errors(full_app):
    assert full_app.findings("error") == []
    assert full_app.error is None


def test_nag_no_warnings(full_app):
    assert full_app.findings("warning") == []


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nag_clean_for_context_variants(tmp_path, variant):
    synthesized = synthesize(tmp_path, **VARIANTS[variant])
    assert synthesized.findings("error") == [] and synthesized.findings("warning") == []
    assert synthesized.error is None


def test_every_acknowledgment_has_a_written_reason(full_app):
    acknowledged = {}
    for stack in (full_app.data_stack, full_app.emr_stack):
        for construct in stack.node.find_all():
            for entry in construct.node.metadata:
                if "acknowledged" in entry.type.lower():
                    acknowledged.update(
                        {
                            f"{construct.node.path} {k}": v
                            for k, v in entry.data.items()
                            if "AwsSolutions-" in k
                        }
                    )
    assert len(acknowledged) > 10
    for finding, reason in acknowledged.items():
        assert len(reason.split()) >= 6, (finding, reason)


# -- the artifact contract: every S3 path the cluster uses was written by the deployment ------------------


def _deployed_files(full_app):
    """Every key the data stack's deployment writes: the files of each source asset it unpacks."""
    keys = Capture()
    full_app.template(full_app.data_stack).has_resource_properties(
        "Custom::CDKBucketDeployment", {"SourceObjectKeys": keys}
    )
    deployed = set()
    for zip_key in keys.as_array():
        asset_dir = full_app.outdir / f"asset.{zip_key.removesuffix('.zip')}"
        assert asset_dir.is_dir(), asset_dir
        deployed |= {p.relative_to(asset_dir).as_posix() for p in asset_dir.rglob("*") if p.is_file()}
    return deployed


def _artifact_key(joined, export="FruitsDataStack-ArtifactsBucketName"):
    """``s3://<import of the artifacts bucket>/key`` -> key, checking the bucket is the artifacts bucket."""
    parts = joined["Fn::Join"][1]
    assert parts[0] == "s3://" and parts[1] == {"Fn::ImportValue": export}, parts
    return parts[2].removeprefix("/")


def _spark_defaults(template):
    (cluster,) = template.find_resources("AWS::EMR::Cluster").values()
    (config,) = [
        c for c in cluster["Properties"]["Configurations"] if c["Classification"] == "spark-defaults"
    ]
    return config["ConfigurationProperties"]


def test_step_cluster_and_bootstrap_point_only_at_deployed_keys(full_app):
    deployed = _deployed_files(full_app)
    emr = full_app.template(full_app.emr_stack)
    args = Capture()
    emr.has_resource_properties("AWS::EMR::Step", {"HadoopJarStep": {"Args": args}})
    (script,) = [a for a in args.as_array() if isinstance(a, dict)]
    script_key = _artifact_key(script)
    defaults = _spark_defaults(emr)
    pyfiles_key = _artifact_key(defaults["spark.submit.pyFiles"])
    job_defaults_key = _artifact_key(defaults["spark.fruits.defaults"])
    bootstrap = Capture()
    emr.has_resource_properties(
        "AWS::EMR::Cluster", {"BootstrapActions": [{"ScriptBootstrapAction": bootstrap}]}
    )
    bootstrap_key = _artifact_key(bootstrap.as_object()["Path"])
    requirements_key = _artifact_key(bootstrap.as_object()["Args"][1])
    used = {pyfiles_key, script_key, bootstrap_key, requirements_key, job_defaults_key}
    assert used == deployed
    assert {script_key, pyfiles_key, job_defaults_key} == {
        "job/featurize_pca.py",
        "job/fruits.zip",
        "config/job-defaults.json",
    }
    digest = bootstrap_key.split("/")[1]
    assert (bootstrap_key, requirements_key) == (
        f"bootstrap/{digest}/install-runtime.sh",
        f"bootstrap/{digest}/requirements.txt",
    )


def test_deployment_targets_the_artifacts_bucket(full_app):
    data = full_app.template(full_app.data_stack)
    bucket_id = full_app.data_stack.get_logical_id(
        full_app.data_stack.storage.artifacts_bucket.node.default_child
    )
    data.has_resource_properties("Custom::CDKBucketDeployment", {"DestinationBucketName": {"Ref": bucket_id}})
    data.has_output(
        "*", {"Value": {"Ref": bucket_id}, "Export": {"Name": "FruitsDataStack-ArtifactsBucketName"}}
    )


# -- step -------------------------------------------------------------------------------------------------


def test_the_stacks_step_is_a_bounded_check_of_the_cluster_never_a_production_run(full_app):
    emr = full_app.template(full_app.emr_stack)
    args = Capture()
    emr.has_resource_properties(
        "AWS::EMR::Step",
        {
            "Name": "check-cluster-g1",
            "ActionOnFailure": "CONTINUE",
            "JobFlowId": {"Ref": Match.string_like_regexp("^Cluster")},
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args},
        },
    )
    a = args.as_array()
    # Bounded: a cluster that never runs the application fails the deploy instead of keeping it waiting.
    assert a[:3] == ["timeout", "--kill-after=60", "1200"]
    assert a[3:6] == ["spark-submit", "--deploy-mode", "cluster"]
    assert _artifact_key(a[6]) == "job/featurize_pca.py"
    assert a[7:] == ["--check"], "a deploy or a replacement must not start a production run"
    # spark-submit waits for the application (its default), so the step's state is the check's outcome.
    assert not any("waitAppCompletion" in str(arg) for arg in a)
    assert "--py-files" not in a, "the package comes from spark.submit.pyFiles, as for a console step"


def test_step_switch_and_arguments(tmp_path):
    off = synthesize(tmp_path / "off", deployStep=False)
    off.template(off.emr_stack).resource_count_is("AWS::EMR::Step", 0)
    off.template(off.emr_stack).resource_count_is("AWS::EMR::Cluster", 1)
    extra = synthesize(tmp_path / "extra", stepArguments=["--k", "50"])
    args = Capture()
    extra.template(extra.emr_stack).has_resource_properties(
        "AWS::EMR::Step", {"HadoopJarStep": {"Args": args}}
    )
    assert args.as_array()[-3:] == ["--check", "--k", "50"]


# -- outputs ----------------------------------------------------------------------------------------------


def test_outputs_have_the_exact_keys(full_app):
    outputs = full_app.template(full_app.emr_stack).to_json()["Outputs"]
    assert set(OUTPUT_KEYS) <= set(outputs)
    assert {k for k in outputs if not k.startswith("Export")} == set(OUTPUT_KEYS)


def test_console_step_outputs(full_app):
    outputs = full_app.template(full_app.emr_stack).to_json()["Outputs"]
    assert outputs["StepType"]["Value"] == "Spark application"
    assert outputs["StepDeployMode"]["Value"] == "cluster"
    assert shlex.split(outputs["StepArguments"]["Value"]) == []
    # Nothing to type: the cluster's spark-defaults carry the package, deploy mode and attempts.
    assert shlex.split(outputs["StepSparkSubmitOptions"]["Value"]) == []
    assert outputs["ClusterGeneration"]["Value"] == "1"
    assert outputs["JobDefaultsUri"]["Value"]["Fn::Join"][1][-1] == "/config/job-defaults.json"
    assert outputs["StepApplicationLocation"]["Value"] == outputs["JobScriptUri"]["Value"]
    (cluster_id,) = full_app.template(full_app.emr_stack).find_resources("AWS::EMR::Cluster")
    assert outputs["ClusterId"]["Value"] == {"Ref": cluster_id}
    assert outputs["ResultsUri"]["Value"]["Fn::Join"][1][-1] == "/results/"
    assert outputs["FeatureStoreUri"]["Value"]["Fn::Join"][1][-1] == "/features/"
    assert outputs["InputUri"]["Value"]["Fn::Join"][1][-1] == "/images/"
    assert outputs["LogUri"]["Value"]["Fn::Join"][1][-1] == "/emr/"


# -- IAM scoping --------------------------------------------------------------------------------------------


def _statements(template, role_fragment):
    statements = []
    for resource in template.find_resources("AWS::IAM::Policy").values():
        roles = json.dumps(resource["Properties"]["Roles"])
        if role_fragment in roles:
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_instance_role_s3_access_is_the_app_buckets_and_nothing_else(full_app):
    statements = _statements(full_app.template(full_app.emr_stack), "InstanceRole")
    object_grants = {}
    for st in statements:
        actions = _as_list(st["Action"])
        assert "s3:*" not in actions and "*" not in actions
        s3_object_actions = [a for a in actions if a.startswith("s3:") and "Bucket" not in a]
        if not s3_object_actions:
            continue
        for resource in _as_list(st["Resource"]):
            parts = resource["Fn::Join"][1]
            export = parts[0]["Fn::ImportValue"]
            object_grants.setdefault((export, parts[1]), set()).update(s3_object_actions)
    writes = {"s3:PutObject", "s3:DeleteObject"}
    assert set(object_grants) == {
        ("FruitsDataStack-InputBucketArn", "/*"),
        ("FruitsDataStack-ArtifactsBucketArn", "/*"),
        ("FruitsDataStack-ResultsBucketArn", "/*"),
        ("FruitsDataStack-LogsBucketArn", "/emr/*"),
    }
    for key, actions in object_grants.items():
        may_write = key[0] in {"FruitsDataStack-ResultsBucketArn", "FruitsDataStack-LogsBucketArn"}
        assert bool(actions & writes) == may_write, key
    assert object_grants[("FruitsDataStack-LogsBucketArn", "/emr/*")] == {"s3:PutObject"}


def test_instance_role_has_no_bucket_administration(full_app):
    for st in _statements(full_app.template(full_app.emr_stack), "InstanceRole"):
        for action in _as_list(st["Action"]):
            if action.startswith("s3:"):
                assert action in {
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                    "s3:ListBucket",
                    "s3:ListBucketMultipartUploads",
                    "s3:GetBucketLocation",
                }, action


def test_instance_role_uses_session_manager_not_ssh(full_app):
    emr = full_app.template(full_app.emr_stack)
    statements = _statements(emr, "InstanceRole")
    star = [st for st in statements if st["Resource"] == "*"]
    assert len(star) == 1 and star[0]["Sid"] == "SessionManager"
    assert all(a.startswith("ssmmessages:") for a in star[0]["Action"])  # no resource-level permissions exist
    (instance,) = [st for st in statements if st.get("Sid") == "SessionManagerInstance"]
    assert instance["Action"] == "ssm:UpdateInstanceInformation"
    assert instance["Resource"]["Fn::Join"][1][-1] == ":instance/*"
    profile = next(iter(emr.find_resources("AWS::IAM::InstanceProfile").values()))["Properties"]
    assert profile["InstanceProfileName"] == profile["Roles"][0]  # named as its role
    cluster = next(iter(emr.find_resources("AWS::EMR::Cluster").values()))
    assert "Ec2KeyName" not in cluster["Properties"]["Instances"]


def test_service_role_uses_emr_v2_policy_with_confused_deputy_guard_and_passes_only_the_instance_role(
    full_app,
):
    emr = full_app.template(full_app.emr_stack)
    emr.has_resource_properties(
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": {
                "Statement": [
                    Match.object_like(
                        {
                            "Principal": {"Service": "elasticmapreduce.amazonaws.com"},
                            "Condition": {
                                "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
                                "ArnLike": {"aws:SourceArn": Match.any_value()},
                            },
                        }
                    )
                ]
            },
            "ManagedPolicyArns": [
                {
                    "Fn::Join": [
                        "",
                        [
                            "arn:",
                            {"Ref": "AWS::Partition"},
                            ":iam::aws:policy/service-role/AmazonEMRServicePolicy_v2",
                        ],
                    ]
                }
            ],
        },
    )
    pass_role = [st for st in _statements(emr, "ServiceRole") if st["Action"] == "iam:PassRole"]
    assert len(pass_role) == 1
    (instance_role_id,) = [k for k in emr.find_resources("AWS::IAM::Role") if "InstanceRole" in k]
    assert pass_role[0]["Resource"] == {"Fn::GetAtt": [instance_role_id, "Arn"]}
    assert pass_role[0]["Condition"] == {"StringLike": {"iam:PassedToService": "ec2.amazonaws.com*"}}


def test_no_policy_in_the_app_has_wildcard_actions(full_app):
    for stack in (full_app.emr_stack,):
        for resource in full_app.template(stack).find_resources("AWS::IAM::Policy").values():
            for st in resource["Properties"]["PolicyDocument"]["Statement"]:
                assert not any(a.endswith("*") for a in _as_list(st["Action"])), st


def test_nag_is_wired_into_synthesis(tmp_path):
    """A bucket made outside the factory is a finding: proves the clean results above are not vacuous."""
    from aws_cdk import aws_s3 as s3
    from cdkapp import SynthesizedApp

    class _Broken(SynthesizedApp):
        def __init__(self, outdir, bundle_dir):
            from aws_cdk import App
            from cdkapp import build_bundle, cdk_context, wire

            build_bundle(bundle_dir)
            self.app = App(context=cdk_context(), outdir=str(outdir))
            self.data_stack, self.emr_stack = wire(self.app, bundle_dir=bundle_dir)
            s3.Bucket(self.data_stack, "Unprotected")
            with pytest.raises(RuntimeError, match="ValidationFailed"):
                self.app.synth()
            self.outdir = outdir
            self.report = json.loads((outdir / "validation-report.json").read_text())

    broken = _Broken(tmp_path / "out", tmp_path / "bundle")
    assert any("AwsSolutions-S1 at FruitsDataStack/Unprotected" in f for f in broken.findings("error"))
