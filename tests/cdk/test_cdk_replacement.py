"""What replaces the cluster and what must not: pins and generations do, job code and job defaults do not.

AWS::EMR::Cluster's Name, BootstrapActions and Configurations are replacement-only in CloudFormation, so a
template change there is a new cluster; these tests compare the synthesized cluster resource across variants.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
from aws_cdk.assertions import Capture
from cdkapp import REPO, synthesize
from fruits_infra.stacks import EMR_STACK_DESCRIPTION

from fruits.options import option_names, parse_options


def _resource(app, stack, kind):
    (resource,) = app.template(stack).find_resources(kind).values()
    return resource


def _cluster(app):
    return _resource(app, app.emr_stack, "AWS::EMR::Cluster")["Properties"]


def _source_keys(app):
    keys = Capture()
    app.template(app.data_stack).has_resource_properties(
        "Custom::CDKBucketDeployment", {"SourceObjectKeys": keys}
    )
    return keys.as_array()


def _bootstrap_path(app):
    return _cluster(app)["BootstrapActions"][0]["ScriptBootstrapAction"]["Path"]["Fn::Join"][1][-1]


# -- the bootstrap is content-addressed; the job's files are not ---------------------------------------------


def test_a_pin_change_gives_a_new_bootstrap_path_so_new_nodes_match_running_ones(full_app, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes((REPO / "requirements.txt").read_bytes() + b"six==1.17.0\n")
    changed = synthesize(tmp_path / "pins", sources={"requirements": requirements})
    assert _bootstrap_path(changed) != _bootstrap_path(full_app)
    assert _cluster(changed)["BootstrapActions"] != _cluster(full_app)["BootstrapActions"]


def test_a_job_change_does_not_touch_the_cluster(full_app, tmp_path):
    jobs = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs", jobs, ignore=shutil.ignore_patterns("__pycache__"))
    with (jobs / "fruits" / "job.py").open("a") as handle:
        handle.write("\n# a change to the job\n")
    changed = synthesize(tmp_path / "job", sources={"jobs_dir": jobs})
    assert _source_keys(changed) != _source_keys(full_app)  # the deployment uploads the new package ...
    assert _cluster(changed) == _cluster(full_app)  # ... to the same keys: the cluster is unchanged
    assert _resource(changed, changed.emr_stack, "AWS::EMR::Step") == _resource(
        full_app, full_app.emr_stack, "AWS::EMR::Step"
    )


# -- job defaults live in a file, not in the cluster ------------------------------------------------------------


@pytest.fixture(scope="module")
def new_defaults(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("defaults"), pcaK=50, engine="keras", batchSize=32)


def test_changing_a_job_default_leaves_the_cluster_unchanged(full_app, new_defaults):
    assert _cluster(new_defaults) == _cluster(full_app)
    assert _source_keys(new_defaults) != _source_keys(full_app)  # only the deployed defaults file changes
    assert (
        new_defaults.data_stack.job_defaults["k"] == 50
        and new_defaults.data_stack.job_defaults["engine"] == "keras"
    )


def test_the_defaults_file_on_disk_holds_the_job_defaults(new_defaults):
    """The staged JSON asset; CDK's markers stand where the deployment writes the bucket-name values."""
    found = []
    for key in _source_keys(new_defaults):
        path = new_defaults.outdir / f"asset.{key.removesuffix('.zip')}" / "config" / "job-defaults.json"
        if path.is_file():
            found.append(re.sub(r"<<marker:0xbaba:(\d+)>>", r'"marker \1"', path.read_text()))
    (text,) = found
    document = json.loads(text)
    assert document["k"] == 50 and document["engine"] == "keras" and document["batch_size"] == 32
    assert set(document) <= set(option_names())
    markers = Capture()
    new_defaults.template(new_defaults.data_stack).has_resource_properties(
        "Custom::CDKBucketDeployment", {"SourceMarkers": markers}
    )
    marker = next(m for m in markers.as_array() if m)[
        document["input"].replace("marker ", "<<marker:0xbaba:") + ">>"
    ]
    # Markers stand for whole JSON strings: the deployment writes "s3://<input bucket>/images/", quoted.
    assert marker["Fn::Join"][1][0] == '"s3://' and marker["Fn::Join"][1][-1] == '/images/"'


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"pcaK": 50, "engine": "keras", "batchSize": 32},
        {"model": "mobilenet", "alpha": 0.25, "pcaVariance": 0.9},
    ],
)
def test_the_cdk_job_defaults_parse_with_the_job_own_parser(tmp_path, context):
    """A renamed or retyped job option fails here, in CI, instead of on the cluster."""
    app = synthesize(tmp_path, **context)
    defaults = app.data_stack.job_defaults
    assert set(defaults) <= set(option_names())
    options = parse_options([], {}, defaults)
    assert options.model == defaults["model"] and options.overwrite is True
    assert options.feature_store == defaults["feature_store"] and options.weights == "imagenet"
    if "pcaK" in context:
        assert (options.k, options.variance, options.engine, options.batch_size) == (50, None, "keras", 32)
    if "alpha" in context:
        assert (options.alpha, options.variance) == (0.25, 0.9)


