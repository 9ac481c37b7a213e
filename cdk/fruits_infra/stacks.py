"""The two stacks: ``FruitsDataStack`` (buckets + artifact deployment) and ``FruitsEmrStack`` (the rest).

Data lives in its own stack so the cluster can be torn down and redeployed without touching the buckets.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from aws_cdk import App, CfnOutput, Stack, Tags
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fruits_infra.artifacts import (
    BOOTSTRAP_KEY,
    PYFILES_KEY,
    READ_PREFIXES,
    REQUIREMENTS_KEY,
    SCRIPT_KEY,
    JobArtifacts,
)
from fruits_infra.cluster import FruitsCluster
from fruits_infra.config import FruitsConfig
from fruits_infra.nag import acknowledge, apply_nag
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

PROJECT_TAGS = {"project": "fruits-featurize", "managed-by": "cdk"}

#: The output keys the operator CLI reads (FruitsEmrStack).
OUTPUT_KEYS = (
    "ClusterId",
    "InputUri",
    "ResultsUri",
    "FeatureStoreUri",
    "JobScriptUri",
    "JobPyFilesUri",
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
    data = FruitsDataStack(app, "FruitsDataStack", config=config, bundle_dir=bundle_dir)
    emr = FruitsEmrStack(app, "FruitsEmrStack", config=config, storage=data.storage, artifacts=data.artifacts)
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
        self.storage = FruitsStorage(self, "Storage", ephemeral=config.ephemeral)
        self.artifacts = JobArtifacts(
            self, "JobArtifacts", bucket=self.storage.artifacts_bucket, bundle_dir=bundle_dir
        )
        _acknowledge_bucket_deployment(self, self.storage.artifacts_bucket)
        for key, value in PROJECT_TAGS.items():
            Tags.of(self).add(key, value)


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
        super().__init__(
            scope, construct_id, description="Fruits featurize: EMR cluster and job step", **kwargs
        )
        storage = _ImportedStorage(self, storage)
        self.network = FruitsNetwork(
            self,
            "Network",
            flow_logs_bucket=storage.logs_bucket,
            vpc_id=config.vpc_id,
            subnet_ids=config.subnet_ids,
        )
        self.roles = EmrRoles(self, "Roles")
        self.roles.authorize_read("ReadInput", storage.input_bucket, INPUT_PREFIX)
        for prefix in READ_PREFIXES:
            sid = "ReadArtifacts" + prefix.strip("/").capitalize()
            self.roles.authorize_read(sid, storage.artifacts_bucket, prefix)
        self.roles.authorize_write("WriteResults", storage.results_bucket, RESULTS_PREFIX)
        self.roles.authorize_write("WriteFeatures", storage.results_bucket, FEATURES_PREFIX)
        self.roles.authorize_log_delivery(storage.logs_bucket, EMR_LOGS_PREFIX)
        if config.weights_uri and not config.weights_uri.startswith("s3://"):
            raise ValueError("weightsUri must be an s3:// URI")
        if config.weights_uri:
            self.roles.authorize_read_object("ReadWeights", config.weights_uri)

        script_uri = artifacts.uri(SCRIPT_KEY, via=storage.artifacts_bucket)
        py_files_uri = artifacts.uri(PYFILES_KEY, via=storage.artifacts_bucket)
        self.cluster = FruitsCluster(
            self,
            "Cluster",
            config=config,
            network=self.network,
            roles=self.roles,
            log_uri=storage.emr_log_uri,
            bootstrap_uri=artifacts.uri(BOOTSTRAP_KEY, via=storage.artifacts_bucket),
            requirements_uri=artifacts.uri(REQUIREMENTS_KEY, via=storage.artifacts_bucket),
            input_uri=storage.input_uri,
            results_uri=storage.results_uri,
            feature_store_uri=storage.feature_store_uri,
        )
        self.step = None
        if config.deploy_step:
            self.step = FruitsJobStep(
                self,
                "JobStep",
                cluster_id=self.cluster.cluster_id,
                script_uri=script_uri,
                py_files_uri=py_files_uri,
                arguments=config.step_arguments,
            )

        outputs = {
            "ClusterId": (self.cluster.cluster_id, "EMR cluster id (j-...)"),
            "InputUri": (storage.input_uri, "Upload images here (one folder per label)"),
            "ResultsUri": (storage.results_uri, "Where the job writes its PCA results"),
            "FeatureStoreUri": (storage.feature_store_uri, "Where the job caches features"),
            "JobScriptUri": (script_uri, "Job entry script"),
            "JobPyFilesUri": (py_files_uri, "Job package for --py-files"),
            "LogUri": (storage.emr_log_uri, "EMR cluster and step logs"),
            "InputBucketName": (storage.input_bucket.bucket_name, "Input bucket"),
            "ResultsBucketName": (storage.results_bucket.bucket_name, "Results bucket"),
            "ArtifactsBucketName": (storage.artifacts_bucket.bucket_name, "Artifacts bucket"),
            "LogsBucketName": (storage.logs_bucket.bucket_name, "Logs bucket"),
            "StepType": (STEP_TYPE, "Console Add step: Type"),
            "StepDeployMode": (DEPLOY_MODE, "Console Add step: Deploy mode"),
            "StepSparkSubmitOptions": (
                " ".join(spark_submit_options(py_files_uri)),
                "Console Add step: Spark-submit options",
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
        for key, value in PROJECT_TAGS.items():
            Tags.of(self).add(key, value)


def _acknowledge_bucket_deployment(stack: Stack, artifacts_bucket: s3.IBucket) -> None:
    """Findings on the Lambda that CDK's BucketDeployment creates (a singleton at stack level).

    Its policy is written by aws-cdk-lib: read the CDK assets bucket, write the destination bucket.
    """
    qualifier = stack.node.try_get_context("@aws-cdk/core:bootstrapQualifier") or "hnb659fds"
    bucket_id = stack.get_logical_id(artifacts_bucket.node.default_child)
    wildcards = {
        "Action::s3:GetObject*": "read the zipped asset from the CDK assets bucket",
        "Action::s3:GetBucket*": "read the CDK assets bucket and the destination bucket",
        "Action::s3:List*": "list the destination prefix to sync it",
        "Action::s3:DeleteObject*": "replace changed objects in the artifacts bucket",
        "Action::s3:Abort*": "abort its own failed multipart uploads",
        f"Resource::arn:<AWS::Partition>:s3:::cdk-{qualifier}-assets-<AWS::AccountId>-<AWS::Region>/*": (
            "the asset's key in the CDK assets bucket is content-addressed and only known at deploy time"
        ),
        f"Resource::<{bucket_id}.Arn>/*": "it writes the job and bootstrap files into the artifacts bucket",
    }
    for child in stack.node.children:
        if child.node.id.startswith("Custom::CDKBucketDeployment"):
            for finding, why in wildcards.items():
                acknowledge(
                    child,
                    f"AwsSolutions-IAM5[{finding}]",
                    f"Policy generated by aws-cdk-lib's BucketDeployment handler: {why}.",
                )
            acknowledge(
                child,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                "CDK's BucketDeployment handler only needs to write its own CloudWatch logs; this is the "
                "AWS-maintained minimal policy for that.",
            )
            acknowledge(
                child,
                "AwsSolutions-L1",
                "The BucketDeployment handler's runtime is chosen and updated by aws-cdk-lib; it runs only "
                "during deployments.",
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
