"""The stack's own step: a bounded check that the cluster can run the job, never a production run.

CloudFormation creates the step with the cluster and waits for it, so it runs at every deploy that replaces the
cluster (a new generation, a pin, model or Studio change). A production run there would start whenever anyone
deploys, whether or not anyone asked for it, and would hold the output's lease against the next console step. So
the step runs the job with ``--check`` (fruits.cluster_check): the weights, the input's listing, writes to the
output, the model prepared as a first run prepares it (kept in the feature store, so that run finds it ready) and
a few synthetic images featurized on the executors; nothing is committed, and nothing is read from the input
but, for ``litert-int8`` on the input, the images its model is calibrated on when the store does not keep it yet.

It runs in cluster mode like every other run, and waits for the application (spark-submit's default,
``spark.yarn.submit.waitAppCompletion=true``, https://spark.apache.org/docs/3.5.6/running-on-yarn.html), so its
state is the check's outcome: a cluster that cannot run the job fails the step, and the deploy with it.
``timeout`` bounds it (GNU coreutils, on every Amazon Linux node): a cluster that never gives the application its
containers fails the deploy after :data:`CHECK_TIMEOUT_SECONDS` instead of keeping CloudFormation waiting.

Production runs are steps an operator adds (``fruits submit``, the console): they need only the script, the
cluster's ``spark-defaults`` carry the rest, and they wait for the application too, so every step's state is its
run's outcome.

A triggered run (context ``autorun``, fruits_infra.autorun) is such a step too, added by the state machine with
:func:`triggered_step_args`: bounded the same way, with :data:`TRIGGERED_ARGUMENTS`, and named by the execution
that started it (``--trigger``), so the state machine finds its outcome record.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_emr as emr
from constructs import Construct

STEP_TYPE = "Spark application"
DEPLOY_MODE = "cluster"
ACTION_ON_FAILURE = "CONTINUE"
CHECK = "--check"
#: The check's bound: a first start on a fresh cluster (executors asked for, the model converted) takes minutes.
CHECK_TIMEOUT_SECONDS = 1200
#: After the bound, spark-submit gets this long to stop before it is killed.
KILL_AFTER_SECONDS = 60
#: A triggered run waits this long for a run that holds the output (a console step) before it fails.
TRIGGERED_WAIT_SECONDS = 1800
#: What a triggered run adds to the job's defaults: nothing new commits nothing (outcome ``unchanged``), an empty
#: input is no failure (``nothing-to-do``), and another run on the output is waited for, not failed.
TRIGGERED_ARGUMENTS = ("--skip-unchanged", "--allow-empty", "--wait", str(TRIGGERED_WAIT_SECONDS))
#: The job option the state machine appends with its execution's name.
TRIGGER_OPTION = "--trigger"


def spark_submit_options() -> list[str]:
    """The console's "Spark-submit options": none, the cluster's spark-defaults carry them."""
    return []


def _bounded(seconds: int, script_uri: str, arguments: Sequence[str]) -> list[str]:
    """``spark-submit`` of the job in cluster mode, killed by ``timeout`` after ``seconds``."""
    return [
        "timeout",
        f"--kill-after={KILL_AFTER_SECONDS}",
        str(seconds),
        "spark-submit",
        "--deploy-mode",
        DEPLOY_MODE,
        script_uri,
        *arguments,
    ]


def step_args(*, script_uri: str, arguments: Sequence[str] = ()) -> list[str]:
    """``command-runner.jar`` arguments of the stack's step: the job's ``--check``, bounded in time."""
    return _bounded(CHECK_TIMEOUT_SECONDS, script_uri, [CHECK, *arguments])


def triggered_step_args(*, script_uri: str, timeout_seconds: int) -> list[str]:
    """``command-runner.jar`` arguments of a triggered run, up to ``--trigger``: the state machine appends its
    execution's name (the job's defaults file gives input, output, model and the rest)."""
    return _bounded(timeout_seconds, script_uri, [*TRIGGERED_ARGUMENTS, TRIGGER_OPTION])


class FruitsJobStep(Construct):
    """One ``AWS::EMR::Step``: the cluster's check (the job with ``--check``) with the cluster defaults."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_id: str,
        script_uri: str,
        arguments: Sequence[str] = (),
        name: str = "check-cluster",
    ) -> None:
        super().__init__(scope, construct_id)
        self.args = step_args(script_uri=script_uri, arguments=arguments)
        self.step = emr.CfnStep(
            self,
            "Step",
            name=name,
            job_flow_id=cluster_id,
            action_on_failure=ACTION_ON_FAILURE,
            hadoop_jar_step=emr.CfnStep.HadoopJarStepConfigProperty(jar="command-runner.jar", args=self.args),
        )
