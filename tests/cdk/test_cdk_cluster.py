"""The cluster and its security configuration, asserted on the full app's EMR stack (and variants)."""

from __future__ import annotations

import re

import pytest
from aws_cdk.assertions import Capture
from cdkapp import synthesize
from fruits_infra.artifacts import wheelhouse_key

from fruits import models
from fruits.options import parse_options

KERAS_HOME = "/opt/fruits/keras"
PYTHON = "/usr/bin/python3.11"


@pytest.fixture(scope="module")
def emr(full_app):
    return full_app.template(full_app.emr_stack)


def _cluster(template):
    (cluster,) = template.find_resources("AWS::EMR::Cluster").values()
    return cluster["Properties"]


def _classification(props, name):
    (config,) = [c for c in props["Configurations"] if c["Classification"] == name]
    return config


def test_release_applications_and_visibility(emr):
    emr.has_resource_properties(
        "AWS::EMR::Cluster",
        {
            "ReleaseLabel": "emr-7.13.0",
            "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
            "VisibleToAllUsers": True,
            "Name": "fruits-featurize-g1",
            "EbsRootVolumeSize": 32,
        },
    )
    assert "OSReleaseLabel" not in _cluster(emr)  # default: EMR's current AL2023 release (see the README)


def test_default_instance_groups(emr):
    instances = _cluster(emr)["Instances"]
    assert instances["MasterInstanceGroup"]["InstanceType"] == "m5.xlarge"
    assert instances["MasterInstanceGroup"]["InstanceCount"] == 1
    assert instances["CoreInstanceGroup"]["InstanceType"] == "m5.xlarge"
    assert instances["CoreInstanceGroup"]["InstanceCount"] == 2
    assert "TaskInstanceGroups" not in instances
    assert instances["KeepJobFlowAliveWhenNoSteps"] is True
    assert "Ec2SubnetId" in instances
    for key in (
        "EmrManagedMasterSecurityGroup",
        "EmrManagedSlaveSecurityGroup",
        "ServiceAccessSecurityGroup",
    ):
        assert key in instances


def test_managed_scaling_and_auto_termination(emr):
    emr.has_resource_properties(
        "AWS::EMR::Cluster",
        {
            "ManagedScalingPolicy": {
                "ComputeLimits": {
                    "UnitType": "Instances",
                    "MinimumCapacityUnits": 2,
                    "MaximumCapacityUnits": 6,
                }
            },
            "AutoTerminationPolicy": {"IdleTimeout": 3600},
        },
    )


def test_logs_go_to_the_logs_bucket(emr):
    emr.has_resource_properties(
        "AWS::EMR::Cluster",
        {
            "LogUri": {
                "Fn::Join": ["", ["s3://", {"Fn::ImportValue": "FruitsDataStack-LogsBucketName"}, "/emr/"]]
            }
        },
    )


def test_security_configuration_encrypts_s3_and_local_disks_at_rest(emr):
    config = Capture()
    emr.has_resource_properties("AWS::EMR::SecurityConfiguration", {"SecurityConfiguration": config})
    encryption = config.as_object()["EncryptionConfiguration"]
    assert encryption["EnableAtRestEncryption"] is True
    at_rest = encryption["AtRestEncryptionConfiguration"]
    assert at_rest["S3EncryptionConfiguration"] == {"EncryptionMode": "SSE-S3"}
    assert at_rest["LocalDiskEncryptionConfiguration"]["EncryptionKeyProviderType"] == "AwsKms"
    assert at_rest["LocalDiskEncryptionConfiguration"]["EnableEbsEncryption"] is True
    assert encryption["EnableInTransitEncryption"] is False
    emr.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    (security_configuration_id,) = emr.find_resources("AWS::EMR::SecurityConfiguration")
    assert _cluster(emr)["SecurityConfiguration"] == {"Ref": security_configuration_id}


