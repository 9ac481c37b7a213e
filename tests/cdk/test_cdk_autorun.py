"""Context autorun, synthesized: off changes nothing; on, the trigger, the state machine, its transient cluster
(the stack's own configuration), the topics and the alarm. The upload rule's pattern is matched against the S3
event AWS documents, with a tested matcher of EventBridge's pattern semantics (eventpattern.py)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from asl_harness import PSEUDO, definition
from cdkapp import synthesize
from eventpattern import matches
from fruits_infra.autorun import (
    CREATE_TIMEOUT,
    TRANSIENT_IDLE_TIMEOUT_SECONDS,
    WINDOW_INPUT,
    execution_timeout,
)
from fruits_infra.config import FruitsConfig

# The "Object created" example of https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html, with the
# bucket and key of an upload under the input prefix.
S3_OBJECT_CREATED = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2021-11-12T00:00:00Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::input-bucket"],
    "detail": {
        "version": "0",
        "bucket": {"name": "input-bucket"},
        "object": {
            "key": "images/Training/Apple Red 1/0_100.jpg",
            "size": 5,
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            "sequencer": "617f08299329d189",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}


class _Symbols(dict):
    """Names for the definition's references: each one spelled as the reference itself."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def _symbol(value: Any) -> Any:
    """A template value with its intrinsics spelled as :class:`_Symbols` spells them."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return PSEUDO.get(value["Ref"]) or f"<{value['Ref']}>"
        if set(value) == {"Fn::GetAtt"}:
            return f"<{'.'.join(value['Fn::GetAtt'])}>"
        if set(value) == {"Fn::ImportValue"}:
            return f"<{value['Fn::ImportValue']}>"
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(_symbol(p) for p in parts)
        return {k: _symbol(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_symbol(v) for v in value]
    return value


def _api_from_cfn(props: dict[str, Any]) -> dict[str, Any]:
    """An AWS::EMR::Cluster's properties in RunJobFlow's shape (an independent reading of the two references)."""

    def configuration(item: dict[str, Any]) -> dict[str, Any]:
        out = {"Classification": item["Classification"]}
        if "ConfigurationProperties" in item:
            out["Properties"] = item["ConfigurationProperties"]
        if "Configurations" in item:
            out["Configurations"] = [configuration(c) for c in item["Configurations"]]
        return out

    api = copy.deepcopy(props)
    api["Configurations"] = [configuration(c) for c in props["Configurations"]]
    instances = api["Instances"]
    roles = (("Master", "MASTER"), ("Core", "CORE"), ("Task", "TASK"))
    if "MasterInstanceGroup" in instances:
        groups = []
        for cfn, role in roles:
            found = instances.pop(f"{cfn}InstanceGroup", None) or instances.pop(f"{cfn}InstanceGroups", [])
            for group in found if isinstance(found, list) else [found]:
                groups.append({**group, "InstanceRole": role})
        instances["InstanceGroups"] = groups
    else:
        fleets = []
        for cfn, role in roles:
            found = instances.pop(f"{cfn}InstanceFleet", None) or instances.pop(f"{cfn}InstanceFleets", [])
            for fleet in found if isinstance(found, list) else [found]:
                fleets.append({**fleet, "InstanceFleetType": role})
        instances["InstanceFleets"] = fleets
    return api


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def _compare_transient_with_the_stacks_cluster(synthesized) -> None:
    emr = synthesized.template(synthesized.emr_stack).to_json()
    (cluster,) = _resources(emr, "AWS::EMR::Cluster").values()
    stack_cluster = _api_from_cfn(_symbol(cluster["Properties"]))
    machine = definition(emr, _Symbols())
    create = machine["States"]["Start a transient cluster"]
    assert create["Resource"] == "arn:aws:states:::elasticmapreduce:createCluster.sync"
    transient = dict(create["Parameters"])
    # What differs on purpose: the name, the idle timeout (a backstop), tags (explicit: no stack to add them),
    # and how the roles are spelled (names, as the Step Functions integration passes them; the stack: ARNs).
    assert transient.pop("Name.$") == "States.Format('fruits-featurize-run-{}', $$.Execution.Name)"
    assert transient.pop("AutoTerminationPolicy") == {"IdleTimeout": TRANSIENT_IDLE_TIMEOUT_SECONDS}
    tags = {t["Key"]: t["Value"] for t in transient.pop("Tags")}
    assert {t["Key"]: t["Value"] for t in stack_cluster.pop("Tags")}.items() <= tags.items()
    assert stack_cluster.pop("Name") == "fruits-featurize-g1"
    assert stack_cluster.pop("AutoTerminationPolicy") == {"IdleTimeout": 3600}
    for key, logical in (("ServiceRole", "RolesServiceRole"), ("JobFlowRole", "RolesInstanceProfile")):
        assert transient.pop(key).startswith(f"<{logical}") and stack_cluster.pop(key).startswith(
            f"<{logical}"
        )
    assert transient == stack_cluster


def test_the_transient_cluster_is_the_stacks_cluster(autorun_app):
    _compare_transient_with_the_stacks_cluster(autorun_app)


@pytest.mark.slow
def test_the_transient_fleet_cluster_is_the_stacks_cluster_too(tmp_path):
    variant = {
        "autorun": True,
        "instanceMode": "fleets",
        "taskSpotCount": 2,
        "studio": True,
        "osReleaseLabel": "2023.6.20250203",
        "inTransitCertificatesUri": "s3://my-certs-bucket/emr/certs.zip",
    }
    _compare_transient_with_the_stacks_cluster(synthesize(tmp_path, **variant))


@pytest.fixture(scope="module")
def autorun_app(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("autorun"), autorun=True)


# -- off: nothing changes --------------------------------------------------------------------------------------


def test_without_autorun_the_stacks_synthesize_as_before(full_app, tmp_path):
    off = synthesize(tmp_path, autorun=False)
    for stack in ("data_stack", "emr_stack"):
        before = full_app.template(getattr(full_app, stack)).to_json()
        assert off.template(getattr(off, stack)).to_json() == before
    emr = full_app.template(full_app.emr_stack).to_json()
    kinds = {r["Type"] for r in emr["Resources"].values()}
    assert not kinds & {"AWS::StepFunctions::StateMachine", "AWS::Events::Rule", "AWS::SNS::Topic"}


def test_autorun_adds_resources_and_changes_none_but_the_input_buckets_events(full_app, autorun_app):
    data_before = full_app.template(full_app.data_stack).to_json()["Resources"]
    (input_bucket,) = [
        k
        for k, r in data_before.items()
        if k.startswith("StorageInputBucket") and r["Type"] == "AWS::S3::Bucket"
    ]
    for stack in ("data_stack", "emr_stack"):
        before = full_app.template(getattr(full_app, stack)).to_json()["Resources"]
        after = autorun_app.template(getattr(autorun_app, stack)).to_json()["Resources"]
        changed = {key for key in before if after.get(key) != before[key]}
        assert changed == ({input_bucket} if stack == "data_stack" else set())
    data = autorun_app.template(autorun_app.data_stack).to_json()["Resources"]
    props = data[input_bucket]["Properties"]
    assert props.pop("NotificationConfiguration") == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}
    }
    assert props == full_app.template(full_app.data_stack).to_json()["Resources"][input_bucket]["Properties"]


# -- on: the trigger ------------------------------------------------------------------------------------------


def _rule(template: dict[str, Any], prefix: str) -> dict[str, Any]:
    (rule,) = [
        r["Properties"] for k, r in _resources(template, "AWS::Events::Rule").items() if k.startswith(prefix)
    ]
    return rule


def test_the_upload_rule_matches_s3s_object_created_event_under_the_input_prefix(autorun_app):
    emr = autorun_app.template(autorun_app.emr_stack).to_json()
    rule = _rule(emr, "AutorunInputObjectCreated")
    assert rule["State"] == "ENABLED"
    pattern = json.loads(
        json.dumps(rule["EventPattern"]).replace(
            json.dumps({"Fn::ImportValue": "FruitsDataStack-InputBucketName"}), '"input-bucket"'
        )
    )
    assert matches(pattern, S3_OBJECT_CREATED)
    event = copy.deepcopy(S3_OBJECT_CREATED)
    event["detail"]["object"]["key"] = "elsewhere/x.jpg"
    assert not matches(pattern, event)
    event = copy.deepcopy(S3_OBJECT_CREATED)
    event["detail"]["bucket"]["name"] = "another-bucket"
    assert not matches(pattern, event)
    event = copy.deepcopy(S3_OBJECT_CREATED)
    event["detail-type"] = "Object Deleted"
    assert not matches(pattern, event)
    (target,) = rule["Targets"]
    queue = next(k for k in _resources(emr, "AWS::SQS::Queue"))
    assert target["Arn"] == {"Fn::GetAtt": [queue, "Arn"]}


def test_the_window_rule_starts_the_state_machine_once_per_window(autorun_app):
    emr = autorun_app.template(autorun_app.emr_stack).to_json()
    rule = _rule(emr, "AutorunRunWindow")
    assert rule["ScheduleExpression"] == "rate(15 minutes)" and rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    (machine,) = _resources(emr, "AWS::StepFunctions::StateMachine")
    assert target["Arn"] == {"Ref": machine} and json.loads(target["Input"]) == WINDOW_INPUT
    assert not [k for k in _resources(emr, "AWS::Events::Rule") if k.startswith("AutorunRunSchedule")]


def test_a_schedule_forces_runs_and_paused_deploys_the_run_rules_off(tmp_path):
    app = synthesize(
        tmp_path,
        autorun=True,
        autorunSchedule="cron(0 3 * * ? *)",
        autorunPaused=True,
        autorunWindowMinutes=60,
    )
    emr = app.template(app.emr_stack).to_json()
    window, schedule = _rule(emr, "AutorunRunWindow"), _rule(emr, "AutorunRunSchedule")
    assert (
        window["ScheduleExpression"] == "rate(1 hour)"
        and schedule["ScheduleExpression"] == "cron(0 3 * * ? *)"
    )
    assert window["State"] == schedule["State"] == "DISABLED"
    assert json.loads(schedule["Targets"][0]["Input"]) == {"trigger": "schedule"}
    assert _rule(emr, "AutorunInputObjectCreated")["State"] == "ENABLED"  # uploads are still recorded


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"autorunWindowMinutes": 0}, "autorunWindowMinutes"),
        ({"autorunSchedule": "every day"}, "autorunSchedule"),
        ({"autorunTimeoutMinutes": 5}, "autorunTimeoutMinutes"),
    ],
)
def test_bad_autorun_context_is_refused(context, message):
    from aws_cdk import App
    from fruits_infra.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        FruitsConfig.from_context(App(context=context).node)


# -- on: the state machine --------------------------------------------------------------------------------------


def test_the_state_machine_waits_for_the_step_and_is_bounded(autorun_app):
    emr = autorun_app.template(autorun_app.emr_stack).to_json()
    machine = definition(emr, _Symbols())
    states = machine["States"]
    resources = {s.get("Resource") for s in states.values()}
    for integration in ("addStep.sync", "createCluster.sync", "terminateCluster.sync"):
        assert f"arn:aws:states:::elasticmapreduce:{integration}" in resources
    config = FruitsConfig(autorun=True)
    assert machine["TimeoutSeconds"] == execution_timeout(config).to_seconds()
    step = states["Run the job"]
    assert step["TimeoutSeconds"] == (config.autorun_timeout_minutes + 15) * 60
    assert step["Parameters"]["Step"]["ActionOnFailure"] == "CONTINUE"
    assert states["Start a transient cluster"]["TimeoutSeconds"] == CREATE_TIMEOUT.to_seconds()
    terminate = states["Terminate the transient cluster"]
    assert terminate["Retry"][0]["MaxAttempts"] == 2 and terminate["TimeoutSeconds"] == 1800
    # Every failure after the lock is taken goes through the clean-up: the job's, the cluster's start, the report's.
    # (States.ALL must come last: a timed-out step is caught as such first.)
    assert [(c["ErrorEquals"], c["Next"]) for c in states["Run the job"]["Catch"]] == [
        (["States.Timeout"], "Step timed out"),
        (["States.ALL"], "Read the run's outcome"),
    ]
    assert states["Start a transient cluster"]["Catch"][0]["Next"] == "Cluster did not start"
    assert states["Publish the outcome"]["Catch"][0]["Next"] == "A transient cluster to end?"
    args = states["Job arguments"]["Parameters"]["args.$"]
    assert args.startswith(
        "States.Array('timeout', '--kill-after=60', '14400', 'spark-submit', '--deploy-mode', 'cluster', "
    )
    assert args.endswith(
        "'--skip-unchanged', '--allow-empty', '--wait', '1800', '--trigger', $$.Execution.Name)"
    )


def test_a_failed_or_timed_out_execution_raises_the_alarm(autorun_app):
    emr = autorun_app.template(autorun_app.emr_stack).to_json()
    ((_, alarm),) = _resources(emr, "AWS::CloudWatch::Alarm").items()
    props = alarm["Properties"]
    (machine,) = _resources(emr, "AWS::StepFunctions::StateMachine")
    watched = {
        m["MetricStat"]["Metric"]["MetricName"]
        for m in props["Metrics"]
        if "MetricStat" in m
        and m["MetricStat"]["Metric"]["Dimensions"]
        == [{"Name": "StateMachineArn", "Value": {"Ref": machine}}]
    }
    assert watched == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
    assert props["Threshold"] == 1 and props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    topic = next(k for k in _resources(emr, "AWS::SNS::Topic") if k.startswith("AutorunRunAlarms"))
    assert props["AlarmActions"] == [{"Ref": topic}]


def test_autorun_is_nag_clean_with_written_reasons(autorun_app):
    assert autorun_app.findings("error") == [] and autorun_app.findings("warning") == []
    assert autorun_app.error is None
    for construct in autorun_app.emr_stack.node.find_all():
        if "/Autorun/" not in construct.node.path:
            continue
        for entry in construct.node.metadata:
            if "acknowledged" in entry.type.lower():
                for finding, reason in entry.data.items():
                    assert len(str(reason).split()) >= 8, (finding, reason)


def test_the_outputs_tell_the_operator_where_to_look(autorun_app):
    emr = autorun_app.template(autorun_app.emr_stack).to_json()
    for key in (
        "AutorunStateMachineArn",
        "AutorunTopicArn",
        "AutorunAlarmTopicArn",
        "AutorunClusterNamePrefix",
        "AutorunWindowRuleName",
    ):
        assert key in emr["Outputs"], key
    assert emr["Outputs"]["AutorunClusterNamePrefix"]["Value"] == "fruits-featurize-run-"


# -- the matcher itself, on the cases of EventBridge's documentation ---------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event", "expected"),
    [
        ({"source": ["aws.s3"]}, {"source": "aws.s3"}, True),
        ({"source": ["aws.s3"]}, {"source": "aws.ec2"}, False),
        ({"source": ["aws.ec2", "aws.s3"]}, {"source": "aws.s3"}, True),  # OR within a field
        ({"source": ["aws.s3"], "detail-type": ["x"]}, {"source": "aws.s3"}, False),  # AND across fields
        ({"detail": {"key": [{"prefix": "images/"}]}}, {"detail": {"key": "images/a.jpg"}}, True),
        ({"detail": {"key": [{"prefix": "images/"}]}}, {"detail": {"key": "x/images/a.jpg"}}, False),
        ({"detail": {"key": [{"suffix": ".jpg"}]}}, {"detail": {"key": "a.JPG"}}, False),
        ({"k": [{"equals-ignore-case": "ABC"}]}, {"k": "abc"}, True),
        ({"k": [{"prefix": {"equals-ignore-case": "IMAGES/"}}]}, {"k": "images/x"}, True),
        ({"k": [{"anything-but": "a"}]}, {"k": "b"}, True),
        ({"k": [{"anything-but": ["a", "b"]}]}, {"k": "b"}, False),
        ({"k": [{"anything-but": {"prefix": "_"}}]}, {"k": "_smoke"}, False),
        ({"k": [{"exists": True}]}, {}, False),
        ({"k": [{"exists": False}]}, {}, True),
        ({"k": [{"exists": False}]}, {"k": 1}, False),
        ({"k": [{"numeric": [">", 0, "<=", 5]}]}, {"k": 5}, True),
        ({"k": [{"numeric": [">", 0, "<=", 5]}]}, {"k": 6}, False),
        ({"k": ["a"]}, {"k": ["b", "a"]}, True),  # an event array matches when one element does
        ({"k": [5]}, {"k": "5"}, False),  # exact values keep their types
        ({"d": {"e": ["x"]}}, {"d": "not an object"}, False),
        ({"d": {"e": ["x"]}}, {}, False),
    ],
)
def test_the_matcher_follows_eventbridges_semantics(pattern, event, expected):
    assert matches(pattern, event) is expected


def test_the_matcher_refuses_an_operator_it_does_not_know():
    with pytest.raises(ValueError, match="wildcard"):
        matches({"k": [{"wildcard": "a*"}]}, {"k": "ab"})
