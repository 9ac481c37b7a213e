"""The deployed stack, its cluster and the job's steps: the EMR and CloudFormation side of `fruits`.

Every function takes the client it needs instead of making one, so the CLI decides the session (profile,
region, endpoint) and the tests point the same code at moto. Errors an operator can act on are raised as
`OpsError` with one readable sentence; the CLI prints it and exits 2.

What this module relies on (the contracts with the CDK stack, cdk/fruits_infra/stacks.py OUTPUT_KEYS):
- `ClusterId` names the cluster;
- `StepDeployMode`, `StepSparkSubmitOptions`, `StepApplicationLocation` and `StepArguments` describe the job
  step exactly as the stack's own step runs it (the console's "Add step" fields); the CLI builds its step
  from them rather than keeping a copy of cdk/fruits_infra/step.py;
- `ClusterGeneration` (optional: stacks deployed before it lack it) is the `clusterGeneration` context value
  that the cluster was deployed with; a new value replaces the cluster;
- `RedeployCommand` (optional, newer stacks) is the deploy that works once the cluster has terminated (the same
  stage, the next generation), as the CDK app spells it;
- `AutorunClusterNamePrefix` (only with context autorun) begins the name of every transient cluster the autorun
  state machine starts (cdk/fruits_infra/autorun.py): its steps are the job's steps too.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

# boto3 clients are generated at runtime; these aliases only say which service a parameter expects.
CloudFormationClient = Any
EmrClient = Any
S3Client = Any

DEFAULT_STACK = "FruitsEmrStack"
DEFAULT_STEP_NAME = "fruits-featurize-pca"
# CONTINUE, as the stack's own step: a failed run leaves the cluster up for the next one.
ACTION_ON_FAILURE = "CONTINUE"
STEP_JAR = "command-runner.jar"

# EMR accepts steps while a cluster starts (they wait as PENDING), so only the ending states are refused.
USABLE_CLUSTER_STATES = frozenset({"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"})
ENDED_CLUSTER_STATES = frozenset({"TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"})

# Step states after which nothing more will happen; the ones in FAILED_STEP_STATES make `status` exit 1.
FINAL_STEP_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED"})
FAILED_STEP_STATES = FINAL_STEP_STATES - {"COMPLETED"}

AUTORUN_PREFIX_OUTPUT = "AutorunClusterNamePrefix"
#: How far back the transient clusters of triggered runs are looked for.
TRANSIENT_LOOKBACK = timedelta(days=14)
GENERATION_OUTPUT = "ClusterGeneration"
REDEPLOY_OUTPUT = "RedeployCommand"
GENERATION_CONTEXT = "clusterGeneration"


class OpsError(Exception):
    """A problem the operator can act on (no such stack, output, run...): printed as one line, exit code 2."""


# --- stack outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackOutputs:
    """The outputs of the deployed stack, with lookups that name the stack and the key when one is missing."""

    stack_name: str
    values: dict[str, str]

    def __getitem__(self, key: str) -> str:
        try:
            return self.values[key]
        except KeyError:
            have = ", ".join(sorted(self.values)) or "none"
            raise OpsError(
                f"stack {self.stack_name} has no output {key!r} (it has: {have}); "
                "is it the Fruits EMR stack, deployed from this version?"
            ) from None

    def get(self, key: str) -> str | None:
        """An optional output: None when the stack does not have it."""
        return self.values.get(key)


def stack_outputs(cfn: CloudFormationClient, stack_name: str) -> StackOutputs:
    """Read a stack's outputs; a missing stack becomes an `OpsError` instead of a ValidationError trace."""
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as err:
        # CloudFormation answers an unknown stack with a generic ValidationError "... does not exist".
        if "does not exist" in str(err):
            raise OpsError(
                f"no such stack: {stack_name} (check --stack, the region and the account)"
            ) from None
        raise
    if not stacks:
        raise OpsError(f"no such stack: {stack_name}")
    outputs = stacks[0].get("Outputs", [])
    return StackOutputs(stack_name, {o["OutputKey"]: o["OutputValue"] for o in outputs})


# --- the cluster -----------------------------------------------------------------------------------------


