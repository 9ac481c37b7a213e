"""Run the synthesized autorun state machine in a real Amazon States Language interpreter, its tasks on moto.

- :func:`definition`: the state machine's ``DefinitionString`` from a synthesized template, every CloudFormation
  reference in it replaced by the name of the thing made for it on the moto server (an unknown one is an error).
- :class:`Cloud`: the services the definition calls, on the moto server (server mode, real HTTP): buckets, the
  pending queue, the lock table (its key schema from the template), the topics (each read through a queue
  subscribed to it), the stack's cluster, a stand-in Step Functions state machine for the lock's holders.
- :class:`TaskServer`: what ``run_asl.cjs`` posts each Task state to. It performs the state's service call with
  boto3 on moto, as the Step Functions integration named by the state's ``Resource`` would (the request shapes are
  the APIs': botocore checks every parameter), and maps service errors to the names Step Functions gives them.
  ``addStep.sync`` adds the step on moto's EMR and then plays the job: it parses the step's arguments with the
  job's own option parser and writes the outcome record the scenario asks for, with the job's own code.
  Failures are injected per integration (``failures``: the error an integration answers every time) or by the
  play (``hung``: the step never ends, so the interpreter's own timeout of the task fires).
- :func:`execute`: one execution through node and the interpreter; its status, output and the states entered.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from fruits import commits, outcomes
from fruits.options import parse_options
from fruits.storage import open_store

REGION = "us-east-1"
ACCOUNT = "123456789012"
DRIVER = Path(__file__).with_name("run_asl.cjs")
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
}


def interpreter_missing(repo: Path) -> str | None:
    """Why the interpreter cannot run here (None when it can): node, or the npm package, is missing."""
    if shutil.which("node") is None:
        return "node is not installed"
    found = subprocess.run(
        ["node", "-e", "require.resolve('aws-local-stepfunctions')"], cwd=repo, capture_output=True, text=True
    )
    return None if found.returncode == 0 else "aws-local-stepfunctions is not installed (npm ci)"


def definition(template: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The state machine's definition, every ``Ref``, ``Fn::GetAtt`` and ``Fn::ImportValue`` in it replaced from
    ``names`` (pseudo parameters, logical ids, ``<logical id>.<attribute>``, export names)."""
    (machine,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"
    ]
    body = machine["Properties"]["DefinitionString"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    return json.loads("".join(_resolve(part, names) for part in parts))


def _resolve(part: Any, names: dict[str, str]) -> str:
    if isinstance(part, str):
        return part
    if "Ref" in part:
        key = part["Ref"]
        return PSEUDO.get(key) or names[key]
    if "Fn::GetAtt" in part:
        return names[".".join(part["Fn::GetAtt"])]
    if "Fn::ImportValue" in part:
        return names[part["Fn::ImportValue"]]
    raise KeyError(f"unexpected intrinsic in the definition: {part}")


def _pascal(value: Any) -> Any:
    """An AWS SDK integration's answer as Step Functions gives it: field names in PascalCase, whatever the API's
    own casing ("Parameters in Step Functions are expressed in PascalCase, even if the native service API is in
    camelCase", https://docs.aws.amazon.com/step-functions/latest/dg/supported-services-awssdk.html; the answers
    follow the same convention)."""
    if isinstance(value, dict):
        return {k[:1].upper() + k[1:]: _pascal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pascal(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A boto3 answer as JSON (times as ISO strings), without ResponseMetadata."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class TaskError(Exception):
    """A task that failed: ``name`` is what the state's Retry and Catch match."""

    def __init__(self, name: str, cause: str) -> None:
        super().__init__(cause)
        self.name = name
        self.cause = cause


@dataclass
class JobPlay:
    """What the job does when the state machine's step runs: ``status`` of its outcome record (``killed``: it
    writes none and the step fails; ``hung``: it writes none and the step does not end until the server closes),
    and the record's counts and metrics."""

    status: str = outcomes.SUCCEEDED
    counts: dict[str, int] | None = None
    metrics: dict[str, Any] | None = None
    reason: str | None = None
    #: Filled in when the step runs: the job's options as its own parser read the step's arguments.
    seen: list[Any] = field(default_factory=list)


class Cloud:
    """The services the definition reaches, made on the moto server from the synthesized templates."""

    def __init__(self, endpoint: str, emr_template: dict[str, Any]) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, endpoint_url=endpoint, region_name=REGION)

        self.s3, self.sqs, self.ddb = client("s3"), client("sqs"), client("dynamodb")
        self.sns, self.emr, self.cloudwatch, self.sfn = (
            client("sns"),
            client("emr"),
            client("cloudwatch"),
            client("stepfunctions"),
        )
        token = secrets.token_hex(4)
        self.buckets = {name: f"{name}-{token}" for name in ("input", "results", "artifacts", "logs")}
        for bucket in self.buckets.values():
            self.s3.create_bucket(Bucket=bucket)
        self.results_uri = f"s3://{self.buckets['results']}/results/"
        self.input_uri = f"s3://{self.buckets['input']}/images/"
        resources = emr_template["Resources"]

        def logical(kind: str, prefix: str = "") -> str:
            (found,) = [k for k, r in resources.items() if r["Type"] == kind and k.startswith(prefix)]
            return found

        self.queue_url = self.sqs.create_queue(QueueName=f"pending-{token}")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        table_props = resources[logical("AWS::DynamoDB::Table")]["Properties"]
        self.table = f"lock-{token}"
        self.ddb.create_table(
            TableName=self.table,
            KeySchema=table_props["KeySchema"],
            AttributeDefinitions=table_props["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )
        self.topic = self.sns.create_topic(Name=f"outcomes-{token}")["TopicArn"]
        self.inbox = self.sqs.create_queue(QueueName=f"inbox-{token}")["QueueUrl"]
        inbox_arn = self.sqs.get_queue_attributes(QueueUrl=self.inbox, AttributeNames=["QueueArn"])
        self.sns.subscribe(
            TopicArn=self.topic,
            Protocol="sqs",
            Endpoint=inbox_arn["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "true"},
        )
        self.shared = self.emr.run_job_flow(
            Name="fruits-featurize-g1",
            ReleaseLabel="emr-7.13.0",
            Instances={
                "InstanceGroups": [
                    {
                        "InstanceRole": "MASTER",
                        "InstanceType": "m5.xlarge",
                        "InstanceCount": 1,
                        "Market": "ON_DEMAND",
                    }
                ],
                "KeepJobFlowAliveWhenNoSteps": True,
            },
            JobFlowRole="instance-profile",
            ServiceRole="service-role",
        )["JobFlowId"]
        self.machine_name = "fruits-autorun"
        # Stand-in executions of the same state machine: the holders of a lock left behind.
        self.other = self.sfn.create_state_machine(
            name=f"{self.machine_name}-{token}",
            definition=json.dumps({"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/stand-in",
        )["stateMachineArn"]
        self.started = datetime.now(UTC)
        self.names: dict[str, str] = {
            logical("AWS::SQS::Queue"): self.queue_url,
            f"{logical('AWS::SQS::Queue')}.Arn": queue_arn["Attributes"]["QueueArn"],
            logical("AWS::DynamoDB::Table"): self.table,
            logical("AWS::SNS::Topic", "AutorunRunOutcomes"): self.topic,
            logical("AWS::EMR::Cluster"): self.shared,
        }
        for name in ("Results", "Artifacts", "Logs", "Input"):
            self.names[f"FruitsDataStack-{name}BucketName"] = self.buckets[name.lower()]
        # The transient cluster's network, roles and security configuration: names moto takes as they are.
        for key, resource in resources.items():
            if resource["Type"] in (
                "AWS::IAM::Role",
                "AWS::IAM::InstanceProfile",
                "AWS::EMR::SecurityConfiguration",
                "AWS::EC2::Subnet",
            ):
                self.names.setdefault(key, f"{key.lower()}-name")
            if resource["Type"] in ("AWS::EC2::SecurityGroup",):
                self.names.setdefault(f"{key}.GroupId", f"sg-{key.lower()[:12]}")

    # -- scenario helpers -------------------------------------------------------------------------------

    def upload(self, count: int = 1) -> None:
        """What the upload rule does for ``count`` new images: a message each in the pending queue."""
        for i in range(count):
            self.sqs.send_message(
                QueueUrl=self.queue_url, MessageBody=json.dumps({"detail-type": "Object Created", "n": i})
            )

    def pending(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    def stop_shared_cluster(self) -> None:
        self.emr.terminate_job_flows(JobFlowIds=[self.shared])

    def lock_holder(self) -> str | None:
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": "autorun"}}, ConsistentRead=True).get(
            "Item"
        )
        return item["holder"]["S"] if item else None

    def hold_lock(self, *, running: bool) -> str:
        """The lock, held by another execution that is still running or that was stopped without releasing it."""
        holder = self.sfn.start_execution(stateMachineArn=self.other, name=f"other-{secrets.token_hex(3)}")[
            "executionArn"
        ]
        if not running:
            self.sfn.stop_execution(executionArn=holder)
        self.ddb.put_item(TableName=self.table, Item={"pk": {"S": "autorun"}, "holder": {"S": holder}})
        return holder

    def messages(self) -> list[tuple[dict[str, Any], str | None]]:
        """(message, status attribute) of everything published to the outcomes topic."""
        found = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.inbox, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            )
            if not batch.get("Messages"):
                return found
            for message in batch["Messages"]:
                status = message.get("MessageAttributes", {}).get("status", {}).get("StringValue")
                found.append((json.loads(message["Body"]), status))
                self.sqs.delete_message(QueueUrl=self.inbox, ReceiptHandle=message["ReceiptHandle"])

    def metric_sum(self, name: str, dimensions: dict[str, str]) -> float | None:
        """The sum of what was put to a metric since this cloud was made (one moto server serves every test)."""
        stats = self.cloudwatch.get_metric_statistics(
            Namespace="Fruits/Autorun",
            MetricName=name,
            Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
            StartTime=self.started.replace(microsecond=0),
            EndTime=datetime(2100, 1, 1, tzinfo=UTC),
            Period=86400 * 365,
            Statistics=["Sum"],
        )["Datapoints"]
        return sum(point["Sum"] for point in stats) if stats else None

    def clusters(self) -> dict[str, dict[str, Any]]:
        """Every cluster made on moto since this cloud was, by name, as EMR describes it."""
        listed = self.emr.list_clusters(CreatedAfter=self.started)["Clusters"]
        return {c["Name"]: self.emr.describe_cluster(ClusterId=c["Id"])["Cluster"] for c in listed}


class TaskServer:
    """Performs the Task states the interpreter posts, on :class:`Cloud` (see the module's docstring)."""

    def __init__(self, cloud: Cloud, play: JobPlay, failures: dict[str, TaskError] | None = None) -> None:
        self.cloud, self.play = cloud, play
        #: integration (``elasticmapreduce:terminateCluster.sync``) -> the error it answers on every call, which is
        #: still recorded in :attr:`calls` (so retries can be counted); the service is not called.
        self.failures = dict(failures or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                try:
                    answer = {"output": server.perform(request["resource"], request["input"])}
                except TaskError as error:
                    answer = {"error": error.name, "cause": error.cause}
                except (
                    Exception
                ) as error:  # a harness or request bug: stop the execution, never catch it in ASL
                    answer = {"harness_error": f"{request['state']}: {type(error).__name__}: {error}"}
                data = json.dumps(answer).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a task the interpreter timed out: nobody waits for its answer any more

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def metrics(self) -> dict[str, list[tuple[float, dict[str, str]]]]:
        """What this execution put to CloudWatch (moto took each call): metric -> [(value, dimensions)]."""
        found: dict[str, list[tuple[float, dict[str, str]]]] = {}
        for integration, params in self.calls:
            if integration == "aws-sdk:cloudwatch:putMetricData":
                for datum in params["MetricData"]:
                    dims = {d["Name"]: d["Value"] for d in datum.get("Dimensions", [])}
                    found.setdefault(datum["MetricName"], []).append((datum["Value"], dims))
        return found

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def perform(self, resource: str, params: dict[str, Any]) -> Any:
        integration = resource.split(":::", 1)[1]
        self.calls.append((integration, params))
        if integration in self.failures:
            raise self.failures[integration]
        handler = self._handlers().get(integration)
        if handler is None:
            raise AssertionError(f"the definition calls {integration}, which this harness does not perform")
        try:
            answer = _plain(handler(params))
            return _pascal(answer) if integration.startswith("aws-sdk:") else answer
        except ClientError as error:
            # Step Functions names a service's error <Service>.<code>: DynamoDB.ConditionalCheckFailedException.
            code = error.response["Error"]["Code"]
            head = integration.split(":")
            service = (
                "DynamoDB" if head[0] == "dynamodb" else head[1].title() if head[0] == "aws-sdk" else "EMR"
            )
            raise TaskError(f"{service}.{code}", str(error)) from None

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        c = self.cloud
        return {
            "dynamodb:putItem": lambda p: c.ddb.put_item(**p),
            "dynamodb:getItem": lambda p: c.ddb.get_item(**p),
            "dynamodb:deleteItem": lambda p: c.ddb.delete_item(**p),
            "aws-sdk:sqs:getQueueAttributes": lambda p: c.sqs.get_queue_attributes(**p),
            "aws-sdk:sqs:purgeQueue": lambda p: c.sqs.purge_queue(**p),
            "aws-sdk:sfn:describeExecution": lambda p: c.sfn.describe_execution(
                executionArn=p["ExecutionArn"]
            ),
            "aws-sdk:emr:describeCluster": lambda p: c.emr.describe_cluster(**p),
            "elasticmapreduce:createCluster.sync": self._create_cluster,
            "elasticmapreduce:addStep.sync": self._add_step,
            "elasticmapreduce:terminateCluster.sync": lambda p: c.emr.terminate_job_flows(
                JobFlowIds=[p["ClusterId"]]
            ),
            "aws-sdk:s3:getObject": lambda p: {"Body": c.s3.get_object(**p)["Body"].read().decode("utf-8")},
            "aws-sdk:cloudwatch:putMetricData": lambda p: c.cloudwatch.put_metric_data(**p),
            "sns:publish": lambda p: c.sns.publish(**p),
        }

    def _create_cluster(self, params: dict[str, Any]) -> dict[str, Any]:
        # createCluster takes RunJobFlow's request (connect-emr.html) and answers the new cluster's id.
        created = self.cloud.emr.run_job_flow(**params)
        return {"ClusterId": created["JobFlowId"], "ClusterArn": created["ClusterArn"]}

    def _add_step(self, params: dict[str, Any]) -> dict[str, Any]:
        c, play = self.cloud, self.play
        step = params["Step"]
        c.emr.add_job_flow_steps(JobFlowId=params["ClusterId"], Steps=[step])
        args = step["HadoopJarStep"]["Args"]
        script = next(i for i, a in enumerate(args) if a.endswith("featurize_pca.py"))
        # The job's own parser reads the step's arguments over the stack's defaults file (input, output).
        options = parse_options(args[script + 1 :], {}, {"input": c.input_uri, "output": c.results_uri})
        play.seen.append(options)
        if play.status == "killed":
            raise TaskError("States.TaskFailed", json.dumps({"Step": {"Status": {"State": "FAILED"}}}))
        if play.status == "hung":  # still running when the interpreter gives up on the task
            self.closing.wait(timeout=60)
            raise TaskError("States.TaskFailed", "the server closed")
        now = datetime.now(UTC)
        code = 2 if play.status == outcomes.FAILED else 0
        record = outcomes.Outcome(
            run_id=commits.new_run_id(now),
            status=play.status,
            exit_code=code,
            reason=play.reason,
            started_at=now.isoformat(),
            finished_at=now.isoformat(),
            input=options.input,
            output=options.output,
            counts=play.counts,
            commit=3 if play.status == outcomes.SUCCEEDED else None,
            trigger=options.trigger or None,
            metrics=play.metrics,
        )
        outcomes.write(open_store(options.output, s3_client=c.s3), record)
        if code:  # the step's state is the job's: FAILED
            raise TaskError("States.TaskFailed", json.dumps({"Step": {"Status": {"State": "FAILED"}}}))
        return {"Step": {"Status": {"State": "COMPLETED"}}}


def execute(
    repo: Path, machine: dict[str, Any], url: str, execution_input: dict[str, Any], name: str
) -> dict[str, Any]:
    """One execution of ``machine`` named ``name``: its status, output or error, and the states it entered."""
    path = repo / "build" / f"asl-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(machine))
    context = {
        "Execution": {
            "Id": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:fruits-autorun:{name}",
            "Name": name,
            "StartTime": datetime.now(UTC).isoformat(),
        },
        "StateMachine": {
            "Id": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:fruits-autorun",
            "Name": "fruits-autorun",
        },
    }
    done = subprocess.run(
        ["node", str(DRIVER), str(path), json.dumps(execution_input), json.dumps(context), url],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    path.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"run_asl.cjs failed: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
