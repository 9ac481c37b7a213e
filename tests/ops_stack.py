"""The deployed stack as the operator CLI sees it, derived from the real CDK app, on moto in server mode.

The stack's outputs are not typed here: the CDK app is synthesized once per session (tests/cdk/cdkapp.py;
no AWS needed) and the EMR stack template's `Outputs` are resolved the way CloudFormation would, with the
test's own bucket names and cluster id. An output added to the stack (cdk/fruits_infra/stacks.py) therefore
appears in every test's fake stack without touching this file; a new kind of intrinsic function fails loudly
in `resolve`, naming it.

moto's EMR answers for us-east-1 only, so everything here uses that region. A cluster created by a
CloudFormation template comes up terminated in moto, so the cluster is made with run_job_flow and a tiny
stack only carries the resolved outputs. The moto server is shared with other test modules and never reset:
each test gets its own buckets and cluster, and deletes its stacks.

A pytest plugin (tests/conftest.py loads it): tests that use these fixtures mark themselves with
``pytestmark = pytest.mark.usefixtures("aws_env")``; helpers (Deployment, set_step_state...) are imported.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from fruits.ops import aws
from tests.cfn import Resolver

REGION = "us-east-1"
# The data stack's buckets are Storage<Role>Bucket<hash> (fruits_infra.storage.FruitsStorage): one per role.
_BUCKET_ID = re.compile(r"^Storage(?P<role>[A-Za-z]+)Bucket[0-9A-F]{8}$")


@dataclass(frozen=True)
class SynthesizedStack:
    """The EMR stack's template as `cdk synth` writes it, and the cdk.out it came from."""

    name: str
    template: dict[str, Any]
    cdk_out: Path

    def resources_of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        """Logical id -> resource, for every resource of CloudFormation type `kind`."""
        return {lid: res for lid, res in self.template["Resources"].items() if res["Type"] == kind}


