"""emr-7.13.0's Hadoop on the rehearsal's nodes: HDFS and YARN daemons in JVMs of their own, and YARN's answers.

Each daemon is the real one, from Maven (tests/rehearsal/maven/emr-hadoop.pom.xml, Hadoop 3.4.2 as emr-7.13.0
ships), started as EMR starts them: the NameNode and the ResourceManager on the primary node, a DataNode and a
NodeManager on each core node, each on its own host (tests.rehearsal.network) as the cluster's service user.
They read one configuration folder (``core-site.xml``, ``hdfs-site.xml``, ``yarn-site.xml``,
``capacity-scheduler.xml``), written from tests.rehearsal.emr's layers; what differs per node (its folders) comes
from the JVM's ``-Dfruits.node=<host>``, which Hadoop's configuration expands in ``${fruits.node}``.

:class:`Yarn` answers as the ResourceManager's REST API does (https://hadoop.apache.org/docs/r3.4.2/
hadoop-yarn/hadoop-yarn-site/ResourceManagerRest.html): nodes, applications, their final status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rehearsal.emr import site_xml
from tests.rehearsal.network import Host

#: Java 17 runs Hadoop 3.4 with these packages of java.base opened (its reflection on JDK internals).
ADD_OPENS = [
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.lang", "java.util", "java.lang.reflect", "java.io", "java.net", "java.nio", "sun.nio.ch",
        "java.util.concurrent", "java.util.concurrent.atomic", "sun.net.dns", "sun.net.util",
    )
]  # fmt: skip
NAMENODE_PORT = 8020
RM_WEB_PORT = 8088
NM_WEB_PORT = 8042
ENDED = frozenset({"FINISHED", "FAILED", "KILLED"})

_LOG4J = """\
log4j.rootLogger=INFO,console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{HH:mm:ss} %p %c{2}: %m%n
log4j.logger.org.apache.hadoop.yarn.server.nodemanager.containermanager.monitor=INFO
log4j.logger.com.sun.jersey=WARN
log4j.logger.org.eclipse.jetty=WARN
"""


def daemon_classpath(jars: Path, conf_dir: Path) -> str:
    """The configuration folder, then every Hadoop jar but the shaded client ones (the daemons load the real
    classes; the client jars repackage the same ones)."""
    names = sorted(p for p in (jars / "hadoop").glob("*.jar") if not p.name.startswith("hadoop-client-"))
    return ":".join([str(conf_dir), *map(str, names)])


@dataclass
class HadoopConf:
    """The configuration folder every daemon and client of the cluster reads (EMR's /etc/hadoop/conf)."""

    folder: Path
    core_site: dict[str, str]
    hdfs_site: dict[str, str]
    yarn_site: dict[str, str]
    capacity_scheduler: dict[str, str]

    def write(self) -> Path:
        """Write the files (world-readable: every service user reads them)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        files = {
            "core-site.xml": site_xml(self.core_site),
            "hdfs-site.xml": site_xml(self.hdfs_site),
            "yarn-site.xml": site_xml(self.yarn_site),
            "capacity-scheduler.xml": site_xml(self.capacity_scheduler),
            "log4j.properties": _LOG4J,
        }
        for name, text in files.items():
            (self.folder / name).write_text(text)
            (self.folder / name).chmod(0o644)
        # HDFS's web servers look for their (static) web apps on the class path; Maven's hadoop-hdfs jar has none
        # (a distribution keeps them in share/hadoop/hdfs/webapps). Empty ones serve /jmx, all that is read here.
        for app in ("hdfs", "datanode"):
            (self.folder / "webapps" / app).mkdir(parents=True, exist_ok=True)
        for folder in (self.folder, self.folder / "webapps", *(self.folder / "webapps").iterdir()):
            folder.chmod(0o755)
        return self.folder


@dataclass
class Daemon:
    """One JVM of the cluster: where it runs, its process and its log."""

    name: str
    host: Host
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (a daemon's graceful stop: a NodeManager tells the ResourceManager it leaves), then KILL."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Cluster:
    """HDFS and YARN on the rehearsal's hosts; start with :meth:`start`, stop with :meth:`stop`.

    ``run_as(host, argv, env, log)`` starts a process on a host as the cluster's service user (tests.rehearsal.node
    provides it); ``java_env`` is the daemons' environment.
    """

    conf: HadoopConf
    jars: Path
    primary: Host
    core: tuple[Host, ...]
    logs: Path
    run_as: Callable[..., subprocess.Popen[bytes]]
    java_env: Mapping[str, str]
    heap_mb: Mapping[str, int] = field(
        default_factory=lambda: {"namenode": 384, "datanode": 256, "resourcemanager": 512, "nodemanager": 384}
    )
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def rm_web(self) -> str:
        return f"http://{self.primary.name}:{RM_WEB_PORT}"

    def _java(self, role: str, main: str, host: Host, *args: str) -> Daemon:
        log = self.logs / f"{role}-{host.name}.log"
        argv = [
            "java", f"-Xmx{self.heap_mb[role]}m", *ADD_OPENS, f"-Dfruits.node={host.name}",
            "-Dhadoop.log.dir=" + str(self.logs), "-cp", daemon_classpath(self.jars, self.conf.folder), main, *args,
        ]  # fmt: skip
        daemon = Daemon(role, host, self.run_as(host, argv, env=dict(self.java_env), log=log), log)
        self.daemons.append(daemon)
        return daemon

    def start(
        self, hdfs_dirs: Callable[[], None], labels: tuple[str, ...] = (), timeout: float = 180
    ) -> None:
        """Format and start HDFS, make its folders (``hdfs_dirs``, as the HDFS superuser), then start YARN (with
        the node ``labels`` in the cluster, before any NodeManager reports one); wait until every NodeManager is
        RUNNING."""
        format_log = self.logs / "namenode-format.log"
        formatted = self.run_as(
            self.primary,
            ["java", "-Xmx256m", *ADD_OPENS, f"-Dfruits.node={self.primary.name}", "-cp",
             daemon_classpath(self.jars, self.conf.folder), "org.apache.hadoop.hdfs.server.namenode.NameNode",
             "-format", "-nonInteractive", "-force"],
            env=dict(self.java_env), log=format_log,
        )  # fmt: skip
        if formatted.wait(timeout=120) != 0:
            raise RuntimeError(f"HDFS format failed:\n{format_log.read_text()[-2000:]}")
        self._java("namenode", "org.apache.hadoop.hdfs.server.namenode.NameNode", self.primary)
        for host in self.core:
            self._java("datanode", "org.apache.hadoop.hdfs.server.datanode.DataNode", host)
        self._wait(lambda: self._datanodes() == len(self.core), "HDFS: every DataNode live", timeout)
        hdfs_dirs()
        self._java(
            "resourcemanager", "org.apache.hadoop.yarn.server.resourcemanager.ResourceManager", self.primary
        )
        self._wait(lambda: self._get(f"{self.rm_web}/ws/v1/cluster/info")["clusterInfo"]["state"] == "STARTED",
                   "YARN: the ResourceManager started", timeout)  # fmt: skip
        for label in labels:
            self.add_node_label(label)
        for host in self.core:
            self.start_nodemanager(host)
        self._wait(
            lambda: len(self.running_nodes()) == len(self.core), "YARN: every NodeManager RUNNING", timeout
        )

    def start_nodemanager(self, host: Host) -> Daemon:
        """A NodeManager on ``host`` (again, after :meth:`stop_nodemanager`)."""
        return self._java("nodemanager", "org.apache.hadoop.yarn.server.nodemanager.NodeManager", host)

    def stop_nodemanager(self, host: Host) -> None:
        """Take ``host`` out of service, as EMR does when it shrinks the cluster: its NodeManager leaves."""
        for daemon in self.daemons:
            if daemon.name == "nodemanager" and daemon.host == host and daemon.alive():
                daemon.stop()
        self._wait(lambda: host.name not in self.running_nodes(), f"YARN: {host.name} out of service", 60)

    def stop(self) -> None:
        """NodeManagers and DataNodes first, then the ResourceManager and the NameNode."""
        order = {"nodemanager": 0, "datanode": 1, "resourcemanager": 2, "namenode": 3}
        for daemon in sorted(self.daemons, key=lambda d: order[d.name]):
            daemon.stop()

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
                pass
            dead = [d for d in self.daemons if not d.alive() and d.process.returncode not in (0, 143)]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {d.name} on {d.host.name} ({d.log})\n{d.tail()}" for d in self.daemons
                )
                raise RuntimeError(f"gave up waiting for {what}\n{tails}")
            time.sleep(1)

    def add_node_label(self, label: str) -> None:
        """A non-exclusive node label in the cluster (``yarn rmadmin -addToClusterNodeLabels``, by REST)."""
        body = json.dumps({"nodeLabelInfo": [{"name": label, "exclusivity": False}]}).encode()
        request = urllib.request.Request(
            f"{self.rm_web}/ws/v1/cluster/add-node-labels?user.name=fruits-yarn",
            data=body, method="POST", headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10):
            pass

    # --- what the daemons say --------------------------------------------------------------------------------

    def _get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def _datanodes(self) -> int:
        beans = self._get(
            f"http://{self.primary.name}:9870/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState"
        )["beans"]
        return int(beans[0]["NumLiveDataNodes"])

    def running_nodes(self) -> dict[str, dict[str, Any]]:
        """The NodeManagers YARN schedules on, by host name."""
        nodes = (self._get(f"{self.rm_web}/ws/v1/cluster/nodes").get("nodes") or {}).get("node", [])
        return {n["nodeHostName"]: n for n in nodes if n["state"] == "RUNNING"}

    def application(self, application_id: str) -> dict[str, Any]:
        """The ResourceManager's report of one application (state, finalStatus, diagnostics, AM host...)."""
        return self._get(f"{self.rm_web}/ws/v1/cluster/apps/{application_id}")["app"]

    def am_container(self, application_id: str, attempt: int = 1) -> str | None:
        """The container the ResourceManager gave the application master of ``attempt`` (None before one)."""
        return attempt_container(
            self._get(f"{self.rm_web}/ws/v1/cluster/apps/{application_id}/appattempts"), attempt
        )

    def applications(self) -> list[dict[str, Any]]:
        """Every application the ResourceManager knows, oldest first."""
        apps = (self._get(f"{self.rm_web}/ws/v1/cluster/apps").get("apps") or {}).get("app", [])
        return sorted(apps, key=lambda app: app["startedTime"])

    def wait_for_application(self, application_id: str, timeout: float = 900) -> dict[str, Any]:
        """The application's report once it ended (FINISHED, FAILED or KILLED)."""
        deadline = time.monotonic() + timeout
        while True:
            app = self.application(application_id)
            if app["state"] in ENDED or time.monotonic() > deadline:
                return app
            time.sleep(2)


