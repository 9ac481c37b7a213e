"""Network for the cluster: a new VPC (default) or an existing VPC and subnet(s) from context.

New VPC: private subnets in two zones (with egress through one NAT gateway, in the first zone, which the
bootstrap's pip install and the ImageNet weights download need: one, not one per zone, is a cost choice the
README's "One NAT gateway, and instanceMode=fleets" explains), public subnets for the NAT only, an S3 gateway endpoint (S3 traffic never
crosses the NAT), and flow logs (:data:`FLOW_LOG_FORMAT`) to the logs bucket, or, in an ephemeral environment, to
a log group that goes with this stack. Either way the three EMR-managed security groups are
created here. The VPC, the private (cluster) subnets and the groups carry the tag that lets
``AmazonEMRServicePolicy_v2`` act on them; the public subnets (the NAT's) do not, so EMR can never place a node
there.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Fn, RemovalPolicy, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fruits_infra.storage import FLOW_LOGS_PREFIX

EMR_MANAGED_TAG = ("for-use-with-amazon-emr-managed-policies", "true")
#: EMR's service-access group: the primary node reaches the EMR service on 9443 (private subnets only).
SERVICE_ACCESS_PORT = 9443
#: ... and the service reaches the nodes on 8443.
NODE_SERVICE_PORT = 8443
#: Flow-log records: the default fields, then the AWS service a packet went to and the path it took, so the
#: records show S3 traffic leaving through the gateway endpoint (``traffic-path`` 7) rather than the NAT
#: (https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html).
FLOW_LOG_FORMAT = (
    ec2.LogFormat.ALL_DEFAULT_FIELDS,
    ec2.LogFormat.PKT_DST_AWS_SERVICE,
    ec2.LogFormat.TRAFFIC_PATH,
)


class FruitsNetwork(Construct):
    """VPC, subnet selection and EMR-managed security groups."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        flow_logs_bucket: s3.IBucket,
        vpc_id: str | None = None,
        subnet_ids: Sequence[str] = (),
        ephemeral: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        if vpc_id:
            if not subnet_ids:
                raise ValueError("an existing VPC needs subnetIds")
            # Only the id is used (by the security groups); the cluster gets the subnet ids directly.
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(
                self, "Vpc", vpc_id=vpc_id, availability_zones=[Fn.select(0, Fn.get_azs())]
            )
            self.subnet_ids = list(subnet_ids)
        else:
            vpc = ec2.Vpc(
                self,
                "Vpc",
                ip_addresses=ec2.IpAddresses.cidr("10.40.0.0/16"),
                max_azs=2,
                nat_gateways=1,
                subnet_configuration=[
                    ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                    ec2.SubnetConfiguration(
                        name="cluster", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                    ),
                ],
                gateway_endpoints={
                    "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
                },
            )
            vpc.add_flow_log(
                "FlowLogs",
                destination=self._flow_log_destination(flow_logs_bucket, ephemeral),
                traffic_type=ec2.FlowLogTrafficType.ALL,
                log_format=list(FLOW_LOG_FORMAT),
            )
            # The tag goes on the VPC itself and the private subnets only (Tags.of(vpc) would tag every child,
            # the public NAT subnets included).
            Tags.of(vpc.node.default_child).add(*EMR_MANAGED_TAG)
            for subnet in vpc.private_subnets:
                Tags.of(subnet.node.default_child).add(*EMR_MANAGED_TAG)
            self.vpc = vpc
            self.subnet_ids = [s.subnet_id for s in vpc.private_subnets]

        def group(construct_id: str, description: str, *, allow_all_outbound: bool) -> ec2.SecurityGroup:
            sg = ec2.SecurityGroup(
                self,
                construct_id,
                vpc=self.vpc,
                description=description,
                allow_all_outbound=allow_all_outbound,
            )
            Tags.of(sg).add(*EMR_MANAGED_TAG)
            return sg

        # EMR adds the node-to-node rules to the two managed groups itself; nothing is opened to the world.
        self.primary_sg = group("PrimarySg", "EMR managed: primary node", allow_all_outbound=True)
        self.core_sg = group("CoreSg", "EMR managed: core and task nodes", allow_all_outbound=True)
        # The service-access group's rules are inline (L1): an L2 group with allowAllOutbound=false drops its
        # "no traffic" placeholder as soon as a rule to another group is added as a separate resource, and EC2
        # then creates the group with its default allow-all egress. Inline egress rules replace that default.
        primary_id = self.primary_sg.security_group_id
        core_id = self.core_sg.security_group_id
        self.service_sg = ec2.CfnSecurityGroup(
            self,
            "ServiceAccessSg",
            vpc_id=self.vpc.vpc_id,
            group_description="EMR managed: service access (private subnet)",
            security_group_ingress=[
                ec2.CfnSecurityGroup.IngressProperty(
                    ip_protocol="tcp",
                    from_port=SERVICE_ACCESS_PORT,
                    to_port=SERVICE_ACCESS_PORT,
                    source_security_group_id=primary_id,
                    description="primary node to EMR service",
                )
            ],
            security_group_egress=[
                ec2.CfnSecurityGroup.EgressProperty(
                    ip_protocol="tcp",
                    from_port=NODE_SERVICE_PORT,
                    to_port=NODE_SERVICE_PORT,
                    destination_security_group_id=peer,
                    description=description,
                )
                for peer, description in (
                    (primary_id, "EMR service to primary"),
                    (core_id, "EMR service to core/task"),
                )
            ],
        )
        Tags.of(self.service_sg).add(*EMR_MANAGED_TAG)
        self.service_sg_id = self.service_sg.attr_group_id

    def _flow_log_destination(self, bucket: s3.IBucket, ephemeral: bool) -> ec2.FlowLogDestination:
        """The logs bucket; in an ephemeral environment a log group deleted with this stack instead.

        Flow logs reach S3 as files "published ... at 5-minute intervals"
        (https://docs.aws.amazon.com/vpc/latest/userguide/flow-logs-s3-path.html), so one can land in an ephemeral
        logs bucket after ``cdk destroy`` emptied it, and its deletion fails with BucketNotEmpty; a log group owned
        by this stack has no such race.
        """
        if not ephemeral:
            return ec2.FlowLogDestination.to_s3(bucket, FLOW_LOGS_PREFIX)
        self.flow_log_group = logs.LogGroup(
            self, "FlowLogGroup", retention=logs.RetentionDays.ONE_WEEK, removal_policy=RemovalPolicy.DESTROY
        )
        return ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group)

    @property
    def group_ids(self) -> list[str]:
        """The three EMR-managed groups: primary, core/task, service access."""
        return [self.primary_sg.security_group_id, self.core_sg.security_group_id, self.service_sg_id]
