"""The nodes' side of the rehearsal: EMR's users, a clean Python for the bootstrap to fill, Spark, the stand-ins.

What each piece stands for on EMR:

- ``fruits-hadoop``: EMR's ``hadoop`` user, which runs bootstrap actions and steps, with passwordless ``sudo``
  (a real sudo, through a sudoers rule in this mount namespace); ``fruits-yarn``: YARN's service user, which runs
  the ResourceManager, the NodeManagers and every container (the job's driver and executors), whose home it
  cannot write; ``fruits-hdfs``: HDFS's;
- ``/usr/bin/python3.11`` with nothing in its site-packages but what the bootstrap installs: an empty folder is
  mounted over ``/usr/local/lib/python3.11/dist-packages`` (and ``/usr/local/bin``, where pip puts scripts) in
  this mount namespace, so the bootstrap's real ``pip install`` fills a clean interpreter and leaves the machine
  as it was;
- a Spark distribution as EMR's Spark 3.5.6 runs it: pyspark's own (the version the tests pin), on Hadoop 3.4.2
  client jars with S3A (hadoop-aws 3.4.2 and the AWS SDK v2 bundle) in ``jars/``;
- the platform's commands the bootstrap calls that this machine does not have: ``dnf`` (Amazon Linux's package
  manager; python3.11 is here already) and the ``aws`` CLI's ``s3 cp`` (boto3, the instance profile's
  credentials from the metadata service, like the CLI on EC2).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.rehearsal.network import Host

STATE = Path("/var/lib/fruits-rehearsal")
CLUSTER_PYTHON = "/usr/bin/python3.11"
#: Mounted empty (root-owned) for the rehearsal: the interpreter's site-packages and pip's scripts folder, and
#: the bootstrap's own folder, so that every run starts from a node where nothing was installed.
CLEAN_FOLDERS = (Path("/usr/local/lib/python3.11/dist-packages"), Path("/usr/local/bin"), Path("/opt/fruits"))


@dataclass(frozen=True)
class User:
    """A system user of the cluster."""

    name: str
    uid: int
    gid: int
    home: Path

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as this user (``setpriv`` keeps the environment the caller passes)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]


def ensure_user(name: str, *, writable_home: bool) -> User:
    """A system user (created once), its home under /var/lib/fruits-rehearsal, writable by it or not."""
    home = STATE / "home" / name
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
             "--shell", "/bin/bash", name],
            check=True,
        )  # fmt: skip
        entry = pwd.getpwnam(name)
    home.mkdir(parents=True, exist_ok=True)
    owner = (entry.pw_uid, entry.pw_gid) if writable_home else (0, 0)
    os.chown(home, *owner)
    home.chmod(0o755)
    return User(name, entry.pw_uid, entry.pw_gid, home)


def owned_folder(path: Path, user: User, mode: int = 0o755) -> Path:
    """``path`` (made if missing) owned by ``user``."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.uid, user.gid)
    path.chmod(mode)
    return path


def java_home() -> str:
    """The JDK the machine's ``java`` belongs to."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not on PATH")
    return str(Path(java).resolve().parents[1])


def base_env(user: User, **extra: str) -> dict[str, str]:
    """The environment of a process of the cluster: no AWS variables (credentials come from the metadata
    service, as on EC2), nothing of the caller's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(user.home),
        "USER": user.name,
        "LANG": "C.UTF-8",
        "JAVA_HOME": java_home(),
        **extra,
    }


