"""Job options: command line first, then Spark conf keys ``spark.fruits.<name>``, then defaults.

A cluster carries its defaults in ``spark-defaults`` (``spark.fruits.input`` ...), so a console step needs
only the script path; any option given on the command line wins.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from fruits.engines import ENGINES
from fruits.images import DEFAULT_MAX_PIXELS
from fruits.layout import default_feature_store
from fruits.models import MODELS, check_alpha, check_weights_source, get_spec

CONF_PREFIX = "spark.fruits."


class UsageError(ValueError):
    """A bad option or input; reported as one line, exit status 2."""


@dataclass(frozen=True)
class JobOptions:
    """Everything a run needs to know, validated."""

    input: str
    output: str
    model: str = "mobilenet_v2"
    alpha: float = 1.0
    weights: str = "imagenet"
    image_size: int = 224
    decode_size: int = 100
    k: int | None = None
    variance: float | None = 0.95
    batch_size: int = 64
    engine: str = "litert"
    threads: int = 0
    images_per_task: int = 512
    limit: int | None = None
    overwrite: bool = False
    keep_features: bool = False
    feature_store: str = ""
    reuse_pca: bool = False
    keep_runs: int = 0
    wait: int = 0
    lease_ttl: int = 300
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def store_uri(self) -> str:
        """Where featurized vectors are kept: ``--feature-store`` or ``<output>/feature_store``."""
        return self.feature_store or default_feature_store(self.output)


def _conf_key(dest: str) -> str:
    head, *rest = dest.split("_")
    return CONF_PREFIX + head + "".join(word.title() for word in rest)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option can also come from the Spark conf key shown in its help."""
    parser = _Parser(
        prog="featurize_pca.py",
        description=(
            "Featurize fruit images with a pretrained CNN (transfer learning) and reduce the features with "
            "Spark MLlib PCA. Writes results.csv (path, label, pc_1..pc_k), results.parquet, the fitted "
            "pipeline, rejected.csv, manifest.json and plots under --output. Each option can also be set "
            "with the Spark conf key in brackets."
        ),
    )
    add = parser.add_argument

    def key(dest: str) -> str:
        return f"[{_conf_key(dest)}]"

    add(
        "--input",
        help=f"folder or s3:// prefix of images, read recursively; label = parent folder {key('input')}",
    )
    add("--output", help=f"folder or s3:// prefix for the results {key('output')}")
    add("--model", choices=sorted(MODELS), help=f"Keras backbone (default mobilenet_v2) {key('model')}")
    add(
        "--alpha",
        type=_positive(float),
        help=f"width multiplier of MobileNet/MobileNetV2 (default 1.0) {key('alpha')}",
    )
    add(
        "--weights",
        help="imagenet (Keras' cache, downloaded if missing), a local .h5/.keras file, an s3:// URI, or none "
        f"(random weights, marked as such in every output) (default imagenet) {key('weights')}",
    )
    add(
        "--image-size",
        type=_positive(int),
        help=f"side of the model's input in pixels (default 224) {key('image_size')}",
    )
    add(
        "--decode-size",
        type=_positive(int),
        help="side images are decoded to before the model resizes them in its graph; Fruits-360 images are "
        f"100x100 (default 100) {key('decode_size')}",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--k", type=_positive(int), help=f"number of principal components {key('k')}")
    group.add_argument(
        "--variance",
        type=_fraction,
        help=f"keep the smallest k whose explained variance reaches this fraction (default 0.95) {key('variance')}",
    )
    add(
        "--batch-size",
        type=_positive(int),
        help=f"images per inference call (default 64) {key('batch_size')}",
    )
    add(
        "--engine",
        choices=ENGINES,
        help=f"inference engine (default litert; keras is the reference) {key('engine')}",
    )
    add("--threads", type=int, help=f"inference threads per task (default: spark.task.cpus) {key('threads')}")
    add(
        "--images-per-task",
        type=_positive(int),
        help=f"images per featurization task (default 512) {key('images_per_task')}",
    )
    add(
        "--limit",
        type=_positive(int),
        help=f"featurize only the first N images: a quick sample {key('limit')}",
    )
    add(
        "--overwrite",
        action="store_true",
        default=None,
        help=f"publish over an existing result {key('overwrite')}",
    )
    add(
        "--keep-features",
        action="store_true",
        default=None,
        help=f"also write the full feature vectors into results.parquet {key('keep_features')}",
    )
    add(
        "--feature-store",
        help=f"where feature vectors are kept (default <output>/feature_store) {key('feature_store')}",
    )
    add(
        "--reuse-pca",
        action="store_true",
        default=None,
        help=f"project with the last committed run's PCA pipeline instead of fitting a new one {key('reuse_pca')}",
    )
    add(
        "--keep-runs",
        type=int,
        help=f"after committing, delete all but the newest N runs (0 keeps all) {key('keep_runs')}",
    )
    add(
        "--wait",
        type=int,
        help=f"seconds to wait for another run holding the output (default 0: fail) {key('wait')}",
    )
    add(
        "--lease-ttl",
        type=_positive(int),
        help="seconds a run's lease on the output lasts unless renewed; a crashed run blocks the output this "
        f"long (default 300) {key('lease_ttl')}",
    )
    add(
        "--max-pixels",
        type=_positive(int),
        help=f"refuse images with more pixels (default 50000000) {key('max_pixels')}",
    )
    return parser


def _from_conf(dest: str, conf: Mapping[str, str], kind: type) -> object | None:
    text = conf.get(_conf_key(dest))
    if text is None or text == "":
        return None
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise UsageError(f"{_conf_key(dest)} must be true or false, got {text!r}")
        return text.lower() == "true"
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{_conf_key(dest)}: invalid value {text!r}") from None


def parse_options(argv: Sequence[str], conf: Mapping[str, str] | None = None) -> JobOptions:
    """Parse and validate; raises UsageError with a one-line message on any problem."""
    conf = conf or {}
    namespace = build_parser().parse_args(list(argv))
    values: dict[str, object] = {}
    for spec in fields(JobOptions):
        value = getattr(namespace, spec.name, None)
        if value is None:
            kind = {"int | None": int, "float | None": float}.get(str(spec.type))
            kind = kind or {"str": str, "int": int, "float": float, "bool": bool}.get(str(spec.type), str)
            value = _from_conf(spec.name, conf, kind)
        if value is not None:
            values[spec.name] = value
    if namespace.k is not None or ("k" in values and namespace.variance is None):
        values["variance"] = None
    if not values.get("input"):
        raise UsageError("no input: give --input or spark.fruits.input")
    if not values.get("output"):
        raise UsageError("no output: give --output or spark.fruits.output")
    options = JobOptions(**values)  # type: ignore[arg-type]
    try:
        spec = get_spec(options.model)
        check_alpha(spec, options.alpha)
        check_weights_source(options.weights)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if options.engine not in ENGINES:
        raise UsageError(f"unknown engine {options.engine!r}; supported: {', '.join(ENGINES)}")
    if options.image_size < 32:
        raise UsageError(f"--image-size must be at least 32, got {options.image_size}")
    if options.k is not None and options.variance is not None:
        raise UsageError("give --k or --variance, not both")
    return options
