"""What the synthesized templates deploy, read from ``cdk.out`` with the intrinsics resolved as CloudFormation would.

Used by the cloud rehearsal (tests/rehearsal) and by the operator CLI's tests (tests/ops_stack.py), which give
their own physical names (each test's buckets and cluster) through ``names``.

CloudFormation fills in physical names, ARNs and imports at deploy time; this module does the same for the few
intrinsics the app's templates use (``Ref``, ``Fn::GetAtt``, ``Fn::ImportValue``, ``Fn::Join``, ``Fn::Sub``,
``Fn::Select``, ``Fn::GetAZs`` and the pseudo parameters), with made-up but stable physical names. An intrinsic
it does not know raises, so a template change that the rehearsal cannot follow fails loudly instead of being
guessed at. Nothing here types a bucket name, key or prefix: they all come from the templates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARTITION = "aws"
ACCOUNT = "123456789012"  # moto's default account
_SUB = re.compile(r"\$\{([^}]+)\}")


class Unsupported(ValueError):
    """A template construct the rehearsal does not know how to deploy."""


@dataclass(frozen=True)
class BucketDeployment:
    """One ``Custom::CDKBucketDeployment``: local source folders (from the assets) and where they go."""

    sources: list[Path]
    bucket: str
    prefix: str
    markers: list[dict[str, str]]  # per source: marker -> deploy-time value (Source.jsonData, Source.data)
    extract: bool


@dataclass
class Deployment:
    """The resolved view of every stack of one ``cdk.out``."""

    region: str
    buckets: dict[str, str] = field(default_factory=dict)  # logical id -> physical name
    spark_defaults: dict[str, str] = field(default_factory=dict)
    spark_env: dict[str, str] = field(default_factory=dict)
    classifications: dict[str, dict[str, str]] = field(default_factory=dict)  # every one, by name
    core_instance_types: list[str] = field(default_factory=list)
    cluster_name: str = ""
    bootstrap_actions: list[tuple[str, list[str]]] = field(default_factory=list)  # (script URI, args)
    steps: dict[str, list[str]] = field(default_factory=dict)  # step name -> HadoopJarStep args
    instance_role_statements: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # stack -> output key -> value
    bucket_deployments: list[BucketDeployment] = field(default_factory=list)


def bucket_name(stack: str, logical_id: str) -> str:
    """A valid, stable S3 name for a bucket resource (CloudFormation would generate one like it)."""
    return f"{stack}-{logical_id}".lower()[:63].rstrip("-")


Names = Callable[[str, str, str], "str | None"]


class Resolver:
    """Resolves intrinsics of the templates in one ``cdk.out`` as if they had been deployed together.

    ``names(stack, logical_id, resource_type)`` may give a resource's physical id (None: the default, see
    :func:`bucket_name`); ``account`` is the pseudo parameter AWS::AccountId.
    """

    def __init__(
        self, cdk_out: Path, region: str, *, account: str = ACCOUNT, names: Names | None = None
    ) -> None:
        self.cdk_out = cdk_out
        self.region = region
        self.account = account
        self.names = names
        manifest = json.loads((cdk_out / "manifest.json").read_text())
        self.templates: dict[str, dict[str, Any]] = {}
        for artifact_id, artifact in manifest["artifacts"].items():
            if artifact["type"] == "aws:cloudformation:stack":
                template_file = artifact["properties"]["templateFile"]
                self.templates[artifact_id] = json.loads((cdk_out / template_file).read_text())
        self.exports: dict[str, tuple[str, Any]] = {}
        for stack, template in self.templates.items():
            for output in template.get("Outputs", {}).values():
                name = output.get("Export", {}).get("Name")
                if name is not None:
                    self.exports[self.resolve(stack, name)] = (stack, output["Value"])

    def resource(self, stack: str, logical_id: str) -> dict[str, Any]:
        """The template entry of one resource."""
        try:
            return self.templates[stack]["Resources"][logical_id]
        except KeyError:
            raise Unsupported(f"{stack} has no resource {logical_id}") from None

    def _ref(self, stack: str, name: str) -> str:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack,
            "AWS::NoValue": "",
        }
        if name in pseudo:
            return pseudo[name]
        parameters = self.templates[stack].get("Parameters", {})
        if name in parameters:
            return str(parameters[name].get("Default", ""))
        kind = self.resource(stack, name)["Type"]
        chosen = self.names(stack, name, kind) if self.names else None
        if chosen is not None:
            return chosen
        if kind == "AWS::S3::Bucket":
            return bucket_name(stack, name)
        return f"{stack}-{name}"  # any other physical id: opaque but unique

    def _get_att(self, stack: str, logical_id: str, attribute: str) -> str:
        kind = self.resource(stack, logical_id)["Type"]
        name = self._ref(stack, logical_id)
        if kind == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:{PARTITION}:s3:::{name}"
        if attribute == "Arn":
            service = kind.split("::")[1].lower()
            return f"arn:{PARTITION}:{service}:{self.region}:{self.account}:{name}"
        return f"{name}.{attribute}"

    def resolve(self, stack: str, value: Any) -> Any:
        """``value`` with every intrinsic replaced by its deployed value."""
        if isinstance(value, list):
            return [self.resolve(stack, item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1 or not next(iter(value)).startswith(("Ref", "Fn::")):
            return {key: self.resolve(stack, item) for key, item in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref":
            return self._ref(stack, argument)
        if function == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            return self._get_att(stack, logical_id, attribute)
        if function == "Fn::ImportValue":
            name = self.resolve(stack, argument)
            if name not in self.exports:
                raise Unsupported(f"{stack} imports {name!r}, which no stack of this cdk.out exports")
            exporter, exported = self.exports[name]
            return self.resolve(exporter, exported)
        if function == "Fn::Join":
            separator, items = argument
            return separator.join(str(self.resolve(stack, item)) for item in items)
        if function == "Fn::Select":
            index, items = argument
            return self.resolve(stack, items)[int(self.resolve(stack, index))]
        if function == "Fn::GetAZs":
            return [f"{self.region}a", f"{self.region}b", f"{self.region}c"]
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            resolved = {key: str(self.resolve(stack, item)) for key, item in variables.items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in resolved:
                    return resolved[name]
                if "." in name:
                    logical_id, attribute = name.split(".", 1)
                    return self._get_att(stack, logical_id, attribute)
                return self._ref(stack, name)

            return _SUB.sub(substitute, text)
        raise Unsupported(f"intrinsic {function} in {stack} is not modelled by the rehearsal")

    def resources(self, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(stack, logical id, resource) of every resource of ``kind`` in every stack."""
        return [
            (stack, logical_id, resource)
            for stack, template in self.templates.items()
            for logical_id, resource in template.get("Resources", {}).items()
            if resource["Type"] == kind
        ]

    def asset_source(self, object_key: str) -> Path:
        """The local folder or file that the asset published under ``object_key`` came from."""
        for assets_file in self.cdk_out.glob("*.assets.json"):
            for asset in json.loads(assets_file.read_text()).get("files", {}).values():
                for destination in asset["destinations"].values():
                    if destination["objectKey"] == object_key:
                        return self.cdk_out / asset["source"]["path"]
        raise Unsupported(f"no asset in {self.cdk_out} is published as {object_key}")


