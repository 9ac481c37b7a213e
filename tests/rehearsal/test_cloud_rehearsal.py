"""The cloud rehearsal: the step the stack deploys, run as EMR would run it, against S3 with IAM enforced.

Everything comes from the synthesized templates (``scripts/synth.sh`` into a scratch ``cdk.out``): bucket and
prefix names, the artifacts the BucketDeployment uploads, the bootstrap action and its arguments, the cluster's
``spark-defaults``, the step's exact arguments and the instance role's S3 statements. The run happens on a Spark
standalone master with two workers on 127.0.0.1, as an unprivileged user with no route out, reading and writing
``s3://`` through Hadoop's S3A against moto (which enforces the instance role's policy). The tests run in file
order, as the scenario of a first deploy: bootstrap, the deployed step on an empty input, images uploaded, the
deployed step, a console step with only the script, a step with ``--k 5``, the operator's download, a driver
killed mid-run, two steps at once, and finally the audit of every S3 request.

Substitutions, each forced by what a single machine can do (README, "Cloud rehearsal"): client deploy mode
instead of cluster, a standalone master instead of YARN, S3A instead of EMRFS, moto instead of S3 (no Condition
keys, see :func:`tests.rehearsal.aws.moto_compensations`), context ``model=mobilenet alpha=0.25`` because the
shared weights file is Keras' ImageNet file for that model.

Run it alone with ``make rehearse`` (or ``pytest -m rehearsal``). It needs root (it creates the cluster user and
the bootstrap's /opt folders), Java, /usr/bin/python3.11, Maven for the S3A jars, FRUITS_DATA and FRUITS_WEIGHTS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import cfn
from tests.rehearsal.aws import Credentials, MotoAws, moto_compensations
from tests.rehearsal.node import (
    Node,
    StandaloneCluster,
    StandIns,
    ensure_user,
    local_step,
    run_bootstrap,
    system_folder,
)

pytestmark = [pytest.mark.rehearsal, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-3"  # not us-east-1, so that a client defaulting to us-east-1 shows in the audit
CONTEXT = {"model": "mobilenet", "alpha": "0.25"}  # the model of the shared weights file (Keras' own file)
STEP_TIMEOUT = 900


@dataclass
class Rehearsal:
    """Everything the scenario shares: the deployment, the AWS side, the node and its Spark cluster."""

    workdir: Path
    deployment: cfn.Deployment
    aws: MotoAws
    role: Credentials
    node: Node
    cluster: StandaloneCluster
    stack: str
    runs: int = 0

    @property
    def outputs(self) -> dict[str, str]:
        return self.deployment.outputs[self.stack]

    def step(self, step_args: list[str], name: str, **env: str) -> tuple[int, str]:
        """Run one EMR step's ``spark-submit`` arguments here; (exit status, driver output)."""
        self.runs += 1
        argv = [str(Path(self.node.env()["SPARK_HOME"]) / "bin" / "spark-submit")]
        argv += local_step(step_args, self.cluster.master_url)
        log = self.workdir / f"step-{self.runs:02d}-{name}.log"
        code, output = self.node.run(argv, env=self.node.driver_env(**env), log=log, timeout=STEP_TIMEOUT)
        print(f"--- step {name}: exit {code}, log {log}")
        return code, output

    def deployed_step(self, name: str, **env: str) -> tuple[int, str]:
        """The step the stack itself adds (its exact arguments)."""
        (args,) = self.deployment.steps.values()
        return self.step(args, name, **env)

    def console_step(self, name: str, *arguments: str, **env: str) -> tuple[int, str]:
        """A step added from the console as the README tells analysts: the application location, the deploy
        mode the stack prints, no spark-submit options, and optional arguments."""
        args = ["spark-submit", "--deploy-mode", self.outputs["StepDeployMode"]]
        return self.step([*args, self.outputs["StepApplicationLocation"], *arguments], name, **env)

    def results(self) -> tuple[str, str]:
        """(bucket, prefix/) of the job's default output, from the stack's outputs."""
        bucket, _, prefix = self.outputs["ResultsUri"].removeprefix("s3://").partition("/")
        return bucket, prefix

    def commits(self) -> list[dict[str, Any]]:
        """The commit objects under the results prefix, oldest first."""
        bucket, prefix = self.results()
        s3 = self.aws.client("s3")
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}_commits/").get("Contents", [])
        keys = sorted(item["Key"] for item in listed)
        return [json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]

    def read(self, key: str) -> bytes:
        """An object of the results prefix."""
        bucket, prefix = self.results()
        return self.aws.client("s3").get_object(Bucket=bucket, Key=prefix + key)["Body"].read()

    def manifest(self) -> dict[str, Any]:
        """The current run's manifest (from its run prefix, as the commit names it)."""
        commit = self.commits()[-1]
        return json.loads(self.read(commit["run_prefix"] + "manifest.json"))


