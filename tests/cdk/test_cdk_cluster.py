"""The cluster and its security configuration, asserted on the full app's EMR stack (and variants)."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Capture
from cdkapp import synthesize

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
            "Name": "fruits-featurize",
        },
    )


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
    for kind in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::SecurityGroup"):
        for resource in emr.find_resources(kind).values():
            assert tag in resource["Properties"]["Tags"]


def test_bootstrap_action_installs_from_the_uploaded_requirements(emr):
    (action,) = _cluster(emr)["BootstrapActions"]
    script = action["ScriptBootstrapAction"]
    assert script["Path"]["Fn::Join"][1][-1] == "/bootstrap/install-runtime.sh"
    assert script["Args"][0] == "--requirements"
    assert script["Args"][1]["Fn::Join"][1][-1] == "/bootstrap/requirements.txt"
    assert script["Args"][2:] == ["--image-size", "224"]


def test_spark_env_points_pyspark_at_python_311(emr):
    env = _classification(_cluster(emr), "spark-env")
    assert env["Configurations"] == [
        {
            "Classification": "export",
            "ConfigurationProperties": {
                "PYSPARK_PYTHON": PYTHON,
                "PYSPARK_DRIVER_PYTHON": PYTHON,
                "KERAS_HOME": KERAS_HOME,
            },
        }
    ]


def test_spark_defaults_carry_the_job_defaults(emr):
    props = _classification(_cluster(emr), "spark-defaults")["ConfigurationProperties"]

    def tail(key):
        return props[key]["Fn::Join"][1][-1]

    assert tail("spark.fruits.input") == "/images/"
    assert tail("spark.fruits.output") == "/results/"
    assert tail("spark.fruits.featureStore") == "/features/"
    assert props["spark.fruits.input"]["Fn::Join"][1][1] == {
        "Fn::ImportValue": "FruitsDataStack-InputBucketName"
    }
    assert props["spark.fruits.output"]["Fn::Join"][1][1] == {
        "Fn::ImportValue": "FruitsDataStack-ResultsBucketName"
    }
    expected = {
        "spark.fruits.overwrite": "true",
        "spark.fruits.model": "mobilenet_v2",
        "spark.fruits.weights": "imagenet",
        "spark.fruits.imageSize": "224",
        "spark.fruits.engine": "litert",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.KERAS_HOME": KERAS_HOME,
        "spark.yarn.appMasterEnv.KERAS_HOME": KERAS_HOME,
        "spark.pyspark.python": PYTHON,
    }
    assert {k: props[k] for k in expected} == expected
    assert not {"spark.fruits.k", "spark.fruits.variance", "spark.fruits.alpha"} & set(props)


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    synthesized = synthesize(
        tmp_path_factory.mktemp("variant"),
        instanceMode="fleets",
        taskSpotCount=2,
        coreInstanceTypes=["m5.xlarge", "m6i.xlarge"],
        inTransitCertificatesUri="s3://my-certs-bucket/emr/certs.zip",
        weightsUri="s3://my-models-bucket/models/mobilenet_v2.h5",
        pcaK=50,
        idleTimeoutSeconds=1800,
        releaseLabel="emr-7.12.0",
    )
    return synthesized.template(synthesized.emr_stack)


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


def test_custom_weights_are_copied_by_the_bootstrap_and_used_by_default(variant):
    props = _cluster(variant)
    args = props["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert args[-2:] == ["--weights-uri", "s3://my-models-bucket/models/mobilenet_v2.h5"]
    defaults = _classification(props, "spark-defaults")["ConfigurationProperties"]
    assert defaults["spark.fruits.weights"] == "/opt/fruits/models/mobilenet_v2.h5"
    assert defaults["spark.fruits.k"] == "50"


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


def test_spot_task_group_in_instance_group_mode(tmp_path):
    synthesized = synthesize(tmp_path, taskSpotCount=3, scalingMaxUnits=8)
    instances = _cluster(synthesized.template(synthesized.emr_stack))["Instances"]
    (task,) = instances["TaskInstanceGroups"]
    assert task["Market"] == "SPOT" and task["InstanceCount"] == 3
