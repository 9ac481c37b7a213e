"""The job as an EMR step of the stack: ``spark-submit`` through ``command-runner.jar``.

The cluster's ``spark-defaults`` carry what every submission needs (the package, cluster deploy mode, one YARN
attempt, the defaults file), so a console step or ``fruits submit`` needs only the script. The stack's own step
adds two things, because CloudFormation waits for it:

- ``--conf spark.yarn.submit.waitAppCompletion=false``: in cluster mode spark-submit then returns once YARN
  accepted the application (https://spark.apache.org/docs/3.5.6/running-on-yarn.html), so the step (and the
  deployment) completes in a minute whatever the job's size; the job's outcome is in YARN and in its commits.
- ``--allow-empty``: on a fresh account the input bucket is empty; the job logs one line and exits 0 instead of
  failing the step, which would roll the whole cluster back.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_emr as emr
from constructs import Construct

STEP_TYPE = "Spark application"
DEPLOY_MODE = "cluster"
ACTION_ON_FAILURE = "CONTINUE"
#: The stack's step only hands the application to YARN; see the module docstring.
NO_WAIT_CONF = ("--conf", "spark.yarn.submit.waitAppCompletion=false")
ALLOW_EMPTY = "--allow-empty"


def spark_submit_options() -> list[str]:
    """The console's "Spark-submit options": none, the cluster's spark-defaults carry them."""
    return []


def step_args(*, script_uri: str, arguments: Sequence[str] = ()) -> list[str]:
    """``command-runner.jar`` arguments of the stack's step."""
    return [
        "spark-submit",
        "--deploy-mode",
        DEPLOY_MODE,
        *NO_WAIT_CONF,
        script_uri,
        ALLOW_EMPTY,
        *arguments,
    ]


class FruitsJobStep(Construct):
    """One ``AWS::EMR::Step`` running the featurize + PCA job with the cluster defaults."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_id: str,
        script_uri: str,
        arguments: Sequence[str] = (),
        name: str = "featurize-pca",
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
