"""The cluster side of the rehearsal: a node's user, folders and environment, its bootstrap, and Spark on it.

What each piece stands in for on EMR:

- the ``fruits-yarn`` user with a home it cannot write: YARN's container user (processes are never root);
- ``/usr/bin/python3.11`` with the project's packages on ``PYTHONPATH``: the interpreter the bootstrap installs
  system-wide (the venv's site-packages hold exactly the pins of requirements.txt, plus test tools);
- the environment: the instance profile's credentials (an IAM user holding the instance role's S3 statements),
  no ``AWS_REGION``/``AWS_DEFAULT_REGION`` unless the cluster's configuration sets them, and no route out (an
  HTTP(S) proxy on a closed loopback port makes every download fail at once, even on a machine with internet);
- a Spark standalone master and two workers on 127.0.0.1: executors in their own JVMs and working folders, with
  their own Python workers, as on a cluster. Standalone has no cluster deploy mode for Python, so steps run in
  client mode, and the driver gets the environment YARN would give the application master
  (``spark.yarn.appMasterEnv.*``) instead of ``spark-env.sh``, which YARN does not source for cluster-mode
  containers.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.rehearsal.aws import Credentials

USER = "fruits-yarn"
HOME = Path("/var/lib/fruits-rehearsal/home")
NO_ROUTE = "http://127.0.0.1:9"  # nothing listens on the discard port: a download fails at once, never hangs
APP_MASTER_ENV = "spark.yarn.appMasterEnv."


@dataclass(frozen=True)
class ClusterUser:
    """The unprivileged user every Spark process runs as."""

    name: str
    uid: int
    gid: int
    home: Path

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run as this user (``setpriv`` keeps the environment the caller passes)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *argv]


def ensure_user() -> ClusterUser:
    """Create the cluster user once (a system user whose home exists, owned by root, not writable by it)."""
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(HOME),
             "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )  # fmt: skip
        entry = pwd.getpwnam(USER)
    HOME.mkdir(parents=True, exist_ok=True)
    os.chown(HOME, 0, 0)
    HOME.chmod(0o755)
    grp.getgrgid(entry.pw_gid)
    return ClusterUser(USER, entry.pw_uid, entry.pw_gid, HOME)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


STAGED_PACKAGES = Path("/var/lib/fruits-rehearsal/site-packages")


def _open_to_others(path: Path) -> bool:
    """True when a user who is neither owner nor in the group can reach ``path`` and list it."""
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in [path, *path.parents])


def site_packages() -> str:
    """Where the cluster user finds the project's pinned packages: this interpreter's venv when others can reach
    it, else a hard-linked copy under /var/lib (a clone inside a private home such as /root, mode 0700)."""
    venv = Path(sysconfig.get_paths()["purelib"])
    if _open_to_others(venv):
        return str(venv)
    stamp = STAGED_PACKAGES / ".staged-from"
    source = f"{venv} {venv.stat().st_mtime_ns}"
    if not (stamp.exists() and stamp.read_text() == source):
        shutil.rmtree(STAGED_PACKAGES, ignore_errors=True)
        STAGED_PACKAGES.parent.mkdir(parents=True, exist_ok=True)
        # Hard links cost nothing on the same file system; a copy otherwise. Files keep their (world-readable)
        # modes; the new folders are 0755.
        linked = subprocess.run(["cp", "-al", str(venv), str(STAGED_PACKAGES)], capture_output=True)
        if linked.returncode != 0:
            shutil.rmtree(STAGED_PACKAGES, ignore_errors=True)
            shutil.copytree(venv, STAGED_PACKAGES, symlinks=True)
        for folder in [
            STAGED_PACKAGES,
            *(p for p in STAGED_PACKAGES.rglob("*") if p.is_dir() and not p.is_symlink()),
        ]:
            folder.chmod(folder.stat().st_mode | 0o755)
        stamp.write_text(source)
    return str(STAGED_PACKAGES)


def spark_home() -> Path:
    """The pyspark installation's Spark home (bin/spark-class, bin/spark-submit, jars/), as the cluster user
    reaches it."""
    return Path(site_packages()) / "pyspark"


@dataclass
class Node:
    """A cluster node: its user, environment and Spark configuration folder."""

    workdir: Path
    user: ClusterUser
    credentials: Credentials
    endpoint: str
    spark_defaults: dict[str, str]
    rehearsal_defaults: dict[str, str]
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.conf_dir = self.workdir / "spark-conf"
        self.conf_dir.mkdir(exist_ok=True)
        lines = ["# The synthesized cluster's spark-defaults classification, unchanged."]
        lines += [f"{key} {value}" for key, value in self.spark_defaults.items()]
        lines += [
            "",
            "# Rehearsal only: the s3 scheme through S3A against moto on 127.0.0.1, loopback networking.",
        ]
        lines += [f"{key} {value}" for key, value in self.rehearsal_defaults.items()]
        (self.conf_dir / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
        self.conf_dir.chmod(0o755)

    def writable_dir(self, name: str) -> Path:
        """A folder under the work dir that the cluster user owns (work dirs, logs)."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.user.uid, self.user.gid)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process on the node (daemons, executors and their Python workers)."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.user.home),
            "LANG": "C.UTF-8",
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(self.conf_dir),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYTHONPATH": site_packages(),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **{name: NO_ROUTE for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            **self.credentials.env(),
            **self.extra_env,
            **extra,
        }
        if os.environ.get("JAVA_HOME"):
            env["JAVA_HOME"] = os.environ["JAVA_HOME"]
        return env

    def driver_env(self, **extra: str) -> dict[str, str]:
        """What YARN gives a cluster-mode driver: the node's environment plus ``spark.yarn.appMasterEnv.*``."""
        master_env = {
            key.removeprefix(APP_MASTER_ENV): value
            for key, value in self.spark_defaults.items()
            if key.startswith(APP_MASTER_ENV)
        }
        return self.env(**master_env, **extra)

    def run(self, argv: list[str], *, env: dict[str, str], log: Path, timeout: float) -> tuple[int, str]:
        """Run ``argv`` as the cluster user; (exit status, combined output), the output also kept in ``log``."""
        with open(log, "wb") as handle:
            done = subprocess.run(
                self.user.command(argv), env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                cwd=self.writable_dir("cwd"),
            )  # fmt: skip
        return done.returncode, log.read_text(errors="replace")

    def preflight(self, python: str) -> None:
        """Fail with one clear sentence when the cluster user cannot run the cluster's Python with the packages."""
        code, output = self.run(
            [python, "-c", "import numpy, pandas, pyarrow, PIL, ai_edge_litert, pyspark, boto3, keras"],
            env=self.env(),
            log=self.workdir / "preflight.log",
            timeout=300,
        )
        if code != 0:
            raise RuntimeError(
                f"{self.user.name} cannot import the pinned packages with {python} and PYTHONPATH={site_packages()} "
                f"(every parent folder of the venv must be readable by others):\n{output[-2000:]}"
            )


