"""The four buckets, all made by one factory so every bucket gets the same protections.

Every bucket: public access blocked, SSE-S3 encryption, TLS-only bucket policy (``enforceSSL``), and a
lifecycle rule that aborts incomplete multipart uploads. Input and results are versioned (old versions and
expired delete markers are cleaned up); logs expire. By default the buckets are retained with their data and the
data buckets send server access logs to the logs bucket.

``ephemeral`` (a throw-away environment) makes ``cdk destroy`` empty and delete the buckets, and then the data
buckets send no server access logs: S3 delivers those logs late (best effort, often hours), so they land in the
logs bucket after its auto-delete emptied it and DeleteBucket fails with BucketNotEmpty (aws/aws-cdk#16332,
#21776).
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fruits_infra.nag import acknowledge

#: Key prefixes: one place, so the IAM policies, the Spark defaults and the outputs agree.
INPUT_PREFIX = "images/"
RESULTS_PREFIX = "results/"
FEATURES_PREFIX = "features/"
EMR_LOGS_PREFIX = "emr/"
ACCESS_LOGS_PREFIX = "s3-access/"
FLOW_LOGS_PREFIX = "vpc-flow-logs/"
#: Server access logs of the optional EMR Studio's bucket, which lives in the EMR stack (fruits_infra.studio).
STUDIO_ACCESS_LOGS_PREFIX = f"{ACCESS_LOGS_PREFIX}studio/"

ABORT_MULTIPART_AFTER = Duration.days(3)
LOG_RETENTION = Duration.days(90)


def secure_bucket(
    scope: Construct,
    construct_id: str,
    *,
    ephemeral: bool,
    access_logs: s3.IBucket | None,
    access_logs_prefix: str | None = None,
    versioned: bool = False,
    expire_after: Duration | None = None,
) -> s3.Bucket:
    """The bucket factory: the only place in the app that creates an ``s3.Bucket``."""
    rules = [
        s3.LifecycleRule(
            id="abort-incomplete-multipart", abort_incomplete_multipart_upload_after=ABORT_MULTIPART_AFTER
        )
    ]
    if expire_after is not None:
        rules.append(s3.LifecycleRule(id="expire", expiration=expire_after))
    if versioned:
        rules.append(
            s3.LifecycleRule(
                id="expire-noncurrent",
                noncurrent_version_expiration=Duration.days(30),
                # Once the last old version is gone, a delete marker alone only slows listings down.
                expired_object_delete_marker=True,
            )
        )
    return s3.Bucket(
        scope,
        construct_id,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        minimum_tls_version=1.2,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=versioned,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=access_logs_prefix,
        lifecycle_rules=rules,
        removal_policy=RemovalPolicy.DESTROY if ephemeral else RemovalPolicy.RETAIN,
        auto_delete_objects=ephemeral,
    )


class FruitsStorage(Construct):
    """Logs, input, results and artifacts buckets."""

    def __init__(
        self, scope: Construct, construct_id: str, *, ephemeral: bool, event_bridge: bool = False
    ) -> None:
        super().__init__(scope, construct_id)
        # Deliver server access logs through the logs bucket's policy, never through ACLs (the buckets are
        # BucketOwnerEnforced). Set here so the construct does not depend on the app's cdk.json flags.
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)
        self.logs_bucket = secure_bucket(
            self, "LogsBucket", ephemeral=ephemeral, access_logs=None, expire_after=LOG_RETENTION
        )
        acknowledge(
            self.logs_bucket,
            "AwsSolutions-S1",
            "This is the server-access-log target of every other bucket; logging it into itself would loop.",
        )
        # VPC flow logs are delivered by the log-delivery service; granting it up front (instead of letting
        # the service edit the policy on first delivery) keeps the bucket policy owned by CloudFormation.
        account = Stack.of(self).account
        self.logs_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AWSLogDeliveryWrite",
                principals=[iam.ServicePrincipal("delivery.logs.amazonaws.com")],
                actions=["s3:PutObject"],
                resources=[self.logs_bucket.arn_for_objects(f"{FLOW_LOGS_PREFIX}AWSLogs/{account}/*")],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        self.logs_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AWSLogDeliveryAclCheck",
                principals=[iam.ServicePrincipal("delivery.logs.amazonaws.com")],
                actions=["s3:GetBucketAcl"],
                resources=[self.logs_bucket.bucket_arn],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )

        if not ephemeral:
            # The Studio's bucket is in the other stack, which cannot edit this policy: S3's log delivery is
            # granted its prefix here, for this account's buckets only.
            self.logs_bucket.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="StudioBucketAccessLogs",
                    principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")],
                    actions=["s3:PutObject"],
                    resources=[self.logs_bucket.arn_for_objects(f"{STUDIO_ACCESS_LOGS_PREFIX}*")],
                    conditions={"StringEquals": {"aws:SourceAccount": account}},
                )
            )

        def data_bucket(construct_id: str, prefix: str, *, versioned: bool) -> s3.Bucket:
            bucket = secure_bucket(
                self,
                construct_id,
                ephemeral=ephemeral,
                access_logs=None if ephemeral else self.logs_bucket,
                access_logs_prefix=None if ephemeral else f"{ACCESS_LOGS_PREFIX}{prefix}/",
                versioned=versioned,
            )
            if ephemeral:
                acknowledge(
                    bucket,
                    "AwsSolutions-S1",
                    "ephemeral=true (a throw-away environment): S3 delivers access logs late, into a logs bucket "
                    "that cdk destroy has already emptied, and its deletion then fails with BucketNotEmpty "
                    "(aws/aws-cdk#16332). Deploy without ephemeral to keep access logs.",
                )
            return bucket

        self.input_bucket = data_bucket("InputBucket", "input", versioned=True)
        if event_bridge:
            # Context autorun: S3 sends the bucket's events to EventBridge's default bus, where the autorun rule
            # picks the uploads (https://docs.aws.amazon.com/AmazonS3/latest/userguide/EventBridge.html). Set on
            # the CloudFormation resource itself: no notification-handler function is needed for it.
            cfn_bucket = self.input_bucket.node.default_child
            assert isinstance(cfn_bucket, s3.CfnBucket)
            cfn_bucket.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
                event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(
                    event_bridge_enabled=True
                )
            )
        self.results_bucket = data_bucket("ResultsBucket", "results", versioned=True)
        self.artifacts_bucket = data_bucket("ArtifactsBucket", "artifacts", versioned=False)

    @property
    def input_uri(self) -> str:
        return f"s3://{self.input_bucket.bucket_name}/{INPUT_PREFIX}"

    @property
    def results_uri(self) -> str:
        return f"s3://{self.results_bucket.bucket_name}/{RESULTS_PREFIX}"

    @property
    def feature_store_uri(self) -> str:
        return f"s3://{self.results_bucket.bucket_name}/{FEATURES_PREFIX}"

    @property
    def emr_log_uri(self) -> str:
        return f"s3://{self.logs_bucket.bucket_name}/{EMR_LOGS_PREFIX}"
