"""The custom resource that revokes EMR's cross-group rules: its handler (against moto's EC2 and CloudFormation),
its IAM and its place in the delete order."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import boto3
import pytest
from fruits_infra.group_cleanup import HANDLER_DIR, RESOURCE_TYPE, SERVICE_TIMEOUT
from moto import mock_aws

REGION, ACCOUNT = "us-east-1", "123456789012"
LOGICAL_ID = "ManagedGroupsCleanupResource"


def _handler_module():
    spec = importlib.util.spec_from_file_location("revoke_group_rules", HANDLER_DIR / "index.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["revoke_group_rules"] = module
    spec.loader.exec_module(module)
    return module


class Account:
    """moto's EC2 and CloudFormation with a deployed stack: a VPC and the three EMR-managed groups, with the rules
    EMR adds between them, plus groups outside the stack (an update's old groups, someone else's group)."""

    def __init__(self) -> None:
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.cloudformation = boto3.client("cloudformation", region_name=REGION)
        template = {
            "Resources": {
                "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.40.0.0/16"}},
                **{
                    name: {
                        "Type": "AWS::EC2::SecurityGroup",
                        "Properties": {"GroupDescription": name, "VpcId": {"Ref": "Vpc"}},
                    }
                    for name in ("PrimarySg", "CoreSg", "ServiceAccessSg")
                },
            }
        }
        self.stack_id = self.cloudformation.create_stack(
            StackName="FruitsEmrStack", TemplateBody=json.dumps(template)
        )["StackId"]
        resources = self.cloudformation.describe_stack_resources(StackName=self.stack_id)["StackResources"]
        ids = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
        self.vpc = ids["Vpc"]
        self.primary, self.core, self.service = ids["PrimarySg"], ids["CoreSg"], ids["ServiceAccessSg"]
        self.old_service = self.group("an update's old service-access group, replaced")
        self.other = self.group("someone else's group")

    def group(self, description: str) -> str:
        return self.ec2.create_security_group(GroupName=description, Description=description, VpcId=self.vpc)[
            "GroupId"
        ]

    def add_emr_rules(self, primary: str, core: str, service: str) -> None:
        """The rules EMR adds between its managed groups (all traffic primary <-> core, 8443/9443 with service
        access), and two it does not: SSH from another group and egress to the internet."""

        def pairs(*groups: str) -> list[dict[str, str]]:
            return [{"GroupId": g, "UserId": ACCOUNT} for g in groups]

        self.ec2.authorize_security_group_ingress(
            GroupId=primary,
            IpPermissions=[
                {"IpProtocol": "-1", "UserIdGroupPairs": pairs(primary, core)},
                {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "UserIdGroupPairs": pairs(service)},
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": pairs(self.other)},
            ],
        )
        self.ec2.authorize_security_group_ingress(
            GroupId=core, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": pairs(primary, core)}]
        )
        self.ec2.authorize_security_group_ingress(
            GroupId=service,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 9443, "ToPort": 9443, "UserIdGroupPairs": pairs(primary)}
            ],
        )
        self.ec2.authorize_security_group_egress(
            GroupId=service,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 8443,
                    "ToPort": 8443,
                    "UserIdGroupPairs": pairs(primary, core),
                }
            ],
        )

    def references(self, group_id: str) -> set[tuple[str, str]]:
        """(direction, referenced group) of every group-to-group rule ``group_id`` holds."""
        (group,) = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        return {
            (direction, pair["GroupId"])
            for direction, key in (("in", "IpPermissions"), ("out", "IpPermissionsEgress"))
            for permission in group[key]
            for pair in permission.get("UserIdGroupPairs", [])
        }

    def egress_cidrs(self, group_id: str) -> set[str]:
        (group,) = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        return {r["CidrIp"] for p in group["IpPermissionsEgress"] for r in p.get("IpRanges", [])}

    def set_stack_status(self, status: str) -> None:
        """moto deletes a stack at once; CloudFormation runs this resource's Delete while the stack says so."""
        from moto.cloudformation.models import cloudformation_backends

        cloudformation_backends[ACCOUNT][REGION].stacks[self.stack_id].status = status

    def event(self, request_type: str, groups: list[str], **fields: Any) -> dict[str, Any]:
        return {
            "RequestType": request_type,
            "ResponseURL": "https://cloudformation-custom-resource-response.example/x",
            "StackId": self.stack_id,
            "RequestId": "r-1",
            "LogicalResourceId": LOGICAL_ID,
            "ResourceType": RESOURCE_TYPE,
            "ResourceProperties": {"ServiceToken": "arn:aws:lambda:x", "GroupIds": groups},
            **fields,
        }


