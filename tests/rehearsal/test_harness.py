"""The rehearsal's own parts, without a cluster: the files it writes for the nodes, and EMR's step API."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import boto3
import pytest
from fruits_infra.instances import instance_spec

from tests.rehearsal import emr, hadoop, network
from tests.rehearsal.emr_service import EmrService


def test_site_xml_is_hadoop_configuration_with_values_escaped() -> None:
    root = ElementTree.fromstring(emr.site_xml({"a.b": "x<y&z", "c": "1"}))
    assert [(p.findtext("name"), p.findtext("value")) for p in root] == [("a.b", "x<y&z"), ("c", "1")]


def test_spark_defaults_layers_keep_their_order_and_the_last_value_wins_as_spark_reads_it() -> None:
    text = emr.spark_defaults_conf([("EMR", {"spark.master": "yarn", "k": "1"}), ("stack", {"k": "2"})])
    assert text.splitlines() == ["# EMR", "spark.master yarn", "k 1", "", "# stack", "k 2"]


def test_spark_env_exports_are_shell_quoted() -> None:
    text = emr.spark_env_sh({"A": "it's", "PYSPARK_PYTHON": "/usr/bin/python3.11"})
    done = subprocess.run(
        ["bash", "-c", f'{text}\nprintf "%s|%s" "$A" "$PYSPARK_PYTHON"'], capture_output=True, text=True
    )
    assert done.stdout == "it's|/usr/bin/python3.11"


def test_a_core_node_offers_what_the_stack_sizes_for_its_instance_type() -> None:
    spec = instance_spec("m5.xlarge")
    site = emr.node_yarn_site(spec, shuffle_classpath="/jars/*")
    assert site["yarn.nodemanager.resource.memory-mb"] == str(spec.yarn_mb) == "12288"
    assert site["yarn.nodemanager.resource.cpu-vcores"] == "4"
    assert site["yarn.nodemanager.pmem-check-enabled"] == "true"  # a container over its size is killed
    assert site["yarn.nodemanager.aux-services.spark_shuffle.classpath"] == "/jars/*"


def test_node_labels_give_the_queues_the_core_partition() -> None:
    site, queues = emr.node_labels("CORE", "file:///labels")
    assert site["yarn.nodemanager.node-labels.provider.configured-node-partition"] == "CORE"
    assert queues["yarn.scheduler.capacity.root.default.accessible-node-labels.CORE.capacity"] == "100"


def test_the_application_masters_container_is_the_one_the_resourcemanager_names() -> None:
    # As the ResourceManager answered in a rehearsal: attempt 1's master ran in the attempt's second container.
    answer = {
        "appAttempts": {
            "appAttempt": [
                {"id": 1, "containerId": "container_1796654956106_0007_01_000002"},
                {"id": 2, "containerId": "container_1796654956106_0007_02_000001"},
            ]
        }
    }
    assert hadoop.attempt_container(answer) == "container_1796654956106_0007_01_000002"
    assert hadoop.attempt_container(answer, attempt=2) == "container_1796654956106_0007_02_000001"
    assert hadoop.attempt_container(answer, attempt=3) is None
    assert hadoop.attempt_container({"appAttempts": {"appAttempt": [{"id": 1}]}}) is None  # not allocated yet
    assert hadoop.attempt_container({"appAttempts": None}) is None


def test_node_folders_are_expanded_per_node_by_hadoop() -> None:
    dirs = hadoop.node_dirs(Path("/state/nodes"))
    assert dirs["yarn.nodemanager.local-dirs"] == "/state/nodes/${fruits.node}/yarn/local"


def test_a_host_runs_commands_in_its_namespace_under_its_name() -> None:
    argv = network.CORE[0].command(["java", "-version"])
    assert argv[:4] == ["ip", "netns", "exec", "fruits-core-1"]
    assert argv[-3:] == ["core-1", "java", "-version"]


def test_processes_in_a_folder_and_their_memory(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(50 << 20); time.sleep(30)"], cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 10
        while hadoop.rss_bytes(hadoop.processes_in(tmp_path)) < 50 << 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hadoop.processes_in(tmp_path) == [child.pid]
        assert hadoop.rss_bytes([child.pid]) >= 50 << 20
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def service(tmp_path: Path):
    """EMR's API over steps that run ``sh -c`` here, with logs collected in a dict."""
    pushed: dict[str, bytes] = {}
    runs = iter(range(100))

    def start_step(args: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{next(runs)}-{name}.log"
        with open(log, "wb") as handle:
            return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT), log

    service = EmrService(
        cluster_id="j-REHEARSAL", cluster_name="fruits-featurize-g1", log_uri="s3://logs/emr/", start_step=start_step,
        container_logs=lambda application: [], put_log=pushed.__setitem__, address="127.0.0.1",
    )  # fmt: skip
    yield service, pushed
    service.stop()


def _client(service: EmrService):
    return boto3.client(
        "emr", endpoint_url=service.endpoint, region_name="eu-west-3",
        aws_access_key_id="x", aws_secret_access_key="y",
    )  # fmt: skip


def test_steps_run_one_at_a_time_and_their_state_is_their_exit_status(service) -> None:
    emr_service, pushed = service
    client = _client(emr_service)
    step = lambda name, script: {  # noqa: E731
        "Name": name, "ActionOnFailure": "CONTINUE", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["sh", "-c", script]},
    }  # fmt: skip
    ids = client.add_job_flow_steps(
        JobFlowId="j-REHEARSAL",
        Steps=[step("ok", "echo Submitted application application_1_0001"), step("bad", "exit 3")],
    )["StepIds"]
    for step_id in ids:
        emr_service.wait(step_id, 30)
    ok, bad = (client.describe_step(ClusterId="j-REHEARSAL", StepId=i)["Step"]["Status"] for i in ids)
    assert ok["State"] == "COMPLETED" and bad["State"] == "FAILED"
    assert bad["FailureDetails"]["LogFile"] == f"s3://logs/emr/j-REHEARSAL/steps/{ids[1]}/stderr.gz"
    assert ok["Timeline"]["EndDateTime"] <= bad["Timeline"]["StartDateTime"]  # one at a time
    listed = client.list_steps(ClusterId="j-REHEARSAL")["Steps"]
    assert [s["Id"] for s in listed] == list(reversed(ids))  # newest first, as EMR lists them
    assert b"application_1_0001" in gzip.decompress(pushed[f"j-REHEARSAL/steps/{ids[0]}/stderr.gz"])


def test_the_cluster_is_listed_by_name_as_emr_lists_clusters(service) -> None:
    emr_service, _ = service
    client = _client(emr_service)
    (cluster,) = client.list_clusters()["Clusters"]
    assert (cluster["Id"], cluster["Name"], cluster["Status"]["State"]) == (
        "j-REHEARSAL",
        "fruits-featurize-g1",
        "WAITING",
    )
    assert client.describe_cluster(ClusterId="j-REHEARSAL")["Cluster"]["Name"] == "fruits-featurize-g1"


def test_another_cluster_is_refused_as_emr_refuses_it(service) -> None:
    emr_service, _ = service
    with pytest.raises(Exception, match="is not valid"):
        _client(emr_service).describe_cluster(ClusterId="j-OTHER")