@pytest.fixture(scope="session")
def synthesized_stack(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedStack:
    """The CDK app with cdk.json's context, synthesized once per session (a few seconds).

    deployStep is forced on whatever cdk.json says, so the template holds the stack's own AWS::EMR::Step for
    `Deployment.stack_step`; the outputs do not depend on it.
    """
    from tests.cdk.cdkapp import synthesize

    app = synthesize(tmp_path_factory.mktemp("cdk-app"), deployStep=True)
    assert app.assembly is not None, f"the CDK app did not synthesize: {app.error}"
    path = Path(app.outdir) / f"{app.emr_stack.artifact_id}.template.json"
    return SynthesizedStack(app.emr_stack.artifact_id, json.loads(path.read_text()), Path(app.outdir))


@pytest.fixture
def aws_env(moto_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """moto_env points boto3 at moto; also hide the developer's AWS files and work in a temporary folder."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.chdir(tmp_path)  # `fruits results` without --dest writes under the working directory
    # Werkzeug logs every request to stderr, which would mix with the CLI's one-line errors under test.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture
def s3() -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def emr() -> Any:
    return boto3.client("emr", region_name=REGION)


def make_cluster(emr: Any) -> str:
    """A cluster that stays WAITING (without KeepJobFlowAliveWhenNoSteps moto terminates it at once)."""
    return emr.run_job_flow(
        Name="fruits",
        ReleaseLabel="emr-7.13.0",
        Instances={
            "MasterInstanceType": "m5.xlarge",
            "InstanceCount": 1,
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]


@dataclass
class Deployment:
    """One test's deployment: its buckets (by role: input, results, artifacts, logs), cluster and stacks."""

    stack: SynthesizedStack
    cluster_id: str
    buckets: dict[str, str]
    stacks: list[str] = field(default_factory=list)

    def resolve(self, value: Any, cluster_id: str | None = None) -> Any:
        """A template value with its intrinsic functions evaluated as CloudFormation would for this test.

        The one resolver of the tests (tests/cfn.py), with this test's buckets and cluster as physical names.
        """
        from moto.core import DEFAULT_ACCOUNT_ID

        def names(stack: str, logical_id: str, kind: str) -> str | None:
            if kind == "AWS::EMR::Cluster":
                return cluster_id or self.cluster_id
            match = _BUCKET_ID.match(logical_id)
            if kind == "AWS::S3::Bucket" and match and match["role"].lower() in self.buckets:
                return self.buckets[match["role"].lower()]
            raise ValueError(f"{stack} {logical_id} ({kind}): teach Deployment.resolve what it is in a test")

        resolver = Resolver(self.stack.cdk_out, REGION, account=DEFAULT_ACCOUNT_ID, names=names)
        resolved = resolver.resolve(self.stack.name, value)
        return [str(item) for item in resolved] if isinstance(resolved, list) else str(resolved)

    def outputs(self, cluster_id: str | None = None) -> dict[str, str]:
        """Every output of the real stack's template, resolved for this test."""
        return {
            key: self.resolve(output["Value"], cluster_id)
            for key, output in self.stack.template["Outputs"].items()
        }

    def stack_step(self) -> dict[str, Any]:
        """The job step the stack itself deploys (AWS::EMR::Step), resolved: what `fruits submit` must add."""
        ((_, resource),) = self.stack.resources_of_type("AWS::EMR::Step").items()
        props = resource["Properties"]
        jar_step = props["HadoopJarStep"]
        return {
            "ActionOnFailure": props["ActionOnFailure"],
            "Jar": jar_step["Jar"],
            "Args": self.resolve(jar_step["Args"]),
        }

    def console_step_args(self) -> list[str]:
        """The step the outputs describe for a console step or `fruits submit` (without job options).

        It runs the stack's own script in the stack's own deploy mode, and waits for the application, as the
        stack's own step does; that step runs the job's ``--check`` instead of a production run.
        """
        outputs = self.outputs()
        return [
            "spark-submit",
            "--deploy-mode",
            outputs["StepDeployMode"],
            *shlex.split(outputs["StepSparkSubmitOptions"]),
            outputs["StepApplicationLocation"],
        ]

    @property
    def results_uri(self) -> str:
        return self.outputs()["ResultsUri"]

    def make_stack(self, name: str, outputs: dict[str, str]) -> None:
        """A one-resource stack whose only purpose is to carry `outputs` (deleted after the test)."""
        template = {
            "Resources": {
                "Marker": {
                    "Type": "AWS::SSM::Parameter",
                    "Properties": {
                        "Name": f"/test/{self.buckets['results']}/{name}",
                        "Type": "String",
                        "Value": "x",
                    },
                }
            },
            "Outputs": {key: {"Value": value} for key, value in outputs.items()},
        }
        cfn = boto3.client("cloudformation", region_name=REGION)
        cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))
        self.stacks.append(name)


@pytest.fixture
def dep(emr: Any, s3: Any, synthesized_stack: SynthesizedStack) -> Iterator[Deployment]:
    """The stack under its default name: fresh buckets, a waiting cluster and the real stack's outputs."""
    suffix = secrets.token_hex(4)
    buckets = {role: f"fruits-{role}-{suffix}" for role in ("input", "results", "artifacts", "logs")}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    deployment = Deployment(synthesized_stack, make_cluster(emr), buckets)
    deployment.make_stack(aws.DEFAULT_STACK, deployment.outputs())
    yield deployment
    cfn = boto3.client("cloudformation", region_name=REGION)
    for name in deployment.stacks:
        cfn.delete_stack(StackName=name)


def emr_backend() -> Any:
    """moto's EMR state in this process (the server runs in a thread of the test session)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    return emr_backends[DEFAULT_ACCOUNT_ID][REGION]


def set_step_state(
    cluster: str, step_id: str, state: str, reason: str | None = None, started: datetime | None = None
) -> None:
    """Move a step the way EMR would; moto leaves steps where they were created (RUNNING/PENDING)."""
    (step,) = [s for s in emr_backend().clusters[cluster].steps if s.id == step_id]
    step.state = state
    if started is not None:
        step.start_date_time = started
    if reason is not None:
        # moto serialises this attribute as Status.StateChangeReason.Message.
        step.last_state_change_reason = reason


def set_cluster_state(cluster: str, state: str) -> None:
    """Put a cluster in any state, e.g. TERMINATED_WITH_ERRORS, which moto's API cannot reach."""
    emr_backend().clusters[cluster].state = state
