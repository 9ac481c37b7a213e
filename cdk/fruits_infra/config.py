"""Typed view of the CDK context (``cdk.json`` and ``cdk deploy -c key=value``).

Every key the app reads is declared once in :data:`DEFAULTS`; ``cdk.json`` repeats the same defaults so
that an operator sees every option in one place (a test keeps the two equal). Values given with ``-c``
arrive as strings and are parsed to the type of their default.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from constructs import Node

from fruits_infra.job_contract import ENGINES, MODELS, default

#: Every context key with its default. ``None`` means "not set" (the job's own default applies).
DEFAULTS: dict[str, Any] = {
    "stage": "",
    "ephemeral": False,
    "releaseLabel": "emr-7.13.0",
    "osReleaseLabel": None,
    "clusterName": "fruits-featurize",
    "clusterGeneration": 1,
    "instanceMode": "groups",
    "primaryInstanceTypes": ["m5.xlarge"],
    "coreInstanceTypes": ["m5.xlarge"],
    "coreInstanceCount": 2,
    "taskInstanceTypes": ["m5.xlarge", "m5a.xlarge", "m6i.xlarge"],
    "taskSpotCount": 0,
    "ebsVolumeGiB": 64,
    "managedScaling": True,
    "scalingMaxUnits": 6,
    "idleTimeoutSeconds": 3600,
    "vpcId": None,
    "subnetIds": [],
    "inTransitCertificatesUri": None,
    "weightsUri": None,
    # SHA-256 the bootstrap checks the weights file against (default: the digest known for Keras' ImageNet file).
    "weightsSha256": None,
    # Where the bootstrap gets the pinned wheels: the artifacts bucket's wheelhouse/ (a cluster without internet
    # egress; upload it with `make wheelhouse`), or a private package index; default PyPI.
    "wheelhouse": False,
    "pipIndexUrl": None,
    "deployStep": True,
    "stepArguments": [],
    # The job's own defaults (one owner: fruits.options); cdk.json repeats them, a test keeps the two equal.
    "model": default("model"),
    "alpha": None,
    "imageSize": default("image_size"),
    "engine": default("engine"),
    # litert-int8: an s3:// prefix whose images calibrate its model (the job's --calibration; default the input).
    "calibration": None,
    "pcaK": None,
    "pcaVariance": None,
    "batchSize": None,
    "arrowMaxRecordsPerBatch": 256,
    "studio": False,
    # Runs that start themselves (fruits_infra.autorun): new images under the input prefix, at most one run per
    # window; a schedule (an EventBridge rate() or cron() expression) forces one; paused deploys the rules off.
    "autorun": False,
    "autorunWindowMinutes": 15,
    "autorunSchedule": None,
    "autorunPaused": False,
    "autorunTimeoutMinutes": 240,
}

_RELEASE = re.compile(r"^emr-\d+\.\d+\.\d+$")
# Amazon Linux 2023 release labels look like 2023.6.20250203 (optionally .N); EMR 7.x runs AL2023.
_OS_RELEASE = re.compile(r"^2023\.\d+\.\d{8}(\.\d+)?$")
# A stage goes into stack names, export names and the cluster name: lower case, short, starts with a letter.
_STAGE = re.compile(r"^([a-z][a-z0-9-]{0,15})?$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_IDLE_MIN, _IDLE_MAX = 60, 7 * 24 * 3600  # the bounds EMR accepts for AutoTerminationPolicy.IdleTimeout
# EventBridge schedule expressions: rate(value unit) or cron(six fields)
# (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-scheduled-rule-pattern.html).
_SCHEDULE = re.compile(r"^(rate\(\d+ (minute|minutes|hour|hours|day|days)\)|cron\(\S+( \S+){5}\))$")
_WINDOW_MAX = 24 * 60
_RUN_TIMEOUT_MIN, _RUN_TIMEOUT_MAX = 10, 24 * 60


class ConfigError(ValueError):
    """A context value has the wrong type or is out of range."""


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise ConfigError(f"context {key!r} must be true or false, got {value!r}")


def _parse_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"context {key!r} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key!r} must be an integer, got {value!r}") from None


def _parse_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key!r} must be a number, got {value!r}") from None


def _parse_list(key: str, value: Any) -> list[str]:
    """A JSON list, or a comma-separated string (``-c subnetIds=subnet-1,subnet-2``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"context {key!r} is not a JSON list: {value!r}") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"context {key!r} must be a list of strings, got {value!r}")
    return list(value)


def _optional_str(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip() in {"", "null", "none"}):
        return None
    return str(value)


