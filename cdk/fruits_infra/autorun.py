"""Runs that start themselves (context ``autorun``): images land under the input prefix, features follow.

**The trigger.** The input bucket sends its events to EventBridge (``EventBridgeConfiguration`` on the bucket,
https://docs.aws.amazon.com/AmazonS3/latest/userguide/EventBridge.html); a rule keeps the ``Object Created``
events under ``images/`` (:func:`upload_pattern`, the shape of
https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html) and puts each into an SQS queue that nobody
reads: the queue is only the *pending* flag, durable for its retention (14 days). A second rule fires every
``autorunWindowMinutes`` and starts the state machine with ``{"trigger": "window"}``: the run looks at the queue
and ends at once when it is empty, so a burst of 10,000 uploads is one run, and there is at most one run per window.
``autorunSchedule`` (optional) starts it with ``{"trigger": "schedule"}``, which runs whatever the queue says;
so does a manual start with any other input. ``autorunPaused`` deploys both run rules disabled (uploads are still
recorded and run once it is resumed).

**One run at a time.** A run holds a lock item in a DynamoDB table, taken with a conditional write
(``attribute_not_exists``; https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html)
and released at the end, on every path. A run that finds the lock taken asks Step Functions about its holder: a
holder still RUNNING means this run ends (``Busy``, the uploads stay pending for the next window); a holder that
ended without releasing it (timed out, aborted) is replaced with a second conditional write on the holder's name.
The job's own lease on the output stays the last guard (a console step and a triggered run never write at once:
the triggered run waits, ``--wait``).

**The run.** With the lock held, the queue is purged (PurgeQueue "takes up to 60 seconds"; the run waits that
long, so every upload it drops was made before the job lists the input,
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_PurgeQueue.html). Then the stack's
cluster, when EMR says it is up, runs the job; otherwise a transient twin is created from the very request of the
stack's cluster (fruits_infra.cluster.cluster_request: release, applications, bootstrap, configurations,
instances, roles, security configuration, log URI), with ``createCluster.sync``. The job is an EMR step added with
``addStep.sync``: Step Functions waits for the step, whose state is the job's (the step waits for its YARN
application), https://docs.aws.amazon.com/step-functions/latest/dg/connect-emr.html. The run's outcome record,
written by the job under ``_triggered/<execution name>.json`` (``--trigger``), tells what it did.

**Always terminated.** A transient cluster is terminated (``terminateCluster.sync``, retried) after the run, on
success and on failure alike (every failure is caught and routed through the clean-up). "Step Functions does not
terminate an Amazon EMR cluster automatically if execution is stopped" (connect-emr, above): so the transient
cluster also carries a short idle timeout (:data:`TRANSIENT_IDLE_TIMEOUT_SECONDS`), which ends it if the execution
is stopped, times out or fails to terminate it; a cluster still up after every attempt fails the execution
(``ClusterNotTerminated``, after the lock's release), so that the alarm says so even of a run that succeeded.

**Bounded.** The job step: ``autorunTimeoutMinutes`` (``timeout`` around spark-submit, and the task's own
timeout a little later: past it, the run is reported failed, "Step timed out"); the cluster's start:
:data:`CREATE_TIMEOUT`; its termination: :data:`TERMINATE_TIMEOUT`, three attempts; the whole execution: the sum
plus margins (:func:`execution_timeout`).

**Told.** Every run publishes its outcome record to the runs topic (status as a message attribute, for filter
policies) and puts CloudWatch metrics (:data:`METRICS_NAMESPACE`): ``Runs`` by status, and for runs with counts
``Found``, ``Featurized``, ``Rejected``, ``NewlyFeaturized``, ``Reused``, ``K``, ``TestAccuracyPca``. A run that
failed ends the execution FAILED; an alarm on the state machine's failed, timed-out and aborted executions
(AWS/States, https://docs.aws.amazon.com/step-functions/latest/dg/procedure-cw-metrics.html) notifies the alarm
topic.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, Aws, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from fruits_infra.cluster import FruitsCluster
from fruits_infra.config import FruitsConfig
from fruits_infra.job_contract import TRIGGERED_PREFIX
from fruits_infra.nag import acknowledge, finding_name
from fruits_infra.network import EMR_MANAGED_TAG
from fruits_infra.step import triggered_step_args
from fruits_infra.storage import INPUT_PREFIX, RESULTS_PREFIX

#: What the rules start the state machine with; any other input (a manual start) runs like the schedule.
WINDOW_INPUT = {"trigger": "window"}
SCHEDULE_INPUT = {"trigger": "schedule"}
#: The lock table's one item.
LOCK_KEY = "autorun"
#: EMR states in which the stack's cluster takes a step (it waits as PENDING while the cluster starts).
UP_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
#: The transient cluster's backstop: idle this long (no step, no YARN application), EMR terminates it.
TRANSIENT_IDLE_TIMEOUT_SECONDS = 900
#: A cluster's start with the bootstrap (Python, TensorFlow, the weights) takes 10-15 minutes.
CREATE_TIMEOUT = Duration.minutes(60)
TERMINATE_TIMEOUT = Duration.minutes(30)
TERMINATE_ATTEMPTS = 3
#: After the job's own bound, the step's task waits this long more (EMR and Step Functions' polling, 60-300 s).
STEP_GRACE = Duration.minutes(15)
#: PurgeQueue "takes up to 60 seconds": the run waits that long before the job lists the input.
SETTLE = Duration.seconds(60)
METRICS_NAMESPACE = "Fruits/Autorun"
#: CloudWatch metrics a run with counts puts: metric name -> the outcome record's field.
COUNT_METRICS = {
    "Found": "counts.found",
    "Featurized": "counts.featurized",
    "Rejected": "counts.rejected",
    "NewlyFeaturized": "counts.newly_featurized",
    "Reused": "counts.reused",
    "K": "metrics.k",
}
ACCURACY_METRIC = ("TestAccuracyPca", "metrics.test_accuracy_pca")
#: The outputs the operator CLI reads when autorun is on (fruits.ops).
OUTPUT_KEYS = (
    "AutorunStateMachineArn",
    "AutorunTopicArn",
    "AutorunAlarmTopicArn",
    "AutorunClusterNamePrefix",
    "AutorunWindowRuleName",
)


def upload_pattern(bucket_name: str, prefix: str = INPUT_PREFIX) -> dict[str, Any]:
    """The EventBridge pattern of an upload under ``prefix`` of ``bucket_name`` (EventBridge's JSON form)."""
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket_name]}, "object": {"key": [{"prefix": prefix}]}},
    }


