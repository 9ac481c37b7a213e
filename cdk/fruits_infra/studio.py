"""An EMR Studio for analysts, attached to the stack's cluster (context ``studio``, off by default).

What EMR Studio needs, from its documentation (Amazon EMR Management Guide):

- **The Studio** (``AWS::EMR::Studio``) with IAM authentication (``AuthMode: IAM``: users and roles sign in with
  their IAM permissions, no IAM Identity Center and no user role), in the cluster's VPC and private subnets, with
  its default S3 location ``s3://<studio bucket>/workspaces/``, where Workspaces and their notebooks are kept.
- **Its own bucket** (the app's bucket factory: TLS only, SSE-S3, versioned, access logs to the logs bucket),
  apart from the artifacts bucket whose bootstrap script every node runs as root: nothing the Studio, its role or
  its users may write sits next to code that runs on the cluster.
- **Its service role**, assumed by ``elasticmapreduce.amazonaws.com``: the example policy of "Create an EMR Studio
  service role" (network interfaces and security-group rules only on resources tagged
  ``for-use-with-amazon-emr-managed-policies=true``, read-only EMR and EC2 calls, tagged Git secrets), scoped to
  this account and region and to this stack's clusters, plus read and write on ``workspaces/`` of the Studio's
  bucket only.
- **Its users' policy** (a managed policy, output ``StudioUserPolicyArn``, attached by an administrator to the
  analysts' IAM users, groups or roles): "IAM authentication mode" users need their own permissions to open the
  Studio and work in Workspaces. AWS's basic user policy, narrowed: this Studio only, this account's clusters,
  the Studio's bucket and the EMR logs, ``iam:PassRole`` on the service role only; no cluster creation.
- **Two security groups**, both tagged for those policies ("Define security groups to control EMR Studio network
  traffic"): an *engine* group that lets the *workspace* group in on TCP 18888 (Jupyter Enterprise Gateway on the
  cluster), and a *workspace* group with no inbound rule, whose egress is 18888 to the engine group and HTTPS
  (443) for linking Git repositories.
- **On the cluster**: Spark, Livy and Jupyter Enterprise Gateway ("Cluster requirements": EMR on EC2 clusters
  must have all three); :data:`STUDIO_APPLICATIONS` are added by :mod:`fruits_infra.cluster` when the key is on,
  with Livy sessions in cluster mode, as that page recommends. Changing a cluster's ``Applications`` replaces it.
- **The notebook** where a Workspace finds it: ``notebooks/`` deployed to ``s3://<studio bucket>/notebooks/``;
  the job package is the deployed ``job/fruits.zip`` (the notebook's ``FRUITS_ZIP`` parameter:
  ``sc.addPyFile``).

Pages (Amazon EMR Management Guide): https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-studio-service-role.html,
https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-studio-user-permissions.html,
https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-studio-security-groups.html,
https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-studio-considerations.html#emr-studio-cluster-requirements;
``AuthMode``: https://docs.aws.amazon.com/cdk/api/v2/python/aws_cdk.aws_emr/CfnStudioProps.html.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, RemovalPolicy, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_emr as emr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from fruits_infra.artifacts import REPO_ROOT
from fruits_infra.nag import acknowledge, acknowledge_bucket_deployment, finding_name
from fruits_infra.network import EMR_MANAGED_TAG
from fruits_infra.roles import emr_service_principal
from fruits_infra.storage import EMR_LOGS_PREFIX, STUDIO_ACCESS_LOGS_PREFIX, secure_bucket

#: In the Studio's bucket: where it keeps Workspaces (its default S3 location), where the notebooks are deployed.
WORKSPACES_PREFIX = "workspaces/"
NOTEBOOKS_PREFIX = "notebooks/"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
#: Jupyter Enterprise Gateway on the cluster: the only port the Workspaces reach.
ENGINE_PORT = 18888
#: Added to Hadoop and Spark when the Studio is on: EMR Studio's cluster requirements for EMR on EC2.
STUDIO_APPLICATIONS = ("Livy", "JupyterEnterpriseGateway")
#: livy-conf: Spark sessions in cluster mode (the drivers on core nodes, not on the primary), as EMR Studio's
#: cluster requirements recommend. Livy's session timeout stays at its default (1 h): an open session is a
#: running YARN application, which keeps the cluster from auto-terminating as idle.
LIVY_CONF = {"livy.spark.deploy-mode": "cluster"}

_ARN = f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}"
_TAGGED = {"StringEquals": {f"aws:ResourceTag/{EMR_MANAGED_TAG[0]}": EMR_MANAGED_TAG[1]}}
_REQUEST_TAGGED = {"StringEquals": {f"aws:RequestTag/{EMR_MANAGED_TAG[0]}": EMR_MANAGED_TAG[1]}}
#: What EMR Studio's service role needs on the Studio's S3 location ("Create an EMR Studio service role").
_S3_OBJECTS = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
_S3_BUCKET = ["s3:ListBucket", "s3:GetEncryptionConfiguration"]


CLUSTERS = f"arn:{Aws.PARTITION}:elasticmapreduce:{Aws.REGION}:{Aws.ACCOUNT_ID}:cluster/*"


def studio_service_policy(bucket: s3.IBucket) -> list[iam.PolicyStatement]:
    """The service role's statements: AWS's example policy, narrowed to this account, region and the Studio's
    bucket (``workspaces/``)."""
    clusters = CLUSTERS
    network_interfaces = f"{_ARN}:network-interface/*"
    security_groups = f"{_ARN}:security-group/*"
    return [
        iam.PolicyStatement(
            sid="AllowEMRReadOnlyActions",
            actions=[
                "elasticmapreduce:ListInstances",
                "elasticmapreduce:DescribeCluster",
                "elasticmapreduce:ListSteps",
            ],
            resources=[clusters],
        ),
        iam.PolicyStatement(
            sid="AllowEC2ENIActionsWithEMRTags",
            actions=["ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface"],
            resources=[network_interfaces],
            conditions=_TAGGED,
        ),
        iam.PolicyStatement(
            # AWS: "must remain as-is ... due to technical limitations with Amazon EC2 tag-based access control".
            sid="AllowEC2ENIAttributeAction",
            actions=["ec2:ModifyNetworkInterfaceAttribute"],
            resources=[f"{_ARN}:instance/*", network_interfaces, security_groups],
        ),
        iam.PolicyStatement(
            sid="AllowEC2SecurityGroupActionsWithEMRTags",
            actions=[
                "ec2:AuthorizeSecurityGroupEgress",
                "ec2:AuthorizeSecurityGroupIngress",
                "ec2:RevokeSecurityGroupEgress",
                "ec2:RevokeSecurityGroupIngress",
                "ec2:DeleteNetworkInterfacePermission",
            ],
            resources=["*"],
            conditions=_TAGGED,
        ),
        iam.PolicyStatement(
            sid="AllowDefaultEC2SecurityGroupsCreationWithEMRTags",
            actions=["ec2:CreateSecurityGroup"],
            resources=[security_groups],
            conditions=_REQUEST_TAGGED,
        ),
        iam.PolicyStatement(
            sid="AllowDefaultEC2SecurityGroupsCreationInVPCWithEMRTags",
            actions=["ec2:CreateSecurityGroup"],
            resources=[f"{_ARN}:vpc/*"],
            conditions=_TAGGED,
        ),
        iam.PolicyStatement(
            # AWS: must remain unchanged.
            sid="AllowAddingEMRTagsDuringDefaultSecurityGroupCreation",
            actions=["ec2:CreateTags"],
            resources=[security_groups],
            conditions={
                "StringEquals": {
                    f"aws:RequestTag/{EMR_MANAGED_TAG[0]}": EMR_MANAGED_TAG[1],
                    "ec2:CreateAction": "CreateSecurityGroup",
                }
            },
        ),
        iam.PolicyStatement(
            sid="AllowEC2ENICreationWithEMRTags",
            actions=["ec2:CreateNetworkInterface"],
            resources=[network_interfaces],
            conditions=_REQUEST_TAGGED,
        ),
        iam.PolicyStatement(
            sid="AllowEC2ENICreationInSubnetAndSecurityGroupWithEMRTags",
            actions=["ec2:CreateNetworkInterface"],
            resources=[f"{_ARN}:subnet/*", security_groups],
            conditions=_TAGGED,
        ),
        iam.PolicyStatement(
            # AWS: must remain unchanged.
            sid="AllowAddingTagsDuringEC2ENICreation",
            actions=["ec2:CreateTags"],
            resources=[network_interfaces],
            conditions={"StringEquals": {"ec2:CreateAction": "CreateNetworkInterface"}},
        ),
        iam.PolicyStatement(
            sid="AllowEC2ReadOnlyActions",
            actions=[
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeTags",
                "ec2:DescribeInstances",
                "ec2:DescribeSubnets",
                "ec2:DescribeVpcs",
            ],
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="AllowSecretsManagerReadOnlyActionsWithEMRTags",
            actions=["secretsmanager:GetSecretValue"],
            resources=[f"arn:{Aws.PARTITION}:secretsmanager:{Aws.REGION}:{Aws.ACCOUNT_ID}:secret:*"],
            conditions=_TAGGED,
        ),
        iam.PolicyStatement(
            sid="StudioLocationObjects",
            actions=_S3_OBJECTS,
            resources=[bucket.arn_for_objects(f"{WORKSPACES_PREFIX}*")],
        ),
        iam.PolicyStatement(sid="StudioLocationBucket", actions=_S3_BUCKET, resources=[bucket.bucket_arn]),
    ]


#: What an analyst does in this Studio (AWS's basic user policy for IAM authentication, EMR on EC2 only):
#: Workspaces, linking Git repositories, and the Spark UI of the cluster's applications.
_WORKSPACE_ACTIONS = [
    "elasticmapreduce:CreateEditor",
    "elasticmapreduce:DescribeEditor",
    "elasticmapreduce:ListEditors",
    "elasticmapreduce:StartEditor",
    "elasticmapreduce:StopEditor",
    "elasticmapreduce:DeleteEditor",
    "elasticmapreduce:OpenEditorInConsole",
    "elasticmapreduce:AttachEditor",
    "elasticmapreduce:DetachEditor",
    "elasticmapreduce:CreateRepository",
    "elasticmapreduce:DescribeRepository",
    "elasticmapreduce:DeleteRepository",
    "elasticmapreduce:ListRepositories",
    "elasticmapreduce:LinkRepository",
    "elasticmapreduce:UnlinkRepository",
    "elasticmapreduce:CreatePersistentAppUI",
    "elasticmapreduce:DescribePersistentAppUI",
    "elasticmapreduce:GetPersistentAppUIPresignedURL",
]


def studio_user_policy(
    studio_arn: str, service_role_arn: str, bucket: s3.IBucket, logs_bucket: s3.IBucket
) -> list[iam.PolicyStatement]:
    """The analysts' statements: AWS's basic user policy for IAM authentication mode
    (https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-studio-user-permissions.html), narrowed to this
    Studio (``CreateStudioPresignedUrl`` on its ARN is what admits a user), this account's clusters, the
    Studio's bucket (read: notebooks and Workspaces) and the EMR logs (read), with ``iam:PassRole`` on the
    Studio's service role only. Without EMR on EKS, Service Catalog or cluster creation (RunJobFlow), and without
    creating secrets (Git credentials are stored by an administrator, tagged for the service role)."""
    return [
        iam.PolicyStatement(
            sid="OpenThisStudio",
            actions=["elasticmapreduce:CreateStudioPresignedUrl", "elasticmapreduce:DescribeStudio"],
            resources=[studio_arn],
        ),
        iam.PolicyStatement(
            # No resource-level permissions: the console lists Studios, clusters and Workspaces to show them.
            sid="ListAndWork",
            actions=["elasticmapreduce:ListStudios", "elasticmapreduce:ListClusters", *_WORKSPACE_ACTIONS],
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="ReadClusters",
            actions=[
                "elasticmapreduce:DescribeCluster",
                "elasticmapreduce:ListInstanceGroups",
                "elasticmapreduce:ListBootstrapActions",
                "elasticmapreduce:ListSteps",
            ],
            resources=[CLUSTERS],
        ),
        iam.PolicyStatement(
            sid="PassStudioServiceRole",
            actions=["iam:PassRole"],
            resources=[service_role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "elasticmapreduce.amazonaws.com"}},
        ),
        iam.PolicyStatement(
            sid="StudioBucket",
            actions=["s3:ListBucket", "s3:GetBucketLocation"],
            resources=[bucket.bucket_arn],
        ),
        iam.PolicyStatement(
            sid="StudioObjects", actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")]
        ),
        iam.PolicyStatement(
            sid="EmrLogs",
            actions=["s3:GetObject"],
            resources=[logs_bucket.arn_for_objects(f"{EMR_LOGS_PREFIX}*")],
        ),
    ]


class FruitsStudio(Construct):
    """The Studio, its bucket, service role, users' policy and security groups, and the notebooks deployed to its
    bucket."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        vpc: ec2.IVpc,
        subnet_ids: list[str],
        logs_bucket: s3.IBucket,
        ephemeral: bool,
        notebooks_dir: Path = NOTEBOOKS_DIR,
    ) -> None:
        super().__init__(scope, construct_id)
        # Apart from the artifacts bucket (bootstrap scripts run as root): versioned, as analysts' notebooks are
        # data. Its access logs go to the logs bucket under a prefix that bucket's policy grants S3 up front.
        self.bucket = secure_bucket(
            self,
            "Bucket",
            ephemeral=ephemeral,
            access_logs=None if ephemeral else logs_bucket,
            access_logs_prefix=None if ephemeral else STUDIO_ACCESS_LOGS_PREFIX,
            versioned=True,
        )
        if ephemeral:
            acknowledge(
                self.bucket,
                "AwsSolutions-S1",
                "ephemeral=true (a throw-away environment): S3 delivers access logs late, into a logs bucket that "
                "cdk destroy has already emptied, and its deletion then fails with BucketNotEmpty "
                "(aws/aws-cdk#16332). Deploy without ephemeral to keep access logs.",
            )
        else:
            acknowledge(
                self.bucket,
                "Annotation::@aws-cdk/aws-s3:accessLogsPolicyNotAdded",
                "The logs bucket is the data stack's: its policy grants S3's log delivery this bucket's prefix "
                "(StudioBucketAccessLogs in fruits_infra.storage), which this stack cannot add.",
            )
        self.workspace_sg = ec2.SecurityGroup(
            self,
            "WorkspaceSg",
            vpc=vpc,
            description="EMR Studio Workspaces: no inbound; out to the engine (18888) and HTTPS for Git",
            allow_all_outbound=False,
        )
        self.engine_sg = ec2.SecurityGroup(
            self,
            "EngineSg",
            vpc=vpc,
            description="EMR Studio engine: Workspaces reach Jupyter Enterprise Gateway on the cluster (18888)",
            allow_all_outbound=False,
        )
        self.engine_sg.add_ingress_rule(
            self.workspace_sg, ec2.Port.tcp(ENGINE_PORT), "EMR Studio Workspaces to the notebook engine"
        )
        self.workspace_sg.add_egress_rule(
            self.engine_sg, ec2.Port.tcp(ENGINE_PORT), "to the notebook engine on the cluster"
        )
        self.workspace_sg.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS: linking a Workspace to a Git repository"
        )
        for group in (self.workspace_sg, self.engine_sg):
            Tags.of(group).add(*EMR_MANAGED_TAG)

        self.service_role = iam.Role(
            self,
            "ServiceRole",
            assumed_by=emr_service_principal(),
            description="EMR Studio service role: Workspace network channel to the cluster, workspaces/ in the "
            "Studio's bucket",
        )
        for statement in studio_service_policy(self.bucket):
            self.service_role.add_to_policy(statement)

        self.default_s3_location = f"s3://{self.bucket.bucket_name}/{WORKSPACES_PREFIX}"
        self.studio = emr.CfnStudio(
            self,
            "Studio",
            name=name,
            description="Fruits! analysts: notebooks on the featurize cluster",
            auth_mode="IAM",
            default_s3_location=self.default_s3_location,
            service_role=self.service_role.role_arn,
            vpc_id=vpc.vpc_id,
            subnet_ids=list(subnet_ids),
            engine_security_group_id=self.engine_sg.security_group_id,
            workspace_security_group_id=self.workspace_sg.security_group_id,
        )
        # The role's policy must exist before EMR Studio uses the role.
        self.studio.node.add_dependency(self.service_role)
        self.user_policy = iam.ManagedPolicy(
            self,
            "UserPolicy",
            description="EMR Studio users (IAM authentication): open this Studio, work in Workspaces on the "
            "Fruits cluster",
            statements=studio_user_policy(
                self.studio.attr_arn, self.service_role.role_arn, self.bucket, logs_bucket
            ),
        )

        self.notebooks_uri = f"s3://{self.bucket.bucket_name}/{NOTEBOOKS_PREFIX}"
        self.deployment_logs = logs.LogGroup(
            self,
            "NotebookDeploymentLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.notebooks = s3deploy.BucketDeployment(
            self,
            "Notebooks",
            sources=[s3deploy.Source.asset(str(notebooks_dir), exclude=[".ipynb_checkpoints", "*.pyc"])],
            destination_bucket=self.bucket,
            destination_key_prefix=NOTEBOOKS_PREFIX,
            # The prefix holds only what this deployment writes: a removed notebook goes too. Workspaces live
            # beside it (workspaces/<workspace id>/), never under it.
            prune=True,
            retain_on_delete=False,
            log_group=self.deployment_logs,
        )
        self._acknowledge(logs_bucket)

    @property
    def group_ids(self) -> list[str]:
        """Workspace and engine groups."""
        return [self.workspace_sg.security_group_id, self.engine_sg.security_group_id]

    def _acknowledge(self, logs_bucket: s3.IBucket) -> None:
        stack = Stack.of(self)
        bucket_name = finding_name(stack, self.bucket)
        role_findings = {
            "Resource::*": "EC2 Describe* calls support no resource-level permissions, and the security-group "
            "rule actions are conditioned on the for-use-with-amazon-emr-managed-policies tag, as in AWS's "
            "example EMR Studio service role policy.",
            "Resource::arn:<AWS::Partition>:elasticmapreduce:<AWS::Region>:<AWS::AccountId>:cluster/*": (
                "Read-only EMR calls on the clusters of this account and region: the cluster id changes with "
                "every clusterGeneration."
            ),
            "Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:network-interface/*": (
                "EMR Studio creates the Workspace network interfaces at run time; creation and deletion are "
                "conditioned on the EMR-managed tag (AWS's example policy)."
            ),
            "Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:security-group/*": (
                "Security groups of this account and region, conditioned on the EMR-managed tag except for "
                "ModifyNetworkInterfaceAttribute, which AWS says must stay as in its example policy."
            ),
            "Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/*": (
                "ModifyNetworkInterfaceAttribute on the cluster's instances, whose ids EMR chooses: AWS says "
                "this statement must stay as in its example policy."
            ),
            "Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:subnet/*": (
                "Network interfaces only in subnets tagged for EMR's managed policies (the cluster's private "
                "subnets)."
            ),
            "Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:vpc/*": (
                "Security groups only in a VPC tagged for EMR's managed policies (AWS's example policy)."
            ),
            "Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:*": (
                "Only secrets tagged for EMR's managed policies: Git credentials an admin stores to link a "
                "Workspace to a repository."
            ),
            f"Resource::{bucket_name}/{WORKSPACES_PREFIX}*": (
                "The Studio's own S3 location (workspaces/ in the Studio's bucket), where EMR Studio keeps "
                "Workspaces and notebooks under ids it chooses."
            ),
        }
        for finding, reason in role_findings.items():
            acknowledge(self.service_role, f"AwsSolutions-IAM5[{finding}]", reason)
        user_findings = {
            "Resource::*": "ListStudios and ListClusters support no resource-level permissions; Workspaces "
            "(editors), Git repositories and persistent app UIs are created at run time under ids EMR chooses "
            "(AWS's basic user policy uses * for them). Admission to the Studio is the presigned URL on this "
            "Studio's ARN only.",
            "Resource::arn:<AWS::Partition>:elasticmapreduce:<AWS::Region>:<AWS::AccountId>:cluster/*": (
                "Read-only calls on this account's clusters in this region, to attach a Workspace: the cluster id "
                "changes with every clusterGeneration."
            ),
            f"Resource::{bucket_name}/*": (
                "Read-only: the deployed notebooks and the Workspaces' files in the Studio's own bucket."
            ),
            f"Resource::{finding_name(stack, logs_bucket)}/{EMR_LOGS_PREFIX}*": (
                "Read-only: the cluster's EMR logs (steps, containers), to debug what a notebook ran."
            ),
        }
        for finding, reason in user_findings.items():
            acknowledge(self.user_policy, f"AwsSolutions-IAM5[{finding}]", reason)
        acknowledge_bucket_deployment(
            stack,
            self.bucket,
            what="the notebooks",
            deletes="remove notebooks no longer in notebooks/ from the Studio bucket's notebooks/",
        )
