"""The instance types the cluster may use, and the Spark memory settings derived from them.

Python workers (one per task slot: decoding, the LiteRT interpreter, Arrow batches) live outside the executor's
JVM heap, inside ``spark.executor.memoryOverhead``; Spark's default overhead (10% of the heap, at least 384 MiB)
leaves them almost nothing. So the overhead is sized from the node's YARN memory per vCPU, and the heap gets the
rest of the container. The figures are in docs/sizing.md.

``yarn_mb`` is EMR's default ``yarn.nodemanager.resource.memory-mb`` for the type
(https://docs.aws.amazon.com/emr/latest/ReleaseGuide/emr-hadoop-task-config.html). m6i and m7i are not in the
archived copy of that page; they have m5's vCPUs and memory, and m5's YARN figures are assumed (see the
README's first-deploy checklist: ``yarn node -list -showDetails`` shows the real value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fruits_infra.config import ConfigError


@dataclass(frozen=True)
class InstanceSpec:
    """One EC2 instance type as EMR configures it."""

    name: str
    vcpu: int
    memory_gib: int
    yarn_mb: int

    @property
    def yarn_mb_per_vcpu(self) -> int:
        return self.yarn_mb // self.vcpu


def _family(prefix: str, sizes: dict[str, tuple[int, int, int]]) -> dict[str, InstanceSpec]:
    return {f"{prefix}.{size}": InstanceSpec(f"{prefix}.{size}", *figures) for size, figures in sizes.items()}


_GENERAL = {"xlarge": (4, 16, 12288), "2xlarge": (8, 32, 24576), "4xlarge": (16, 64, 57344)}
#: The supported types (x86_64: the runtime's tensorflow-cpu wheel exists only for x86_64).
INSTANCE_TYPES: dict[str, InstanceSpec] = {
    **_family("m5", _GENERAL),
    **_family("m5a", _GENERAL),
    **_family("m6i", _GENERAL),
    **_family("m7i", _GENERAL),
    **_family("c5", {"xlarge": (4, 8, 6144), "2xlarge": (8, 16, 12288), "4xlarge": (16, 32, 24576)}),
    **_family("r5", {"xlarge": (4, 32, 24576), "2xlarge": (8, 64, 57344), "4xlarge": (16, 128, 122880)}),
}

# A Graviton type has a "g" among the attribute letters after the generation digit (m6g, c7gn, r6gd, x2gd,
# im4gn); g4dn or g5 (family letter g, x86_64 GPUs) do not.
_GRAVITON = re.compile(r"^[a-z]+\d+[a-z-]*g[a-z-]*\.")
TENSORFLOW_CPU_FILES = "https://pypi.org/project/tensorflow-cpu/#files"

#: Task slots per executor: two executors per xlarge node, so a cluster-mode driver still leaves one running.
EXECUTOR_CORES = 2
#: Share of each vCPU's YARN memory kept for its Python worker (in the overhead, outside the JVM heap).
PYTHON_SHARE = 0.4
#: The JVM's own off-heap need per container (Spark's minimum overhead).
JVM_OFF_HEAP_MB = 384
MIN_HEAP_MB = 1024
#: The driver (cluster mode: in the YARN application master) builds and converts the model in Python.
DRIVER_HEAP_MB = 2048
DRIVER_OVERHEAD_MB = 2048


def instance_spec(name: str) -> InstanceSpec:
    """The table entry of ``name``; a ConfigError for Graviton and for types not in the table."""
    if _GRAVITON.match(name):
        raise ConfigError(
            f"instance type {name} is Graviton (aarch64): the runtime pins tensorflow-cpu, which has no aarch64 "
            f"wheel ({TENSORFLOW_CPU_FILES}); choose an x86_64 type: {', '.join(sorted(INSTANCE_TYPES))}"
        )
    try:
        return INSTANCE_TYPES[name]
    except KeyError:
        raise ConfigError(
            f"instance type {name} is not in the sizing table (cdk/fruits_infra/instances.py); "
            f"supported: {', '.join(sorted(INSTANCE_TYPES))}"
        ) from None


def _round_down(mb: float, step: int = 64) -> int:
    return int(mb) // step * step


def spark_memory(worker_types: tuple[str, ...]) -> dict[str, str]:
    """spark-defaults for executor and driver memory, sized for the smallest YARN memory per vCPU among
    ``worker_types`` (core and task types: where executors and the cluster-mode driver run)."""
    specs = [instance_spec(name) for name in worker_types]
    per_vcpu = min(spec.yarn_mb_per_vcpu for spec in specs)
    container = per_vcpu * EXECUTOR_CORES
    overhead = _round_down(per_vcpu * PYTHON_SHARE * EXECUTOR_CORES) + JVM_OFF_HEAP_MB
    heap = _round_down(container - overhead)
    if heap < MIN_HEAP_MB:  # pragma: no cover - every type in the table leaves more
        raise ConfigError(f"{', '.join(worker_types)} leave only {heap} MiB of executor heap")
    smallest = min(spec.yarn_mb for spec in specs)
    if smallest < DRIVER_HEAP_MB + DRIVER_OVERHEAD_MB:  # pragma: no cover - idem
        raise ConfigError(f"the driver's container does not fit on {', '.join(worker_types)}")
    return {
        "spark.executor.cores": str(EXECUTOR_CORES),
        "spark.executor.memory": f"{heap}m",
        "spark.executor.memoryOverhead": f"{overhead}m",
        "spark.driver.memory": f"{DRIVER_HEAP_MB}m",
        "spark.driver.memoryOverhead": f"{DRIVER_OVERHEAD_MB}m",
    }
