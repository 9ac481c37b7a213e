"""The rehearsal's network: a private subnet with one host per EMR node, and no route anywhere else.

``scripts/rehearse.sh`` starts the rehearsal in network, mount and UTS namespaces of its own (``unshare``): the
only interfaces are the ones made here, so nothing can reach the internet, whatever proxy variables say. In that
namespace, which plays the part of AWS (moto's S3, the instance metadata service, a download server):

- a bridge ``br0`` with :data:`GATEWAY` is the cluster's subnet;
- each node (the primary, two core nodes) is a network namespace of its own with one veth interface on the
  bridge, its own address, and its own host name (a UTS namespace per process tree), so every node has the same
  ports free (8042, 7337, ...) and sees itself as ``core-1``, not as the machine;
- EC2's instance metadata address (169.254.169.254) answers from this namespace, as it does on every EC2 host;
- one ``/etc/hosts`` (bind-mounted, in this mount namespace only) names the nodes and the download hosts the
  bootstrap reaches (their servers run here too), as the VPC's DNS would.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "br0"
GATEWAY = "10.0.0.1"
PREFIX = 24
METADATA_ADDRESS = "169.254.169.254"


class NotIsolated(RuntimeError):
    """The rehearsal is not running in the namespaces scripts/rehearse.sh makes."""


@dataclass(frozen=True)
class Host:
    """One node: its host name, its address on the subnet, its network namespace."""

    name: str
    address: str

    @property
    def namespace(self) -> str:
        return f"fruits-{self.name}"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this node: in its network namespace, under its host name."""
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv,
        ]  # fmt: skip


PRIMARY = Host("primary", "10.0.0.10")
CORE = (Host("core-1", "10.0.0.11"), Host("core-2", "10.0.0.12"))


def _ip(*args: str, namespace: str | None = None) -> None:
    argv = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    subprocess.run(argv, check=True, capture_output=True, text=True)


def require_isolation() -> None:
    """Refuse to touch the machine's network: the rehearsal must run in scripts/rehearse.sh's namespaces."""
    if os.environ.get("FRUITS_REHEARSAL_NAMESPACES") != "1":
        raise NotIsolated(
            "run the cloud rehearsal with scripts/rehearse.sh (make rehearse): it isolates its network"
        )
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this network namespace's, unlike /sys
    if interfaces != ["lo"] and BRIDGE not in interfaces:
        raise NotIsolated(f"expected a network namespace with only lo, found {interfaces}")


def build(hosts: Sequence[Host], hosts_file: Path, extra_names: dict[str, str]) -> None:
    """The bridge, one namespace per host, the metadata address, and ``/etc/hosts`` naming them all.

    ``extra_names``: more host names, each to an address of this namespace (servers the harness runs here).
    """
    require_isolation()
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    _ip("addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo")
    # Network namespaces are files under /run/netns: a fresh tmpfs there keeps them in this mount namespace.
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/netns"], check=True)
    for host in hosts:
        veth = f"v-{host.name}"[:15]
        _ip("netns", "add", host.namespace)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("link", "set", veth, "master", BRIDGE, "up")
        _ip("addr", "add", f"{host.address}/{PREFIX}", "dev", "eth0", namespace=host.namespace)
        _ip("link", "set", "eth0", "up", namespace=host.namespace)
        _ip("link", "set", "lo", "up", namespace=host.namespace)
        _ip("route", "add", "default", "via", GATEWAY, namespace=host.namespace)
    lines = ["127.0.0.1 localhost", *(f"{host.address} {host.name}" for host in hosts)]
    lines += [f"{address} {name}" for name, address in extra_names.items()]
    hosts_file.write_text("\n".join(lines) + "\n")
    hosts_file.chmod(0o644)
    bind_mount(hosts_file, Path("/etc/hosts"))


def bind_mount(source: Path, target: Path) -> None:
    """``source`` seen at ``target`` by every process of this mount namespace (and only there)."""
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