def _requirements() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (it creates the cluster user and the bootstrap's folders)")
    for tool in ("java", "setpriv", "mvn", "npx"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not Path("/usr/bin/python3.11").exists():
        missing.append("/usr/bin/python3.11")
    for name in ("FRUITS_DATA", "FRUITS_WEIGHTS"):
        if not os.environ.get(name):
            missing.append(name)
    if missing:
        pytest.skip("the cloud rehearsal needs " + ", ".join(missing))


def _synthesize(out: Path) -> None:
    context = [arg for key, value in CONTEXT.items() for arg in ("-c", f"{key}={value}")]
    done = subprocess.run(
        [str(REPO / "scripts" / "synth.sh"), *context],
        cwd=REPO,
        env={
            **os.environ,
            "CDK_OUT": str(out),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _jars() -> list[str]:
    done = subprocess.run(
        [str(REPO / "scripts" / "fetch-jars.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    return sorted(str(path) for path in folder.glob("*.jar"))


def _rehearsal_defaults(endpoint: str, jars: list[str]) -> dict[str, str]:
    """What a real cluster has without our configuration and a single machine needs in its place."""
    classpath = ":".join(jars)
    return {
        # EMRFS serves s3:// on EMR; here Hadoop's S3A does, against moto.
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": REGION,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        # Credentials from the environment, as the instance profile's reach every process of a node.
        "spark.hadoop.fs.s3a.aws.credentials.provider": "com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
        "spark.hadoop.fs.s3a.retry.limit": "3",
        "spark.hadoop.fs.s3a.attempts.maximum": "3",
        # EMR puts EMRFS on the classpath the same way (extraClassPath in its own spark-defaults).
        "spark.driver.extraClassPath": classpath,
        "spark.executor.extraClassPath": classpath,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
    }


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[Rehearsal]:
    """Synthesize, deploy to moto, start the node's Spark cluster; tear it all down afterwards."""
    _requirements()
    workdir = Path(tempfile.mkdtemp(prefix="fruits-rehearsal-"))
    workdir.chmod(0o755)  # the cluster user reads the Spark configuration and writes its own folders here
    print(f"rehearsal work folder: {workdir}")
    _synthesize(workdir / "cdk.out")
    deployment = cfn.load(workdir / "cdk.out", REGION)
    (stack,) = [name for name, outputs in deployment.outputs.items() if "ClusterId" in outputs]

    aws = MotoAws(workdir, REGION)
    cluster: StandaloneCluster | None = None
    keras_home = Path(
        deployment.spark_defaults.get(
            "spark.yarn.appMasterEnv.KERAS_HOME", deployment.spark_env.get("KERAS_HOME", "/opt/fruits/keras")
        )
    )
    try:
        with system_folder(Path("/opt/fruits")):
            aws.create_buckets(deployment)
            deployed = aws.deploy_artifacts(deployment)
            print("artifacts:", *deployed, sep="\n  ")
            statements = deployment.instance_role_statements
            role = aws.user("instance-role", statements + moto_compensations(statements))
            aws.enforce_iam()

            # Where the bootstrap keeps pre-fetched ImageNet weights: Keras' cache layout under KERAS_HOME.
            weights = Path(os.environ["FRUITS_WEIGHTS"])
            (keras_home / "models").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, keras_home / "models" / weights.name)

            node = Node(
                workdir=workdir,
                user=ensure_user(),
                credentials=role,
                endpoint=aws.endpoint,
                spark_defaults=deployment.spark_defaults,
                rehearsal_defaults=_rehearsal_defaults(aws.endpoint, _jars()),
            )
            node.preflight(deployment.spark_defaults.get("spark.pyspark.python", "/usr/bin/python3.11"))
            # Workers offer what one executor of the synthesized configuration asks for, so it can start.
            cores = int(deployment.spark_defaults.get("spark.executor.cores", "1"))
            memory = _megabytes(deployment.spark_defaults.get("spark.executor.memory", "1g")) + 512
            cluster = StandaloneCluster(node, workers=2, cores=cores, memory=f"{memory}m")
            yield Rehearsal(workdir, deployment, aws, role, node, cluster, stack)
    finally:
        if cluster is not None:
            cluster.stop()
        aws.stop()
        print(f"rehearsal logs kept in {workdir}")


def _megabytes(size: str) -> int:
    """Spark's memory strings (``3328m``, ``4g``) in MiB."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    text = size.strip().lower().removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text) // (1024 * 1024)


def _reconciles(manifest: dict[str, Any]) -> None:
    counts = manifest["counts"]
    assert counts["found"] == counts["featurized"] + counts["rejected"], counts


def _last_line(output: str, word: str) -> str:
    lines = [line for line in output.splitlines() if word in line]
    return lines[-1] if lines else output[-2000:]


def test_bootstrap_installs_the_runtime_and_leaves_read_only_folders(rehearsal: Rehearsal) -> None:
    s3 = rehearsal.aws.client("s3", rehearsal.role)  # EMR fetches bootstrap scripts with the instance profile
    for index, (uri, args) in enumerate(rehearsal.deployment.bootstrap_actions):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        script = rehearsal.workdir / f"bootstrap-{index}.sh"
        s3.download_file(bucket, key, str(script))
        stand_ins = StandIns.write(rehearsal.workdir / "stand-ins", sys.executable, REGION)
        code, output = run_bootstrap(
            script,
            args,
            node=rehearsal.node,
            stand_ins=stand_ins,
            log=rehearsal.workdir / f"bootstrap-{index}.log",
        )
        assert code == 0, output[-3000:]
    for folder in (Path("/opt/fruits"), *Path("/opt/fruits").rglob("*")):
        info = folder.stat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, f"{folder} must be root-owned and read-only"


def test_deployed_step_on_an_empty_input_completes_without_a_commit(rehearsal: Rehearsal) -> None:
    """A fresh account: the input bucket is empty when the stack's step runs. It must succeed, publish nothing."""
    code, output = rehearsal.deployed_step("deployed-empty-input")
    assert code == 0, output[-3000:]
    assert "nothing to featurize" in output
    assert rehearsal.commits() == []


def test_deployed_step_publishes_a_run(rehearsal: Rehearsal) -> None:
    uploaded = rehearsal.aws.upload_folder(Path(os.environ["FRUITS_DATA"]), rehearsal.outputs["InputUri"])
    code, output = rehearsal.deployed_step("deployed")
    assert code == 0, output[-3000:]
    (commit,) = rehearsal.commits()
    manifest = rehearsal.manifest()
    _reconciles(manifest)
    assert manifest["counts"]["found"] == len(uploaded)
    assert manifest["weights"]["pretrained"] is True and manifest["weights"]["kind"] != "random"
    for name in ("results.csv", "manifest.json", "rejected.csv", "explained_variance.png", "pca_scatter.png"):
        assert rehearsal.read(commit["run_prefix"] + name), name
        assert rehearsal.read(name) == rehearsal.read(commit["run_prefix"] + name), f"published {name}"
    rows = rehearsal.read("results.csv").decode().splitlines()
    assert len(rows) == 1 + manifest["counts"]["featurized"]
    assert rows[0].startswith("path,label,pc_1")
    rejected = rehearsal.read("rejected.csv").decode()
    assert "README.md" in rejected  # the sample's provenance file: found, and rejected with a reason


def test_console_step_with_only_the_script_location(rehearsal: Rehearsal) -> None:
    code, output = rehearsal.console_step("console")
    assert code == 0, _last_line(output, "Error") + "\n" + output[-3000:]
    assert len(rehearsal.commits()) == 2
    manifest = rehearsal.manifest()
    _reconciles(manifest)
    assert manifest["counts"]["newly_featurized"] == 0, "the second run must reuse the S3 feature store"
    assert manifest["counts"]["reused"] == manifest["counts"]["featurized"]


def test_console_step_with_k_5(rehearsal: Rehearsal) -> None:
    code, output = rehearsal.console_step("console-k5", "--k", "5")
    assert code == 0, output[-3000:]
    assert len(rehearsal.commits()) == 3
    manifest = rehearsal.manifest()
    assert manifest["pca"]["k"] == 5 and manifest["counts"]["newly_featurized"] == 0
    assert rehearsal.read("results.csv").decode().splitlines()[0] == "path,label," + ",".join(
        f"pc_{i}" for i in range(1, 6)
    )


def test_operator_downloads_the_latest_run(rehearsal: Rehearsal) -> None:
    rehearsal.aws.put_stack_outputs(rehearsal.stack, rehearsal.outputs)
    dest = rehearsal.workdir / "downloaded"
    env = {
        **os.environ,
        **rehearsal.aws.admin.env(),
        "AWS_ENDPOINT_URL": rehearsal.aws.endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    fruits = Path(sys.executable).parent / "fruits"
    done = subprocess.run(
        [str(fruits), "results", "--stack", rehearsal.stack, "--region", REGION, "--dest", str(dest)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (dest / "results.csv").read_bytes() == rehearsal.read("results.csv")
    assert json.loads((dest / "manifest.json").read_text())["run_id"] == rehearsal.commits()[-1]["run_id"]


def test_driver_killed_while_featurizing_keeps_the_previous_commit(rehearsal: Rehearsal) -> None:
    from tests.conftest import write_image

    before = rehearsal.commits()
    new_images = rehearsal.workdir / "new-images"
    for i in range(4):  # new bytes, so that the next run has something to featurize
        write_image(new_images / "Training" / "Plum Rehearsal" / f"p{i}.jpg", (90, 20, 110), seed=100 + i)
    rehearsal.aws.upload_folder(new_images, rehearsal.outputs["InputUri"])
    code, output = rehearsal.console_step("killed", FRUITS_KILL_AT="featurize")
    assert code != 0 and "killing this run now" in output
    assert rehearsal.commits() == before, "a killed run must not publish"

    code, output = rehearsal.console_step("after-kill")
    assert code == 0, _last_line(output, "error") + "\n" + output[-3000:]
    commits = rehearsal.commits()
    assert len(commits) == len(before) + 1
    manifest = rehearsal.manifest()
    _reconciles(manifest)
    assert manifest["counts"]["newly_featurized"] == 4


def test_two_steps_submitted_together_publish_exactly_one_commit(rehearsal: Rehearsal) -> None:
    before = len(rehearsal.commits())
    results: dict[str, tuple[int, str]] = {}

    def submit(name: str) -> None:
        results[name] = rehearsal.console_step(name)

    threads = [threading.Thread(target=submit, args=(f"together-{i}",)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], {name: output[-1500:] for name, (_, output) in results.items()}
    (refused,) = [output for code, output in results.values() if code == 2]
    assert "output is in use" in refused
    assert len(rehearsal.commits()) == before + 1


def test_every_s3_request_was_allowed_and_signed_for_the_stack_region(rehearsal: Rehearsal) -> None:
    requests_of_role = [r for r in rehearsal.aws.audit() if r["access_key"] == rehearsal.role.access_key]
    assert requests_of_role, "the audit saw no request of the instance role"
    denied = [
        f"{r['status']} {r['method']} {r['path']}?{r['query']}"
        for r in requests_of_role
        if r["status"] == 403
    ]
    assert not denied, "requests the instance role's policy denied:\n" + "\n".join(sorted(set(denied))[:40])
    python_clients = [r for r in requests_of_role if "Boto3" in r["agent"] or "Botocore" in r["agent"]]
    regions = {r["region"] for r in python_clients}
    assert regions == {REGION}, f"boto3 requests were signed for {regions}, the stack's region is {REGION}"