def test_cluster_and_network_are_tagged_for_the_emr_v2_policy(emr):
    tag = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}
    assert tag in _cluster(emr)["Tags"]
    assert {"Key": "project", "Value": "fruits-featurize"} in _cluster(emr)["Tags"]
    for kind in ("AWS::EC2::VPC", "AWS::EC2::SecurityGroup"):
        for resource in emr.find_resources(kind).values():
            assert tag in resource["Properties"]["Tags"]
    for resource in emr.find_resources("AWS::EC2::Subnet").values():
        private = resource["Properties"]["MapPublicIpOnLaunch"] is False
        assert (tag in resource["Properties"]["Tags"]) == private  # the NAT's public subnets are not EMR's


def test_bootstrap_action_installs_from_the_uploaded_requirements_and_fetches_the_model_weights(emr):
    (action,) = _cluster(emr)["BootstrapActions"]
    script = action["ScriptBootstrapAction"]
    assert re.fullmatch(r"/bootstrap/[0-9a-f]{16}/install-runtime\.sh", script["Path"]["Fn::Join"][1][-1])
    assert script["Args"][0] == "--requirements"
    assert script["Args"][1]["Fn::Join"][1][-1] == script["Path"]["Fn::Join"][1][-1].replace(
        "install-runtime.sh", "requirements.txt"
    )
    # Exactly the file Keras fetches for the default model (the job's models.imagenet_weights_file says which).
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert script["Args"][2:] == [
        "--weights-url",
        f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{name}",
        "--weights-file",
        name,
    ]


def test_the_bootstrap_fetches_what_the_configured_model_needs(tmp_path):
    synthesized = synthesize(tmp_path, model="mobilenet", alpha=0.25, imageSize=160)
    args = _cluster(synthesized.template(synthesized.emr_stack))["BootstrapActions"][0][
        "ScriptBootstrapAction"
    ]
    assert args["Args"][2:] == [
        "--weights-url",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_160_tf_no_top.h5",
        "--weights-file",
        "mobilenet_2_5_160_tf_no_top.h5",
    ]


def _bootstrap_args(synthesized):
    (action,) = _cluster(synthesized.template(synthesized.emr_stack))["BootstrapActions"]
    return action["ScriptBootstrapAction"]["Args"]


def _joined(value):
    """An ``s3://{bucket}/key`` argument as synthesized: its literal parts, the bucket's import as a marker."""
    return "".join(part if isinstance(part, str) else "<bucket>" for part in value["Fn::Join"][1])


def test_a_known_imagenet_file_is_checked_against_its_sha256(tmp_path):
    args = _bootstrap_args(synthesize(tmp_path, model="mobilenet", alpha=0.25))
    assert args[-2:] == ["--weights-sha256", models.KNOWN_SHA256["mobilenet_2_5_224_tf_no_top.h5"]]


def test_pinned_weights_digest_from_the_context(tmp_path):
    digest = "ab" * 32
    args = _bootstrap_args(synthesize(tmp_path, weightsSha256=digest))
    assert args[-2:] == ["--weights-sha256", digest] and "--weights-url" in args


def test_without_egress_the_bootstrap_installs_from_the_artifacts_wheelhouse(tmp_path):
    synthesized = synthesize(tmp_path, wheelhouse=True)
    args = _bootstrap_args(synthesized)
    uri = _joined(args[args.index("--wheelhouse") + 1])
    assert uri == f"s3://<bucket>/{wheelhouse_key()}"
    assert re.fullmatch(r"s3://<bucket>/wheelhouse/[0-9a-f]{16}/", uri)
    # Operators read where to upload from the stack's outputs, and it is the same URI.
    outputs = synthesized.template(synthesized.emr_stack).find_outputs("WheelhouseUri")
    (output,) = outputs.values()
    assert _joined(output["Value"]) == uri
    assert "--index-url" not in args


def test_a_private_index_is_passed_to_the_bootstrap(tmp_path):
    args = _bootstrap_args(synthesize(tmp_path, pipIndexUrl="https://pypi.internal.example/simple/"))
    assert args[args.index("--index-url") + 1] == "https://pypi.internal.example/simple/"
    assert "--wheelhouse" not in args


def test_by_default_the_bootstrap_uses_pypi_and_no_wheelhouse_output(emr):
    (action,) = _cluster(emr)["BootstrapActions"]
    args = action["ScriptBootstrapAction"]["Args"]
    assert "--wheelhouse" not in args and "--index-url" not in args
    assert not emr.find_outputs("WheelhouseUri")


