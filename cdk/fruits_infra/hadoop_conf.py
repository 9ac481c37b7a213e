"""The cluster's Hadoop-side settings: where YARN puts application masters, and how Spark commits to S3.

**Application masters on core nodes** (``yarn-site``). In cluster mode the job's driver is its YARN application
master, and ``spark.yarn.maxAppAttempts=1`` gives it one attempt: a Spot task node reclaimed under it kills the
run. From EMR 6.x on, YARN node labels are off by default, so an application master may land on any core *or
task* node ("Beginning with Amazon EMR 6.x release series, the YARN node labels feature is disabled by default.
The application master processes can run on both core and task nodes by default. You can enable the YARN node
labels feature by configuring following properties: yarn.node-labels.enabled: true,
yarn.node-labels.am.default-node-label-expression: 'CORE'",
https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-master-core-task-nodes.html); the AWS knowledge center
warns that otherwise "running jobs might fail if the task node goes down because of Spot capacity constraint"
(https://repost.aws/knowledge-center/emr-configure-node-labeling-yarn). EMR labels the core nodes itself, at
creation only ("Amazon EMR creates node labels when creating the cluster and provisioning resources. Amazon EMR
doesn't support adding node labels when you reconfigure the cluster"; "Amazon EMR doesn't label task nodes",
https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-managed-scaling.html). So the labels are set on
**every** cluster, not only when ``taskSpotCount > 0``: a cluster without Spot has only core nodes, where the
label changes nothing, and ``taskSpotCount`` never decides whether ``Configurations`` (replacement-only) change.
Executors still run on any node: only the application master asks for the ``CORE`` label.

**The S3A committer** (``spark-defaults``). Since emr-7.10.0, S3A, not EMRFS, serves ``s3://``
(https://docs.aws.amazon.com/emr/latest/ReleaseGuide/emr-s3a-migrate.html), and EMR's Spark commits S3A
writes with its MagicCommitProtocol (MagicV2 committer) by default since emr-6.15.0
(https://docs.aws.amazon.com/emr/latest/ReleaseGuide/emr-spark-magic-commit-protocol.html): no rename or copy at
task or job commit; a static write's files appear at task commit. That fits the job: every Spark write goes to a
fresh folder (``runs/<run_id>/...``, ``feature_store/<key>/batch=<run_id>/``) that no reader trusts until the job
says so (its own create-only commit object; a batch's ``_SUCCESS`` marker, written at job commit). The
FileOutputCommitter (v1 or v2) would copy every object once more on S3A, whose rename is a copy
(https://hadoop.apache.org/docs/current/hadoop-aws/tools/hadoop-aws/committers.html). The choice is written down
here so that a changed EMR default does not change it silently.
"""

from __future__ import annotations

from typing import Any

#: The node label EMR gives core nodes (EMR's own name; not configurable).
CORE_LABEL = "CORE"


def yarn_site() -> dict[str, str]:
    """``yarn-site``: YARN node labels on, application masters (the job's driver, Livy sessions) on core nodes.

    The application masters' label is set under two names: EMR's documented one, and Apache Hadoop's, which is
    the one the ResourceManager of Hadoop 3.4.2 reads (``RMAppManager``: ``yarn.resourcemanager.node-labels.am.
    default-node-label-expression``). The cloud rehearsal runs Apache's ResourceManager with this yarn-site:
    with EMR's name alone, every application master waited in ACCEPTED for the default partition, which has no
    node once the core nodes carry the label.
    """
    return {
        "yarn.node-labels.enabled": "true",
        "yarn.node-labels.am.default-node-label-expression": CORE_LABEL,
        "yarn.resourcemanager.node-labels.am.default-node-label-expression": CORE_LABEL,
    }


def s3a_commit_conf() -> dict[str, str]:
    """``spark-defaults`` keys that pin how Spark commits to S3 (module docstring).

    - EMR's switch for its MagicCommitProtocol (``false`` would fall back to the FileOutputCommitter);
    - S3A's magic-committer support in the filesystem (Hadoop's documented default, stated for the record);
    - the ``_SUCCESS`` marker at job commit, which the feature store reads (``fruits.feature_store``).
    """
    return {
        "spark.sql.execution.datasources.SQLEmrOptimizedCommitProtocol.leverageMagicCommitProtocol": "true",
        "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "true",
    }


def yarn_configurations() -> list[dict[str, Any]]:
    """The cluster's ``yarn-site`` classification (EMR API shape)."""
    return [{"Classification": "yarn-site", "Properties": yarn_site()}]
