"""CloudFormation custom resource: when the EMR-managed groups go, revoke the rules by which they reference each other.

EMR adds rules to its managed security groups that reference the other managed groups (primary <-> core/task,
service access <-> both). Those cross-references make DeleteSecurityGroup fail with DependencyViolation, so
CloudFormation cannot delete the groups after the cluster is gone (hashicorp/terraform-provider-aws#1454, fixed
there by revoke_rules_on_delete in #2074). This resource depends on the groups and the cluster depends on it:
CloudFormation deletes the cluster first, then runs this Delete, then deletes the groups.

The physical id names the set of groups (:func:`physical_id_for`), so each event does one thing:

- **Create**: nothing to revoke; answer the physical id of the groups.
- **Update** with other groups (the groups were replaced): answer the new groups' physical id. CloudFormation
  then "recognizes the update as a replacement and sends a delete request to the old resource", with the old
  groups (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/crpg-ref-requesttypes-delete.html),
  and that Delete cleans the groups that go.
- **Update** with the same groups (another property changed): nothing; the same physical id.
- **Delete**: revoke only the rules that would keep a *going* group alive: rules held by a going group, and rules
  of a live group that reference a going one. A group goes when the whole stack goes (``DELETE_IN_PROGRESS``,
  or ``ROLLBACK_IN_PROGRESS`` after a failed create) or when it is no longer a resource of the stack (replaced
  or removed by the update being cleaned up). When only this resource is removed or renamed, its groups stay
  in the stack and EMR's rules on them stay too: a running cluster keeps working.

The function reports to CloudFormation itself (no provider framework), always: an unexpected error is reported
as FAILED with its message instead of leaving the stack waiting (the resource also has a ServiceTimeout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger()
log.setLevel(logging.INFO)

#: Stack states in which every resource of the stack is being deleted.
STACK_GOING = frozenset({"DELETE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS"})
GROUP_TYPE = "AWS::EC2::SecurityGroup"


def physical_id_for(logical_id: str, group_ids: list[str]) -> str:
    """The physical id of this resource for a set of groups: another set, another id."""
    digest = hashlib.sha256(",".join(sorted(group_ids)).encode()).hexdigest()[:16]
    return f"{logical_id}-emr-group-rules-{digest}"


def stack_groups(cloudformation: Any, stack_id: str) -> set[str] | None:
    """The security groups that remain resources of the stack, or None when the whole stack is being deleted."""
    (stack,) = cloudformation.describe_stacks(StackName=stack_id)["Stacks"]
    if stack["StackStatus"] in STACK_GOING:
        return None
    kept: set[str] = set()
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_id):
        for resource in page["StackResourceSummaries"]:
            if resource["ResourceType"] == GROUP_TYPE and not resource["ResourceStatus"].startswith("DELETE"):
                kept.add(resource.get("PhysicalResourceId", ""))
    return kept


def revoke_cross_references(ec2: Any, group_ids: list[str], going: set[str] | None = None) -> int:
    """Revoke every ingress/egress rule between ``group_ids`` that keeps a group of ``going`` (default: all)
    from being deleted: the rules a going group holds, and the rules of other groups that name a going group.

    Rules to CIDR ranges (the nodes' egress to the internet) are left alone: they do not block deletion.
    Groups already gone are skipped. Returns how many group references were revoked.
    """
    wanted = set(group_ids)
    going = wanted if going is None else going & wanted
    if not going:
        return 0
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": sorted(wanted)}])
    revoked = 0
    for group in groups.get("SecurityGroups", []):
        holder_goes = group["GroupId"] in going
        for key, revoke in (
            ("IpPermissions", ec2.revoke_security_group_ingress),
            ("IpPermissionsEgress", ec2.revoke_security_group_egress),
        ):
            permissions = []
            for permission in group.get(key, []):
                pairs = [
                    {name: pair[name] for name in ("GroupId", "UserId") if name in pair}
                    for pair in permission.get("UserIdGroupPairs", [])
                    if pair.get("GroupId") in wanted and (holder_goes or pair.get("GroupId") in going)
                ]
                if pairs:
                    rule = {
                        name: permission[name]
                        for name in ("IpProtocol", "FromPort", "ToPort")
                        if name in permission
                    }
                    permissions.append({**rule, "UserIdGroupPairs": pairs})
            if permissions:
                revoke(GroupId=group["GroupId"], IpPermissions=permissions)
                revoked += sum(len(p["UserIdGroupPairs"]) for p in permissions)
                log.info("revoked %s rules of %s: %s", key, group["GroupId"], json.dumps(permissions))
    return revoked


def on_delete(ec2: Any, cloudformation: Any, stack_id: str, group_ids: list[str]) -> str:
    """Clean the groups that go with this Delete; leave the rules between groups that stay. Returns the reason."""
    kept = stack_groups(cloudformation, stack_id)
    going = set(group_ids) if kept is None else set(group_ids) - kept
    if not going:
        return f"the groups {sorted(group_ids)} stay in the stack: EMR's rules on them are left in place"
    revoked = revoke_cross_references(ec2, group_ids, going)
    return f"revoked {revoked} cross-group rules that kept {sorted(going)} from being deleted"


def _respond(event: dict[str, Any], status: str, reason: str, physical_id: str) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:900],
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": {},
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    # ResponseURL is the pre-signed S3 URL CloudFormation gave in the event.
    with urllib.request.urlopen(request, timeout=30) as response:
        log.info("CloudFormation answered %s", response.status)


def handler(event: dict[str, Any], context: Any, ec2: Any = None, cloudformation: Any = None) -> None:
    """Lambda entry point (``ec2`` and ``cloudformation`` are injectable for tests)."""
    request = event["RequestType"]
    group_ids = list(event["ResourceProperties"]["GroupIds"])
    # A Create that fails before answering still needs an id; a Delete or Update keeps the one it names.
    physical_id = event.get("PhysicalResourceId") or physical_id_for(event["LogicalResourceId"], group_ids)
    status, reason = "SUCCESS", "nothing to do"
    try:
        if request == "Create":
            physical_id = physical_id_for(event["LogicalResourceId"], group_ids)
            reason = f"cleans {sorted(group_ids)} when they go"
        elif request == "Update":
            old = list(event["OldResourceProperties"]["GroupIds"])
            if sorted(old) != sorted(group_ids):
                physical_id = physical_id_for(event["LogicalResourceId"], group_ids)
                reason = f"groups replaced: {sorted(old)} are cleaned by the Delete CloudFormation sends next"
            else:
                reason = "same groups: nothing to do"
        elif request == "Delete":
            if ec2 is None or cloudformation is None:
                import boto3

                ec2 = ec2 or boto3.client("ec2")
                cloudformation = cloudformation or boto3.client("cloudformation")
            reason = on_delete(ec2, cloudformation, event["StackId"], group_ids)
        log.info(reason)
    except (
        Exception
    ) as error:  # report every failure: an unanswered custom resource blocks the stack until its timeout
        log.exception("the EMR-managed groups' clean-up failed")
        status, reason = "FAILED", f"{type(error).__name__}: {error}"
    _respond(event, status, reason, physical_id)