@pytest.fixture
def account(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield Account()


@pytest.fixture
def handler(monkeypatch):
    """The handler module, its answers to CloudFormation captured as (status, reason, physical id)."""
    module = _handler_module()
    answers: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        module, "_respond", lambda event, status, reason, physical: answers.append((status, reason, physical))
    )
    return module, answers


def run(module, account: Account, event: dict[str, Any]) -> None:
    module.handler(event, None, ec2=account.ec2, cloudformation=account.cloudformation)


def test_create_answers_the_groups_physical_id_and_touches_nothing(account, handler):
    module, answers = handler
    groups = [account.primary, account.core, account.service]
    account.add_emr_rules(*groups)
    before = {g: account.references(g) for g in groups}
    run(module, account, account.event("Create", groups))
    ((status, _, physical),) = answers
    assert status == "SUCCESS" and physical == module.physical_id_for(LOGICAL_ID, groups)
    assert physical == module.physical_id_for(LOGICAL_ID, list(reversed(groups)))  # the set, not the order
    assert {g: account.references(g) for g in groups} == before


def test_an_update_with_the_same_groups_keeps_its_physical_id(account, handler):
    module, answers = handler
    groups = [account.primary, account.core, account.service]
    account.add_emr_rules(*groups)
    before = {g: account.references(g) for g in groups}
    # A stack deployed before physical ids named the groups: its id stays, no replacement.
    old_id = f"{LOGICAL_ID}-emr-group-rules"
    run(
        module,
        account,
        account.event(
            "Update",
            groups,
            PhysicalResourceId=old_id,
            OldResourceProperties={"ServiceToken": "arn:aws:lambda:x", "GroupIds": list(reversed(groups))},
        ),
    )
    assert answers == [("SUCCESS", "same groups: nothing to do", old_id)]
    assert {g: account.references(g) for g in groups} == before


def test_an_update_that_replaces_a_group_gets_a_new_id_and_the_old_ids_delete_cleans_the_old_group(
    account, handler
):
    module, answers = handler
    old = [account.primary, account.core, account.old_service]
    new = [account.primary, account.core, account.service]  # the stack now holds the new service group
    account.add_emr_rules(*old)  # the old cluster's rules
    old_id = module.physical_id_for(LOGICAL_ID, old)
    run(
        module,
        account,
        account.event(
            "Update",
            new,
            PhysicalResourceId=old_id,
            OldResourceProperties={"ServiceToken": "arn:aws:lambda:x", "GroupIds": old},
        ),
    )
    ((status, _, new_id),) = answers
    assert status == "SUCCESS" and new_id == module.physical_id_for(LOGICAL_ID, new) != old_id
    assert (("in", account.old_service)) in account.references(account.primary)  # nothing revoked yet

    # CloudFormation's clean-up phase: the old id's Delete, with the old groups, after the old cluster went.
    account.set_stack_status("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS")
    run(module, account, account.event("Delete", old, PhysicalResourceId=old_id))
    status, reason, physical = answers[-1]
    assert status == "SUCCESS" and physical == old_id and account.old_service in reason
    assert account.references(account.old_service) == set()  # the old group holds nothing that blocks it
    # ... and nothing live names it, while the live groups keep EMR's rules between them.
    assert account.references(account.primary) == {
        ("in", account.primary),
        ("in", account.core),
        ("in", account.other),
    }
    assert account.references(account.core) == {("in", account.primary), ("in", account.core)}


def test_deleting_the_stack_revokes_every_rule_between_the_groups_and_nothing_else(account, handler):
    module, answers = handler
    groups = [account.primary, account.core, account.service]
    account.add_emr_rules(*groups)
    account.set_stack_status("DELETE_IN_PROGRESS")
    physical = module.physical_id_for(LOGICAL_ID, groups)
    run(module, account, account.event("Delete", groups, PhysicalResourceId=physical))
    ((status, reason, answered),) = answers
    assert status == "SUCCESS" and answered == physical and "revoked 8 cross-group rules" in reason
    assert account.references(account.primary) == {("in", account.other)}  # someone else's SSH rule stays
    assert account.references(account.core) == set() and account.references(account.service) == set()
    assert "0.0.0.0/0" in account.egress_cidrs(account.primary)  # egress to the internet is not a reference