def node_dirs(root: Path) -> dict[str, str]:
    """The per-node folders of the configuration, expanded by each JVM from ``-Dfruits.node``."""
    base = f"{root}/${{fruits.node}}"
    return {
        "yarn.nodemanager.local-dirs": f"{base}/yarn/local",
        "yarn.nodemanager.log-dirs": f"{base}/yarn/logs",
        "dfs.namenode.name.dir": f"{base}/hdfs/name",
        "dfs.datanode.data.dir": f"{base}/hdfs/data",
        "hadoop.tmp.dir": f"{base}/tmp",
    }


def container_log(nodes: Path, application_id: str, container_id: str, name: str = "stderr") -> Path | None:
    """The log file ``name`` of a container, on whichever node ran it (None when no node has it)."""
    for path in nodes.glob(f"*/yarn/logs/{application_id}/{container_id}/{name}"):
        return path
    return None


def attempt_container(appattempts: dict[str, Any], attempt: int = 1) -> str | None:
    """The application master's container of ``attempt``, from the ResourceManager's ``/appattempts`` answer
    (None before it has one). Not derivable from the id: it is usually the attempt's first container
    (``..._01_000001``), but a first allocation the scheduler takes back makes it the second."""
    for found in (appattempts.get("appAttempts") or {}).get("appAttempt", []):
        if int(found["id"]) == attempt:
            return found.get("containerId") or None
    return None


def processes_in(folder: Path) -> list[int]:
    """Pids whose working directory is ``folder`` (a container's launch folder) or below it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found.append(int(entry))
    return found


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes, summed as YARN's process-tree monitor sums it (RSS of each)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue  # ended between the listing and the read
    return total


class PeakMemory:
    """The peak resident memory of a container's processes, sampled twice a second in a thread.

    ``folder``: the container's working folder (``<local-dir>/usercache/<user>/appcache/<app>/<container>``);
    every process of the container (the JVM, its Python workers) runs there.
    """

    def __init__(self, folders: Callable[[], list[Path]], interval: float = 0.5) -> None:
        self.peak = 0
        self._folders = folders
        self._interval = interval
        self._stop = False
        self._thread = threading.Thread(target=self._sample, name="container-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop:
            pids = [pid for folder in self._folders() for pid in processes_in(folder)]
            self.peak = max(self.peak, rss_bytes(pids))
            time.sleep(self._interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop = True
        self._thread.join()
        return self.peak