def cluster_state(emr: EmrClient, cluster_id: str) -> str:
    """The cluster's current state (RUNNING, WAITING, TERMINATED...)."""
    try:
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    except ClientError as err:
        raise OpsError(f"cluster {cluster_id} from the stack outputs is not found: {err}") from None
    return cluster["Status"]["State"]


def redeploy_advice(outputs: StackOutputs, state: str) -> str:
    """One line: the cluster has ended, and the one deploy command that works now.

    A terminated cluster cannot be restarted, and a deploy that changes the cluster or its step makes
    CloudFormation call EMR on it and roll back; a new `clusterGeneration` is a replacement-only change to the
    cluster resource, so CloudFormation creates a new cluster (with any other change) and the outputs follow
    it. The command is the stack's `RedeployCommand`; stacks deployed before that output get it built here.
    """
    cluster_id = outputs.get("ClusterId") or "?"
    head = (
        f"cluster {cluster_id} is {state} and cannot run steps again; a deploy of {outputs.stack_name} without "
        "a new cluster generation would roll back"
    )
    stack = outputs.stack_name
    text = outputs.get(GENERATION_OUTPUT)
    generation = int(text) if text and text.strip().isdigit() else None
    if generation is None:
        missing = "has no ClusterGeneration output" if text is None else f"has ClusterGeneration {text!r}"
        return (
            f'{head}; stack {stack} {missing}, so take n from "{GENERATION_CONTEXT}" in cdk.json '
            f"(1 when absent) and deploy, with any other change, as: "
            f"npx cdk deploy {stack}{_stage_flag(stack)} -c {GENERATION_CONTEXT}=<n+1>  "
            f'(then record "{GENERATION_CONTEXT}": <n+1> in cdk.json)'
        )
    new = generation + 1
    command = (outputs.get(REDEPLOY_OUTPUT) or "").strip() or (
        f"npx cdk deploy {stack}{_stage_flag(stack)} -c {GENERATION_CONTEXT}={new}"
    )
    return (
        f"{head}; deploy it, with any other change, as: {command}  "
        f'(then record "{GENERATION_CONTEXT}": {new} in cdk.json so later deploys keep it)'
    )


def _stage_flag(stack: str) -> str:
    """`-c stage=<s>` for a stage's stack (`FruitsEmrStack-<s>`): without it cdk finds no such stack."""
    prefix = f"{DEFAULT_STACK}-"
    return f" -c stage={stack[len(prefix) :]}" if stack.startswith(prefix) else ""


def ensure_cluster_usable(emr: EmrClient, outputs: StackOutputs) -> str:
    """Refuse a cluster that cannot run a step any more (saying how to get a new one); return its state."""
    cluster_id = outputs["ClusterId"]
    state = cluster_state(emr, cluster_id)
    if state in ENDED_CLUSTER_STATES:
        raise OpsError(redeploy_advice(outputs, state))
    if state not in USABLE_CLUSTER_STATES:
        raise OpsError(f"cluster {cluster_id} is in state {state}, which does not accept steps")
    return state


# --- the job step ----------------------------------------------------------------------------------------


def default_job_args(outputs: StackOutputs) -> list[str]:
    """The stack's `StepArguments` as a list (published as one space when empty: CloudFormation refuses '')."""
    return shlex.split(outputs["StepArguments"])


def job_step(outputs: StackOutputs, name: str, job_args: Sequence[str] | None = None) -> dict[str, Any]:
    """The EMR step that runs the job as the stack describes it, with `job_args` or else `StepArguments`.

    Given job arguments replace `StepArguments` rather than extend them: the job's parser refuses some
    pairs (`--k` with `--variance`) and a flag such as `--overwrite` cannot be undone by a later argument.
    """
    args = [
        "spark-submit",
        "--deploy-mode",
        outputs["StepDeployMode"],
        *shlex.split(outputs["StepSparkSubmitOptions"]),
        outputs["StepApplicationLocation"],
        *(default_job_args(outputs) if job_args is None else job_args),
    ]
    return {
        "Name": name,
        "ActionOnFailure": ACTION_ON_FAILURE,
        "HadoopJarStep": {"Jar": STEP_JAR, "Args": args},
    }


