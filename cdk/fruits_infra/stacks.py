"""The two stacks: ``FruitsDataStack`` (buckets + artifact deployment) and ``FruitsEmrStack`` (the rest).

Data lives in its own stack so the cluster can be torn down and redeployed without touching the buckets. With
context ``stage`` set, both stack names (and so every export name) end in ``-<stage>``, so two environments
can live in one account; the default stage ("") keeps the historical names.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from aws_cdk import App, CfnOutput, Stack, Tags
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fruits_infra.artifacts import JOB_DEFAULTS_KEY, PYFILES_KEY, SCRIPT_KEY, JobArtifacts
from fruits_infra.autorun import FruitsAutorun
from fruits_infra.cluster import FruitsCluster, job_defaults
from fruits_infra.config import FruitsConfig
from fruits_infra.group_cleanup import ManagedGroupsCleanup
from fruits_infra.job_contract import check_job_defaults
from fruits_infra.nag import acknowledge_bucket_deployment, apply_nag
from fruits_infra.network import FruitsNetwork
from fruits_infra.roles import EmrRoles
from fruits_infra.step import DEPLOY_MODE, STEP_TYPE, FruitsJobStep, spark_submit_options
from fruits_infra.storage import (
    EMR_LOGS_PREFIX,
    FEATURES_PREFIX,
    INPUT_PREFIX,
    RESULTS_PREFIX,
    FruitsStorage,
)
from fruits_infra.studio import FruitsStudio

PROJECT_TAGS = {"project": "fruits-featurize", "managed-by": "cdk"}
#: Where operators look first (the console's stack list): the one rule that keeps a deploy from rolling back.
EMR_STACK_DESCRIPTION = (
    "Fruits featurize: EMR cluster and job step. Once the cluster has terminated (idle timeout), deploy this "
    "stack only with the next clusterGeneration (output RedeployCommand): a deploy that changes the terminated "
    "cluster or its step calls EMR on it and rolls back."
)
DATA_STACK = "FruitsDataStack"
EMR_STACK = "FruitsEmrStack"

#: The output keys the operator CLI reads (FruitsEmrStack).
OUTPUT_KEYS = (
    "ClusterId",
    "ClusterGeneration",
    "RedeployCommand",
    "InputUri",
    "ResultsUri",
    "FeatureStoreUri",
    "JobScriptUri",
    "JobPyFilesUri",
    "JobDefaultsUri",
    "LogUri",
    "InputBucketName",
    "ResultsBucketName",
    "ArtifactsBucketName",
    "LogsBucketName",
    "StepType",
    "StepDeployMode",
    "StepSparkSubmitOptions",
    "StepApplicationLocation",
    "StepArguments",
)


def wire(app: App, *, bundle_dir: Path) -> tuple[FruitsDataStack, FruitsEmrStack]:
    """Both stacks from ``app``'s context, cdk-nag on the whole app (used by cdk/app.py and the tests)."""
    config = FruitsConfig.from_context(app.node)
    data = FruitsDataStack(app, config.stack_name(DATA_STACK), config=config, bundle_dir=bundle_dir)
    emr = FruitsEmrStack(
        app, config.stack_name(EMR_STACK), config=config, storage=data.storage, artifacts=data.artifacts
    )
    emr.add_stack_dependency(data, "the cluster's bootstrap action and step read the deployed artifacts")
    apply_nag(app)
    return data, emr


