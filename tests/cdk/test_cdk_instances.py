"""The instance-type table: Spark memory per type, and docs/sizing.md showing the same figures."""

from __future__ import annotations

import re

import pytest
from cdkapp import REPO
from fruits_infra.config import ConfigError
from fruits_infra.instances import INSTANCE_TYPES, instance_spec, spark_memory


def _mib(value: str) -> int:
    return int(value.removesuffix("m"))


@pytest.mark.parametrize("name", sorted(INSTANCE_TYPES))
def test_executors_and_the_driver_fit_in_the_nodes_yarn_memory(name):
    spec = instance_spec(name)
    conf = spark_memory((name,))
    executors = spec.vcpu // int(conf["spark.executor.cores"])
    per_executor = _mib(conf["spark.executor.memory"]) + _mib(conf["spark.executor.memoryOverhead"])
    assert executors * per_executor <= spec.yarn_mb
    assert (
        _mib(conf["spark.executor.memoryOverhead"]) > 384 + 512
    )  # room for two Python workers, not the default
    assert _mib(conf["spark.driver.memory"]) + _mib(conf["spark.driver.memoryOverhead"]) <= spec.yarn_mb


def test_mixed_types_are_sized_for_the_smallest_memory_per_vcpu():
    assert spark_memory(("m5.xlarge", "c5.xlarge")) == spark_memory(("c5.xlarge",))


@pytest.mark.parametrize(
    "name",
    ["m6g.xlarge", "m7g.2xlarge", "c6gn.xlarge", "r6gd.4xlarge", "x2gd.xlarge", "im4gn.xlarge", "r8g.large"],
)
def test_graviton_is_refused_with_the_reason(name):
    with pytest.raises(ConfigError, match=r"Graviton.*tensorflow-cpu"):
        instance_spec(name)


@pytest.mark.parametrize("name", ["g4dn.xlarge", "m5.large", "m5.8xlarge", "t3.xlarge"])
def test_other_unknown_types_are_refused(name):
    with pytest.raises(ConfigError, match="not in the sizing table"):
        instance_spec(name)


def test_docs_sizing_shows_the_configured_figures():
    text = (REPO / "docs" / "sizing.md").read_text()
    rows = re.findall(
        r"^\| `([a-z0-9.]+)` \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+m) \| (\d+m) \| (\d+) \|$", text, re.M
    )
    assert {row[0] for row in rows} == set(INSTANCE_TYPES)
    for name, vcpu, memory, yarn, executors, heap, overhead, _python in rows:
        spec, conf = INSTANCE_TYPES[name], spark_memory((name,))
        assert (int(vcpu), int(memory), int(yarn)) == (spec.vcpu, spec.memory_gib, spec.yarn_mb), name
        assert int(executors) == spec.vcpu // int(conf["spark.executor.cores"]), name
        assert (heap, overhead) == (conf["spark.executor.memory"], conf["spark.executor.memoryOverhead"]), (
            name
        )
