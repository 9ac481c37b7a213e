"""IAM for the cluster: the EMR service role and the EC2 instance profile.

The instance role gets S3 access only through the intent-named methods below. The app's buckets are
single-purpose, so the job's buckets are granted whole (``bucket`` and ``bucket/*``, as AWS's minimal EMRFS
policy does): Hadoop file systems touch more than ``prefix/*`` (the key ``prefix`` itself, ``prefix_$folder$``
markers, listings of ``prefix``), and a grant stopping at ``prefix/*`` made the first read or feature-store
write fail with 403. Nothing else is granted: no other bucket, no ``s3:*``, no bucket administration; the logs
bucket stays prefix-scoped (nodes only push logs). Shell access is through SSM Session Manager (no key pair).
"""

from __future__ import annotations

from aws_cdk import Aws, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fruits_infra.nag import acknowledge

_EMR_CLUSTER_ARNS = f"arn:{Aws.PARTITION}:elasticmapreduce:{Aws.REGION}:{Aws.ACCOUNT_ID}:*"
EMR_SERVICE_POLICY = "service-role/AmazonEMRServicePolicy_v2"
_READ = ["s3:GetObject"]
_WRITE = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
#: Spelled out instead of CDK's grant_encrypt_decrypt, whose ReEncrypt* / GenerateDataKey* are wildcards.
_KMS_USE = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
]
#: Bucket-level reads Hadoop needs (listing; the bucket's region).
_BUCKET_READ = ["s3:ListBucket", "s3:GetBucketLocation"]
#: ... and for writing: S3A and EMRFS list (and abort) a bucket's multipart uploads.
_BUCKET_WRITE = [*_BUCKET_READ, "s3:ListBucketMultipartUploads"]
#: Session Manager's agent calls that support no resource-level permissions.
_SSM_MESSAGES_ACTIONS = [
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]
#: ssm:UpdateInstanceInformation is scoped to instances (of this account and region).
_INSTANCE_ARNS = f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}:instance/*"


def emr_service_principal() -> iam.ServicePrincipal:
    """EMR as the principal of a service role, only on behalf of this account's EMR resources in this region
    (``aws:SourceAccount`` / ``aws:SourceArn``: the confused-deputy guard AWS recommends for EMR's service roles)."""
    return iam.ServicePrincipal(
        "elasticmapreduce.amazonaws.com",
        conditions={
            "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
            "ArnLike": {"aws:SourceArn": _EMR_CLUSTER_ARNS},
        },
    )


def _prefix_pattern(prefix: str) -> str:
    return prefix if prefix.endswith("/") else f"{prefix}/"


class EmrRoles(Construct):
    """``service_role`` (assumed by EMR); ``instance_role`` + ``instance_profile`` (assumed by the nodes)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.instance_role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="EMR nodes of the fruits cluster: prefix-scoped S3, SSM Session Manager",
        )
        # Named as its role, so the EMR console and the instances show one name for both.
        self.instance_profile = iam.CfnInstanceProfile(
            self,
            "InstanceProfile",
            roles=[self.instance_role.role_name],
            instance_profile_name=self.instance_role.role_name,
        )
        self.instance_role.add_to_policy(
            iam.PolicyStatement(
                sid="SessionManagerInstance",
                actions=["ssm:UpdateInstanceInformation"],
                resources=[_INSTANCE_ARNS],
            )
        )
        self.instance_role.add_to_policy(
            iam.PolicyStatement(sid="SessionManager", actions=_SSM_MESSAGES_ACTIONS, resources=["*"])
        )
        acknowledge(
            self.instance_role,
            "AwsSolutions-IAM5[Resource::*]",
            "Session Manager's ssmmessages:*Channel actions do not support resource-level permissions; this "
            "replaces SSH keys and the broader managed AmazonSSMManagedInstanceCore policy.",
        )
        acknowledge(
            self.instance_role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/*]",
            "ssm:UpdateInstanceInformation is scoped to EC2 instances of this account and region; the "
            "instance ids are chosen by EMR at run time.",
        )

        self.service_role = iam.Role(
            self,
            "ServiceRole",
            assumed_by=emr_service_principal(),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(EMR_SERVICE_POLICY)],
            description="EMR service role (AmazonEMRServicePolicy_v2; acts only on resources tagged for it)",
        )
        # The v2 policy leaves iam:PassRole for the instance profile's role to the customer.
        self.service_role.add_to_policy(
            iam.PolicyStatement(
                sid="PassInstanceRole",
                actions=["iam:PassRole"],
                resources=[self.instance_role.role_arn],
                conditions={"StringLike": {"iam:PassedToService": "ec2.amazonaws.com*"}},
            )
        )
        acknowledge(
            self.service_role,
            f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{EMR_SERVICE_POLICY}]",
            "AmazonEMRServicePolicy_v2 is the AWS-maintained EMR service policy; it only acts on resources "
            "tagged for-use-with-amazon-emr-managed-policies=true, which this app tags explicitly.",
        )

    # -- intent-named grants (cf. aws-emr-launch's authorize_input_bucket / authorize_output_bucket) --

    def _nag_arn(self, bucket: s3.IBucket) -> str:
        """How cdk-nag prints ``bucket``'s ARN in a finding id (an import's export name or ``<Id.Arn>``)."""
        resolved = Stack.of(self).resolve(bucket.bucket_arn)
        if isinstance(resolved, dict) and "Fn::ImportValue" in resolved:
            return str(resolved["Fn::ImportValue"])
        if isinstance(resolved, dict) and "Fn::GetAtt" in resolved:
            logical_id, attribute = resolved["Fn::GetAtt"]
            return f"<{logical_id}.{attribute}>"
        if isinstance(resolved, str):
            return resolved
        raise ValueError(f"cannot name {resolved!r} the way cdk-nag does; import the bucket by export name")

    def _whole_bucket(
        self, sid: str, bucket: s3.IBucket, objects: list[str], buckets: list[str], why: str
    ) -> None:
        self.instance_role.add_to_policy(
            iam.PolicyStatement(sid=sid, actions=objects, resources=[bucket.arn_for_objects("*")])
        )
        self.instance_role.add_to_policy(
            iam.PolicyStatement(sid=f"{sid}Bucket", actions=buckets, resources=[bucket.bucket_arn])
        )
        acknowledge(
            self.instance_role,
            f"AwsSolutions-IAM5[Resource::{self._nag_arn(bucket)}/*]",
            f"A single-purpose bucket of this app: {why}. Hadoop (EMRFS, S3A) touches the prefix key itself and "
            "prefix_$folder$ markers, not only prefix/*, so the grant is the bucket's objects, as in AWS's "
            "minimal EMRFS policy; no other bucket is granted.",
        )

    def authorize_bucket_read(self, sid: str, bucket: s3.IBucket, why: str) -> None:
        """Read every object of ``bucket`` and list it."""
        self._whole_bucket(sid, bucket, _READ, _BUCKET_READ, why)

    def authorize_bucket_write(self, sid: str, bucket: s3.IBucket, why: str) -> None:
        """Read, write and delete every object of ``bucket`` (the job overwrites its own results) and list it."""
        self._whole_bucket(sid, bucket, _WRITE, _BUCKET_WRITE, why)

    def authorize_log_delivery(self, bucket: s3.IBucket, prefix: str) -> None:
        """Nodes push their logs under ``prefix`` (write only; the logs bucket is shared with other logs)."""
        pattern = f"{_prefix_pattern(prefix)}*"
        self.instance_role.add_to_policy(
            iam.PolicyStatement(
                sid="PushLogs", actions=["s3:PutObject"], resources=[bucket.arn_for_objects(pattern)]
            )
        )
        self.instance_role.add_to_policy(
            iam.PolicyStatement(
                sid="PushLogsList",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [prefix.rstrip("/"), pattern]}},
            )
        )
        acknowledge(
            self.instance_role,
            f"AwsSolutions-IAM5[Resource::{self._nag_arn(bucket)}/{pattern}]",
            f"Scoped to the {prefix} key prefix: EMR pushes node, application and step logs; object keys under "
            "it are created at run time.",
        )

    def authorize_read_object(self, sid: str, s3_uri: str) -> None:
        """Read exactly one object given as ``s3://bucket/key`` (custom weights, TLS certificates)."""
        bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
        self.instance_role.add_to_policy(
            iam.PolicyStatement(
                sid=sid, actions=_READ, resources=[f"arn:{Aws.PARTITION}:s3:::{bucket}/{key}"]
            )
        )

    def authorize_read_prefix(self, sid: str, s3_uri: str, why: str) -> None:
        """Read every object under ``s3://bucket/prefix/`` and list that prefix, nothing else of the bucket (the
        int8 engine's calibration images: the job lists them with boto3's ListObjectsV2 and reads them with
        GetObject, never through Hadoop). ListObjectsV2 needs ``s3:ListBucket`` on the bucket
        (https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html), which ``s3:prefix`` scopes to
        the listed prefix (https://docs.aws.amazon.com/AmazonS3/latest/userguide/amazon-s3-policy-keys.html)."""
        bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
        pattern = f"{_prefix_pattern(key)}*"
        self.instance_role.add_to_policy(
            iam.PolicyStatement(
                sid=sid, actions=_READ, resources=[f"arn:{Aws.PARTITION}:s3:::{bucket}/{pattern}"]
            )
        )
        self.instance_role.add_to_policy(
            iam.PolicyStatement(
                sid=f"{sid}List",
                actions=["s3:ListBucket"],
                resources=[f"arn:{Aws.PARTITION}:s3:::{bucket}"],
                conditions={"StringLike": {"s3:prefix": [_prefix_pattern(key), pattern]}},
            )
        )
        acknowledge(
            self.instance_role,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{bucket}/{pattern}]",
            f"Scoped to the {_prefix_pattern(key)} key prefix, read only: {why}; the object keys under it are "
            "whatever the platform team puts there.",
        )

    def authorize_local_disk_key(self, key: kms.IKey) -> None:
        """Nodes encrypt their local disks with ``key``; EMR attaches encrypted EBS volumes with grants."""
        for sid, role in (("LocalDiskKey", self.instance_role), ("EbsKey", self.service_role)):
            role.add_to_policy(iam.PolicyStatement(sid=sid, actions=_KMS_USE, resources=[key.key_arn]))
        self.service_role.add_to_policy(
            iam.PolicyStatement(
                sid="EbsEncryptionGrants",
                actions=["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
                resources=[key.key_arn],
                conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
            )
        )
