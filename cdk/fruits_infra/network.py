"""Network for the cluster: a new VPC (default) or an existing VPC and subnet(s) from context.

New VPC: private subnets (with egress through one NAT gateway, which the bootstrap's pip install and the
ImageNet weights download need), public subnets for the NAT only, an S3 gateway endpoint (S3 traffic never
crosses the NAT), and flow logs to the logs bucket. Either way the three EMR-managed security groups are
created here, and the VPC, subnets and groups carry the tag that lets ``AmazonEMRServicePolicy_v2`` act
on them.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Fn, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fruits_infra.storage import FLOW_LOGS_PREFIX

EMR_MANAGED_TAG = ("for-use-with-amazon-emr-managed-policies", "true")
#: EMR's service-access group: the primary node reaches the EMR service on 9443 (private subnets only).
SERVICE_ACCESS_PORT = 9443
#: ... and the service reaches the nodes on 8443.
NODE_SERVICE_PORT = 8443


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
                destination=ec2.FlowLogDestination.to_s3(flow_logs_bucket, FLOW_LOGS_PREFIX),
                traffic_type=ec2.FlowLogTrafficType.ALL,
            )
            Tags.of(vpc).add(*EMR_MANAGED_TAG)
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
        self.service_sg = group(
            "ServiceAccessSg", "EMR managed: service access (private subnet)", allow_all_outbound=False
        )
        self.service_sg.add_ingress_rule(
            self.primary_sg, ec2.Port.tcp(SERVICE_ACCESS_PORT), "primary node to EMR service"
        )
        self.service_sg.add_egress_rule(
            self.primary_sg, ec2.Port.tcp(NODE_SERVICE_PORT), "EMR service to primary"
        )
        self.service_sg.add_egress_rule(
            self.core_sg, ec2.Port.tcp(NODE_SERVICE_PORT), "EMR service to core/task"
        )
