"""Where YARN puts application masters (yarn-site) and how Spark commits to S3 (spark-defaults), in the template."""

from __future__ import annotations

import pytest
from cdkapp import synthesize
from fruits_infra.hadoop_conf import s3a_commit_conf, yarn_site


def _configurations(app):
    (cluster,) = app.template(app.emr_stack).find_resources("AWS::EMR::Cluster").values()
    return {c["Classification"]: c for c in cluster["Properties"]["Configurations"]}


@pytest.fixture(scope="module")
def spot_app(tmp_path_factory):
    """Spot task nodes in instance fleets: the case the labels exist for."""
    return synthesize(tmp_path_factory.mktemp("spot"), instanceMode="fleets", taskSpotCount=2)


def test_yarn_site_turns_node_labels_on_and_puts_application_masters_on_core_nodes():
    assert yarn_site() == {
        "yarn.node-labels.enabled": "true",
        "yarn.node-labels.am.default-node-label-expression": "CORE",  # EMR's documented name
        "yarn.resourcemanager.node-labels.am.default-node-label-expression": "CORE",  # Apache YARN 3.4's
    }


@pytest.mark.parametrize("app_name", ["full_app", "spot_app"])
def test_every_cluster_keeps_application_masters_on_core_nodes(request, app_name):
    """With or without Spot: Configurations are replacement-only, so taskSpotCount must not change them."""
    configurations = _configurations(request.getfixturevalue(app_name))
    assert configurations["yarn-site"]["ConfigurationProperties"] == yarn_site()


def test_spark_defaults_pin_emrs_magic_commit_protocol_and_the_success_marker(full_app):
    props = _configurations(full_app)["spark-defaults"]["ConfigurationProperties"]
    assert {key: props.get(key) for key in s3a_commit_conf()} == {
        "spark.sql.execution.datasources.SQLEmrOptimizedCommitProtocol.leverageMagicCommitProtocol": "true",
        "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "true",
    }