def test_a_failed_create_rolls_back_like_a_deletion(account, handler):
    module, answers = handler
    groups = [account.primary, account.core, account.service]
    account.add_emr_rules(*groups)
    account.set_stack_status("ROLLBACK_IN_PROGRESS")
    run(module, account, account.event("Delete", groups, PhysicalResourceId="x"))
    assert answers[0][0] == "SUCCESS" and account.references(account.core) == set()


@pytest.mark.parametrize("stack_status", ["UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_IN_PROGRESS"])
def test_removing_or_renaming_this_resource_leaves_emrs_rules_on_live_groups(account, handler, stack_status):
    """The groups stay in the stack (only the custom resource goes): a running cluster keeps its rules."""
    module, answers = handler
    groups = [account.primary, account.core, account.service]
    account.add_emr_rules(*groups)
    before = {g: account.references(g) for g in groups}
    account.set_stack_status(stack_status)
    run(module, account, account.event("Delete", groups, PhysicalResourceId="x"))
    ((status, reason, _),) = answers
    assert status == "SUCCESS" and "stay in the stack" in reason
    assert {g: account.references(g) for g in groups} == before


def test_groups_already_gone_are_skipped(account, handler):
    module, answers = handler
    gone = account.group("deleted by hand")
    account.ec2.delete_security_group(GroupId=gone)
    account.set_stack_status("DELETE_IN_PROGRESS")
    run(module, account, account.event("Delete", [gone], PhysicalResourceId="x"))
    assert answers[0][0] == "SUCCESS" and "revoked 0" in answers[0][1]


def test_an_error_is_reported_to_cloudformation_not_left_hanging(account, handler):
    module, answers = handler
    event = account.event(
        "Delete", [account.primary], PhysicalResourceId="x", StackId="arn:aws:x:no-such-stack"
    )
    run(module, account, event)
    ((status, reason, physical),) = answers
    assert status == "FAILED" and reason.startswith("ClientError") and physical == "x"


class _ResponseRecorder(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_answer_is_put_to_the_response_url(account):
    module = _handler_module()
    server = HTTPServer(("127.0.0.1", 0), _ResponseRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        groups = [account.primary, account.core, account.service]
        event = account.event("Create", groups, ResponseURL=f"http://127.0.0.1:{server.server_port}/r")
        run(module, account, event)
    finally:
        server.shutdown()
    (body,) = _ResponseRecorder.bodies
    assert body["Status"] == "SUCCESS" and body["PhysicalResourceId"] == module.physical_id_for(
        LOGICAL_ID, groups
    )
    assert (body["StackId"], body["RequestId"], body["LogicalResourceId"]) == (
        account.stack_id,
        "r-1",
        LOGICAL_ID,
    )


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
    # It reads only its own stack: is it being deleted, which groups does it still hold?
    assert statements["ReadOwnStack"]["Action"] == [
        "cloudformation:DescribeStacks",
        "cloudformation:ListStackResources",
    ]
    assert statements["ReadOwnStack"]["Resource"] == {"Ref": "AWS::StackId"}
    assert set(statements) == {"RevokeManagedGroupRules", "DescribeGroups", "ReadOwnStack", "Logs"}


def test_cloudformation_waits_minutes_not_an_hour_for_an_answer(full_app):
    template = full_app.template(full_app.emr_stack).to_json()["Resources"]
    (cleanup,) = [r for r in template.values() if r["Type"] == RESOURCE_TYPE]
    timeout = int(cleanup["Properties"]["ServiceTimeout"])
    (function,) = [
        r
        for k, r in template.items()
        if r["Type"] == "AWS::Lambda::Function" and k.startswith("ManagedGroupsCleanup")
    ]
    # Longer than the function may run (it always answers first), far shorter than the default hour.
    assert timeout == SERVICE_TIMEOUT.to_seconds() and function["Properties"]["Timeout"] < timeout <= 600
