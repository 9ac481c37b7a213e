"""A custom resource that lets CloudFormation delete the EMR-managed security groups after the cluster.

EMR adds rules to its managed groups that reference the other managed groups; those cross-references make the
groups' deletion fail with DependencyViolation and the stack's deletion (or a rollback) stick
(hashicorp/terraform-provider-aws#1454; #2074 added ``revoke_rules_on_delete`` for the same reason). Order, from
CloudFormation's rule that a resource is deleted only after everything depending on it:

    security groups  <-  this custom resource  <-  cluster (``cluster.node.add_dependency(cleanup)``)

so on delete: the cluster (terminated first), then this resource's Delete (revokes the cross-group rules), then
the groups. The same holds when an update replaces the groups: the handler answers a new physical id, and
CloudFormation's Delete of the old one cleans the old groups. A Delete that leaves the groups in the stack (this
resource renamed or removed) revokes nothing. The handler (``handlers/revoke_group_rules``, its docstring has the
whole protocol) answers CloudFormation itself: no provider framework. ``ServiceTimeout`` bounds how long
CloudFormation waits for an answer that never comes (a crashed invocation) to :data:`SERVICE_TIMEOUT` instead of
an hour (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-cloudformation-customresource.html).
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from fruits_infra.nag import acknowledge

HANDLER_DIR = Path(__file__).resolve().parent / "handlers" / "revoke_group_rules"
# The newest Python runtime (cdk-nag AwsSolutions-L1 asks for it); the handler needs only boto3 and the stdlib.
RUNTIME = lambda_.Runtime.PYTHON_3_14
RESOURCE_TYPE = "Custom::EmrManagedGroupRules"
#: The function's own limit, and how long CloudFormation waits for its answer (a few times the function's limit).
FUNCTION_TIMEOUT = Duration.minutes(2)
SERVICE_TIMEOUT = Duration.minutes(5)


def security_group_arn(group_id: str) -> str:
    """ARN of a security group of this account and region (for resource-scoped EC2 permissions)."""
    return f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}:security-group/{group_id}"


class ManagedGroupsCleanup(Construct):
    """When ``group_ids`` are deleted (with the stack, or replaced), revokes the rules between them so
    CloudFormation can delete them."""

    def __init__(self, scope: Construct, construct_id: str, *, group_ids: list[str]) -> None:
        super().__init__(scope, construct_id)
        # Kept when the stack is deleted: the function's last lines are the teardown's (what it revoked), and
        # they are read after the stack is gone. Its events expire after a month; the empty group stays.
        log_group = logs.LogGroup(
            self, "Logs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.RETAIN
        )
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Revokes the cross-references between the EMR-managed security groups when they go",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="RevokeManagedGroupRules",
                actions=["ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress"],
                resources=[security_group_arn(group_id) for group_id in group_ids],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(sid="DescribeGroups", actions=["ec2:DescribeSecurityGroups"], resources=["*"])
        )
        # Which groups go: is the stack being deleted, and which groups does it still hold? (this stack only)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadOwnStack",
                actions=["cloudformation:DescribeStacks", "cloudformation:ListStackResources"],
                resources=[Aws.STACK_ID],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="Logs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            handler="index.handler",
            # Only the source: a __pycache__ left by the tests would change the asset hash between synths.
            code=lambda_.Code.from_asset(str(HANDLER_DIR), exclude=["__pycache__", "*.pyc"]),
            timeout=FUNCTION_TIMEOUT,
            memory_size=128,
            role=role,
            log_group=log_group,
            description="Revokes the EMR-managed security groups' cross-references when those groups are deleted",
        )
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=self.function.function_arn,
            resource_type=RESOURCE_TYPE,
            properties={"GroupIds": list(group_ids)},
            service_timeout=SERVICE_TIMEOUT,
        )
        # The policy must still exist when the Delete runs: the resource is deleted before the function and role.
        self.resource.node.add_dependency(role)

        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "ec2:DescribeSecurityGroups supports no resource-level permissions; the revoke actions are scoped "
            "to the three EMR-managed groups.",
        )
