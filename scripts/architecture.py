"""The architecture picture, drawn from the synthesized CloudFormation templates with AWS icons.

    python scripts/architecture.py docs/img/architecture.png      # what `make docs` runs

The app is synthesized as ``cdk synth`` does (cdk.json's context, the job bundle, cdk-nag), with the optional
EMR Studio and autorun on so that the picture shows them, marked as optional. Every box is one resource type or one group of
resources of :data:`PARTS`, found in the templates by type and logical-id prefix; every arrow is an
:data:`EDGES` entry that the templates back: one side references the other (``Ref``, ``Fn::GetAtt``, a
cross-stack import), or the nodes' IAM policy grants the bucket. A part or a reference that disappears from the
stacks makes :func:`plan` raise instead of drawing a stale picture (tests/test_architecture.py synthesizes the
app and checks every box the picture names). Graphviz's ``dot`` draws it (``diagrams`` package).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA, EMR = "data", "emr"
DIRECTION = "TB"  # top to bottom: the stacks side by side, a picture wider than tall (slides)


class MissingResource(LookupError):
    """A box or an arrow of the picture has nothing behind it in the synthesized templates."""


@dataclass(frozen=True)
class Part:
    """One box: the resources of ``kind`` in ``stack`` whose logical id starts with ``prefix``."""

    key: str
    label: str
    stack: str
    kind: str
    icon: str  # a diagrams class, "module.Class" under diagrams.aws
    group: str  # where it is drawn: "data", "emr", "vpc" or "studio"
    prefix: str = ""
    many: bool = False  # one box for several resources (e.g. the three EMR-managed groups)
    optional: bool = False  # drawn only when the templates have it (the Studio, context studio=true)


@dataclass(frozen=True)
class Edge:
    """An arrow. ``evidence``: "ref" (either side references the other) or "iam" (the nodes' policy grants it)."""

    source: str
    target: str
    label: str = ""
    evidence: str = "ref"
    flow: bool = False  # data flows along it (solid), rather than configuration or permission (dashed)


PARTS: tuple[Part, ...] = (
    Part("input", "input bucket\nimages/", DATA, "AWS::S3::Bucket", "storage.SimpleStorageServiceS3Bucket", "data", "StorageInputBucket"),
    Part("results", "results bucket\nresults/\nfeatures/", DATA, "AWS::S3::Bucket", "storage.SimpleStorageServiceS3Bucket", "data", "StorageResultsBucket"),
    Part("artifacts", "artifacts bucket\njob/ bootstrap/\nconfig/ models/", DATA, "AWS::S3::Bucket", "storage.SimpleStorageServiceS3Bucket", "data", "StorageArtifactsBucket"),
    Part("logs", "logs bucket\nemr/ s3-access/\nvpc-flow-logs/", DATA, "AWS::S3::Bucket", "storage.SimpleStorageServiceS3Bucket", "data", "StorageLogsBucket"),
    Part("deploy", "job deployment\nfruits.zip, bootstrap,\ndefaults", DATA, "Custom::CDKBucketDeployment", "compute.Lambda", "data"),
    Part("vpc", "VPC\nprivate subnets", EMR, "AWS::EC2::VPC", "network.VPC", "vpc"),
    Part("nat", "NAT gateway\n(pip, weights)", EMR, "AWS::EC2::NatGateway", "network.NATGateway", "vpc"),
    Part("endpoint", "S3 gateway endpoint", EMR, "AWS::EC2::VPCEndpoint", "network.Endpoint", "vpc"),
    Part("flowlogs", "VPC flow logs", EMR, "AWS::EC2::FlowLog", "network.VPCFlowLogs", "vpc"),
    Part("groups", "EMR-managed\nsecurity groups (3)", EMR, "AWS::EC2::SecurityGroup", "network.Nacl", "vpc", "Network", many=True),
    Part("cluster", "EMR cluster\nprimary + core (+ Spot task)\nbootstrap: Python 3.11 + pins", EMR, "AWS::EMR::Cluster", "analytics.EMRCluster", "vpc"),
    Part("step", "step: spark-submit\nfeaturize_pca.py", EMR, "AWS::EMR::Step", "analytics.EMREngine", "vpc"),
    Part("servicerole", "EMR service role\nEMR ServicePolicy_v2", EMR, "AWS::IAM::Role", "security.IAMRole", "emr", "RolesServiceRole"),
    Part("profile", "instance profile\napp buckets, SSM", EMR, "AWS::IAM::InstanceProfile", "security.IAMRole", "emr"),
    Part("kms", "KMS key\nlocal disks + EBS", EMR, "AWS::KMS::Key", "security.KMS", "emr"),
    Part("secconf", "security config\nencryption, IMDSv2", EMR, "AWS::EMR::SecurityConfiguration", "security.IAMPermissions", "emr"),
    Part("cleanup", "group clean-up\n(when the groups go)", EMR, "Custom::EmrManagedGroupRules", "compute.Lambda", "emr"),
    Part("studio", "EMR Studio (IAM auth)\noptional: studio=true", EMR, "AWS::EMR::Studio", "analytics.EMR", "studio", optional=True),
    Part("studiorole", "Studio service role", EMR, "AWS::IAM::Role", "security.IAMRole", "studio", "StudioServiceRole", optional=True),
    Part("studiogroups", "engine + workspace\ngroups (18888)", EMR, "AWS::EC2::SecurityGroup", "network.Nacl", "studio", "Studio", many=True, optional=True),
    Part("notebooks", "notebook deployment\nnotebooks/", EMR, "Custom::CDKBucketDeployment", "compute.Lambda", "studio", optional=True),
    Part("studiobucket", "Studio bucket\nworkspaces/ notebooks/", EMR, "AWS::S3::Bucket", "storage.SimpleStorageServiceS3Bucket", "studio", "StudioBucket", optional=True),
    Part("studiopolicy", "Studio users' policy\n(StudioUserPolicyArn)", EMR, "AWS::IAM::ManagedPolicy", "security.IAMPermissions", "studio", "StudioUserPolicy", optional=True),
    Part("uploadrule", "EventBridge rule\nObject Created under images/", EMR, "AWS::Events::Rule", "integration.EventbridgeRule", "autorun", "AutorunInputObjectCreated", optional=True),
    Part("pending", "SQS: uploads pending", EMR, "AWS::SQS::Queue", "integration.SimpleQueueServiceSqsQueue", "autorun", "Autorun", optional=True),
    Part("window", "rule: every window\n(+ optional schedule)", EMR, "AWS::Events::Rule", "integration.EventbridgeScheduler", "autorun", "AutorunRunWindow", optional=True),
    Part("statemachine", "Step Functions: the run\nstack's cluster or a transient twin\naddStep.sync, always terminated", EMR, "AWS::StepFunctions::StateMachine", "integration.StepFunctions", "autorun", "Autorun", optional=True),
    Part("lock", "DynamoDB: run lock\n(one execution at a time)", EMR, "AWS::DynamoDB::Table", "database.Dynamodb", "autorun", "Autorun", optional=True),
    Part("topics", "SNS: outcomes, alarms", EMR, "AWS::SNS::Topic", "integration.SimpleNotificationServiceSnsTopic", "autorun", "Autorun", many=True, optional=True),
    Part("alarm", "CloudWatch alarm\nfailed / timed out", EMR, "AWS::CloudWatch::Alarm", "management.Cloudwatch", "autorun", "Autorun", optional=True),
)  # fmt: skip

EDGES: tuple[Edge, ...] = (
    Edge("deploy", "artifacts", "writes"),
    Edge("artifacts", "cluster", "bootstrap, spark-defaults"),
    Edge("artifacts", "step", "featurize_pca.py"),
    Edge("step", "cluster", "runs on"),
    Edge("input", "cluster", "images", "iam", flow=True),
    Edge("cluster", "results", "PCA results, features", "iam", flow=True),
    Edge("cluster", "logs", "logs", flow=True),
    Edge("servicerole", "cluster", "manages"),
    Edge("profile", "cluster", "assumed by nodes"),
    Edge("secconf", "cluster", "applied to"),
    Edge("kms", "secconf", "encrypts with"),
    Edge("groups", "cluster"),
    Edge("vpc", "groups"),
    Edge("vpc", "endpoint"),
    Edge("flowlogs", "logs", "flow logs", flow=True),
    Edge("cleanup", "groups", "revokes cross-rules"),
    Edge("studio", "studiogroups"),
    Edge("studiorole", "studio", "service role"),
    Edge("studio", "studiobucket", "workspaces/"),
    Edge("notebooks", "studiobucket", "writes"),
    Edge("studiopolicy", "studio", "opens (IAM users)"),
    Edge("studiogroups", "cluster", "18888 to JEG", flow=True),
    Edge("input", "uploadrule", "Object Created"),
    Edge("uploadrule", "pending", "marks pending", flow=True),
    Edge("window", "statemachine", "starts"),
    Edge("statemachine", "pending", "counts, clears"),
    Edge("statemachine", "lock", "takes, releases"),
    Edge("statemachine", "cluster", "job step (.sync)", flow=True),
    Edge("statemachine", "topics", "outcome, counts", flow=True),
    Edge("alarm", "statemachine", "watches"),
    Edge("alarm", "topics", "pages"),
)


@dataclass
class Box:
    """A part found in the templates: its logical ids."""

    part: Part
    logical_ids: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What the picture draws: boxes and arrows, each backed by the templates."""

    boxes: dict[str, Box]
    edges: list[Edge]

    def drawn(self) -> list[tuple[str, str, str, str]]:
        """(label, stack, logical id, resource type) of every resource a box stands for."""
        return [
            (box.part.label, box.part.stack, logical_id, box.part.kind)
            for box in self.boxes.values()
            for logical_id in box.logical_ids
        ]


# -- reading the templates -------------------------------------------------------------------------------


def synthesize(outdir: Path, **context: Any) -> dict[str, dict[str, Any]]:
    """Both stacks' templates (``data``, ``emr``), synthesized like ``cdk synth`` with the Studio and autorun on."""
    sys.path.insert(0, str(ROOT / "cdk"))
    from aws_cdk import App
    from fruits_infra.artifacts import build_bundle
    from fruits_infra.stacks import wire

    bundle = outdir / "bundle"
    build_bundle(bundle)
    settings = {
        **json.loads((ROOT / "cdk.json").read_text())["context"],
        "studio": True,
        "autorun": True,
        **context,
    }
    app = App(context=settings, outdir=str(outdir / "cdk.out"))
    data, emr = wire(app, bundle_dir=bundle)
    app.synth()
    return {
        key: json.loads((outdir / "cdk.out" / f"{stack.artifact_id}.template.json").read_text())
        for key, stack in ((DATA, data), (EMR, emr))
    }


def _references(value: Any) -> Iterator[tuple[str, str]]:
    """("id", logical id) for every Ref / Fn::GetAtt and ("export", name) for every Fn::ImportValue in ``value``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                yield "id", inner
            elif key == "Fn::GetAtt":
                yield "id", inner[0] if isinstance(inner, list) else str(inner).split(".")[0]
            elif key == "Fn::ImportValue" and isinstance(inner, str):
                yield "export", inner
            else:
                yield from _references(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _references(inner)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _exports(template: dict[str, Any]) -> dict[str, str]:
    """Export name -> the logical id its value refers to."""
    found = {}
    for output in template.get("Outputs", {}).values():
        name = output.get("Export", {}).get("Name")
        targets = [target for kind, target in _references(output.get("Value")) if kind == "id"]
        if isinstance(name, str) and targets:
            found[name] = targets[0]
    return found


def _find(templates: dict[str, dict[str, Any]], part: Part) -> list[str]:
    resources = templates[part.stack].get("Resources", {})
    return sorted(
        logical_id
        for logical_id, resource in resources.items()
        if resource.get("Type") == part.kind and logical_id.startswith(part.prefix)
    )


def _referenced(templates: dict[str, dict[str, Any]], box: Box) -> set[tuple[str, str]]:
    """(stack, logical id) of everything the box's resources reference or depend on (across stacks: exports)."""
    exports = _exports(templates[DATA])
    found = set()
    for logical_id in box.logical_ids:
        resource = templates[box.part.stack]["Resources"][logical_id]
        found |= {(box.part.stack, target) for target in _as_list(resource.get("DependsOn", []))}
        for kind, target in _references(resource.get("Properties", {})):
            if kind == "id":
                found.add((box.part.stack, target))
            elif target in exports:
                found.add((DATA, exports[target]))
    return found


def _granted_to_nodes(templates: dict[str, dict[str, Any]], box: Box) -> bool:
    """Whether an IAM policy of the nodes' role (the instance profile's) names one of the box's buckets."""
    resources = templates[EMR]["Resources"]
    roles = {
        role["Ref"]
        for profile in resources.values()
        if profile.get("Type") == "AWS::IAM::InstanceProfile"
        for role in profile["Properties"]["Roles"]
        if isinstance(role, dict) and "Ref" in role
    }
    exports = _exports(templates[DATA])
    for policy in resources.values():
        if policy.get("Type") != "AWS::IAM::Policy":
            continue
        if not {r.get("Ref") for r in policy["Properties"].get("Roles", []) if isinstance(r, dict)} & roles:
            continue
        named = {
            exports.get(t) for k, t in _references(policy["Properties"]["PolicyDocument"]) if k == "export"
        }
        if named & set(box.logical_ids):
            return True
    return False


def plan(templates: dict[str, dict[str, Any]]) -> Plan:
    """The boxes and arrows, each checked against the templates; raises :class:`MissingResource`."""
    boxes: dict[str, Box] = {}
    for part in PARTS:
        found = _find(templates, part)
        if not found:
            if part.optional:
                continue
            raise MissingResource(
                f"no {part.kind} {part.prefix + '*' if part.prefix else ''} in the {part.stack} stack for {part.label!r}"
            )
        if len(found) > 1 and not part.many:
            raise MissingResource(f"{part.label!r} stands for one {part.kind} but the template has {found}")
        boxes[part.key] = Box(part, found)
    edges = []
    for edge in EDGES:
        if edge.source not in boxes or edge.target not in boxes:
            if any(p.optional for p in PARTS if p.key in (edge.source, edge.target)):
                continue
            raise MissingResource(f"arrow {edge.source} -> {edge.target}: a side is not in the templates")
        source, target = boxes[edge.source], boxes[edge.target]
        if edge.evidence == "iam":
            backed = _granted_to_nodes(templates, source if source.part.kind == "AWS::S3::Bucket" else target)
        else:
            ids = {(box.part.stack, lid) for box in (source, target) for lid in box.logical_ids}
            backed = bool((_referenced(templates, source) | _referenced(templates, target)) & ids)
        if not backed:
            raise MissingResource(
                f"arrow {edge.source} -> {edge.target} ({edge.label}): no reference backs it"
            )
        edges.append(edge)
    return Plan(boxes, edges)


# -- drawing ---------------------------------------------------------------------------------------------


def render(drawing: Plan, path: Path) -> Path:
    """Draw ``drawing`` with the ``diagrams`` package into ``path`` (PNG)."""
    import importlib

    from diagrams import Cluster, Diagram
    from diagrams import Edge as Arrow

    graph = {"fontsize": "20", "pad": "0.3", "nodesep": "0.9", "ranksep": "0.9", "splines": "spline"}
    node_attr = {"fontsize": "12"}
    nodes: dict[str, Any] = {}

    def draw(key: str) -> None:
        part = drawing.boxes[key].part
        module, name = part.icon.rsplit(".", 1)
        icon = getattr(importlib.import_module(f"diagrams.aws.{module}"), name)
        nodes[key] = icon(part.label)

    def group(name: str) -> list[str]:
        return [key for key, box in drawing.boxes.items() if box.part.group == name]

    path = Path(path)
    with Diagram(
        "Fruits! on AWS (drawn from the synthesized templates)",
        filename=str(path.with_suffix("")),
        outformat="png",
        show=False,
        direction=DIRECTION,
        graph_attr=graph,
        node_attr=node_attr,
    ):
        with Cluster("FruitsDataStack"):
            for key in group("data"):
                draw(key)
        with Cluster("FruitsEmrStack"):
            for key in group("emr"):
                draw(key)
            with Cluster("VPC (new, or yours): private subnets"):
                for key in group("vpc"):
                    draw(key)
                if group("studio"):
                    with Cluster("optional: EMR Studio (context studio=true)"):
                        for key in group("studio"):
                            draw(key)
            if group("autorun"):
                with Cluster("optional: runs that start themselves (context autorun=true)"):
                    for key in group("autorun"):
                        draw(key)
        for edge in drawing.edges:
            style = "solid" if edge.flow else "dashed"
            colour = "#2a9d8f" if edge.flow else "#7f8c8d"
            (
                nodes[edge.source]
                >> Arrow(label=edge.label, style=style, color=colour, fontsize="10")
                >> nodes[edge.target]
            )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", nargs="?", default=str(ROOT / "docs" / "img" / "architecture.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fruits-architecture-") as folder:
        drawing = plan(synthesize(Path(folder)))
    path = render(drawing, Path(args.output))
    for label, stack, logical_id, kind in drawing.drawn():
        print(f"{stack:5} {kind:32} {logical_id:60} {label.splitlines()[0]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
