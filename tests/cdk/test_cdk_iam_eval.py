"""The instance role's S3 policy, evaluated against the requests Hadoop's S3 file systems make.

EMRFS and S3A touch more than ``prefix/*``: the key ``prefix`` itself (HEAD before LIST in getFileStatus),
``prefix_$folder$`` markers (EMRFS mkdirs), and listings with ``s3:prefix`` = ``prefix``, ``prefix/`` or deeper.
A tiny IAM evaluator (Allow/Deny, wildcards, the Condition operators the policy uses) runs over the synthesized
statements with the cross-stack tokens resolved to bucket names, so Conditions are evaluated here (the cloud
rehearsal's moto server does not evaluate them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

BUCKETS = {"Input": "fruits-in", "Results": "fruits-out", "Artifacts": "fruits-art", "Logs": "fruits-logs"}
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012"}

# (bucket, prefix, may write): every prefix the job (and spark-submit / the bootstrap) reads or writes.
JOB_PREFIXES = [
    ("Input", "images", False),
    ("Results", "results", True),
    ("Results", "features", True),
    ("Artifacts", "config", False),
    ("Artifacts", "job", False),
    ("Artifacts", "bootstrap", False),
    ("Artifacts", "models", False),
]
KEYS = ["{p}", "{p}/", "{p}_$folder$", "{p}/a/b.jpg"]
LIST_PREFIXES = ["{p}", "{p}/", "{p}/x"]


def _resolve(value: Any) -> str:
    """A template value with the data stack's exports and pseudo parameters replaced by concrete strings."""
    if isinstance(value, str):
        return value
    if "Fn::ImportValue" in value:
        name = value["Fn::ImportValue"]
        match = re.fullmatch(r"FruitsDataStack-(\w+)Bucket(Arn|Name)", name)
        assert match, f"unexpected import {name}"
        bucket = BUCKETS[match.group(1)]
        return f"arn:aws:s3:::{bucket}" if match.group(2) == "Arn" else bucket
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_resolve(part) for part in parts)
    if "Ref" in value and value["Ref"] in PSEUDO:
        return PSEUDO[value["Ref"]]
    if "Fn::GetAtt" in value:  # a resource of the EMR stack (the KMS key): never an S3 ARN
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    raise AssertionError(f"cannot resolve {value!r}")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, text: str, *, case: bool = True) -> bool:
    """IAM wildcards: * any run of characters (slashes included), ? one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, 0 if case else re.IGNORECASE) is not None


def _condition_holds(operator: str, entries: dict[str, Any], context: dict[str, str]) -> bool:
    for key, wanted in entries.items():
        if key not in context:
            return False  # a missing key never matches a positive string condition
        values = [_resolve(v) for v in _as_list(wanted)]
        if operator == "StringLike":
            ok = any(_glob(v, context[key]) for v in values)
        elif operator == "StringEquals":
            ok = context[key] in values
        else:
            raise AssertionError(f"the evaluator does not know condition operator {operator}")
        if not ok:
            return False
    return True


@dataclass
class Statement:
    effect: str
    actions: list[str]
    resources: list[str]
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def matches(self, action: str, resource: str, context: dict[str, str]) -> bool:
        return (
            any(_glob(a, action, case=False) for a in self.actions)
            and any(_glob(r, resource) for r in self.resources)
            and all(_condition_holds(op, entries, context) for op, entries in self.conditions.items())
        )


def allowed(statements: list[Statement], action: str, resource: str, **context: str) -> bool:
    """IAM's identity-policy rule: an explicit Deny wins, else some Allow must match."""
    hits = [st for st in statements if st.matches(action, resource, context)]
    return any(st.effect == "Allow" for st in hits) and not any(st.effect == "Deny" for st in hits)