def execution_timeout(config: FruitsConfig) -> Duration:
    """The whole execution's bound: a cluster's start, the job, its grace, the purge's settling and the
    termination's attempts, with ten minutes for the rest."""
    minutes = (
        CREATE_TIMEOUT.to_minutes()
        + config.autorun_timeout_minutes
        + STEP_GRACE.to_minutes()
        + 1
        + TERMINATE_TIMEOUT.to_minutes() * TERMINATE_ATTEMPTS
        + 10
    )
    return Duration.minutes(minutes)


def state_machine_name(config: FruitsConfig) -> str:
    """``fruits-autorun[-<stage>]``: named, so the lock's holder (an execution ARN) can be asked about."""
    return f"fruits-autorun{'-' + config.stage if config.stage else ''}"


def transient_name_prefix(config: FruitsConfig) -> str:
    """Transient clusters are named ``<prefix><execution name>``: how `fruits status` finds them."""
    return f"{config.cluster_name}{'-' + config.stage if config.stage else ''}-run-"


def _absent(path: str) -> sfn.Condition:
    """``Not(IsPresent)``: the same test as ``"IsPresent": false`` on AWS, and the form aws-local-stepfunctions
    3.0.0 evaluates right (it never matches ``"IsPresent": false``)."""
    return sfn.Condition.not_(sfn.Condition.is_present(path))


def _record(path: str) -> str:
    return f"$.outcome.record.{path}"


