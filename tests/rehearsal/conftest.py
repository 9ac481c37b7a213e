"""The cloud rehearsal's cluster: everything a first deploy makes, here, from the synthesized templates.

Built once for the module (tests/rehearsal/test_cloud_rehearsal.py runs the scenario against it):

1. the templates (``scripts/synth.sh`` into a scratch ``cdk.out``) and their resolved view (tests.cfn);
2. the network (tests.rehearsal.network): a subnet with a primary and two core nodes, nothing beyond it;
3. AWS: moto's S3 with the templates' buckets and exactly what the BucketDeployments upload, the cluster's
   wheelhouse where the stack's WheelhouseUri says, the instance role in IAM (its S3 statements, enforced), its
   credentials at the metadata address (tests.rehearsal.metadata), the weights' download host (tests.rehearsal.web);
4. the nodes (tests.rehearsal.node): EMR's users, a clean Python 3.11, sudo, the bootstrap action run as EMR runs
   it (as the hadoop user, with the stack's arguments);
5. Hadoop (tests.rehearsal.hadoop): HDFS and YARN daemons from emr-7.13.0's Hadoop line, sized from the stack's
   core instance type, and Spark's configuration as EMR writes it (tests.rehearsal.emr).

It runs only inside ``scripts/rehearse.sh``'s namespaces (``make rehearse``), which checks for root and the tools
first and says in one line what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests import cfn
from tests.rehearsal import emr, network, node
from tests.rehearsal.aws import MotoAws, moto_compensations
from tests.rehearsal.emr_service import EmrService
from tests.rehearsal.hadoop import NAMENODE_PORT, Cluster, HadoopConf, node_dirs
from tests.rehearsal.metadata import MetadataService
from tests.rehearsal.web import Downloads, make_certificates, trusted_bundle

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-3"  # not us-east-1: a client that falls back to us-east-1 is refused, as S3 refuses it
# The shared weights file is Keras' ImageNet file for MobileNet alpha 0.25; the wheelhouse: no egress; autorun:
# the state machine's step is rehearsed too (the cluster's template is the same with it on).
CONTEXT = {"model": "mobilenet", "alpha": "0.25", "wheelhouse": "true", "autorun": "true"}
STEP_TIMEOUT = 900
WEIGHTS_HOST = "storage.googleapis.com"
CORE_LABEL = "CORE"  # EMR's name for the core nodes' label


@dataclass
class Rehearsal:
    """What the scenario shares: the deployment, AWS, the nodes, their users and Hadoop."""

    workdir: Path
    deployment: cfn.Deployment
    stack: str
    aws: MotoAws
    metadata: MetadataService
    downloads: Downloads
    hadoop_user: node.User
    yarn_user: node.User
    hadoop: Cluster
    spark_home: Path
    spark_conf: Path
    bootstrap: tuple[int, str]
    instance_role_key: str
    emr: EmrService | None = None
    runs: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, str]:
        return self.deployment.outputs[self.stack]

    def operator_env(self) -> dict[str, str]:
        """An operator's shell: the administrator's credentials, moto for S3 and CloudFormation, the rehearsal's
        EMR for EMR (botocore's service-specific endpoint variable)."""
        assert self.emr is not None
        return {
            "PATH": os.environ["PATH"],
            "HOME": str(self.workdir),
            **self.aws.admin.env(),
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.aws.endpoint,
            "AWS_ENDPOINT_URL_EMR": self.emr.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",  # the operator is not on a node
        }

    def fruits(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The operator CLI against the deployed stack."""
        command = [sys.executable, "-m", "fruits.ops.cli", *args]
        env = {**self.operator_env(), "PYTHONPATH": str(REPO / "jobs")}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)

    def container_dirs(self, application_id: str, container_id: str) -> list[Path]:
        """The working folders of a container, on whichever node runs it."""
        pattern = f"*/yarn/local/usercache/*/appcache/{application_id}/{container_id}"
        return list((node.STATE / "nodes").glob(pattern))

    def step_env(self) -> dict[str, str]:
        """The environment command-runner gives a step on the primary node (the hadoop user's)."""
        return node.base_env(
            self.hadoop_user,
            SPARK_HOME=str(self.spark_home),
            SPARK_CONF_DIR=str(self.spark_conf),
            HADOOP_CONF_DIR=str(self.hadoop.conf.folder),
        )

    def start_step(self, args: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a step's command on the primary node, as EMR's command-runner does: its arguments exactly,
        found on the node's PATH (spark-submit is Spark's, as /usr/bin/spark-submit is on EMR)."""
        self.runs += 1
        log = self.workdir / f"step-{self.runs:02d}-{name}.log"
        env = {**self.step_env(), "PATH": f"{self.spark_home / 'bin'}:/usr/local/bin:/usr/bin:/bin"}
        process = node.start_on(network.PRIMARY, self.hadoop_user, args, env=env, log=log)
        return process, log


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


def _setting(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the rehearsal through scripts/rehearse.sh (make rehearse)")
    return Path(value)


def _upload_wheelhouse(aws: MotoAws, folder: Path, uri: str) -> int:
    wheels = sorted(folder.glob("*.whl"))
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = aws.client("s3")
    for wheel in wheels:
        s3.upload_file(str(wheel), bucket, prefix + wheel.name)
    return len(wheels)


def _hadoop_conf(workdir: Path, deployment: cfn.Deployment, jars: Path, endpoint: str) -> HadoopConf:
    from fruits_infra.instances import instance_spec

    spec = instance_spec(deployment.core_instance_types[0])
    dirs = node_dirs(node.STATE / "nodes")
    label_site, label_queues = (
        emr.node_labels(CORE_LABEL, f"file://{node.STATE}/nodes/{network.PRIMARY.name}/yarn/node-labels")
        if _labels(deployment)
        else ({}, {})
    )
    core_site = {
        "fs.defaultFS": f"hdfs://{network.PRIMARY.name}:{NAMENODE_PORT}",
        # Since emr-7.10.0 S3A serves s3:// (EMR Release Guide, "Migration guide: EMRFS to S3A").
        "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        **deployment.classifications.get("core-site", {}),
        # Rehearsal stand-ins: where S3 is (moto, plain HTTP, path-style) and its region, which EMR's S3A finds.
        "fs.s3a.endpoint": endpoint,
        "fs.s3a.endpoint.region": REGION,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.retry.limit": "3",
        "fs.s3a.attempts.maximum": "3",
    }
    hdfs_site = {
        "dfs.namenode.name.dir": dirs["dfs.namenode.name.dir"],
        "dfs.datanode.data.dir": dirs["dfs.datanode.data.dir"],
        "dfs.namenode.rpc-address": f"{network.PRIMARY.name}:{NAMENODE_PORT}",
        "dfs.namenode.http-address": f"{network.PRIMARY.name}:9870",
        "dfs.replication": "1",  # EMR's value below four core nodes
        "dfs.permissions.superusergroup": "fruits-hdfs",
        **deployment.classifications.get("hdfs-site", {}),
    }
    yarn_site = {
        "yarn.resourcemanager.hostname": network.PRIMARY.name,
        "yarn.nodemanager.local-dirs": dirs["yarn.nodemanager.local-dirs"],
        "yarn.nodemanager.log-dirs": dirs["yarn.nodemanager.log-dirs"],
        **emr.node_yarn_site(spec, shuffle_classpath=f"{jars / 'shuffle'}/*"),
        **label_site,
        # Container folders stay a while after their container ends: the rehearsal reads the driver's log.
        "yarn.nodemanager.delete.debug-delay-sec": "1200",
        **deployment.classifications.get("yarn-site", {}),
        # Rehearsal stand-in: where S3 is, for boto3 in the containers (on EMR its default endpoint).
        "yarn.nodemanager.admin-env": f"MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX,AWS_ENDPOINT_URL={endpoint}",
    }
    capacity = {
        "yarn.scheduler.capacity.root.queues": "default",
        "yarn.scheduler.capacity.root.default.capacity": "100",
        "yarn.scheduler.capacity.root.default.maximum-capacity": "100",
        # Two application masters at once (the rehearsal runs two steps together to prove the lease).
        "yarn.scheduler.capacity.maximum-am-resource-percent": "0.5",
        **label_queues,
        **deployment.classifications.get("capacity-scheduler", {}),
    }
    return HadoopConf(workdir / "hadoop-conf", core_site, {**hdfs_site}, yarn_site, capacity)


def _labels(deployment: cfn.Deployment) -> tuple[str, ...]:
    """The node labels EMR makes for this cluster: CORE on core nodes when the stack turns labels on."""
    enabled = deployment.classifications.get("yarn-site", {}).get("yarn.node-labels.enabled") == "true"
    return (CORE_LABEL,) if enabled else ()


def _spark_conf(workdir: Path, deployment: cfn.Deployment, spark_home: Path) -> Path:
    folder = workdir / "spark-conf"
    folder.mkdir()
    layers = [
        ('EMR\'s own Spark defaults (EMR Release Guide, "Configure Spark")', emr.EMR_SPARK_DEFAULTS),
        ("The stack's spark-defaults classification, unchanged", deployment.spark_defaults),
        (
            "Rehearsal stand-in: Spark's jars are on every node (as EMR's /usr/lib/spark), not uploaded per step",
            {"spark.yarn.jars": f"local:{spark_home}/jars/*"},
        ),
    ]
    (folder / "spark-defaults.conf").write_text(emr.spark_defaults_conf(layers))
    (folder / "spark-env.sh").write_text(emr.spark_env_sh(deployment.spark_env))
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[Rehearsal]:
    """Synthesize, deploy to moto, bootstrap the nodes, start HDFS and YARN; stop it all afterwards."""
    network.require_isolation()
    jars = _setting("FRUITS_REHEARSAL_JARS")
    wheelhouse = _setting("FRUITS_REHEARSAL_WHEELHOUSE")
    weights = _setting("FRUITS_WEIGHTS")
    _setting("FRUITS_DATA")
    workdir = Path(tempfile.mkdtemp(prefix="fruits-rehearsal-"))
    workdir.chmod(0o755)
    print(f"rehearsal work folder: {workdir}")
    _synthesize(workdir / "cdk.out")
    deployment = cfn.load(workdir / "cdk.out", REGION)
    (stack,) = [name for name, outputs in deployment.outputs.items() if "ClusterId" in outputs]

    network.build([network.PRIMARY, *network.CORE], workdir / "hosts", {WEIGHTS_HOST: network.GATEWAY})
    aws = MotoAws(workdir, REGION, host=network.GATEWAY)
    stoppers: list[Any] = [aws.stop]
    cluster: Cluster | None = None
    try:
        aws.create_buckets(deployment)
        print("artifacts:", *aws.deploy_artifacts(deployment), sep="\n  ")
        wheels = _upload_wheelhouse(aws, wheelhouse, deployment.outputs[stack]["WheelhouseUri"])
        print(f"wheelhouse: {wheels} wheels at {deployment.outputs[stack]['WheelhouseUri']}")
        statements = deployment.instance_role_statements
        role = aws.instance_role("fruits-instance-role", statements + moto_compensations(statements))
        aws.enforce_iam()
        metadata = MetadataService(role, REGION)
        stoppers.append(metadata.stop)

        # The weights' download host, under its real name and a certificate curl trusts.
        (script_uri, bootstrap_args) = deployment.bootstrap_actions[0]
        url = urlparse(bootstrap_args[bootstrap_args.index("--weights-url") + 1])
        assert url.hostname == WEIGHTS_HOST, url
        ca, certificate, key = make_certificates(workdir / "tls", [WEIGHTS_HOST])
        node.bind_mount(trusted_bundle(ca, workdir / "tls"), Path("/etc/ssl/certs/ca-certificates.crt"))
        downloads = Downloads(network.GATEWAY, {url.path: weights}, certificate, key)
        stoppers.append(downloads.stop)

        hadoop_user = node.ensure_user("fruits-hadoop", writable_home=True)
        yarn_user = node.ensure_user("fruits-yarn", writable_home=False)
        hdfs_user = node.ensure_user("fruits-hdfs", writable_home=False)
        node.clean_node(workdir)
        stand_ins = node.StandIns.write(workdir / "stand-ins", REGION, aws.endpoint)
        node.allow_sudo(workdir, hadoop_user, stand_ins.folder)

        bootstrap = _run_bootstrap(workdir, aws, script_uri, bootstrap_args, hadoop_user, stand_ins)
        if bootstrap[0] != 0:
            pytest.fail(f"the bootstrap action failed (exit {bootstrap[0]}):\n{bootstrap[1][-3000:]}")

        spark_home = node.spark_home(jars)
        conf = _hadoop_conf(workdir, deployment, jars, aws.endpoint)
        conf.write()
        for host in (network.PRIMARY, *network.CORE):
            root = node.STATE / "nodes" / host.name
            shutil.rmtree(root, ignore_errors=True)
            for sub, owner in (("yarn", yarn_user), ("hdfs", hdfs_user), ("tmp", yarn_user)):
                node.owned_folder(root / sub, owner)
            (root).chmod(0o755)
        logs = node.owned_folder(workdir / "daemons", yarn_user, 0o777)

        def run_as(host: network.Host, argv: list[str], *, env: dict[str, str], log: Path) -> Any:
            user = hdfs_user if any("hdfs.server" in a for a in argv) else yarn_user
            env = {**node.base_env(user), "HADOOP_CONF_DIR": str(conf.folder), **env}
            return node.start_on(host, user, argv, env=env, log=log)

        cluster = Cluster(conf, jars, network.PRIMARY, network.CORE, logs, run_as, {})

        def hdfs_dirs() -> None:
            for path, owner, mode in (
                ("/tmp", "fruits-hdfs", "1777"),
                ("/user/fruits-hadoop", "fruits-hadoop", "755"),
            ):
                _hdfs(cluster, hdfs_user, ["-mkdir", "-p", path])
                _hdfs(cluster, hdfs_user, ["-chown", owner, path])
                _hdfs(cluster, hdfs_user, ["-chmod", mode, path])

        cluster.start(hdfs_dirs, labels=_labels(deployment))
        rehearsal = Rehearsal(
            workdir=workdir,
            deployment=deployment,
            stack=stack,
            aws=aws,
            metadata=metadata,
            downloads=downloads,
            hadoop_user=hadoop_user,
            yarn_user=yarn_user,
            hadoop=cluster,
            spark_home=spark_home,
            spark_conf=_spark_conf(workdir, deployment, spark_home),
            bootstrap=bootstrap,
            instance_role_key=role.access_key,
        )
        rehearsal.emr = _emr(rehearsal)
        stoppers.append(rehearsal.emr.stop)
        aws.put_stack_outputs(stack, deployment.outputs[stack])  # what the operator CLI reads
        yield rehearsal
    finally:
        if cluster is not None:
            cluster.stop()
        for stop in reversed(stoppers):
            stop()
        print(f"rehearsal logs kept in {workdir}")


def _emr(rehearsal: Rehearsal) -> EmrService:
    """EMR's API and step runner for the cluster, pushing logs to the stack's LogUri."""
    log_uri = rehearsal.outputs["LogUri"]
    bucket, _, prefix = log_uri.removeprefix("s3://").partition("/")
    s3 = rehearsal.aws.client("s3")

    def put_log(key: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=prefix + key, Body=data)

    def container_logs(application_id: str) -> list[tuple[str, str, Path]]:
        found = []
        for path in sorted((node.STATE / "nodes").glob(f"*/yarn/logs/{application_id}/*/std*")):
            found.append((path.parent.name, path.name, path))
        return found

    return EmrService(
        cluster_id=rehearsal.outputs["ClusterId"],
        cluster_name=rehearsal.deployment.cluster_name,
        log_uri=log_uri,
        start_step=rehearsal.start_step,
        container_logs=container_logs,
        put_log=put_log,
        address=network.GATEWAY,
    )


def _hdfs(cluster: Cluster, user: node.User, args: list[str]) -> None:
    from tests.rehearsal.hadoop import ADD_OPENS, daemon_classpath

    log = cluster.logs / "hdfs-setup.log"
    argv = ["java", "-Xmx256m", *ADD_OPENS, "-cp", daemon_classpath(cluster.jars, cluster.conf.folder),
            "org.apache.hadoop.fs.FsShell", *args]  # fmt: skip
    env = {**node.base_env(user), "HADOOP_CONF_DIR": str(cluster.conf.folder)}
    code, output = node.run_on(network.PRIMARY, user, argv, env=env, log=log, timeout=120)
    assert code == 0, output[-2000:]


def _run_bootstrap(
    workdir: Path, aws: MotoAws, script_uri: str, args: list[str], user: node.User, stand_ins: node.StandIns
) -> tuple[int, str]:
    """The stack's bootstrap action as EMR runs it: fetched from S3 with the instance profile, run as the
    hadoop user with the stack's arguments, the platform's dnf and aws CLI stood in."""
    bucket, _, key = script_uri.removeprefix("s3://").partition("/")
    script = workdir / "bootstrap-action.sh"
    aws.client("s3").download_file(bucket, key, str(script))  # EMR fetches it; who fetches is not rehearsed
    script.chmod(0o755)
    env = node.base_env(
        user,
        PATH=f"{stand_ins.folder}:/usr/local/bin:/usr/bin:/bin",
        FRUITS_RETRY_DELAY="1",  # the retries still happen, without minutes of sleeping
        PIP_BREAK_SYSTEM_PACKAGES="1",  # Debian's python3.11 is marked externally managed; AL2023's is not
    )
    return node.run_on(
        network.PRIMARY,
        user,
        ["bash", str(script), *args],
        env=env,
        log=workdir / "bootstrap.log",
        timeout=900,
    )
