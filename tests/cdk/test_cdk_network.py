"""Network: new VPC (private subnets, NAT egress, S3 gateway endpoint, flow logs) or an existing one."""

from __future__ import annotations

import json

from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template
from fruits_infra.network import FruitsNetwork

TAG = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}


def _network(bare_stack, **kwargs):
    stack = bare_stack()
    logs = s3.Bucket(stack, "Logs")
    network = FruitsNetwork(stack, "Network", flow_logs_bucket=logs, **kwargs)
    return stack, network, Template.from_stack(stack)


def test_new_vpc_has_private_subnets_with_nat_egress(bare_stack):
    stack, network, template = _network(bare_stack)
    template.resource_count_is("AWS::EC2::VPC", 1)
    template.resource_count_is("AWS::EC2::NatGateway", 1)
    private = template.find_resources("AWS::EC2::Subnet", {"Properties": {"MapPublicIpOnLaunch": False}})
    assert len(private) == 2
    assert [stack.resolve(s) for s in network.subnet_ids] == [{"Ref": lid} for lid in sorted(private)]
    template.has_resource_properties(
        "AWS::EC2::Route", {"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": Match.any_value()}
    )


def test_new_vpc_has_an_s3_gateway_endpoint_and_flow_logs(bare_stack):
    _, _, template = _network(bare_stack)
    template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {"VpcEndpointType": "Gateway", "ServiceName": Match.object_like({"Fn::Join": Match.any_value()})},
    )
    endpoint = next(iter(template.find_resources("AWS::EC2::VPCEndpoint").values()))
    assert ".s3" in str(endpoint["Properties"]["ServiceName"])
    template.has_resource_properties("AWS::EC2::FlowLog", {"LogDestinationType": "s3", "TrafficType": "ALL"})


def test_vpc_private_subnets_and_groups_carry_the_emr_managed_policy_tag_public_subnets_do_not(bare_stack):
    _, _, template = _network(bare_stack)
    for kind in ("AWS::EC2::VPC", "AWS::EC2::SecurityGroup"):
        for logical_id, resource in template.find_resources(kind).items():
            assert TAG in resource["Properties"]["Tags"], logical_id
    subnets = template.find_resources("AWS::EC2::Subnet")
    private = {k for k, r in subnets.items() if r["Properties"]["MapPublicIpOnLaunch"] is False}
    tagged = {k for k, r in subnets.items() if TAG in r["Properties"].get("Tags", [])}
    assert len(private) == 2 and tagged == private
    for kind in (
        "AWS::EC2::NatGateway",
        "AWS::EC2::InternetGateway",
        "AWS::EC2::RouteTable",
        "AWS::EC2::EIP",
    ):
        for logical_id, resource in template.find_resources(kind).items():
            assert TAG not in resource["Properties"].get("Tags", []), logical_id


def _group_id(stack, group):
    return {
        "Fn::GetAtt": [stack.get_logical_id(getattr(group.node, "default_child", None) or group), "GroupId"]
    }


def test_three_emr_security_groups_nothing_open_to_the_world(bare_stack):
    stack, network, template = _network(bare_stack)
    template.resource_count_is("AWS::EC2::SecurityGroup", 3)
    for resource in template.find_resources("AWS::EC2::SecurityGroup").values():
        for rule in resource["Properties"].get("SecurityGroupIngress", []):
            assert rule.get("CidrIp") != "0.0.0.0/0"
    service = template.to_json()["Resources"][stack.get_logical_id(network.service_sg)]["Properties"]
    assert service["SecurityGroupIngress"] == [
        {
            "IpProtocol": "tcp",
            "FromPort": 9443,
            "ToPort": 9443,
            "SourceSecurityGroupId": _group_id(stack, network.primary_sg),
            "Description": "primary node to EMR service",
        }
    ]


def test_service_access_group_has_no_egress_to_the_world(bare_stack):
    """EC2 gives a group without egress rules allow-all egress; the inline rules must replace it."""
    stack, network, template = _network(bare_stack)
    service_id = stack.get_logical_id(network.service_sg)
    service = template.to_json()["Resources"][service_id]["Properties"]
    egress = service["SecurityGroupEgress"]
    assert egress and all("CidrIp" not in rule and "CidrIpv6" not in rule for rule in egress)
    assert sorted((r["FromPort"], json.dumps(r["DestinationSecurityGroupId"])) for r in egress) == sorted(
        (8443, json.dumps(_group_id(stack, group))) for group in (network.primary_sg, network.core_sg)
    )
    # ... and no separate rule resource adds one (nor empties the inline list CDK would manage).
    for kind in ("AWS::EC2::SecurityGroupEgress", "AWS::EC2::SecurityGroupIngress"):
        for rule in template.find_resources(kind).values():
            assert rule["Properties"]["GroupId"] != {"Fn::GetAtt": [service_id, "GroupId"]}
            assert rule["Properties"].get("CidrIp") != "0.0.0.0/0"
    assert network.group_ids[2] == network.service_sg_id


def test_existing_vpc_creates_no_network_only_groups(bare_stack):
    _, network, template = _network(
        bare_stack, vpc_id="vpc-0123456789abcdef0", subnet_ids=["subnet-0123456789abcdef0"]
    )
    template.resource_count_is("AWS::EC2::VPC", 0)
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    template.resource_count_is("AWS::EC2::SecurityGroup", 3)
    template.has_resource_properties("AWS::EC2::SecurityGroup", {"VpcId": "vpc-0123456789abcdef0"})
    assert network.subnet_ids == ["subnet-0123456789abcdef0"]