ENV = {"PYSPARK_PYTHON": PYTHON, "KERAS_HOME": KERAS_HOME, "AWS_REGION": {"Ref": "AWS::Region"}}


def test_spark_env_points_pyspark_at_python_311_and_exports_the_region(emr):
    env = _classification(_cluster(emr), "spark-env")
    (export,) = env["Configurations"]
    assert export["Classification"] == "export"
    assert export["ConfigurationProperties"]["PYSPARK_DRIVER_PYTHON"] == PYTHON
    assert ENV.items() <= export["ConfigurationProperties"].items()


def test_spark_defaults_make_a_bare_spark_submit_run_the_job(emr):
    props = _classification(_cluster(emr), "spark-defaults")["ConfigurationProperties"]
    assert props["spark.submit.deployMode"] == "cluster"
    assert props["spark.yarn.maxAppAttempts"] == "1"
    assert props["spark.submit.pyFiles"]["Fn::Join"][1][-1] == "/job/fruits.zip"
    assert props["spark.fruits.defaults"]["Fn::Join"][1][-1] == "/config/job-defaults.json"
    for prefix in ("spark.yarn.appMasterEnv.", "spark.executorEnv."):  # what reaches cluster-mode containers
        assert {f"{prefix}{name}": value for name, value in ENV.items()}.items() <= props.items()
    expected = {
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
        "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
        "spark.python.worker.reuse": "true",
    }
    assert {k: props[k] for k in expected} == expected
    # The job's defaults are in the file, not in this replacement-only property.
    assert [k for k in props if k.startswith("spark.fruits.")] == ["spark.fruits.defaults"]


def test_memory_headroom_for_python_workers_from_the_instance_type(emr):
    props = _classification(_cluster(emr), "spark-defaults")["ConfigurationProperties"]
    # m5.xlarge: 12288 MiB of YARN memory for 4 vCPUs; executors of 2 cores; 40% of each core's share for Python.
    assert props["spark.executor.cores"] == "2"
    assert (
        props["spark.executor.memoryOverhead"] == "2816m"
    )  # 2 x 1228 -> 2432 (64 MiB steps) + 384 for the JVM
    assert props["spark.executor.memory"] == "3328m"  # 6144 - 2816
    assert props["spark.driver.memoryOverhead"] == "2048m" and props["spark.driver.memory"] == "2048m"
    heap, overhead = (
        int(props[k].removesuffix("m")) for k in ("spark.executor.memory", "spark.executor.memoryOverhead")
    )
    assert 2 * (heap + overhead) <= 12288  # two executors fit on one node


@pytest.fixture(scope="module")
def variant_app(tmp_path_factory):
    return synthesize(
        tmp_path_factory.mktemp("variant"),
        instanceMode="fleets",
        taskSpotCount=2,
        coreInstanceTypes=["m5.xlarge", "m6i.xlarge"],
        inTransitCertificatesUri="s3://my-certs-bucket/emr/certs.zip",
        weightsUri="s3://my-models-bucket/models/mobilenet_v2.h5",
        pcaK=50,
        idleTimeoutSeconds=1800,
        releaseLabel="emr-7.12.0",
        osReleaseLabel="2023.6.20250203",
        engine="litert-int8",
        calibration="s3://my-calibration-bucket/fruits/calibration",
    )


@pytest.fixture(scope="module")
def variant(variant_app):
    return variant_app.template(variant_app.emr_stack)


