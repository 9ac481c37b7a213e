"""The job as an EMR step: ``spark-submit --deploy-mode cluster`` through ``command-runner.jar``.

The step's script and ``--py-files`` come from :class:`~fruits_infra.artifacts.JobArtifacts`, which only hands
out URIs of keys it deployed. Everything else (input, output, model, ...) comes from the cluster's
``spark-defaults``, so the step's own arguments may be empty.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_emr as emr
from constructs import Construct

STEP_TYPE = "Spark application"
DEPLOY_MODE = "cluster"
ACTION_ON_FAILURE = "CONTINUE"
#: A second YARN attempt would find the first attempt's lease on the output and fail anyway.
SUBMIT_CONF = ("--conf", "spark.yarn.maxAppAttempts=1")


def spark_submit_options(py_files_uri: str) -> list[str]:
    """The options between ``spark-submit`` and the script (the console's "Spark-submit options")."""
    return ["--py-files", py_files_uri, *SUBMIT_CONF]


def step_args(*, script_uri: str, py_files_uri: str, arguments: Sequence[str] = ()) -> list[str]:
    """``command-runner.jar`` arguments for the job."""
    return [
        "spark-submit",
        "--deploy-mode",
        DEPLOY_MODE,
        *spark_submit_options(py_files_uri),
        script_uri,
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
        py_files_uri: str,
        arguments: Sequence[str] = (),
        name: str = "featurize-pca",
    ) -> None:
        super().__init__(scope, construct_id)
        self.args = step_args(script_uri=script_uri, py_files_uri=py_files_uri, arguments=arguments)
        self.step = emr.CfnStep(
            self,
            "Step",
            name=name,
            job_flow_id=cluster_id,
            action_on_failure=ACTION_ON_FAILURE,
            hadoop_jar_step=emr.CfnStep.HadoopJarStepConfigProperty(jar="command-runner.jar", args=self.args),
        )
