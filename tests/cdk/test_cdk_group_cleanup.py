"""The custom resource that revokes EMR's cross-group rules: its handler, its IAM and its place in the delete order."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest
from fruits_infra.group_cleanup import HANDLER_DIR, RESOURCE_TYPE

PRIMARY, CORE, SERVICE, OTHER = "sg-primary", "sg-core", "sg-service", "sg-someone-else"


def _handler_module():
    spec = importlib.util.spec_from_file_location("revoke_group_rules", HANDLER_DIR / "index.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["revoke_group_rules"] = module
    spec.loader.exec_module(module)
    return module


class FakeEc2:
    """Security groups as EC2 describes them after EMR added its rules; records the revocations."""

    def __init__(self) -> None:
        def pair(group: str) -> dict[str, str]:
            return {"GroupId": group, "UserId": "123456789012"}

        self.groups = {
            PRIMARY: {
                "GroupId": PRIMARY,
                "IpPermissions": [
                    {"IpProtocol": "-1", "UserIdGroupPairs": [pair(PRIMARY), pair(CORE)]},
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 8443,
                        "ToPort": 8443,
                        "UserIdGroupPairs": [pair(SERVICE)],
                    },
                    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [pair(OTHER)]},
                ],
                "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
            },
            CORE: {
                "GroupId": CORE,
                "IpPermissions": [{"IpProtocol": "-1", "UserIdGroupPairs": [pair(PRIMARY), pair(CORE)]}],
                "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
            },
            SERVICE: {
                "GroupId": SERVICE,
                "IpPermissions": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 9443,
                        "ToPort": 9443,
                        "UserIdGroupPairs": [pair(PRIMARY)],
                    }
                ],
                "IpPermissionsEgress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 8443,
                        "ToPort": 8443,
                        "UserIdGroupPairs": [pair(PRIMARY), pair(CORE)],
                    }
                ],
            },
        }
        self.revoked: list[tuple[str, str, list[dict[str, Any]]]] = []

    def describe_security_groups(self, Filters):  # boto3 parameter names
        (group_filter,) = Filters
        assert group_filter["Name"] == "group-id"
        return {"SecurityGroups": [self.groups[g] for g in group_filter["Values"] if g in self.groups]}

    def revoke_security_group_ingress(self, GroupId, IpPermissions):
        self.revoked.append(("ingress", GroupId, IpPermissions))

    def revoke_security_group_egress(self, GroupId, IpPermissions):
        self.revoked.append(("egress", GroupId, IpPermissions))


def _event(request_type: str) -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ResponseURL": "https://cloudformation-custom-resource-response.example/x",
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/FruitsEmrStack/1",
        "RequestId": "r-1",
        "LogicalResourceId": "ManagedGroupsCleanup",
        "ResourceProperties": {"GroupIds": [PRIMARY, CORE, SERVICE]},
    }


@pytest.fixture
def handler(monkeypatch):
    module = _handler_module()
    responses: list[tuple[str, str]] = []
    monkeypatch.setattr(
        module, "_respond", lambda event, status, reason, physical: responses.append((status, reason))
    )
    return module, responses


def test_delete_revokes_every_rule_between_the_managed_groups_and_nothing_else(handler):
    module, responses = handler
    ec2 = FakeEc2()
    module.handler(_event("Delete"), None, ec2=ec2)
    assert responses[0][0] == "SUCCESS" and "revoked 8 cross-group rules" in responses[0][1]
    revoked = {(direction, group): perms for direction, group, perms in ec2.revoked}
    assert set(revoked) == {
        ("ingress", PRIMARY),
        ("ingress", CORE),
        ("ingress", SERVICE),
        ("egress", SERVICE),
    }
    primary_pairs = [p["GroupId"] for perm in revoked[("ingress", PRIMARY)] for p in perm["UserIdGroupPairs"]]
    assert sorted(primary_pairs) == sorted([PRIMARY, CORE, SERVICE])  # not the foreign group's SSH rule
    assert revoked[("ingress", PRIMARY)][1] == {
        "IpProtocol": "tcp",
        "FromPort": 8443,
        "ToPort": 8443,
        "UserIdGroupPairs": [{"GroupId": SERVICE, "UserId": "123456789012"}],
    }
    assert not any(direction == "egress" and group in (PRIMARY, CORE) for direction, group, _ in ec2.revoked)


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_create_and_update_do_nothing(handler, request_type):
    module, responses = handler
    ec2 = FakeEc2()
    module.handler(_event(request_type), None, ec2=ec2)
    assert responses == [("SUCCESS", "nothing to do")] and not ec2.revoked


def test_an_error_is_reported_to_cloudformation_not_left_hanging(handler):
    module, responses = handler

    class Broken(FakeEc2):
        def describe_security_groups(self, Filters):  # boto3 parameter names
            raise RuntimeError("UnauthorizedOperation")

    module.handler(_event("Delete"), None, ec2=Broken())
    assert responses == [("FAILED", "RuntimeError: UnauthorizedOperation")]


def test_groups_already_gone_are_skipped(handler):
    module, responses = handler
    ec2 = FakeEc2()
    ec2.groups = {}
    module.handler(_event("Delete"), None, ec2=ec2)
    assert responses[0][0] == "SUCCESS" and not ec2.revoked


# -- in the template ---------------------------------------------------------------------------------------


def test_deleted_after_the_cluster_and_before_the_groups(full_app):
    template = full_app.template(full_app.emr_stack).to_json()["Resources"]
    (cleanup_id,) = [k for k, r in template.items() if r["Type"] == RESOURCE_TYPE]
    (cluster_id,) = [k for k, r in template.items() if r["Type"] == "AWS::EMR::Cluster"]
    groups = sorted(k for k, r in template.items() if r["Type"] == "AWS::EC2::SecurityGroup")
    # CloudFormation deletes a resource only after everything that depends on it.
    assert cleanup_id in template[cluster_id]["DependsOn"]  # cluster first, then the cleanup
    cleanup = template[cleanup_id]
    assert (
        sorted(ref["Fn::GetAtt"][0] for ref in cleanup["Properties"]["GroupIds"]) == groups
    )  # then the groups
    function_arn = cleanup["Properties"]["ServiceToken"]["Fn::GetAtt"]
    assert template[function_arn[0]]["Type"] == "AWS::Lambda::Function"
    assert any("RoleDefaultPolicy" in d for d in cleanup["DependsOn"])  # its permissions outlive its Delete


def test_the_function_may_only_revoke_rules_of_the_three_groups(full_app):
    template = full_app.template(full_app.emr_stack).to_json()["Resources"]
    (policy,) = [
        r
        for k, r in template.items()
        if r["Type"] == "AWS::IAM::Policy" and k.startswith("ManagedGroupsCleanup")
    ]
    statements = {st["Sid"]: st for st in policy["Properties"]["PolicyDocument"]["Statement"]}
    revoke = statements["RevokeManagedGroupRules"]
    assert sorted(revoke["Action"]) == ["ec2:RevokeSecurityGroupEgress", "ec2:RevokeSecurityGroupIngress"]
    group_refs = [r["Fn::Join"][1][-1] for r in revoke["Resource"]]
    assert len(group_refs) == 3 and all("Fn::GetAtt" in ref for ref in group_refs)
    assert all(":security-group/" in json.dumps(r) for r in revoke["Resource"])
    assert statements["DescribeGroups"] == {
        "Sid": "DescribeGroups",
        "Effect": "Allow",
        "Action": "ec2:DescribeSecurityGroups",
        "Resource": "*",
    }
    assert set(statements) == {"RevokeManagedGroupRules", "DescribeGroups", "Logs"}
