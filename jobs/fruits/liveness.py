"""Is the holder of a lease still alive? Probes that let a run take over a dead run's lease at once.

A lease expires on its own after its TTL, but a run that was killed (SIGKILL, out of memory, a killed YARN
application) would block its output for that whole time. Each probe looks at the holder's lease body and
returns why the holder is certainly gone, or None when it cannot tell (then the TTL decides):

- :func:`local_process_probe`: the holder ran on this host (same host name and boot) and its process is no
  longer there, or the pid now belongs to a process started at another time (pids are reused);
- :func:`yarn_application_probe`: the holder was a YARN application that the ResourceManager reports as
  FINISHED, FAILED or KILLED (its REST API, ``/ws/v1/cluster/apps/<id>``), asked at the address and with the
  scheme YARN serves it on (:func:`resource_manager_url`: plain HTTP, or HTTPS only).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Probe = Callable[[dict[str, Any]], str | None]
ENDED_YARN_STATES = frozenset({"FINISHED", "FAILED", "KILLED"})


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
    return stat.rsplit(")", 1)[1].split()[19]


def identity() -> dict[str, Any]:
    """What a lease records about its holder so that probes can recognise it later."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": _boot_id(),
        "process_start": process_start(os.getpid()),
    }


def local_process_probe(holder: dict[str, Any]) -> str | None:
    """Gone when the holder's process ran on this host in this boot and is no longer the same process."""
    if holder.get("host") != socket.gethostname() or not holder.get("boot_id"):
        return None
    if holder.get("boot_id") != _boot_id():
        return None  # another machine with the same name, or this one rebooted: the TTL decides
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return None
    started = process_start(pid)
    if started is None:
        return f"its process {pid} on {holder['host']} is gone"
    if holder.get("process_start") and started != holder["process_start"]:
        return f"its process {pid} on {holder['host']} is gone (the pid now belongs to another process)"
    return None


#: YARN's web endpoints: HTTP_ONLY (YARN's default) or HTTPS_ONLY, from ``yarn.http.policy``
#: (https://hadoop.apache.org/docs/r3.3.6/hadoop-yarn/hadoop-yarn-common/yarn-default.xml).
HTTPS_ONLY = "HTTPS_ONLY"
_BIND_ALL = "0.0.0.0"


def resource_manager_url(conf: Callable[[str], str | None]) -> str | None:
    """``http://host:port`` or ``https://host:port`` of the ResourceManager's web app, from YARN's settings.

    ``conf`` looks a key up (the Hadoop configuration's ``get``). With ``yarn.http.policy=HTTPS_ONLY`` (YARN's web
    endpoints over TLS only) the RM listens on ``yarn.resourcemanager.webapp.https.address`` only; otherwise on
    ``yarn.resourcemanager.webapp.address``. A bind-all host (``0.0.0.0``, YARN's default) names no machine: it
    is replaced by ``yarn.resourcemanager.hostname``, as YARN's own clients do. None when the address is unset.
    """
    https = (conf("yarn.http.policy") or "").strip().upper() == HTTPS_ONLY
    address = (
        conf("yarn.resourcemanager.webapp.https.address" if https else "yarn.resourcemanager.webapp.address")
        or ""
    ).strip()
    if not address:
        return None
    host, _, port = address.rpartition(":")
    if host in ("", _BIND_ALL):
        host = (conf("yarn.resourcemanager.hostname") or "").strip()
        if not host or host == _BIND_ALL:
            return None
    return f"{'https' if https else 'http'}://{host}:{port}"


def yarn_application_probe(url: str, timeout: float = 5.0) -> Probe:
    """A probe asking the ResourceManager at ``url`` (``http(s)://host:port``, see
    :func:`resource_manager_url`) about the holder's YARN application (the lease's ``reentrant_key``,
    ``application_<ts>_<n>``).

    HTTPS is verified against the system's trusted certificates (``SSL_CERT_FILE`` names another bundle): a
    ResourceManager whose certificate is not trusted is not asked, and the lease's expiry decides.
    """
    base = url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ValueError(f"the ResourceManager's URL needs http:// or https://, got {url!r}")

    def probe(holder: dict[str, Any]) -> str | None:
        application = str(holder.get("reentrant_key") or "")
        if not application.startswith("application_"):
            return None
        try:
            with urllib.request.urlopen(
                f"{base}/ws/v1/cluster/apps/{application}", timeout=timeout
            ) as response:  # the cluster's own RM
                state = json.load(response)["app"]["state"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            log.info(
                "cannot ask the ResourceManager about %s (%s): the lease's expiry decides", application, error
            )
            return None
        if state in ENDED_YARN_STATES:
            return f"its YARN application {application} is {state}"
        return None

    return probe


def first_reason(probes: list[Probe], holder: dict[str, Any]) -> str | None:
    """The first probe's reason why ``holder`` is gone, or None."""
    for probe in probes:
        reason = probe(holder)
        if reason:
            return reason
    return None
