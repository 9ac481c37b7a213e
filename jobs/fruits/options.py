"""Job options, from four layers: command line > Spark conf ``spark.fruits.<name>`` > defaults file > built-in.

The defaults file is JSON whose keys are :class:`JobOptions` field names (``{"input": "s3://...", "k": 50}``),
named by the Spark conf key ``spark.fruits.defaults`` (a local path or ``s3://`` URI). A cluster points at one
file it never has to change: new defaults are a new file, not a new cluster, and a console step needs only the
script path. Every layer's values go through the same checks as the command line; an unknown key or a bad value
is one :class:`UsageError` naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from fruits.engines import ENGINES
from fruits.images import DEFAULT_MAX_PIXELS
from fruits.layout import default_feature_store
from fruits.models import MODELS, check_alpha, check_weights_source, get_spec

CONF_PREFIX = "spark.fruits."
#: Spark conf key naming the JSON defaults file (the CDK app sets it in the cluster's spark-defaults).
DEFAULTS_CONF_KEY = CONF_PREFIX + "defaults"
# --k and --variance choose the number of components together: whichever layer sets one of them decides both.
_COMPONENTS = ("k", "variance")


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
    allow_empty: bool = False

    @property
    def store_uri(self) -> str:
        """Where featurized vectors are kept: ``--feature-store`` or ``<output>/feature_store``."""
        return self.feature_store or default_feature_store(self.output)


def option_names() -> list[str]:
    """The option names: :class:`JobOptions` fields, the keys of a defaults file."""
    return [spec.name for spec in fields(JobOptions)]


def conf_key(dest: str) -> str:
    """The Spark conf key of an option: ``image_size`` -> ``spark.fruits.imageSize``."""
    return _conf_key(dest)


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
    add(
        "--allow-empty",
        action="store_true",
        default=None,
        help="when the input holds no files or none can be featurized, log one line and exit 0 without "
        f"committing (default: exit 2) {key('allow_empty')}",
    )
    return parser


def _convert(action: argparse.Action, value: Any, where: str) -> object:
    """One option value from the Spark conf or a defaults file, checked exactly as on the command line."""
    if action.nargs == 0:  # a flag: JSON true/false, or the strings "true"/"false" from the Spark conf
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if isinstance(value, bool | list | dict):
        raise UsageError(f"{where}: invalid value {value!r}")
    text = str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"{where}: {error}") from None
    except (TypeError, ValueError):
        raise UsageError(f"{where}: invalid value {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: invalid choice {value!r} (choose from {choices})")
    return converted


def load_defaults(uri: str) -> dict[str, Any]:
    """Read a defaults file (local path, file:// or s3:// URI) into a dict; any problem is one UsageError."""
    from fruits.storage import NotFound, open_store  # storage imports boto3 only for s3:// URIs

    folder, _, name = uri.rpartition("/")
    try:
        data = open_store(folder or ".").read_bytes(name)
    except NotFound:
        raise UsageError(f"job defaults file not found: {uri} (named by {DEFAULTS_CONF_KEY})") from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"cannot read job defaults {uri}: {first}") from None
    try:
        document = json.loads(data.decode("utf-8"))
    except ValueError as error:
        raise UsageError(f"job defaults {uri} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise UsageError(
            f"job defaults {uri} must hold a JSON object of option names, got {type(document).__name__}"
        )
    return document


def _layer(
    values: Mapping[str, Any], actions: Mapping[str, argparse.Action], where: Any, *, strict: bool
) -> dict[str, object]:
    """Checked values of one layer; ``where(name)`` says where a value came from, for error messages."""
    layer: dict[str, object] = {}
    for name, value in values.items():
        if name not in actions:
            if strict:
                known = ", ".join(option_names())
                raise UsageError(f"{where(name)}: unknown option (known: {known})")
            continue
        if value is None or value == "":
            continue  # not set in this layer
        layer[name] = _convert(actions[name], value, where(name))
    return layer


def parse_options(
    argv: Sequence[str],
    conf: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    *,
    defaults_source: str = "(given)",
) -> JobOptions:
    """Parse and validate; raises UsageError with a one-line message on any problem.

    Precedence: ``argv`` > ``conf`` (``spark.fruits.<name>``) > ``defaults`` (keys = :class:`JobOptions`
    fields) > built-in defaults. Without ``defaults``, the file named by ``conf[spark.fruits.defaults]`` is read.
    """
    conf = conf or {}
    parser = build_parser()
    namespace = parser.parse_args(list(argv))
    names = option_names()
    actions = {action.dest: action for action in parser._actions if action.dest in names}
    if defaults is None and conf.get(DEFAULTS_CONF_KEY):
        defaults_source = conf[DEFAULTS_CONF_KEY]
        defaults = load_defaults(defaults_source)
    command_line = {
        name: getattr(namespace, name) for name in names if getattr(namespace, name, None) is not None
    }
    from_conf = _layer({name: conf.get(_conf_key(name)) for name in names}, actions, _conf_key, strict=False)
    from_file = _layer(
        defaults or {},
        actions,
        lambda name: f"job defaults file {defaults_source}, key {name!r}",
        strict=True,
    )

    values: dict[str, object] = {}
    for layer in (from_file, from_conf, command_line):  # lowest precedence first
        values.update({name: value for name, value in layer.items() if name not in _COMPONENTS})
    for layer, where in (
        (command_line, "the command line"),
        (from_conf, "the Spark conf"),
        (from_file, f"job defaults file {defaults_source}"),
    ):
        chosen = {name: layer[name] for name in _COMPONENTS if name in layer}
        if len(chosen) == 2:
            raise UsageError(f"give --k or --variance, not both (both set in {where})")
        if chosen:
            values.update({"k": None, "variance": None, **chosen})
            break
    if not values.get("input"):
        raise UsageError("no input: give --input, spark.fruits.input or 'input' in the job defaults file")
    if not values.get("output"):
        raise UsageError("no output: give --output, spark.fruits.output or 'output' in the job defaults file")
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
    return options