def start_on(host: Host, user: User, argv: Sequence[str], *, env: Mapping[str, str], log: Path,
             cwd: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``argv`` on ``host`` as ``user``; its output goes to ``log``."""
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            host.command(user.command(argv)), env=dict(env), stdout=handle, stderr=subprocess.STDOUT,
            cwd=cwd or user.home, start_new_session=True,
        )  # fmt: skip


def run_on(host: Host, user: User, argv: Sequence[str], *, env: Mapping[str, str], log: Path,
           timeout: float, cwd: Path | None = None) -> tuple[int, str]:  # fmt: skip
    """Run ``argv`` on ``host`` as ``user`` to its end; (exit status, its output), the output kept in ``log``."""
    process = start_on(host, user, argv, env=env, log=log, cwd=cwd)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return code, log.read_text(errors="replace")


# --- what the node's root sets up -------------------------------------------------------------------------


def bind_mount(source: Path, target: Path) -> None:
    """``source`` seen at ``target`` in this mount namespace only."""
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def clean_node(workdir: Path) -> None:
    """A fresh node's folders (CLEAN_FOLDERS): empty, root-owned, in this mount namespace only."""
    for index, target in enumerate(CLEAN_FOLDERS):
        empty = workdir / "clean-node" / str(index)
        empty.mkdir(parents=True, exist_ok=True)
        empty.chmod(0o755)
        target.mkdir(parents=True, exist_ok=True)
        bind_mount(empty, target)


def allow_sudo(workdir: Path, user: User, stand_ins: Path) -> None:
    """Passwordless sudo for ``user``, as EMR gives its hadoop user; sudo finds the stand-ins first (it finds the
    real dnf on EMR) and keeps PIP_BREAK_SYSTEM_PACKAGES (Debian marks its python3.11 externally managed, PEP
    668; Amazon Linux 2023's is not)."""
    folder = workdir / "sudoers.d"
    folder.mkdir(exist_ok=True)
    rule = folder / "fruits-rehearsal"
    rule.write_text(
        f'Defaults:{user.name} secure_path="{stand_ins}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
        f'Defaults:{user.name} env_keep += "PIP_BREAK_SYSTEM_PACKAGES"\n'
        f"{user.name} ALL=(ALL) NOPASSWD: ALL\n"
    )
    rule.chmod(0o440)
    folder.chmod(0o755)
    bind_mount(folder, Path("/etc/sudoers.d"))
    checked = subprocess.run(["visudo", "-c"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"sudoers rule refused: {checked.stdout}{checked.stderr}")


def spark_home(jars: Path) -> Path:
    """Spark as the cluster runs it: pyspark's distribution with emr-7.13.0's Hadoop client jars and S3A.

    Kept under /var/lib (readable by the cluster's users, unlike a checkout in /root); rebuilt when the jars or
    pyspark change. Hard links where the file system allows, else copies.
    """
    import pyspark

    source = Path(pyspark.__file__).parent
    stamp_text = f"{source} {Path(pyspark.__file__).stat().st_mtime_ns} {jars}"
    home = STATE / f"spark-{pyspark.__version__}"
    stamp = home / ".built-from"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["cp", "-al", str(source), str(home)], capture_output=True).returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(source, home, symlinks=True)
    swapped = (
        "hadoop-client-api-",
        "hadoop-client-runtime-",
        "hadoop-yarn-server-web-proxy-",
        "hadoop-shaded-guava-",
    )
    for jar in (home / "jars").glob("*.jar"):
        if jar.name.startswith(swapped):
            jar.unlink()
    wanted = ("hadoop-client-api-", "hadoop-client-runtime-", "hadoop-yarn-server-web-proxy-", "hadoop-aws-",
              "hadoop-shaded-guava-", "bundle-")  # fmt: skip
    for jar in (jars / "hadoop").glob("*.jar"):
        if jar.name.startswith(wanted):
            shutil.copyfile(jar, home / "jars" / jar.name)
    for folder in [home, *(p for p in home.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(folder.stat().st_mode | 0o755)
    for path in (home / "jars").glob("*.jar"):
        path.chmod(0o644)
    stamp.write_text(stamp_text)
    return home


#: What the aws CLI stand-in imports (boto3 and its dependencies), copied where the cluster's users can read it.
AWS_CLI_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")


def aws_cli_packages() -> Path:
    """boto3 and its dependencies under /var/lib (the aws CLI brings its own on EC2; a checkout's venv may sit in
    a home others cannot read)."""
    import boto3

    site = Path(boto3.__file__).parents[1]
    target = STATE / "aws-cli"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in AWS_CLI_PACKAGES:
        source = site / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target / name)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@dataclass(frozen=True)
class StandIns:
    """The platform's commands a bootstrap action calls that this machine lacks: ``dnf`` and ``aws s3 cp``."""

    folder: Path

    @classmethod
    def write(cls, folder: Path, region: str, endpoint: str) -> StandIns:
        """``dnf`` checks it was asked for Python 3.11 (it is installed here); ``aws s3 cp [--recursive]``
        copies from S3 with boto3 and the node's credentials (the metadata service's)."""
        folder.mkdir(parents=True, exist_ok=True)
        packages = aws_cli_packages()
        scripts = {
            "dnf": textwrap.dedent(
                f"""\
                #!/bin/sh
                echo "dnf (rehearsal stand-in, python3.11 is installed): $*" >&2
                case " $* " in *" python3.11 "*) [ -x {CLUSTER_PYTHON} ] && exit 0 ;; esac
                echo "dnf (rehearsal stand-in): cannot install $*" >&2
                exit 1
                """
            ),
            "aws": textwrap.dedent(
                f"""\
                #!{CLUSTER_PYTHON} -I
                import os, sys
                sys.path.insert(0, "{packages}")
                import boto3
                args = [a for a in sys.argv[1:] if a != "--only-show-errors"]
                recursive = "--recursive" in args
                args = [a for a in args if a != "--recursive"]
                if args[:2] != ["s3", "cp"] or len(args) != 4 or not args[2].startswith("s3://"):
                    sys.exit(f"aws (rehearsal stand-in) supports only: aws s3 cp [--recursive] s3://... PATH; got {{args}}")
                bucket, _, key = args[2][5:].partition("/")
                client = boto3.client("s3", endpoint_url="{endpoint}", region_name="{region}")
                try:
                    if not recursive:
                        client.download_file(bucket, key, args[3])
                        sys.exit(0)
                    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
                    for item in (i for page in pages for i in page.get("Contents", [])):
                        target = os.path.join(args[3], item["Key"][len(key):].lstrip("/"))
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        client.download_file(bucket, item["Key"], target)
                except Exception as error:
                    sys.exit(f"download failed: {{args[2]}}: {{error}}")
                """
            ),
        }
        for name, text in scripts.items():
            path = folder / name
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IROTH)
        folder.chmod(0o755)
        return cls(folder)