def test_fleets_with_spot_task_capacity(variant):
    props = _cluster(variant)
    instances = props["Instances"]
    assert "Ec2SubnetIds" in instances and "MasterInstanceGroup" not in instances
    assert [c["InstanceType"] for c in instances["CoreInstanceFleet"]["InstanceTypeConfigs"]] == [
        "m5.xlarge",
        "m6i.xlarge",
    ]
    (task,) = instances["TaskInstanceFleets"]
    assert task["TargetSpotCapacity"] == 2
    assert (
        task["LaunchSpecifications"]["SpotSpecification"]["AllocationStrategy"] == "price-capacity-optimized"
    )
    limits = props["ManagedScalingPolicy"]["ComputeLimits"]
    assert limits["UnitType"] == "InstanceFleetUnits"
    assert limits["MinimumCapacityUnits"] == 4
    assert limits["MaximumOnDemandCapacityUnits"] == 2 and limits["MaximumCoreCapacityUnits"] == 2
    assert props["ReleaseLabel"] == "emr-7.12.0"
    assert props["OSReleaseLabel"] == "2023.6.20250203"
    assert props["AutoTerminationPolicy"] == {"IdleTimeout": 1800}


def test_in_transit_encryption_option_uses_the_pem_zip(variant):
    config = Capture()
    variant.has_resource_properties("AWS::EMR::SecurityConfiguration", {"SecurityConfiguration": config})
    encryption = config.as_object()["EncryptionConfiguration"]
    assert encryption["EnableInTransitEncryption"] is True
    assert encryption["InTransitEncryptionConfiguration"] == {
        "TLSCertificateConfiguration": {
            "CertificateProviderType": "PEM",
            "S3Object": "s3://my-certs-bucket/emr/certs.zip",
        }
    }


def test_custom_weights_are_copied_by_the_bootstrap_and_used_by_default(variant_app):
    props = _cluster(variant_app.template(variant_app.emr_stack))
    args = props["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert args[2:] == [
        "--weights-uri",
        "s3://my-models-bucket/models/mobilenet_v2.h5",
    ]  # no ImageNet download
    defaults = variant_app.data_stack.job_defaults
    assert defaults["weights"] == "/opt/fruits/models/mobilenet_v2.h5"
    assert defaults["k"] == 50


def test_instance_role_reads_exactly_the_weights_and_certificate_objects(variant):
    resources = []
    for policy in variant.find_resources("AWS::IAM::Policy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st.get("Sid") in {"ReadWeights", "TlsCertificates"}:
                assert st["Action"] == "s3:GetObject"
                resources.append(st["Resource"]["Fn::Join"][1][-1])
    assert sorted(resources) == [
        ":s3:::my-certs-bucket/emr/certs.zip",
        ":s3:::my-models-bucket/models/mobilenet_v2.h5",
    ]


def test_a_pinned_calibration_is_the_job_default_and_the_nodes_read_and_list_only_that_prefix(
    variant_app, variant
):
    defaults = variant_app.data_stack.job_defaults
    options = parse_options([], {}, {**defaults, "weights": "imagenet"})  # its weights file is on the nodes
    assert (options.engine, options.calibration) == (
        "litert-int8",
        "s3://my-calibration-bucket/fruits/calibration",
    )
    found = {}
    for policy in variant.find_resources("AWS::IAM::Policy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st.get("Sid", "").startswith("ReadCalibration"):
                found[st["Sid"]] = (st["Action"], st["Resource"]["Fn::Join"][1][-1], st.get("Condition"))
    assert found == {
        "ReadCalibration": ("s3:GetObject", ":s3:::my-calibration-bucket/fruits/calibration/*", None),
        "ReadCalibrationList": (
            "s3:ListBucket",
            ":s3:::my-calibration-bucket",
            # The prefix the job's listing asks for (fruits.listing: the prefix and a trailing slash).
            {"StringLike": {"s3:prefix": ["fruits/calibration/", "fruits/calibration/*"]}},
        ),
    }


def test_without_a_pinned_calibration_no_other_bucket_is_readable(emr, full_app):
    assert "calibration" not in full_app.data_stack.job_defaults
    sids = {
        st.get("Sid")
        for policy in emr.find_resources("AWS::IAM::Policy").values()
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    assert not any(sid and sid.startswith("ReadCalibration") for sid in sids)


def test_spot_task_group_in_instance_group_mode(tmp_path):
    synthesized = synthesize(tmp_path, taskSpotCount=3, scalingMaxUnits=8)
    instances = _cluster(synthesized.template(synthesized.emr_stack))["Instances"]
    (task,) = instances["TaskInstanceGroups"]
    assert task["Market"] == "SPOT" and task["InstanceCount"] == 3