@pytest.fixture(scope="module")
def policy(full_app) -> list[Statement]:
    template = full_app.template(full_app.emr_stack).to_json()
    statements = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        if not any("InstanceRole" in str(role) for role in resource["Properties"]["Roles"]):
            continue
        for st in resource["Properties"]["PolicyDocument"]["Statement"]:
            resources = [_resolve(r) for r in _as_list(st["Resource"])]
            statements.append(
                Statement(st["Effect"], _as_list(st["Action"]), resources, st.get("Condition", {}))
            )
    assert statements
    return statements


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{BUCKETS[bucket]}/{key}"


@pytest.mark.parametrize(("bucket", "prefix", "may_write"), JOB_PREFIXES)
def test_every_key_hadoop_touches_under_a_job_prefix_is_readable(policy, bucket, prefix, may_write):
    for key in KEYS:
        assert allowed(policy, "s3:GetObject", _object_arn(bucket, key.format(p=prefix))), key


@pytest.mark.parametrize(("bucket", "prefix", "may_write"), JOB_PREFIXES)
def test_writes_exactly_where_the_job_writes(policy, bucket, prefix, may_write):
    for key in KEYS:
        for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
            assert allowed(policy, action, _object_arn(bucket, key.format(p=prefix))) == may_write, (
                action,
                key,
            )


@pytest.mark.parametrize(("bucket", "prefix", "may_write"), JOB_PREFIXES)
def test_listing_the_prefix_in_every_form_hadoop_uses(policy, bucket, prefix, may_write):
    bucket_arn = f"arn:aws:s3:::{BUCKETS[bucket]}"
    for value in LIST_PREFIXES:
        assert allowed(policy, "s3:ListBucket", bucket_arn, **{"s3:prefix": value.format(p=prefix)}), value
    assert allowed(policy, "s3:GetBucketLocation", bucket_arn)


def test_nothing_outside_the_app_buckets_and_no_bucket_administration(policy):
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::someone-elses-bucket/images/a.jpg")
    assert not allowed(
        policy, "s3:ListBucket", "arn:aws:s3:::someone-elses-bucket", **{"s3:prefix": "images/"}
    )
    for bucket in BUCKETS.values():
        for action in (
            "s3:DeleteBucket",
            "s3:PutBucketPolicy",
            "s3:PutBucketAcl",
            "s3:PutLifecycleConfiguration",
        ):
            assert not allowed(policy, action, f"arn:aws:s3:::{bucket}"), (action, bucket)
        assert not allowed(policy, "s3:PutObjectAcl", f"arn:aws:s3:::{bucket}/x")


def test_logs_bucket_only_receives_emr_logs(policy):
    assert allowed(
        policy, "s3:PutObject", _object_arn("Logs", "emr/j-123/node/i-1/bootstrap-actions/1/stderr.gz")
    )
    assert not allowed(policy, "s3:GetObject", _object_arn("Logs", "emr/j-123/steps/s-1/stderr.gz"))
    assert not allowed(policy, "s3:PutObject", _object_arn("Logs", "s3-access/input/x"))
    logs = f"arn:aws:s3:::{BUCKETS['Logs']}"
    assert allowed(policy, "s3:ListBucket", logs, **{"s3:prefix": "emr/"})
    assert not allowed(policy, "s3:ListBucket", logs, **{"s3:prefix": "vpc-flow-logs/"})
    assert not allowed(policy, "s3:ListBucket", logs)  # no prefix: the whole bucket


def test_the_evaluator_itself_is_not_vacuous():
    st = [Statement("Allow", ["s3:Get*"], ["arn:aws:s3:::b/p/*"], {"StringLike": {"s3:prefix": ["p/*"]}})]
    assert allowed(st, "s3:GetObject", "arn:aws:s3:::b/p/x", **{"s3:prefix": "p/"})
    assert not allowed(st, "s3:GetObject", "arn:aws:s3:::b/p", **{"s3:prefix": "p/"})
    assert not allowed(st, "s3:GetObject", "arn:aws:s3:::b/p/x")  # condition key missing
    assert not allowed(
        [*st, Statement("Deny", ["*"], ["*"])], "s3:GetObject", "arn:aws:s3:::b/p/x", **{"s3:prefix": "p/"}
    )