def submit_job(
    emr: EmrClient, outputs: StackOutputs, job_args: Sequence[str] | None, name: str
) -> tuple[str, str]:
    """Add the job step to the stack's cluster if the cluster can run it; return (cluster, step)."""
    step = job_step(outputs, name, job_args)  # first: a stack missing a step output adds nothing
    ensure_cluster_usable(emr, outputs)
    cluster_id = outputs["ClusterId"]
    response = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])
    return cluster_id, response["StepIds"][0]


def _steps(emr: EmrClient, cluster_id: str) -> Iterator[dict[str, Any]]:
    """The cluster's steps, newest first (the order EMR lists them in)."""
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        yield from page.get("Steps", [])


def job_clusters(emr: EmrClient, outputs: StackOutputs, now: datetime | None = None) -> list[str]:
    """Where the job's steps run: the stack's cluster, then (with autorun) the transient clusters its state machine
    started within :data:`TRANSIENT_LOOKBACK`, as EMR lists them (newest first)."""
    clusters = [outputs["ClusterId"]]
    prefix = outputs.get(AUTORUN_PREFIX_OUTPUT)
    if prefix:
        after = (now or datetime.now(UTC)) - TRANSIENT_LOOKBACK
        for page in emr.get_paginator("list_clusters").paginate(CreatedAfter=after):
            clusters += [c["Id"] for c in page.get("Clusters", []) if c.get("Name", "").startswith(prefix)]
    return clusters


def find_job_step(emr: EmrClient, outputs: StackOutputs, step_id: str | None) -> tuple[str, dict[str, Any]]:
    """(cluster, step): step ``step_id`` wherever it ran, or the newest step of the job on any of
    :func:`job_clusters` (a triggered run's on its transient cluster too)."""
    clusters = job_clusters(emr, outputs)
    if step_id is not None:
        for cluster_id in clusters:
            try:
                return cluster_id, describe_step(emr, cluster_id, step_id)
            except OpsError:
                continue
        raise OpsError(
            f"no step {step_id} on cluster {outputs['ClusterId']} nor on a triggered run's cluster"
        )
    script = outputs["StepApplicationLocation"]
    newest: tuple[str, dict[str, Any]] | None = None
    for cluster_id in clusters:
        step = next(
            (s for s in _steps(emr, cluster_id) if script in s.get("Config", {}).get("Args", [])), None
        )
        created = (step or {}).get("Status", {}).get("Timeline", {}).get("CreationDateTime")
        if step and (newest is None or created > newest[1]["Status"]["Timeline"]["CreationDateTime"]):
            newest = (cluster_id, step)
    if newest is None:
        raise OpsError(
            f"no step of the Fruits job on cluster {outputs['ClusterId']} yet (run `fruits submit`)"
        )
    return newest


def describe_step(emr: EmrClient, cluster_id: str, step_id: str) -> dict[str, Any]:
    """One step by id, with a clear error when the cluster does not know it."""
    try:
        step = emr.describe_step(ClusterId=cluster_id, StepId=step_id).get("Step")
    except ClientError as err:
        raise OpsError(f"no step {step_id} on cluster {cluster_id}: {err}") from None
    if not step:
        raise OpsError(f"no step {step_id} on cluster {cluster_id}")
    return step


def wait_for_step(
    emr: EmrClient,
    cluster_id: str,
    step_id: str,
    poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll until the step reaches a final state, or `timeout` seconds pass; return the step as last seen.

    Our own loop rather than boto3's `step_complete` waiter: that waiter raises on FAILED and gives up after
    a fixed time, while a featurization run can take hours and a failure is a result to report, not an error.
    """
    deadline = None if timeout is None else clock() + timeout
    while True:
        step = describe_step(emr, cluster_id, step_id)
        if step["Status"]["State"] in FINAL_STEP_STATES:
            return step
        if deadline is not None and clock() >= deadline:
            return step
        sleep(poll_seconds)


def cancel_step(emr: EmrClient, cluster_id: str, step_id: str) -> bool:
    """Ask EMR to cancel a step (a running one is interrupted); whether EMR accepted the request."""
    try:
        emr.cancel_steps(ClusterId=cluster_id, StepIds=[step_id], StepCancellationOption="SEND_INTERRUPT")
    except ClientError:
        return False
    return True