class FruitsDataStack(Stack):
    """Buckets and the deployed job/bootstrap artifacts."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: FruitsConfig, bundle_dir: Path, **kwargs: Any
    ) -> None:
        super().__init__(
            scope, construct_id, description="Fruits featurize: buckets and job artifacts", **kwargs
        )
        self.storage = FruitsStorage(self, "Storage", ephemeral=config.ephemeral, event_bridge=config.autorun)
        self.job_defaults = job_defaults(
            config,
            input_uri=self.storage.input_uri,
            results_uri=self.storage.results_uri,
            feature_store_uri=self.storage.feature_store_uri,
        )
        check_job_defaults(
            self.job_defaults
        )  # the job's own parser: a bad default fails here, not on the cluster
        self.artifacts = JobArtifacts(
            self,
            "JobArtifacts",
            bucket=self.storage.artifacts_bucket,
            bundle_dir=bundle_dir,
            job_defaults=self.job_defaults,
        )
        _acknowledge_bucket_deployment(self, self.storage.artifacts_bucket)
        _tag(self, config)


class FruitsEmrStack(Stack):
    """Network, IAM, security configuration, cluster and (optionally) the job step."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FruitsConfig,
        storage: FruitsStorage,
        artifacts: JobArtifacts,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, description=EMR_STACK_DESCRIPTION, **kwargs)
        storage = _ImportedStorage(self, storage)
        self.network = FruitsNetwork(
            self,
            "Network",
            flow_logs_bucket=storage.logs_bucket,
            vpc_id=config.vpc_id,
            subnet_ids=config.subnet_ids,
            ephemeral=config.ephemeral,
        )
        self.roles = EmrRoles(self, "Roles")
        self.roles.authorize_bucket_read("ReadInput", storage.input_bucket, "the job reads the images")
        self.roles.authorize_bucket_read(
            "ReadArtifacts", storage.artifacts_bucket, "bootstrap, job code, job defaults and custom weights"
        )
        self.roles.authorize_bucket_write(
            "WriteResults", storage.results_bucket, "the job writes results and its feature store"
        )
        self.roles.authorize_log_delivery(storage.logs_bucket, EMR_LOGS_PREFIX)
        if config.weights_uri:
            self.roles.authorize_read_object("ReadWeights", config.weights_uri)
        if config.calibration:
            self.roles.authorize_read_prefix(
                "ReadCalibration",
                config.calibration,
                "litert-int8's calibration images (context calibration)",
            )

        script_uri = artifacts.uri(SCRIPT_KEY, via=storage.artifacts_bucket)
        py_files_uri = artifacts.uri(PYFILES_KEY, via=storage.artifacts_bucket)
        job_defaults_uri = artifacts.uri(JOB_DEFAULTS_KEY, via=storage.artifacts_bucket)
        # Created before the cluster, deleted after it: revokes EMR's cross-group rules so the groups can go.
        self.group_cleanup = ManagedGroupsCleanup(
            self, "ManagedGroupsCleanup", group_ids=self.network.group_ids
        )
        self.cluster = FruitsCluster(
            self,
            "Cluster",
            config=config,
            network=self.network,
            roles=self.roles,
            log_uri=storage.emr_log_uri,
            bootstrap_uri=artifacts.uri(artifacts.bootstrap_key, via=storage.artifacts_bucket),
            requirements_uri=artifacts.uri(artifacts.requirements_key, via=storage.artifacts_bucket),
            wheelhouse_uri=artifacts.wheelhouse_uri(via=storage.artifacts_bucket),
            py_files_uri=py_files_uri,
            job_defaults_uri=job_defaults_uri,
        )
        self.cluster.cluster.node.add_dependency(self.group_cleanup)
        self.step = None
        if config.deploy_step:
            self.step = FruitsJobStep(
                self,
                "JobStep",
                cluster_id=self.cluster.cluster_id,
                script_uri=script_uri,
                arguments=config.step_arguments,
                name=f"check-cluster-g{config.cluster_generation}",
            )

        outputs = {
            "ClusterId": (self.cluster.cluster_id, "EMR cluster id (j-...)"),
            "ClusterGeneration": (
                str(config.cluster_generation),
                "Context clusterGeneration of this cluster; after it terminated, deploy with this number + 1",
            ),
            "RedeployCommand": (
                config.next_generation_deploy(self.stack_name),
                "After the cluster terminated, the deploy that works (a new cluster, with any other change); "
                "a deploy without it rolls back. Then record the new clusterGeneration in cdk.json",
            ),
            "InputUri": (storage.input_uri, "Upload images here (one folder per label)"),
            "ResultsUri": (storage.results_uri, "Where the job writes its PCA results"),
            "FeatureStoreUri": (storage.feature_store_uri, "Where the job caches features"),
            "JobScriptUri": (script_uri, "Job entry script"),
            "JobPyFilesUri": (py_files_uri, "Job package for --py-files"),
            "JobDefaultsUri": (job_defaults_uri, "The job's defaults file (spark.fruits.defaults)"),
            "LogUri": (storage.emr_log_uri, "EMR cluster and step logs"),
            "InputBucketName": (storage.input_bucket.bucket_name, "Input bucket"),
            "ResultsBucketName": (storage.results_bucket.bucket_name, "Results bucket"),
            "ArtifactsBucketName": (storage.artifacts_bucket.bucket_name, "Artifacts bucket"),
            "LogsBucketName": (storage.logs_bucket.bucket_name, "Logs bucket"),
            "StepType": (STEP_TYPE, "Console Add step: Type"),
            "StepDeployMode": (DEPLOY_MODE, "Console Add step: Deploy mode"),
            # CloudFormation rejects an empty output value: no options is published as a single space.
            "StepSparkSubmitOptions": (
                " ".join(spark_submit_options()) or " ",
                "Console Add step: Spark-submit options (empty: the cluster's spark-defaults carry them)",
            ),
            "StepApplicationLocation": (script_uri, "Console Add step: Application location"),
            # CloudFormation rejects an output whose value is empty: no arguments is published as a single
            # space, which shlex.split() and str.strip() both read as "no arguments".
            "StepArguments": (
                shlex.join(config.step_arguments) or " ",
                "Console Add step: Arguments (empty = cluster defaults; e.g. --k 50)",
            ),
        }
        assert tuple(outputs) == OUTPUT_KEYS
        for key, (value, description) in outputs.items():
            CfnOutput(self, key, value=value, description=description)
        if config.wheelhouse:
            CfnOutput(
                self,
                "WheelhouseUri",
                value=artifacts.wheelhouse_uri(via=storage.artifacts_bucket),
                description="Upload the cluster's wheels here before the cluster starts: make wheelhouse",
            )
        self.studio = _studio(self, config, storage) if config.studio else None
        self.autorun = None
        if config.autorun:
            self.autorun = FruitsAutorun(
                self,
                "Autorun",
                config=config,
                cluster=self.cluster,
                input_bucket=storage.input_bucket,
                results_bucket=storage.results_bucket,
                script_uri=script_uri,
                tags=project_tags(config),
            )
        _tag(self, config)