class FruitsAutorun(Construct):
    """The trigger (rules, pending queue), the state machine and its lock, the topics, metrics and alarm."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FruitsConfig,
        cluster: FruitsCluster,
        input_bucket: s3.IBucket,
        results_bucket: s3.IBucket,
        script_uri: str,
        tags: dict[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.config = config
        name = state_machine_name(config)

        # -- the trigger's memory: what was uploaded since the last run ------------------------------------
        self.pending = sqs.Queue(
            self,
            "PendingUploads",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        acknowledge(
            self.pending,
            "AwsSolutions-SQS3",
            "Nobody receives these messages, so none can fail to be processed: the queue is only the flag that "
            "uploads are pending, counted and purged by the state machine; a dead-letter queue would stay empty.",
        )
        self.upload_rule = events.Rule(
            self,
            "InputObjectCreated",
            description="Uploads under the input prefix: mark a run as pending",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail=upload_pattern(input_bucket.bucket_name)["detail"],
            ),
            targets=[targets.SqsQueue(self.pending)],
        )

        self.lock = dynamodb.Table(
            self,
            "RunLock",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # One small item that only says which execution runs: nothing to keep after the stack.
            removal_policy=RemovalPolicy.DESTROY,
        )

        self.topic = sns.Topic(self, "RunOutcomes", display_name="Fruits autorun outcomes", enforce_ssl=True)
        self.alarm_topic = sns.Topic(
            self, "RunAlarms", display_name="Fruits autorun alarms", enforce_ssl=True
        )
        for topic in (self.topic, self.alarm_topic):
            acknowledge(
                topic,
                "AwsSolutions-SNS2",
                "The messages are a run's status, counts and S3 locations, no image data. CloudWatch alarms cannot "
                "publish to a topic encrypted with the AWS managed key (they need a customer managed key whose "
                "policy admits them: https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html), and a "
                "customer managed key costs every month whether or not anything runs.",
            )

        definition = self._definition(config, cluster, results_bucket, script_uri, tags, name)
        log_group = logs.LogGroup(
            self, "Logs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=name,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=execution_timeout(config),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            comment="Fruits autorun: featurize what was uploaded, on the stack's cluster or a transient twin",
        )
        self._grant(stack, cluster, results_bucket, name)

        # -- what starts it ---------------------------------------------------------------------------------
        self.window_rule = events.Rule(
            self,
            "RunWindow",
            description=f"Every {config.autorun_window_minutes} min: run if uploads are pending",
            schedule=events.Schedule.rate(Duration.minutes(config.autorun_window_minutes)),
            targets=[
                targets.SfnStateMachine(
                    self.state_machine, input=events.RuleTargetInput.from_object(WINDOW_INPUT)
                )
            ],
            enabled=not config.autorun_paused,
        )
        self.schedule_rule = None
        if config.autorun_schedule:
            self.schedule_rule = events.Rule(
                self,
                "RunSchedule",
                description="On schedule: run whether or not uploads are pending",
                schedule=events.Schedule.expression(config.autorun_schedule),
                targets=[
                    targets.SfnStateMachine(
                        self.state_machine, input=events.RuleTargetInput.from_object(SCHEDULE_INPUT)
                    )
                ],
                enabled=not config.autorun_paused,
            )

        # -- a failed or timed-out run pages someone -------------------------------------------------------
        def executions(metric: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/States",
                metric_name=metric,
                dimensions_map={"StateMachineArn": self.state_machine.state_machine_arn},
                statistic="Sum",
                period=Duration.minutes(5),
            )

        self.alarm = cloudwatch.Alarm(
            self,
            "RunFailed",
            alarm_description="A Fruits autorun execution failed, timed out or was aborted",
            metric=cloudwatch.MathExpression(
                expression="failed + timedOut + aborted",
                using_metrics={
                    "failed": executions("ExecutionsFailed"),
                    "timedOut": executions("ExecutionsTimedOut"),
                    "aborted": executions("ExecutionsAborted"),
                },
                period=Duration.minutes(5),
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.alarm_topic))

        outputs = {
            "AutorunStateMachineArn": (
                self.state_machine.state_machine_arn,
                "Start a run: aws stepfunctions start-execution",
            ),
            "AutorunTopicArn": (
                self.topic.topic_arn,
                "Every triggered run's outcome (subscribe to read them)",
            ),
            "AutorunAlarmTopicArn": (
                self.alarm_topic.topic_arn,
                "A failed or timed-out triggered run (page here)",
            ),
            "AutorunClusterNamePrefix": (
                transient_name_prefix(config),
                "Transient clusters are named this + the execution name",
            ),
            "AutorunWindowRuleName": (
                self.window_rule.rule_name,
                "Disable this rule to pause triggered runs",
            ),
        }
        assert tuple(outputs) == OUTPUT_KEYS
        for key, (value, description) in outputs.items():
            CfnOutput(stack, key, value=value, description=description)
        if self.schedule_rule is not None:
            CfnOutput(
                stack,
                "AutorunScheduleRuleName",
                value=self.schedule_rule.rule_name,
                description="The forced runs' schedule",
            )

    # -- the state machine ----------------------------------------------------------------------------------

    def _definition(
        self,
        config: FruitsConfig,
        cluster: FruitsCluster,
        results_bucket: s3.IBucket,
        script_uri: str,
        tags: dict[str, str],
        name: str,
    ) -> sfn.IChainable:
        lock_key = {"pk": tasks.DynamoAttributeValue.from_string(LOCK_KEY)}
        finish = sfn.Choice(self, "Did the run fail?")
        run_failed = sfn.Fail(
            self,
            "Run failed",
            error="RunFailed",
            cause="The run failed: see the outcome published to the runs topic",
        )
        # A transient cluster that outlived every attempt to end it: the outcome already published does not say
        # so (it went out before the clean-up), so the execution fails with its own error and the alarm tells.
        cluster_left = sfn.Fail(
            self,
            "Cluster not terminated",
            error="ClusterNotTerminated",
            cause=(
                f"The transient cluster ({transient_name_prefix(config)}<execution name>) could not be terminated "
                f"(terminateError in the execution's history): its {TRANSIENT_IDLE_TIMEOUT_SECONDS // 60}-minute "
                "idle timeout should end it; check with `fruits status` or the EMR console"
            ),
        )
        finish.when(sfn.Condition.is_present("$.terminateError"), cluster_left)
        finish.when(sfn.Condition.is_present("$.runError"), run_failed)
        finish.when(sfn.Condition.string_equals(_record("status"), "failed"), run_failed)
        finish.otherwise(sfn.Succeed(self, "Done"))

        release = tasks.DynamoDeleteItem(
            self,
            "Release the run lock",
            table=self.lock,
            key=lock_key,
            condition_expression="holder = :me",
            expression_attribute_values={
                ":me": tasks.DynamoAttributeValue.from_string(sfn.JsonPath.execution_id)
            },
            result_path=sfn.JsonPath.DISCARD,
        )
        # A lock taken over meanwhile (this run outlived its holder's check) is the new holder's: leave it.
        release.add_catch(finish, errors=["States.ALL"], result_path="$.releaseError")
        release.next(finish)

        terminate = tasks.EmrTerminateCluster(
            self,
            "Terminate the transient cluster",
            cluster_id=sfn.JsonPath.string_at("$.cluster.id"),
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            task_timeout=sfn.Timeout.duration(TERMINATE_TIMEOUT),
            result_path=sfn.JsonPath.DISCARD,
        )
        terminate.add_retry(
            errors=["States.ALL"],
            interval=Duration.seconds(30),
            max_attempts=TERMINATE_ATTEMPTS - 1,
            backoff_rate=2,
        )
        # Still up after every attempt: its idle timeout ends it; the execution goes on to release the lock, then
        # fails (ClusterNotTerminated) so that the alarm says so.
        terminate.add_catch(release, errors=["States.ALL"], result_path="$.terminateError")
        terminate.next(release)

        cleanup = sfn.Choice(self, "A transient cluster to end?")
        cleanup.when(_absent("$.cluster"), release)
        cleanup.when(sfn.Condition.boolean_equals("$.cluster.transient", True), terminate)
        cleanup.otherwise(release)

        # -- tell the outcome: metrics, then the topic ------------------------------------------------------
        publish = tasks.SnsPublish(
            self,
            "Publish the outcome",
            topic=self.topic,
            subject=sfn.JsonPath.format("Fruits autorun: {}", sfn.JsonPath.string_at(_record("status"))),
            message=sfn.TaskInput.from_text(sfn.JsonPath.json_to_string(sfn.JsonPath.object_at("$.report"))),
            message_attributes={
                "status": tasks.MessageAttribute(value=sfn.JsonPath.string_at(_record("status")))
            },
            result_path=sfn.JsonPath.DISCARD,
        )
        publish.add_retry(errors=["States.ALL"], interval=Duration.seconds(5), max_attempts=3, backoff_rate=2)
        publish.add_catch(cleanup, errors=["States.ALL"], result_path="$.reportError")
        publish.next(cleanup)
        report = sfn.Pass(
            self,
            "Compose the report",
            parameters={
                "execution": sfn.JsonPath.execution_id,
                "trigger": sfn.JsonPath.execution_name,
                "cluster.$": "$.cluster",
                "outcome.$": "$.outcome.record",
            },
            result_path="$.report",
        )
        report.next(publish)

        def put_metrics(construct_id: str, data: list[dict[str, Any]]) -> sfn.CustomState:
            state = sfn.CustomState(
                self,
                construct_id,
                state_json={
                    "Type": "Task",
                    "Resource": f"arn:{Aws.PARTITION}:states:::aws-sdk:cloudwatch:putMetricData",
                    "Parameters": {"Namespace": METRICS_NAMESPACE, "MetricData": data},
                    # (jsii drops a None, so the answer, {}, is kept aside rather than discarded)
                    "ResultPath": "$.metricsAnswer",
                },
            )
            state.add_retry(
                errors=["States.ALL"], interval=Duration.seconds(5), max_attempts=3, backoff_rate=2
            )
            state.add_catch(report, errors=["States.ALL"], result_path="$.reportError")
            return state

        dimension = {"Name": "StateMachine", "Value": name}
        accuracy = put_metrics(
            "Put the accuracy metric",
            [
                {
                    "MetricName": ACCURACY_METRIC[0],
                    "Dimensions": [dimension],
                    "Value.$": _record(ACCURACY_METRIC[1]),
                    "Unit": "None",
                }
            ],
        )
        accuracy.next(report)
        has_accuracy = sfn.Choice(self, "An accuracy?")
        # A run without Training/Test has a null accuracy: present and not numeric.
        has_accuracy.when(
            sfn.Condition.and_(
                sfn.Condition.is_present(_record(ACCURACY_METRIC[1])),
                sfn.Condition.is_numeric(_record(ACCURACY_METRIC[1])),
            ),
            accuracy,
        )
        has_accuracy.otherwise(report)
        counts = put_metrics(
            "Put the count metrics",
            [
                {"MetricName": metric, "Dimensions": [dimension], "Value.$": _record(field), "Unit": "Count"}
                for metric, field in COUNT_METRICS.items()
            ],
        )
        counts.next(has_accuracy)
        has_counts = sfn.Choice(self, "Counts?")
        # Counts are null in a failed run's record: then no path leads through them.
        has_counts.when(sfn.Condition.is_present(_record("counts.found")), counts)
        has_counts.otherwise(report)
        status_metric = put_metrics(
            "Put the status metric",
            [
                {
                    "MetricName": "Runs",
                    "Dimensions": [dimension, {"Name": "Status", "Value.$": _record("status")}],
                    "Value": 1,
                    "Unit": "Count",
                }
            ],
        )
        status_metric.next(has_counts)

        # -- the run's outcome, as the job wrote it ----------------------------------------------------------
        def failed_record(construct_id: str, reason: str) -> sfn.Pass:
            state = sfn.Pass(
                self,
                construct_id,
                parameters={
                    "record": {"status": "failed", "reason": reason, "counts": None, "metrics": None}
                },
                result_path="$.outcome",
            )
            state.next(status_metric)
            return state

        no_record = failed_record(
            "No outcome record",
            "the job left no outcome record (it never started, or was killed outright): see the step's logs",
        )
        read_outcome = tasks.CallAwsService(
            self,
            "Read the run's outcome",
            service="s3",
            action="getObject",
            parameters={
                "Bucket": results_bucket.bucket_name,
                "Key": sfn.JsonPath.format(
                    f"{RESULTS_PREFIX}{TRIGGERED_PREFIX}{{}}.json", sfn.JsonPath.execution_name
                ),
            },
            iam_resources=[results_bucket.arn_for_objects(f"{RESULTS_PREFIX}{TRIGGERED_PREFIX}*")],
            result_selector={"record": sfn.JsonPath.string_to_json(sfn.JsonPath.string_at("$.Body"))},
            result_path="$.outcome",
        )
        read_outcome.add_catch(no_record, errors=["States.ALL"], result_path="$.readError")
        read_outcome.next(status_metric)

        run_job = tasks.EmrAddStep(
            self,
            "Run the job",
            cluster_id=sfn.JsonPath.string_at("$.cluster.id"),
            name=sfn.JsonPath.format("fruits-autorun-{}", sfn.JsonPath.execution_name),
            jar="command-runner.jar",
            args=sfn.JsonPath.list_at("$.job.args"),
            action_on_failure=tasks.ActionOnFailure.CONTINUE,
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            task_timeout=sfn.Timeout.duration(
                Duration.minutes(config.autorun_timeout_minutes).plus(STEP_GRACE)
            ),
            result_path=sfn.JsonPath.DISCARD,
        )
        # A step past its task's timeout is still running (or pending): whatever record it may write later, this
        # run failed, and for a reason the operator must read as such (not "no outcome record").
        timed_out = failed_record(
            "Step timed out",
            f"the job's step did not end within {config.autorun_timeout_minutes} minutes plus "
            f"{int(STEP_GRACE.to_minutes())} of grace (States.Timeout): see the step's logs",
        )
        run_job.add_catch(timed_out, errors=["States.Timeout"], result_path="$.runError")
        # A failed step still has its record (the job wrote why): read it, report, clean up, then fail.
        run_job.add_catch(read_outcome, errors=["States.ALL"], result_path="$.runError")
        run_job.next(read_outcome)
        job_args = sfn.Pass(
            self,
            "Job arguments",
            parameters={
                "args": sfn.JsonPath.array(
                    *triggered_step_args(
                        script_uri=script_uri, timeout_seconds=config.autorun_timeout_minutes * 60
                    ),
                    sfn.JsonPath.execution_name,
                )
            },
            result_path="$.job",
        )
        job_args.next(run_job)

        # -- where it runs ------------------------------------------------------------------------------------
        use_shared = sfn.Pass(
            self,
            "Use the stack's cluster",
            parameters={"id": sfn.JsonPath.string_at("$.shared.id"), "transient": False},
            result_path="$.cluster",
        )
        use_shared.next(job_args)
        request = cluster.transient_request(
            name=transient_name_prefix(config),
            idle_timeout_seconds=TRANSIENT_IDLE_TIMEOUT_SECONDS,
            tags={EMR_MANAGED_TAG[0]: EMR_MANAGED_TAG[1], **tags},
        )
        prefix = request.pop("Name")
        create = sfn.CustomState(
            self,
            "Start a transient cluster",
            state_json={
                "Type": "Task",
                "Resource": f"arn:{Aws.PARTITION}:states:::elasticmapreduce:createCluster.sync",
                "Parameters": {"Name.$": f"States.Format('{prefix}{{}}', $$.Execution.Name)", **request},
                "ResultSelector": {"id.$": "$.ClusterId", "transient": True},
                "ResultPath": "$.cluster",
                "TimeoutSeconds": int(CREATE_TIMEOUT.to_seconds()),
            },
        )
        create.add_catch(
            failed_record(
                "Cluster did not start", "the transient cluster did not start: see the execution's history"
            ),
            errors=["States.ALL"],
            result_path="$.runError",
        )
        create.next(job_args)
        self.transient_request = request | {"Name": prefix}
        # Until createCluster answers there is no cluster to end (the report names this one).
        no_cluster_yet = sfn.Pass(
            self,
            "No cluster yet",
            parameters={"id": "none", "transient": False},
            result_path="$.cluster",
        )
        no_cluster_yet.next(create)

        shared_up = sfn.Choice(self, "Is the stack's cluster up?")
        shared_up.when(
            sfn.Condition.or_(*(sfn.Condition.string_equals("$.shared.state", state) for state in UP_STATES)),
            use_shared,
        )
        shared_up.otherwise(no_cluster_yet)
        find_shared = tasks.CallAwsService(
            self,
            "Find the stack's cluster",
            service="emr",
            action="describeCluster",
            iam_action="elasticmapreduce:DescribeCluster",
            parameters={"ClusterId": cluster.cluster_id},
            iam_resources=[
                Stack.of(self).format_arn(
                    service="elasticmapreduce", resource="cluster", resource_name=cluster.cluster_id
                )
            ],
            result_selector={"id.$": "$.Cluster.Id", "state.$": "$.Cluster.Status.State"},
            result_path="$.shared",
        )
        find_shared.add_catch(no_cluster_yet, errors=["States.ALL"], result_path="$.sharedError")
        find_shared.next(shared_up)

        settle = sfn.Wait(self, "Let the purge settle", time=sfn.WaitTime.duration(SETTLE))
        settle.next(find_shared)
        drain = tasks.CallAwsService(
            self,
            "Clear the pending uploads",
            service="sqs",
            action="purgeQueue",
            parameters={"QueueUrl": self.pending.queue_url},
            iam_resources=[self.pending.queue_arn],
            result_path=sfn.JsonPath.DISCARD,
        )
        drain.add_retry(errors=["States.ALL"], interval=Duration.seconds(60), max_attempts=2, backoff_rate=1)
        drain.add_catch(release, errors=["States.ALL"], result_path="$.runError")
        drain.next(settle)

        # -- one run at a time ----------------------------------------------------------------------------------
        busy = sfn.Succeed(
            self, "Busy", comment="Another execution holds the run lock: the uploads stay pending"
        )
        take_over = tasks.DynamoPutItem(
            self,
            "Take over the run lock",
            table=self.lock,
            item=self._lock_item(),
            condition_expression="holder = :old",
            expression_attribute_values={
                ":old": tasks.DynamoAttributeValue.from_string(sfn.JsonPath.string_at("$.lock.holder"))
            },
            result_path=sfn.JsonPath.DISCARD,
        )
        take_over.add_catch(
            busy, errors=["DynamoDB.ConditionalCheckFailedException"], result_path="$.lockError"
        )
        take_over.next(drain)
        holder_running = sfn.Choice(self, "Is its holder running?")
        holder_running.when(sfn.Condition.string_equals("$.holderState.status", "RUNNING"), busy)
        holder_running.otherwise(take_over)
        describe_holder = tasks.CallAwsService(
            self,
            "Ask about the lock's holder",
            service="sfn",
            action="describeExecution",
            iam_action="states:DescribeExecution",
            parameters={"ExecutionArn": sfn.JsonPath.string_at("$.lock.holder")},
            iam_resources=[
                Stack.of(self).format_arn(
                    service="states",
                    resource="execution",
                    resource_name=f"{name}:*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
            result_selector={"status.$": "$.Status"},
            result_path="$.holderState",
        )
        # No such execution any more: its lock is stale.
        describe_holder.add_catch(take_over, errors=["States.ALL"], result_path="$.holderError")
        describe_holder.next(holder_running)
        read_holder = tasks.DynamoGetItem(
            self,
            "Read the run lock",
            table=self.lock,
            key=lock_key,
            consistent_read=True,
            result_selector={"holder.$": "$.Item.holder.S"},
            result_path="$.lock",
        )
        read_holder.add_catch(busy, errors=["States.ALL"], result_path="$.lockError")
        read_holder.next(describe_holder)
        take_lock = tasks.DynamoPutItem(
            self,
            "Take the run lock",
            table=self.lock,
            item=self._lock_item(),
            condition_expression="attribute_not_exists(pk)",
            result_path=sfn.JsonPath.DISCARD,
        )
        take_lock.add_catch(
            read_holder, errors=["DynamoDB.ConditionalCheckFailedException"], result_path="$.lockError"
        )
        take_lock.next(drain)

        # -- anything to do? ------------------------------------------------------------------------------------
        nothing = sfn.Succeed(
            self, "Nothing pending", comment="No upload since the last run: no cluster, no cost"
        )
        is_pending = sfn.Choice(self, "Uploads pending?")
        is_pending.when(sfn.Condition.number_greater_than("$.pending.messages", 0), take_lock)
        is_pending.otherwise(nothing)
        count = tasks.CallAwsService(
            self,
            "Count the pending uploads",
            service="sqs",
            action="getQueueAttributes",
            parameters={
                "QueueUrl": self.pending.queue_url,
                "AttributeNames": ["ApproximateNumberOfMessages"],
            },
            iam_resources=[self.pending.queue_arn],
            result_selector={
                "messages": sfn.JsonPath.string_to_json(
                    sfn.JsonPath.string_at("$.Attributes.ApproximateNumberOfMessages")
                )
            },
            result_path="$.pending",
        )
        count.add_retry(errors=["States.ALL"], interval=Duration.seconds(5), max_attempts=3, backoff_rate=2)
        count.next(is_pending)
        start = sfn.Choice(self, "Started by the window?")
        start.when(_absent("$.trigger"), take_lock)
        start.when(sfn.Condition.string_equals("$.trigger", WINDOW_INPUT["trigger"]), count)
        start.otherwise(take_lock)
        return start

    @staticmethod
    def _lock_item() -> dict[str, tasks.DynamoAttributeValue]:
        return {
            "pk": tasks.DynamoAttributeValue.from_string(LOCK_KEY),
            "holder": tasks.DynamoAttributeValue.from_string(sfn.JsonPath.execution_id),
            "since": tasks.DynamoAttributeValue.from_string(sfn.JsonPath.execution_start_time),
        }

    def _grant(self, stack: Stack, cluster: FruitsCluster, results_bucket: s3.IBucket, name: str) -> None:
        """What the CustomState tasks need (the typed tasks grant their own): the permissions Step Functions
        documents for createCluster.sync (https://docs.aws.amazon.com/step-functions/latest/dg/emr-iam.html,
        as CDK's EmrCreateCluster grants them) and PutMetricData in this app's namespace only."""
        role = self.state_machine.role
        findings = {
            "Resource::*": (
                "Actions that take no resource ARN: elasticmapreduce:RunJobFlow (the cluster does not exist yet; "
                "Step Functions documents Resource * for createCluster, emr-iam.html), cloudwatch:PutMetricData "
                "(limited to this app's namespace by its condition), and the X-Ray and CloudWatch Logs delivery "
                "calls aws-cdk-lib adds for tracing and logging"
            ),
            "Resource::arn:<AWS::Partition>:elasticmapreduce:<AWS::Region>:<AWS::AccountId>:cluster/*": (
                "The transient cluster's id is only known when the execution creates it: adding its step, "
                "terminating it, in this account and region (aws-cdk-lib's EmrAddStep and EmrTerminateCluster)"
            ),
            f"Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:{name}:*": (
                "DescribeExecution of this state machine's own executions only (the run lock's holder)"
            ),
            f"Resource::{finding_name(stack, results_bucket)}/{RESULTS_PREFIX}{TRIGGERED_PREFIX}*": (
                "GetObject of the triggered runs' outcome records only, one object per execution"
            ),
            "Resource::arn:<AWS::Partition>:iam::<AWS::AccountId>:role/aws-service-role/elasticmapreduce.amazonaws.com*/AWSServiceRoleForEMRCleanup*": (
                "The service-linked role createCluster needs (Step Functions' EMR integration), and only that role"
            ),
        }
        for finding, why in findings.items():
            acknowledge(role, f"AwsSolutions-IAM5[{finding}]", f"{why}.")
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="CreateTransientCluster",
                actions=[
                    "elasticmapreduce:RunJobFlow",
                    "elasticmapreduce:DescribeCluster",
                    "elasticmapreduce:TerminateJobFlows",
                    "elasticmapreduce:AddTags",
                ],
                resources=["*"],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="PassClusterRoles",
                actions=["iam:PassRole"],
                resources=[cluster.roles.service_role.role_arn, cluster.roles.instance_role.role_arn],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="EmrCleanupServiceLinkedRole",
                actions=["iam:CreateServiceLinkedRole"],
                resources=[
                    f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/aws-service-role/elasticmapreduce.amazonaws.com*/AWSServiceRoleForEMRCleanup*"
                ],
                conditions={"StringEquals": {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"}},
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="CreateClusterSyncRule",
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    stack.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventForEMRRunJobFlowRule",
                    )
                ],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="PutRunMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
            )
        )