def _classification(configurations: list[dict[str, Any]], name: str) -> dict[str, str]:
    for configuration in configurations:
        if configuration.get("Classification") == name:
            properties = dict(configuration.get("ConfigurationProperties", {}))
            for nested in configuration.get("Configurations", []):
                if nested.get("Classification") == "export":
                    properties.update(nested.get("ConfigurationProperties", {}))
            return {key: str(value) for key, value in properties.items()}
    return {}


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _only_s3(statement: dict[str, Any]) -> dict[str, Any] | None:
    """The statement restricted to its S3 actions, or None when it has none."""
    actions = statement.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    s3_actions = [action for action in actions if action.lower().startswith("s3:")]
    if not s3_actions:
        return None
    return {**statement, "Action": s3_actions}


def load(cdk_out: Path, region: str) -> Deployment:
    """Every stack of ``cdk_out`` resolved: buckets, the cluster's configuration, bootstrap, steps, IAM, outputs."""
    resolver = Resolver(cdk_out, region)
    deployment = Deployment(region=region)
    for stack, logical_id, _ in resolver.resources("AWS::S3::Bucket"):
        deployment.buckets[logical_id] = bucket_name(stack, logical_id)

    clusters = resolver.resources("AWS::EMR::Cluster")
    if len(clusters) != 1:
        raise Unsupported(f"expected one AWS::EMR::Cluster, found {len(clusters)}")
    ((cluster_stack, _, cluster),) = clusters
    properties = resolver.resolve(cluster_stack, cluster["Properties"])
    deployment.spark_defaults = _classification(properties.get("Configurations", []), "spark-defaults")
    deployment.spark_env = _classification(properties.get("Configurations", []), "spark-env")
    for configuration in properties.get("Configurations", []):
        name = configuration["Classification"]
        deployment.classifications[name] = _classification(properties["Configurations"], name)
    deployment.cluster_name = str(properties.get("Name", ""))
    instances = properties["Instances"]
    if "CoreInstanceGroup" in instances:
        deployment.core_instance_types = [instances["CoreInstanceGroup"]["InstanceType"]]
    else:
        fleet = instances["CoreInstanceFleet"]["InstanceTypeConfigs"]
        deployment.core_instance_types = [config["InstanceType"] for config in fleet]
    for action in properties.get("BootstrapActions", []):
        script = action["ScriptBootstrapAction"]
        deployment.bootstrap_actions.append((script["Path"], [str(a) for a in script.get("Args", [])]))

    for stack, _, step in resolver.resources("AWS::EMR::Step"):
        props = resolver.resolve(stack, step["Properties"])
        deployment.steps[props["Name"]] = [str(arg) for arg in props["HadoopJarStep"]["Args"]]

    # The instance role: the role of the instance profile the cluster names as its JobFlowRole.
    profile_ref = cluster["Properties"]["JobFlowRole"]
    profile_id = profile_ref["Fn::GetAtt"][0] if "Fn::GetAtt" in profile_ref else profile_ref["Ref"]
    (role_ref,) = resolver.resource(cluster_stack, profile_id)["Properties"]["Roles"]
    role_id = role_ref["Ref"]
    role = resolver.resource(cluster_stack, role_id)["Properties"]
    if role.get("ManagedPolicyArns"):
        raise Unsupported("managed policies on the instance role cannot be resolved from the template")
    documents = [policy["PolicyDocument"] for policy in role.get("Policies", [])]
    for stack, _, policy in resolver.resources("AWS::IAM::Policy"):
        if stack == cluster_stack and {"Ref": role_id} in policy["Properties"].get("Roles", []):
            documents.append(policy["Properties"]["PolicyDocument"])
    for document in documents:
        for statement in _statements(resolver.resolve(cluster_stack, document)):
            restricted = _only_s3(statement)
            if restricted is not None:
                deployment.instance_role_statements.append(restricted)

    for stack, template in resolver.templates.items():
        deployment.outputs[stack] = {
            key: str(resolver.resolve(stack, output["Value"]))
            for key, output in template.get("Outputs", {}).items()
            if "Export" not in output or not key.startswith("Export")
        }

    for stack, _, resource in resolver.resources("Custom::CDKBucketDeployment"):
        props = resolver.resolve(stack, resource["Properties"])
        deployment.bucket_deployments.append(
            BucketDeployment(
                sources=[resolver.asset_source(key) for key in props["SourceObjectKeys"]],
                bucket=props["DestinationBucketName"],
                prefix=props.get("DestinationBucketKeyPrefix", ""),
                markers=props.get("SourceMarkers") or [{} for _ in props["SourceObjectKeys"]],
                extract=str(props.get("Extract", "true")).lower() != "false",
            )
        )
    return deployment