def _studio(stack: FruitsEmrStack, config: FruitsConfig, storage: _ImportedStorage) -> FruitsStudio:
    """The analysts' EMR Studio in the cluster's VPC (context ``studio``; the cluster gets Livy and JEG)."""
    studio = FruitsStudio(
        stack,
        "Studio",
        name=f"fruits{'-' + config.stage if config.stage else ''}",
        vpc=stack.network.vpc,
        subnet_ids=stack.network.subnet_ids,
        logs_bucket=storage.logs_bucket,
        ephemeral=config.ephemeral,
    )
    # EMR Studio attaches the engine group to the cluster's primary node: delete the groups after the cluster.
    for group in (studio.engine_sg, studio.workspace_sg):
        stack.cluster.cluster.node.add_dependency(group)
    CfnOutput(stack, "StudioUrl", value=studio.studio.attr_url, description="EMR Studio: sign in with IAM")
    CfnOutput(stack, "StudioId", value=studio.studio.attr_studio_id, description="EMR Studio id (es-...)")
    CfnOutput(
        stack,
        "StudioNotebooksUri",
        value=studio.notebooks_uri,
        description="The analysts' notebook, to upload into a Workspace",
    )
    CfnOutput(
        stack,
        "StudioUserPolicyArn",
        value=studio.user_policy.managed_policy_arn,
        description="Attach to the analysts' IAM users, groups or roles: opens this Studio (IAM authentication)",
    )
    CfnOutput(
        stack,
        "StudioServiceRoleArn",
        value=studio.service_role.role_arn,
        description="EMR Studio's service role (Workspace network channel, the Studio bucket's workspaces/)",
    )
    CfnOutput(
        stack,
        "StudioBucketName",
        value=studio.bucket.bucket_name,
        description="Workspaces and the deployed notebook (apart from the artifacts bucket)",
    )
    return studio


def project_tags(config: FruitsConfig) -> dict[str, str]:
    """The tags of every resource of the app (and of the transient clusters, which the stacks do not own)."""
    return {**PROJECT_TAGS, **({"stage": config.stage} if config.stage else {})}


def _tag(stack: Stack, config: FruitsConfig) -> None:
    for key, value in project_tags(config).items():
        Tags.of(stack).add(key, value)


def _acknowledge_bucket_deployment(stack: Stack, artifacts_bucket: s3.IBucket) -> None:
    """Findings on the Lambda of the BucketDeployment that uploads the job and bootstrap files."""
    acknowledge_bucket_deployment(
        stack,
        artifacts_bucket,
        what="the job and bootstrap files",
        deletes="replace changed objects in the artifacts bucket",
    )


class _ImportedStorage:
    """The data stack's buckets seen from another stack through named exports.

    Named exports (``FruitsDataStack-InputBucketArn``, ...) are stable for operators and make the cdk-nag
    finding ids of the prefix-scoped policies predictable (they name the export).
    """

    def __init__(self, consumer: Stack, storage: FruitsStorage) -> None:
        self._storage = storage
        producer = Stack.of(storage)

        def imported(name: str, bucket: s3.Bucket) -> s3.IBucket:
            if producer is consumer:
                return bucket
            arn = producer.export_value(bucket.bucket_arn, name=f"{producer.stack_name}-{name}Arn")
            bucket_name = producer.export_value(bucket.bucket_name, name=f"{producer.stack_name}-{name}Name")
            return s3.Bucket.from_bucket_attributes(consumer, name, bucket_arn=arn, bucket_name=bucket_name)

        self.input_bucket = imported("InputBucket", storage.input_bucket)
        self.results_bucket = imported("ResultsBucket", storage.results_bucket)
        self.artifacts_bucket = imported("ArtifactsBucket", storage.artifacts_bucket)
        self.logs_bucket = imported("LogsBucket", storage.logs_bucket)
        self.input_uri = f"s3://{self.input_bucket.bucket_name}/{INPUT_PREFIX}"
        self.results_uri = f"s3://{self.results_bucket.bucket_name}/{RESULTS_PREFIX}"
        self.feature_store_uri = f"s3://{self.results_bucket.bucket_name}/{FEATURES_PREFIX}"
        self.emr_log_uri = f"s3://{self.logs_bucket.bucket_name}/{EMR_LOGS_PREFIX}"
