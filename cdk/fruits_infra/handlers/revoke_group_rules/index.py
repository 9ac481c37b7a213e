"""CloudFormation custom resource: on Delete, revoke the rules by which the EMR-managed groups reference each other.

EMR adds rules to its managed security groups that reference the other managed groups (primary <-> core/task,
service access <-> both). Those cross-references make DeleteSecurityGroup fail with DependencyViolation, so
CloudFormation cannot delete the groups after the cluster is gone (hashicorp/terraform-provider-aws#1454, fixed
there by revoke_rules_on_delete in #2074). This resource depends on the groups and the cluster depends on it:
CloudFormation deletes the cluster first, then runs this Delete, then deletes the groups.

Create and Update do nothing. The function reports to CloudFormation itself (no provider framework), always:
an unexpected error is reported as FAILED with its message instead of leaving the stack waiting for an hour.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger()
log.setLevel(logging.INFO)


def revoke_cross_references(ec2: Any, group_ids: list[str]) -> int:
    """Revoke every ingress/egress rule of ``group_ids`` that names another (or the same) group of the set.

    Rules to CIDR ranges (the nodes' egress to the internet) are left alone: they do not block deletion.
    Groups already gone are skipped. Returns how many group references were revoked.
    """
    wanted = set(group_ids)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": sorted(wanted)}])
    revoked = 0
    for group in groups.get("SecurityGroups", []):
        for key, revoke in (
            ("IpPermissions", ec2.revoke_security_group_ingress),
            ("IpPermissionsEgress", ec2.revoke_security_group_egress),
        ):
            permissions = []
            for permission in group.get(key, []):
                pairs = [
                    {name: pair[name] for name in ("GroupId", "UserId") if name in pair}
                    for pair in permission.get("UserIdGroupPairs", [])
                    if pair.get("GroupId") in wanted
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


def handler(event: dict[str, Any], context: Any, ec2: Any = None) -> None:
    """Lambda entry point (``ec2`` is injectable for tests)."""
    physical_id = event.get("PhysicalResourceId") or f"{event['LogicalResourceId']}-emr-group-rules"
    status, reason = "SUCCESS", "nothing to do"
    try:
        if event["RequestType"] == "Delete":
            if ec2 is None:
                import boto3

                ec2 = boto3.client("ec2")
            group_ids = list(event["ResourceProperties"]["GroupIds"])
            reason = f"revoked {revoke_cross_references(ec2, group_ids)} cross-group rules of {group_ids}"
        log.info(reason)
    except (
        Exception
    ) as error:  # report every failure: an unanswered custom resource blocks the stack for an hour
        log.exception("revoking the EMR-managed groups' rules failed")
        status, reason = "FAILED", f"{type(error).__name__}: {error}"
    _respond(event, status, reason, physical_id)