# -- clusterGeneration: a new cluster on purpose ------------------------------------------------------------------


def test_a_new_generation_replaces_the_cluster_and_the_step(full_app, tmp_path):
    next_gen = synthesize(tmp_path, clusterGeneration=2)
    before, after = _cluster(full_app), _cluster(next_gen)
    assert (before["Name"], after["Name"]) == ("fruits-featurize-g1", "fruits-featurize-g2")
    assert {k: v for k, v in after.items() if k != "Name"} == {k: v for k, v in before.items() if k != "Name"}
    step = _resource(next_gen, next_gen.emr_stack, "AWS::EMR::Step")["Properties"]
    assert step["Name"] == "check-cluster-g2"
    outputs = next_gen.template(next_gen.emr_stack).to_json()["Outputs"]
    assert outputs["ClusterGeneration"]["Value"] == "2"
    assert outputs["RedeployCommand"]["Value"] == "npx cdk deploy FruitsEmrStack -c clusterGeneration=3"


def _context_of(command: str) -> tuple[str, dict[str, str]]:
    """The stack name and the ``-c key=value`` pairs of an ``npx cdk deploy`` command."""
    words = shlex.split(command)
    assert words[:3] == ["npx", "cdk", "deploy"]
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "-c"]
    return words[3], dict(pair.split("=", 1) for pair in pairs)


def test_the_redeploy_command_of_a_stage_names_a_stack_the_app_has_and_the_next_cluster(tmp_path):
    """After auto-termination every deploy must replace the cluster: the output's command, run as it is (with
    cdk.json's context), synthesizes the same stage's stack with the next generation's cluster."""
    dev = synthesize(tmp_path / "g1", stage="dev")
    outputs = dev.template(dev.emr_stack).to_json()["Outputs"]
    stack, context = _context_of(outputs["RedeployCommand"]["Value"])
    assert context == {"stage": "dev", "clusterGeneration": "2"}
    again = synthesize(tmp_path / "g2", **context)
    assert again.emr_stack.stack_name == stack == "FruitsEmrStack-dev"
    assert _cluster(again)["Name"] == "fruits-featurize-dev-g2"
    assert again.template(again.emr_stack).to_json()["Description"] == EMR_STACK_DESCRIPTION
    assert "RedeployCommand" in EMR_STACK_DESCRIPTION


# -- stage: two environments in one account -----------------------------------------------------------------------


def test_default_stage_keeps_todays_names(full_app):
    assert (full_app.data_stack.stack_name, full_app.emr_stack.stack_name) == (
        "FruitsDataStack",
        "FruitsEmrStack",
    )
    exports = {
        o["Export"]["Name"] for o in full_app.template(full_app.data_stack).to_json()["Outputs"].values()
    }
    assert "FruitsDataStack-ArtifactsBucketName" in exports


def test_a_stage_names_stacks_exports_and_cluster(tmp_path):
    dev = synthesize(tmp_path, stage="dev")
    assert (dev.data_stack.stack_name, dev.emr_stack.stack_name) == (
        "FruitsDataStack-dev",
        "FruitsEmrStack-dev",
    )
    exports = {o["Export"]["Name"] for o in dev.template(dev.data_stack).to_json()["Outputs"].values()}
    assert exports and all(name.startswith("FruitsDataStack-dev-") for name in exports)
    imports = json.dumps(dev.template(dev.emr_stack).to_json())
    assert (
        '"FruitsDataStack-dev-ArtifactsBucketName"' in imports and '"FruitsDataStack-Artifacts' not in imports
    )
    assert _cluster(dev)["Name"] == "fruits-featurize-dev-g1"
    assert {"Key": "stage", "Value": "dev"} in _cluster(dev)["Tags"]
    assert dev.findings("error") == [] and dev.findings("warning") == []
