"""The EMR on EC2 cluster (L1 ``CfnCluster``: CDK has no L2 for it) and its security configuration.

Release ``emr-7.13.0`` (default) brings Spark 3.5.6 on Amazon Linux 2023, whose system Python is 3.9; the
bootstrap action installs Python 3.11, the pinned runtime (TensorFlow 2.21 needs Python >= 3.10) and the ImageNet
weights file the configured model needs. The ``spark-defaults`` classification makes a bare ``spark-submit
<script>`` run the job as a cluster-mode YARN application with its package, its Python and its environment, and
names the job's defaults file; the defaults themselves live in that file, so changing one never touches this
replacement-only resource.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from aws_cdk import Aws, Duration, RemovalPolicy, Tags
from aws_cdk import aws_emr as emr
from aws_cdk import aws_kms as kms
from constructs import Construct

from fruits_infra.config import FruitsConfig
from fruits_infra.hadoop_conf import s3a_commit_conf, yarn_configurations
from fruits_infra.instances import spark_memory
from fruits_infra.job_contract import DEFAULTS_CONF_KEY, imagenet_weights_file
from fruits_infra.nag import acknowledge
from fruits_infra.network import EMR_MANAGED_TAG, FruitsNetwork
from fruits_infra.roles import EmrRoles
from fruits_infra.studio import LIVY_CONF, STUDIO_APPLICATIONS

PYTHON = "/usr/bin/python3.11"
FRUITS_HOME = "/opt/fruits"
KERAS_HOME = f"{FRUITS_HOME}/keras"
MODELS_DIR = f"{FRUITS_HOME}/models"
#: GiB. EMR's default root volume is 15 GiB; Python 3.11, TensorFlow and the other pins take several of them.
ROOT_VOLUME_GIB = 32


def local_weights_path(weights_uri: str) -> str:
    """Where the bootstrap copies ``weightsUri`` on every node."""
    return f"{MODELS_DIR}/{PurePosixPath(weights_uri).name}"


def job_defaults(
    config: FruitsConfig, *, input_uri: str, results_uri: str, feature_store_uri: str
) -> dict[str, Any]:
    """The job's defaults file: keys are the job's option names (fruits.options.JobOptions fields)."""
    defaults: dict[str, Any] = {
        "input": input_uri,
        "output": results_uri,
        "feature_store": feature_store_uri,
        "overwrite": True,
        "model": config.model,
        "weights": local_weights_path(config.weights_uri) if config.weights_uri else "imagenet",
        "image_size": config.image_size,
        "engine": config.engine,
    }
    optional = {
        "alpha": config.alpha,
        "calibration": config.calibration,
        "k": config.pca_k,
        "variance": config.pca_variance,
        "batch_size": config.batch_size,
    }
    defaults.update({key: value for key, value in optional.items() if value is not None})
    return defaults


def bootstrap_args(
    config: FruitsConfig, requirements_uri: str, wheelhouse_uri: str | None = None
) -> list[str]:
    """The bootstrap's arguments: the pins and where their wheels come from (``wheelhouse_uri`` with context
    ``wheelhouse``, ``pipIndexUrl``, else PyPI), and the weights the job will load (custom, or Keras' ImageNet
    file) with the SHA-256 they must have when it is known."""
    args = ["--requirements", requirements_uri]
    if config.wheelhouse:
        if not wheelhouse_uri:
            raise ValueError("context wheelhouse needs the wheelhouse's URI")
        args += ["--wheelhouse", wheelhouse_uri]
    elif config.pip_index_url:
        args += ["--index-url", config.pip_index_url]
    if config.weights_uri:
        args += ["--weights-uri", config.weights_uri]
        sha256 = config.weights_sha256
    else:
        imagenet = imagenet_weights_file(config.model, config.job_alpha, config.image_size)
        args += ["--weights-url", imagenet.url, "--weights-file", imagenet.file_name]
        sha256 = config.weights_sha256 or imagenet.sha256
    return [*args, "--weights-sha256", sha256] if sha256 else args


def _environment() -> dict[str, str]:
    """What the job's processes need in their environment: Python, the weights cache, the region.

    Spark documents that spark-env.sh does not reach the YARN application master in cluster mode
    (https://spark.apache.org/docs/3.5.6/configuration.html#environment-variables): the same variables are set
    with spark.yarn.appMasterEnv.* (the driver) and spark.executorEnv.* (the executors) as well.
    """
    # botocore reads AWS_DEFAULT_REGION, not AWS_REGION; the job's client reads both. Set both.
    return {
        "PYSPARK_PYTHON": PYTHON,
        "KERAS_HOME": KERAS_HOME,
        "AWS_REGION": Aws.REGION,
        "AWS_DEFAULT_REGION": Aws.REGION,
    }


def applications(config: FruitsConfig) -> list[str]:
    """The cluster's applications: Hadoop and Spark, plus what EMR Studio needs when ``studio`` is on.

    ``Applications`` is replacement-only: turning the Studio on or off replaces the cluster.
    """
    return ["Hadoop", "Spark", *(STUDIO_APPLICATIONS if config.studio else ())]


def spark_configurations(
    config: FruitsConfig, *, py_files_uri: str, job_defaults_uri: str
) -> list[emr.CfnCluster.ConfigurationProperty]:
    """The cluster's ``Configurations``: spark-env (client mode) and spark-defaults.

    A console step then needs only the script: spark.submit.pyFiles ships the package, spark.submit.deployMode
    runs the driver in YARN, and spark.fruits.defaults names the job's defaults file.
    """
    env = _environment()
    spark_defaults = {
        "spark.submit.deployMode": "cluster",
        "spark.submit.pyFiles": py_files_uri,
        # A second YARN attempt would find the first attempt's lease on the output; retrying is the operator's call.
        "spark.yarn.maxAppAttempts": "1",
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
        **{f"spark.yarn.appMasterEnv.{name}": value for name, value in env.items()},
        **{f"spark.executorEnv.{name}": value for name, value in env.items()},
        **spark_memory((*config.core_instance_types, *config.task_instance_types)),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.arrow_max_records_per_batch),
        "spark.python.worker.reuse": "true",
        **s3a_commit_conf(),
        DEFAULTS_CONF_KEY: job_defaults_uri,
    }
    studio = (
        [emr.CfnCluster.ConfigurationProperty(classification="livy-conf", configuration_properties=LIVY_CONF)]
        if config.studio
        else []
    )
    return [
        *studio,
        emr.CfnCluster.ConfigurationProperty(
            classification="spark-env",
            configurations=[
                emr.CfnCluster.ConfigurationProperty(
                    classification="export",
                    configuration_properties={"PYSPARK_DRIVER_PYTHON": PYTHON, **env},
                )
            ],
        ),
        emr.CfnCluster.ConfigurationProperty(
            classification="spark-defaults", configuration_properties=spark_defaults
        ),
    ]


def _ebs(size_gib: int) -> emr.CfnCluster.EbsConfigurationProperty:
    return emr.CfnCluster.EbsConfigurationProperty(
        ebs_block_device_configs=[
            emr.CfnCluster.EbsBlockDeviceConfigProperty(
                volume_specification=emr.CfnCluster.VolumeSpecificationProperty(
                    size_in_gb=size_gib, volume_type="gp3"
                ),
                volumes_per_instance=1,
            )
        ]
    )


class FruitsCluster(Construct):
    """Security configuration + cluster. ``cluster_id`` is the JobFlow id (``j-...``)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FruitsConfig,
        network: FruitsNetwork,
        roles: EmrRoles,
        log_uri: str,
        bootstrap_uri: str,
        requirements_uri: str,
        wheelhouse_uri: str,
        py_files_uri: str,
        job_defaults_uri: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.disk_key = kms.Key(
            self,
            "LocalDiskKey",
            description="EMR local disk and EBS encryption for the fruits cluster",
            enable_key_rotation=True,
            pending_window=Duration.days(7),
            # ephemeral: scheduled for deletion (after the 7-day window) with the stack; else kept.
            removal_policy=RemovalPolicy.DESTROY if config.ephemeral else RemovalPolicy.RETAIN,
        )
        roles.authorize_local_disk_key(self.disk_key)

        encryption: dict[str, Any] = {
            "EnableAtRestEncryption": True,
            "AtRestEncryptionConfiguration": {
                "S3EncryptionConfiguration": {"EncryptionMode": "SSE-S3"},
                "LocalDiskEncryptionConfiguration": {
                    "EncryptionKeyProviderType": "AwsKms",
                    "AwsKmsKey": self.disk_key.key_arn,
                    "EnableEbsEncryption": True,
                },
            },
            "EnableInTransitEncryption": config.in_transit_certificates_uri is not None,
        }
        if config.in_transit_certificates_uri:
            encryption["InTransitEncryptionConfiguration"] = {
                "TLSCertificateConfiguration": {
                    "CertificateProviderType": "PEM",
                    "S3Object": config.in_transit_certificates_uri,
                }
            }
            roles.authorize_read_object("TlsCertificates", config.in_transit_certificates_uri)
        self.security_configuration = emr.CfnSecurityConfiguration(
            self,
            "SecurityConfiguration",
            security_configuration={
                "EncryptionConfiguration": encryption,
                # IMDSv2 only (EMR supports it since 5.32 / 6.2; its components use IMDSv2 for every call).
                "InstanceMetadataServiceConfiguration": {
                    "MinimumInstanceMetadataServiceVersion": 2,
                    "HttpPutResponseHopLimit": 1,
                },
            },
        )

        self.cluster = emr.CfnCluster(
            self,
            "Cluster",
            # Name is replacement-only: a new clusterGeneration is a new cluster (after auto-termination).
            name=config.full_cluster_name,
            release_label=config.release_label,
            os_release_label=config.os_release_label,
            ebs_root_volume_size=ROOT_VOLUME_GIB,
            applications=[emr.CfnCluster.ApplicationProperty(name=n) for n in applications(config)],
            service_role=roles.service_role.role_arn,
            job_flow_role=roles.instance_profile.attr_arn,
            log_uri=log_uri,
            security_configuration=self.security_configuration.ref,
            visible_to_all_users=True,
            step_concurrency_level=1,
            scale_down_behavior="TERMINATE_AT_TASK_COMPLETION",
            instances=self._instances(config, network),
            bootstrap_actions=[
                emr.CfnCluster.BootstrapActionConfigProperty(
                    name="install-python-runtime",
                    script_bootstrap_action=emr.CfnCluster.ScriptBootstrapActionConfigProperty(
                        path=bootstrap_uri, args=bootstrap_args(config, requirements_uri, wheelhouse_uri)
                    ),
                )
            ],
            configurations=[
                *spark_configurations(config, py_files_uri=py_files_uri, job_defaults_uri=job_defaults_uri),
                *yarn_configurations(),
            ],
            auto_termination_policy=emr.CfnCluster.AutoTerminationPolicyProperty(
                idle_timeout=config.idle_timeout_seconds
            ),
            managed_scaling_policy=self._scaling(config) if config.managed_scaling else None,
        )
        self.cluster.add_resource_dependency(roles.instance_profile)
        # The service role's policies must exist before EMR uses the role.
        self.cluster.node.add_dependency(roles.service_role)
        self.cluster.node.add_dependency(roles.instance_role)
        Tags.of(self.cluster).add(*EMR_MANAGED_TAG)
        self.cluster_id = self.cluster.ref

        acknowledge(
            self.cluster,
            "AwsSolutions-EMR6",
            "No SSH and no key pair: operators reach nodes through SSM Session Manager (the instance role "
            "allows it); the cluster runs in a private subnet with no inbound rules. Kerberos is not needed "
            "for a single-tenant batch cluster.",
        )
        acknowledge(
            self.cluster,
            "AwsSolutions-EMR4",
            "Local disk (and EBS) encryption IS enabled with a KMS key in the security configuration, under "
            "EncryptionConfiguration as EMR requires; cdk-nag 3.0.2 looks for these keys at the top level of "
            "the JSON and misses them. tests/cdk asserts the configuration.",
        )
        if config.in_transit_certificates_uri is None:
            acknowledge(
                self.cluster,
                "AwsSolutions-EMR5",
                "In-transit TLS needs a customer-supplied PEM certificate zip; set context "
                "inTransitCertificatesUri to enable it. Without it all node traffic stays inside the "
                "private subnet and S3 traffic is TLS-only (bucket policies deny non-TLS requests).",
            )
        else:
            acknowledge(
                self.cluster,
                "AwsSolutions-EMR5",
                "In-transit TLS IS enabled (PEM certificates from inTransitCertificatesUri) under "
                "EncryptionConfiguration as EMR requires; cdk-nag 3.0.2 looks for these keys at the top "
                "level of the JSON and misses them. tests/cdk asserts the configuration.",
            )

    @staticmethod
    def _instances(
        config: FruitsConfig, network: FruitsNetwork
    ) -> emr.CfnCluster.JobFlowInstancesConfigProperty:
        common: dict[str, Any] = {
            "emr_managed_master_security_group": network.primary_sg.security_group_id,
            "emr_managed_slave_security_group": network.core_sg.security_group_id,
            "service_access_security_group": network.service_sg_id,
            "keep_job_flow_alive_when_no_steps": True,
            "termination_protected": False,
        }
        ebs = _ebs(config.ebs_volume_gib)
        if config.instance_mode == "groups":
            task_groups = None
            if config.task_capacity:
                task_groups = [
                    emr.CfnCluster.InstanceGroupConfigProperty(
                        name="task-spot",
                        instance_type=config.task_instance_types[0],
                        instance_count=config.task_spot_count,
                        market="SPOT",
                        ebs_configuration=ebs,
                    )
                ]
            return emr.CfnCluster.JobFlowInstancesConfigProperty(
                ec2_subnet_id=network.subnet_ids[0],
                master_instance_group=emr.CfnCluster.InstanceGroupConfigProperty(
                    name="primary",
                    instance_type=config.primary_instance_types[0],
                    instance_count=1,
                    market="ON_DEMAND",
                    ebs_configuration=ebs,
                ),
                core_instance_group=emr.CfnCluster.InstanceGroupConfigProperty(
                    name="core",
                    instance_type=config.core_instance_types[0],
                    instance_count=config.core_instance_count,
                    market="ON_DEMAND",
                    ebs_configuration=ebs,
                ),
                task_instance_groups=task_groups,
                **common,
            )

        def types(names: tuple[str, ...]) -> list[emr.CfnCluster.InstanceTypeConfigProperty]:
            return [
                emr.CfnCluster.InstanceTypeConfigProperty(
                    instance_type=n, weighted_capacity=1, ebs_configuration=ebs
                )
                for n in names
            ]

        task_fleets = None
        if config.task_capacity:
            task_fleets = [
                emr.CfnCluster.InstanceFleetConfigProperty(
                    name="task-spot",
                    target_spot_capacity=config.task_spot_count,
                    instance_type_configs=types(config.task_instance_types),
                    launch_specifications=emr.CfnCluster.InstanceFleetProvisioningSpecificationsProperty(
                        spot_specification=emr.CfnCluster.SpotProvisioningSpecificationProperty(
                            allocation_strategy="price-capacity-optimized",
                            timeout_action="SWITCH_TO_ON_DEMAND",
                            timeout_duration_minutes=20,
                        )
                    ),
                )
            ]
        return emr.CfnCluster.JobFlowInstancesConfigProperty(
            ec2_subnet_ids=list(network.subnet_ids),
            master_instance_fleet=emr.CfnCluster.InstanceFleetConfigProperty(
                name="primary",
                target_on_demand_capacity=1,
                instance_type_configs=types(config.primary_instance_types),
            ),
            core_instance_fleet=emr.CfnCluster.InstanceFleetConfigProperty(
                name="core",
                target_on_demand_capacity=config.core_instance_count,
                instance_type_configs=types(config.core_instance_types),
            ),
            task_instance_fleets=task_fleets,
            **common,
        )

    @staticmethod
    def _scaling(config: FruitsConfig) -> emr.CfnCluster.ManagedScalingPolicyProperty:
        minimum = config.core_instance_count + config.task_spot_count
        limits: dict[str, Any] = {
            "unit_type": "Instances" if config.instance_mode == "groups" else "InstanceFleetUnits",
            "minimum_capacity_units": minimum,
            "maximum_capacity_units": config.scaling_max_units,
        }
        if config.task_capacity:
            # With Spot task capacity, only Spot task nodes are added: core (on-demand) stays fixed.
            limits["maximum_core_capacity_units"] = config.core_instance_count
            limits["maximum_on_demand_capacity_units"] = config.core_instance_count
        return emr.CfnCluster.ManagedScalingPolicyProperty(
            compute_limits=emr.CfnCluster.ComputeLimitsProperty(**limits)
        )