class StandaloneCluster:
    """A Spark standalone master and workers on 127.0.0.1, running as the cluster user."""

    def __init__(self, node: Node, *, workers: int = 2, cores: int = 1, memory: str = "2g") -> None:
        self.node = node
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        port, ui_port = free_port(), free_port()
        self.master_url = f"spark://127.0.0.1:{port}"
        self.ui = f"http://127.0.0.1:{ui_port}"
        spark_class = str(spark_home() / "bin" / "spark-class")
        self._start(
            "master",
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui_port)],
        )  # fmt: skip
        self._wait(lambda: self._alive_workers() is not None, "the master to listen")
        for index in range(workers):
            work_dir = node.writable_dir(f"worker-{index}")
            self._start(
                f"worker-{index}",
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--port", str(free_port()), "--webui-port", str(free_port()), "--cores", str(cores),
                 "--memory", memory, "--work-dir", str(work_dir), self.master_url],
            )  # fmt: skip
        self._wait(lambda: self._alive_workers() == workers, f"{workers} workers to register")

    def _start(self, name: str, argv: list[str]) -> None:
        log = self.node.workdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as handle:  # the daemon keeps its own copy of the descriptor
            process = subprocess.Popen(
                self.node.user.command(argv), env=self.node.env(), stdout=handle, stderr=subprocess.STDOUT,
                cwd=self.node.writable_dir("cwd"),
            )  # fmt: skip
        self.processes.append(process)

    def _alive_workers(self) -> int | None:
        try:
            return int(requests.get(f"{self.ui}/json", timeout=2).json().get("aliveworkers", 0))
        except (requests.RequestException, ValueError):
            return None

    def _wait(self, ready: object, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in self.logs
                )
                raise RuntimeError(f"Spark standalone: gave up waiting for {what}\n{tails}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the workers, then the master."""
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def local_step(step_args: list[str], master: str) -> list[str]:
    """spark-submit arguments of an EMR step, run here: drop command-runner's ``spark-submit``, swap only the
    deploy mode (cluster -> client: standalone has no cluster mode for Python) and add the master."""
    if not step_args or step_args[0] != "spark-submit":
        raise ValueError(f"not a spark-submit step: {step_args}")
    args = list(step_args[1:])
    if "--deploy-mode" in args:
        args[args.index("--deploy-mode") + 1] = "client"
    else:
        args = ["--deploy-mode", "client", *args]
    return ["--master", master, *args]


@dataclass(frozen=True)
class StandIns:
    """Commands a bootstrap action calls that are the platform's, not the project's: EMR's sudo, dnf and aws."""

    folder: Path

    @classmethod
    def write(cls, folder: Path, python: str, region: str) -> StandIns:
        """``sudo`` runs the command (we are root), ``dnf`` does nothing (python3.11 is there), ``aws s3 cp``
        copies from the moto server with the node's credentials."""
        folder.mkdir(parents=True, exist_ok=True)
        scripts = {
            "sudo": '#!/bin/sh\nexec "$@"\n',
            "dnf": '#!/bin/sh\necho "dnf (rehearsal stand-in): $*" >&2\n',
            "aws": textwrap.dedent(
                f"""\
                #!{python}
                import os, sys
                import boto3
                args = [a for a in sys.argv[1:] if not a.startswith("--only-show-errors")]
                if args[:2] != ["s3", "cp"] or len(args) != 4 or not args[2].startswith("s3://"):
                    sys.exit(f"aws (rehearsal stand-in) supports only: aws s3 cp s3://bucket/key FILE; got {{args}}")
                bucket, _, key = args[2][5:].partition("/")
                client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                                      region_name="{region}")  # the CLI on EC2 takes the node's region
                try:
                    client.download_file(bucket, key, args[3])
                except Exception as error:
                    sys.exit(f"download failed: {{args[2]}}: {{error}}")
                """
            ),
        }
        for name, text in scripts.items():
            path = folder / name
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return cls(folder)


def run_bootstrap(
    script: Path, args: list[str], *, node: Node, stand_ins: StandIns, log: Path, timeout: float = 900
) -> tuple[int, str]:
    """Run a bootstrap action as EMR does (as root through sudo here), with the platform's commands stood in.

    ``FRUITS_PYTHON`` is this interpreter: its site-packages are what ``/usr/bin/python3.11`` sees in the
    rehearsal, so the bootstrap's install and its check of the pins act on the very packages Spark will use.
    """
    env = {
        **node.env(),
        "HOME": str(node.workdir / "bootstrap-home"),
        "PATH": f"{stand_ins.folder}:/usr/local/bin:/usr/bin:/bin",
        "FRUITS_PYTHON": sys.executable,
        "FRUITS_RETRY_DELAY": "1",  # the retries still happen, without minutes of sleeping
        "PYTHONPATH": "",
    }
    Path(env["HOME"]).mkdir(exist_ok=True)
    with open(log, "wb") as handle:
        done = subprocess.run(
            ["bash", str(script), *args], env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
        )
    return done.returncode, log.read_text(errors="replace")


@contextlib.contextmanager
def system_folder(path: Path):  # type: ignore[no-untyped-def]
    """Yield ``path``; remove it afterwards if it did not exist before (the rehearsal writes /opt/fruits)."""
    existed = path.exists()
    try:
        yield path
    finally:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
