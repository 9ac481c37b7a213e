"""The architecture picture is drawn from the synthesized templates: every box it names is a resource of them,
every arrow is a reference between them, and a resource that disappears makes the picture fail, not drift."""

from __future__ import annotations

import copy
import os
import shutil

import pytest

from scripts.architecture import EDGES, PARTS, MissingResource, plan, render, synthesize

pytestmark = pytest.mark.slow  # two synths of the CDK app, about ten seconds each


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("architecture"))


def test_every_box_names_a_resource_of_the_synthesized_templates(templates):
    drawing = plan(templates)
    drawn = drawing.drawn()
    assert {part.key for part in PARTS} == set(drawing.boxes)  # the Studio is on for the picture
    for label, stack, logical_id, kind in drawn:
        assert templates[stack]["Resources"][logical_id]["Type"] == kind, label
    types = {kind for _, _, _, kind in drawn}
    assert {
        "AWS::EMR::Cluster",
        "AWS::EMR::Step",
        "AWS::EMR::Studio",
        "AWS::S3::Bucket",
        "AWS::EC2::VPC",
    } <= types
    assert (
        len([1 for *_, kind in drawn if kind == "AWS::S3::Bucket"]) == 5
    )  # four data buckets + the Studio's


def test_every_arrow_is_backed_by_the_templates(templates):
    assert plan(templates).edges == list(EDGES)


@pytest.mark.parametrize(
    ("stack", "kind"),
    [
        ("emr", "AWS::EMR::Cluster"),
        ("emr", "AWS::EMR::Step"),
        ("data", "AWS::S3::Bucket"),
        ("emr", "AWS::KMS::Key"),
    ],
)
def test_a_resource_gone_from_the_templates_fails_the_picture(templates, stack, kind):
    changed = copy.deepcopy(templates)
    resources = changed[stack]["Resources"]
    (gone, *_) = [lid for lid, r in resources.items() if r["Type"] == kind]
    del resources[gone]
    with pytest.raises(MissingResource):
        plan(changed)


def test_an_arrow_without_a_reference_fails_the_picture(templates):
    changed = copy.deepcopy(templates)
    (step,) = [r for r in changed["emr"]["Resources"].values() if r["Type"] == "AWS::EMR::Step"]
    step["Properties"]["JobFlowId"] = "j-SOMEOTHER"  # the step no longer runs on the stack's cluster
    with pytest.raises(MissingResource, match="step -> cluster"):
        plan(changed)


def test_autorun_is_drawn_only_when_the_stacks_have_it(templates, tmp_path):
    drawn = plan(templates)
    assert {"uploadrule", "pending", "window", "statemachine", "lock", "topics", "alarm"} <= set(drawn.boxes)
    assert ("statemachine", "cluster") in {(e.source, e.target) for e in drawn.edges}
    without = plan(synthesize(tmp_path, autorun=False))
    assert not {"statemachine", "uploadrule"} & set(without.boxes) and "studio" in without.boxes


def test_the_optional_parts_are_drawn_only_when_the_stacks_have_them(tmp_path):
    drawing = plan(synthesize(tmp_path, studio=False, autorun=False))
    optional = {part.key for part in PARTS if part.optional}
    assert not optional & set(drawing.boxes)
    assert not [e for e in drawing.edges if {e.source, e.target} & optional]
    assert {part.key for part in PARTS if not part.optional} == set(drawing.boxes)


def test_the_picture_renders(templates, tmp_path):
    if not shutil.which("dot"):
        if os.environ.get("CI"):
            pytest.fail("Graphviz's dot is missing: .ci/run installs it (apt-get install graphviz)")
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    path = render(plan(templates), tmp_path / "architecture.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_picture_exists():
    from scripts.architecture import ROOT

    assert (ROOT / "docs" / "img" / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
