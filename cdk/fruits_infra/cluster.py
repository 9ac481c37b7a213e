"""The EMR on EC2 cluster (L1 ``CfnCluster``: CDK has no L2 for it) and its security configuration.

Release ``emr-7.13.0`` (default) brings Spark 3.5.6 on Amazon Linux 2023, whose system Python is 3.9; the
bootstrap action installs Python 3.11 and the pinned runtime (TensorFlow 2.21 needs Python >= 3.10), and the
``spark-env`` / ``spark-defaults`` classifications point PySpark at it and carry the job's defaults, so a
console step needs only the script path.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from aws_cdk import Duration, RemovalPolicy, Tags
from aws_cdk import aws_emr as emr
from aws_cdk import aws_kms as kms
from constructs import Construct

from fruits_infra.config import FruitsConfig
from fruits_infra.nag import acknowledge
from fruits_infra.network import EMR_MANAGED_TAG, FruitsNetwork
from fruits_infra.roles import EmrRoles

PYTHON = "/usr/bin/python3.11"
FRUITS_HOME = "/opt/fruits"
KERAS_HOME = f"{FRUITS_HOME}/keras"
MODELS_DIR = f"{FRUITS_HOME}/models"


def local_weights_path(weights_uri: str) -> str:
    """Where the bootstrap copies ``weightsUri`` on every node."""
    return f"{MODELS_DIR}/{PurePosixPath(weights_uri).name}"


def job_defaults(
    config: FruitsConfig, *, input_uri: str, results_uri: str, feature_store_uri: str
) -> dict[str, str]:
    """``spark.fruits.*`` defaults the job reads when an option is not on its command line."""
    defaults = {
        "spark.fruits.input": input_uri,
        "spark.fruits.output": results_uri,
        "spark.fruits.featureStore": feature_store_uri,
        "spark.fruits.overwrite": "true",
        "spark.fruits.model": config.model,
        "spark.fruits.weights": local_weights_path(config.weights_uri) if config.weights_uri else "imagenet",
        "spark.fruits.imageSize": str(config.image_size),
        "spark.fruits.engine": config.engine,
    }
    optional = {
        "spark.fruits.alpha": config.alpha,
        "spark.fruits.k": config.pca_k,
        "spark.fruits.variance": config.pca_variance,
        "spark.fruits.batchSize": config.batch_size,
    }
    defaults.update({key: str(value) for key, value in optional.items() if value is not None})
    return defaults


def spark_configurations(config: FruitsConfig, **uris: str) -> list[emr.CfnCluster.ConfigurationProperty]:
    """The cluster's ``Configurations``: spark-env (Python, KERAS_HOME) and spark-defaults."""
    env = {"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON, "KERAS_HOME": KERAS_HOME}
    spark_defaults = {
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": PYTHON,
        "spark.executorEnv.KERAS_HOME": KERAS_HOME,
        "spark.yarn.appMasterEnv.KERAS_HOME": KERAS_HOME,
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.arrow_max_records_per_batch),
        "spark.python.worker.reuse": "true",
        **job_defaults(config, **uris),
    }
    return [
        emr.CfnCluster.ConfigurationProperty(
            classification="spark-env",
            configurations=[
                emr.CfnCluster.ConfigurationProperty(classification="export", configuration_properties=env)
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
        input_uri: str,
        results_uri: str,
        feature_store_uri: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.disk_key = kms.Key(
            self,
            "LocalDiskKey",
            description="EMR local disk and EBS encryption for the fruits cluster",
            enable_key_rotation=True,
            pending_window=Duration.days(7),
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
            self, "SecurityConfiguration", security_configuration={"EncryptionConfiguration": encryption}
        )

        bootstrap_args = ["--requirements", requirements_uri, "--image-size", str(config.image_size)]
        if config.weights_uri:
            bootstrap_args += ["--weights-uri", config.weights_uri]

        self.cluster = emr.CfnCluster(
            self,
            "Cluster",
            name=config.cluster_name,
            release_label=config.release_label,
            applications=[emr.CfnCluster.ApplicationProperty(name=n) for n in ("Hadoop", "Spark")],
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
                        path=bootstrap_uri, args=bootstrap_args
                    ),
                )
            ],
            configurations=spark_configurations(
                config, input_uri=input_uri, results_uri=results_uri, feature_store_uri=feature_store_uri
            ),
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
            "service_access_security_group": network.service_sg.security_group_id,
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