@dataclass(frozen=True)
class FruitsConfig:
    """The app's options. Build with :meth:`from_context` (or directly in tests)."""

    stage: str = DEFAULTS["stage"]
    ephemeral: bool = DEFAULTS["ephemeral"]
    release_label: str = DEFAULTS["releaseLabel"]
    os_release_label: str | None = DEFAULTS["osReleaseLabel"]
    cluster_name: str = DEFAULTS["clusterName"]
    cluster_generation: int = DEFAULTS["clusterGeneration"]
    instance_mode: str = DEFAULTS["instanceMode"]
    primary_instance_types: tuple[str, ...] = tuple(DEFAULTS["primaryInstanceTypes"])
    core_instance_types: tuple[str, ...] = tuple(DEFAULTS["coreInstanceTypes"])
    core_instance_count: int = DEFAULTS["coreInstanceCount"]
    task_instance_types: tuple[str, ...] = tuple(DEFAULTS["taskInstanceTypes"])
    task_spot_count: int = DEFAULTS["taskSpotCount"]
    ebs_volume_gib: int = DEFAULTS["ebsVolumeGiB"]
    managed_scaling: bool = DEFAULTS["managedScaling"]
    scaling_max_units: int = DEFAULTS["scalingMaxUnits"]
    idle_timeout_seconds: int = DEFAULTS["idleTimeoutSeconds"]
    vpc_id: str | None = DEFAULTS["vpcId"]
    subnet_ids: tuple[str, ...] = tuple(DEFAULTS["subnetIds"])
    in_transit_certificates_uri: str | None = DEFAULTS["inTransitCertificatesUri"]
    weights_uri: str | None = DEFAULTS["weightsUri"]
    weights_sha256: str | None = DEFAULTS["weightsSha256"]
    wheelhouse: bool = DEFAULTS["wheelhouse"]
    pip_index_url: str | None = DEFAULTS["pipIndexUrl"]
    deploy_step: bool = DEFAULTS["deployStep"]
    step_arguments: tuple[str, ...] = tuple(DEFAULTS["stepArguments"])
    model: str = DEFAULTS["model"]
    alpha: float | None = DEFAULTS["alpha"]
    image_size: int = DEFAULTS["imageSize"]
    engine: str = DEFAULTS["engine"]
    calibration: str | None = DEFAULTS["calibration"]
    pca_k: int | None = DEFAULTS["pcaK"]
    pca_variance: float | None = DEFAULTS["pcaVariance"]
    batch_size: int | None = DEFAULTS["batchSize"]
    arrow_max_records_per_batch: int = DEFAULTS["arrowMaxRecordsPerBatch"]
    #: An EMR Studio for analysts, attached to the cluster (adds Livy and JupyterEnterpriseGateway to it).
    studio: bool = DEFAULTS["studio"]
    autorun: bool = DEFAULTS["autorun"]
    autorun_window_minutes: int = DEFAULTS["autorunWindowMinutes"]
    autorun_schedule: str | None = DEFAULTS["autorunSchedule"]
    autorun_paused: bool = DEFAULTS["autorunPaused"]
    #: The bound of one triggered run's job (its EMR step); the state machine's own bounds derive from it.
    autorun_timeout_minutes: int = DEFAULTS["autorunTimeoutMinutes"]

    def __post_init__(self) -> None:
        if not _STAGE.match(self.stage):
            raise ConfigError(
                f"stage must be empty or 1-16 of a-z, 0-9, '-' starting with a letter, got {self.stage!r}"
            )
        if not _RELEASE.match(self.release_label):
            raise ConfigError(f"releaseLabel must look like emr-7.13.0, got {self.release_label!r}")
        if self.os_release_label is not None and not _OS_RELEASE.match(self.os_release_label):
            raise ConfigError(
                f"osReleaseLabel must be an Amazon Linux 2023 release such as 2023.6.20250203, got "
                f"{self.os_release_label!r} (aws emr describe-release-label --release-label "
                f"{self.release_label} lists them)"
            )
        if self.cluster_generation < 1:
            raise ConfigError("clusterGeneration must be >= 1")
        if self.instance_mode not in {"groups", "fleets"}:
            raise ConfigError(f"instanceMode must be 'groups' or 'fleets', got {self.instance_mode!r}")
        for name in ("primary_instance_types", "core_instance_types", "task_instance_types"):
            if not getattr(self, name):
                raise ConfigError(f"{name} needs at least one instance type")
        if self.core_instance_count < 1:
            raise ConfigError("coreInstanceCount must be >= 1 (HDFS and YARN need a core node)")
        if self.task_spot_count < 0:
            raise ConfigError("taskSpotCount must be >= 0")
        if self.ebs_volume_gib < 16:
            raise ConfigError("ebsVolumeGiB must be >= 16")
        if self.scaling_max_units < self.core_instance_count + self.task_spot_count:
            raise ConfigError("scalingMaxUnits must be >= coreInstanceCount + taskSpotCount")
        if not _IDLE_MIN <= self.idle_timeout_seconds <= _IDLE_MAX:
            raise ConfigError(f"idleTimeoutSeconds must be within [{_IDLE_MIN}, {_IDLE_MAX}]")
        if bool(self.vpc_id) != bool(self.subnet_ids):
            raise ConfigError("an existing network needs both vpcId and subnetIds")
        if self.vpc_id and self.instance_mode == "groups" and len(self.subnet_ids) != 1:
            raise ConfigError("instance groups run in exactly one subnet: give one subnetIds entry")
        for key, uri in (("inTransitCertificatesUri", self.in_transit_certificates_uri),):
            if uri is not None and not (_S3_URI.match(uri) and uri.endswith(".zip")):
                raise ConfigError(f"{key} must be an s3:// URI of a .zip of PEM files, got {uri!r}")
        if self.weights_uri is not None and not (
            _S3_URI.match(self.weights_uri) and self.weights_uri.endswith((".h5", ".keras"))
        ):
            raise ConfigError(
                f"weightsUri must be an s3:// URI of an .h5 or .keras file, got {self.weights_uri!r}"
            )
        if self.weights_sha256 is not None and not _SHA256.match(self.weights_sha256):
            raise ConfigError(f"weightsSha256 must be 64 lower-case hex digits, got {self.weights_sha256!r}")
        if self.pip_index_url is not None and not self.pip_index_url.startswith("https://"):
            raise ConfigError(f"pipIndexUrl must be an https:// URL, got {self.pip_index_url!r}")
        if self.wheelhouse and self.pip_index_url:
            raise ConfigError(
                "give wheelhouse or pipIndexUrl, not both: the bootstrap installs from one source"
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.calibration is not None and not _S3_URI.match(self.calibration):
            raise ConfigError(
                f"calibration must be an s3:// prefix (s3://bucket/prefix/) of images, got {self.calibration!r}"
            )
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(sorted(MODELS))}, got {self.model!r}")
        if self.pca_variance is not None and not 0.0 < self.pca_variance <= 1.0:
            raise ConfigError("pcaVariance must be within (0, 1]")
        if self.arrow_max_records_per_batch < 1:
            raise ConfigError("arrowMaxRecordsPerBatch must be >= 1")
        if not 1 <= self.autorun_window_minutes <= _WINDOW_MAX:
            raise ConfigError(
                f"autorunWindowMinutes must be within [1, {_WINDOW_MAX}], got {self.autorun_window_minutes}"
            )
        if self.autorun_schedule is not None and not _SCHEDULE.match(self.autorun_schedule):
            raise ConfigError(
                "autorunSchedule must be an EventBridge schedule expression such as rate(1 day) or "
                f"cron(0 3 * * ? *), got {self.autorun_schedule!r}"
            )
        if not _RUN_TIMEOUT_MIN <= self.autorun_timeout_minutes <= _RUN_TIMEOUT_MAX:
            raise ConfigError(
                f"autorunTimeoutMinutes must be within [{_RUN_TIMEOUT_MIN}, {_RUN_TIMEOUT_MAX}], "
                f"got {self.autorun_timeout_minutes}"
            )
        self._check_instance_types()
        self._check_model()

    def _check_instance_types(self) -> None:
        from fruits_infra.instances import instance_spec  # instances imports ConfigError from here

        for name in (*self.primary_instance_types, *self.core_instance_types, *self.task_instance_types):
            instance_spec(name)

    def _check_model(self) -> None:
        from fruits_infra.job_contract import imagenet_weights_file, infer_model_from_filename

        try:
            imagenet_weights_file(self.model, self.job_alpha, self.image_size)
        except ValueError as error:
            raise ConfigError(f"model/alpha: {error}") from None
        if self.weights_uri:
            named = infer_model_from_filename(self.weights_uri)
            if named is not None and named != (self.model, self.job_alpha):
                raise ConfigError(
                    f"weightsUri {self.weights_uri} holds {named[0]} alpha {named[1]} weights (Keras' file name), "
                    f"but the job is configured for model {self.model} alpha {self.job_alpha}: set -c model=... "
                    "-c alpha=... to match, or use the file meant for this model"
                )

    @property
    def job_alpha(self) -> float:
        """The width the job uses: ``alpha`` when set, else the job's own default (1.0)."""
        return 1.0 if self.alpha is None else self.alpha

    @property
    def full_cluster_name(self) -> str:
        """The cluster's Name: replacement-only in CloudFormation, so a new generation is a new cluster."""
        stage = f"-{self.stage}" if self.stage else ""
        return f"{self.cluster_name}{stage}-g{self.cluster_generation}"

    def stack_name(self, base: str) -> str:
        """``FruitsEmrStack`` for the default stage, ``FruitsEmrStack-<stage>`` otherwise."""
        return f"{base}-{self.stage}" if self.stage else base

    def next_generation_deploy(self, stack_name: str) -> str:
        """The one deploy command that works once this cluster has terminated: the same stage, the next generation.

        A terminated cluster cannot be restarted, and a deploy that changes the cluster or its step makes
        CloudFormation call EMR on it and roll back; the next ``clusterGeneration`` (replacement-only, in the
        cluster's Name) makes it create a new cluster instead, with any other change in the same deploy.
        """
        stage = f" -c stage={self.stage}" if self.stage else ""
        return f"npx cdk deploy {stack_name}{stage} -c clusterGeneration={self.cluster_generation + 1}"

    @property
    def task_capacity(self) -> bool:
        """True when Spot task capacity is requested."""
        return self.task_spot_count > 0

    @property
    def existing_network(self) -> bool:
        return self.vpc_id is not None

    @classmethod
    def from_context(cls, node: Node) -> FruitsConfig:
        """Read every key of :data:`DEFAULTS` from ``node``'s context, falling back to the default."""

        def get(key: str) -> Any:
            value = node.try_get_context(key)
            return DEFAULTS[key] if value is None else value

        return cls(
            stage=str(get("stage") or ""),
            ephemeral=_parse_bool("ephemeral", get("ephemeral")),
            release_label=str(get("releaseLabel")),
            os_release_label=_optional_str(get("osReleaseLabel")),
            cluster_name=str(get("clusterName")),
            cluster_generation=_parse_int("clusterGeneration", get("clusterGeneration")),
            instance_mode=str(get("instanceMode")),
            primary_instance_types=tuple(_parse_list("primaryInstanceTypes", get("primaryInstanceTypes"))),
            core_instance_types=tuple(_parse_list("coreInstanceTypes", get("coreInstanceTypes"))),
            core_instance_count=_parse_int("coreInstanceCount", get("coreInstanceCount")),
            task_instance_types=tuple(_parse_list("taskInstanceTypes", get("taskInstanceTypes"))),
            task_spot_count=_parse_int("taskSpotCount", get("taskSpotCount")),
            ebs_volume_gib=_parse_int("ebsVolumeGiB", get("ebsVolumeGiB")),
            managed_scaling=_parse_bool("managedScaling", get("managedScaling")),
            scaling_max_units=_parse_int("scalingMaxUnits", get("scalingMaxUnits")),
            idle_timeout_seconds=_parse_int("idleTimeoutSeconds", get("idleTimeoutSeconds")),
            vpc_id=_optional_str(get("vpcId")),
            subnet_ids=tuple(_parse_list("subnetIds", get("subnetIds"))),
            in_transit_certificates_uri=_optional_str(get("inTransitCertificatesUri")),
            weights_uri=_optional_str(get("weightsUri")),
            weights_sha256=_optional_str(get("weightsSha256")),
            wheelhouse=_parse_bool("wheelhouse", get("wheelhouse")),
            pip_index_url=_optional_str(get("pipIndexUrl")),
            deploy_step=_parse_bool("deployStep", get("deployStep")),
            step_arguments=tuple(_parse_list("stepArguments", get("stepArguments"))),
            model=str(get("model")),
            alpha=None if _optional_str(get("alpha")) is None else _parse_float("alpha", get("alpha")),
            image_size=_parse_int("imageSize", get("imageSize")),
            engine=str(get("engine")),
            calibration=_optional_str(get("calibration")),
            pca_k=None if _optional_str(get("pcaK")) is None else _parse_int("pcaK", get("pcaK")),
            pca_variance=(
                None
                if _optional_str(get("pcaVariance")) is None
                else _parse_float("pcaVariance", get("pcaVariance"))
            ),
            batch_size=(
                None if _optional_str(get("batchSize")) is None else _parse_int("batchSize", get("batchSize"))
            ),
            arrow_max_records_per_batch=_parse_int("arrowMaxRecordsPerBatch", get("arrowMaxRecordsPerBatch")),
            studio=_parse_bool("studio", get("studio")),
            autorun=_parse_bool("autorun", get("autorun")),
            autorun_window_minutes=_parse_int("autorunWindowMinutes", get("autorunWindowMinutes")),
            autorun_schedule=_optional_str(get("autorunSchedule")),
            autorun_paused=_parse_bool("autorunPaused", get("autorunPaused")),
            autorun_timeout_minutes=_parse_int("autorunTimeoutMinutes", get("autorunTimeoutMinutes")),
        )


def field_names() -> list[str]:
    """The dataclass field names (used by tests to prove every context key maps to a field)."""
    return [f.name for f in fields(FruitsConfig)]
