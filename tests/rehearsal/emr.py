"""What EMR itself puts on a cluster's nodes, next to what the stack's configurations add: the files a node reads.

EMR writes each application's configuration files on every node from its own defaults and the cluster's
``Configurations`` (the classifications), the latter winning
(https://docs.aws.amazon.com/emr/latest/ReleaseGuide/emr-configure-apps.html). The rehearsal writes the same
files, in the same layers, so that a step reads what it will read on EMR:

- ``spark-defaults.conf``: EMR's Spark defaults (below), then the stack's ``spark-defaults`` classification, then
  the rehearsal's stand-ins (where S3 is); ``spark-env.sh``: the stack's ``spark-env`` exports;
- ``yarn-site.xml`` / ``core-site.xml`` / ``capacity-scheduler.xml``: the node's YARN resources for the stack's
  core instance type (from the stack's own sizing table, ``fruits_infra.instances``), Spark's shuffle service,
  the stack's ``yarn-site``/``core-site``/``capacity-scheduler`` classifications, and the stand-ins.

Only settings that change how the job runs are emulated; each says where it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import escape

from fruits_infra.instances import InstanceSpec

#: EMR's own spark-defaults that matter to the job (EMR Release Guide, "Configure Spark", "Spark defaults set by
#: Amazon EMR": dynamic allocation on since EMR 4.4.0, "Spark Shuffle Service is automatically configured"; steps
#: run against YARN).
EMR_SPARK_DEFAULTS = {
    "spark.master": "yarn",
    "spark.dynamicAllocation.enabled": "true",
    "spark.shuffle.service.enabled": "true",
}

#: Where the NodeManager's aux service listens (Spark's default spark.shuffle.service.port).
SHUFFLE_PORT = 7337


def node_yarn_site(spec: InstanceSpec, *, shuffle_classpath: str) -> dict[str, str]:
    """yarn-site of a core node of type ``spec``, as EMR configures it.

    Memory for containers and the largest allocation are EMR's per-type defaults, which the stack's sizing table
    holds (https://docs.aws.amazon.com/emr/latest/ReleaseGuide/emr-hadoop-task-config.html, also the source of
    the 32 MiB minimum allocation); vcores are the type's vCPUs. The physical-memory check is on (Hadoop's
    default: a container over its size is killed, as EMR reports "Container killed by YARN for exceeding memory
    limits"); the virtual-memory check is off (JVMs reserve far more address space than they use).
    """
    return {
        "yarn.nodemanager.resource.memory-mb": str(spec.yarn_mb),
        "yarn.nodemanager.resource.cpu-vcores": str(spec.vcpu),
        "yarn.scheduler.minimum-allocation-mb": "32",
        "yarn.scheduler.maximum-allocation-mb": str(spec.yarn_mb),
        "yarn.scheduler.maximum-allocation-vcores": str(spec.vcpu),
        "yarn.nodemanager.pmem-check-enabled": "true",
        "yarn.nodemanager.vmem-check-enabled": "false",
        "yarn.nodemanager.aux-services": "spark_shuffle",
        "yarn.nodemanager.aux-services.spark_shuffle.class": "org.apache.spark.network.yarn.YarnShuffleService",
        "yarn.nodemanager.aux-services.spark_shuffle.classpath": shuffle_classpath,
        "spark.shuffle.service.port": str(SHUFFLE_PORT),
    }


def node_labels(label: str, store: str) -> tuple[dict[str, str], dict[str, str]]:
    """(yarn-site, capacity-scheduler) for EMR's labelling of core nodes with ``label``.

    With the stack's ``yarn.node-labels.enabled`` EMR labels every core node itself, at creation ("Amazon EMR
    creates node labels when creating the cluster"; "Amazon EMR doesn't label task nodes",
    https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-managed-scaling.html), each NodeManager reporting
    its partition (distributed configuration) and the queues allowed to use it; the label itself is added to the
    cluster through the ResourceManager (tests.rehearsal.hadoop.Cluster.add_node_label).
    """
    yarn_site = {
        "yarn.node-labels.configuration-type": "distributed",
        "yarn.node-labels.fs-store.root-dir": store,
        "yarn.nodemanager.node-labels.provider": "config",
        "yarn.nodemanager.node-labels.provider.configured-node-partition": label,
    }
    capacity = {
        "yarn.scheduler.capacity.root.accessible-node-labels": "*",
        f"yarn.scheduler.capacity.root.accessible-node-labels.{label}.capacity": "100",
        "yarn.scheduler.capacity.root.default.accessible-node-labels": "*",
        f"yarn.scheduler.capacity.root.default.accessible-node-labels.{label}.capacity": "100",
    }
    return yarn_site, capacity


def site_xml(properties: Mapping[str, str]) -> str:
    """A Hadoop ``*-site.xml`` holding ``properties`` (in their order)."""
    lines = ['<?xml version="1.0"?>', "<configuration>"]
    for name, value in properties.items():
        lines.append(f"  <property><name>{escape(name)}</name><value>{escape(str(value))}</value></property>")
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


def spark_defaults_conf(layers: list[tuple[str, Mapping[str, str]]]) -> str:
    """``spark-defaults.conf`` from ``(comment, properties)`` layers; a later layer's key wins, as in the file."""
    merged: dict[str, str] = {}
    lines = []
    for comment, properties in layers:
        lines += ["", f"# {comment}"] if lines else [f"# {comment}"]
        for key, value in properties.items():
            merged[key] = value
            lines.append(f"{key} {value}")
    return "\n".join(lines) + "\n"


def spark_env_sh(exports: Mapping[str, str]) -> str:
    """``spark-env.sh`` with the ``spark-env`` classification's exports (EMR writes them as ``export K=V``)."""
    lines = [
        "# The stack's spark-env classification (sourced by spark-submit; YARN containers never read it)."
    ]
    lines += [f"export {name}={_shell_quote(value)}" for name, value in exports.items()]
    return "\n".join(lines) + "\n"


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"
