"""Job options, from four layers: command line > Spark conf ``spark.fruits.<name>`` > defaults file > built-in.

Every option is declared once, in :data:`OPTIONS` (its kind, bounds and help) and :class:`JobOptions` (its type
and built-in default); the command line, the Spark conf keys, the defaults file and the checks all derive from
those two. The defaults file is JSON whose keys are :class:`JobOptions` field names (``{"input": "s3://...",
"k": 50}``), named by the Spark conf key ``spark.fruits.defaults`` (a local path or ``s3://`` URI): a cluster
points at one file it never has to change, and a console step needs only the script path. Every layer's values
go through the same checks; an unknown key or a bad value is one :class:`UsageError` naming the key and where it
came from. Nothing here needs Spark.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from fruits.decoding import DEFAULT_MAX_PIXELS
from fruits.engines import CALIBRATED, ENGINES
from fruits.layout import TRIGGER_PATTERN, default_feature_store
from fruits.listing import DEFAULT_MAX_FILE_MB
from fruits.models import MODELS, check_alpha, check_weights_source, get_spec

CONF_PREFIX = "spark.fruits."
#: Spark conf key naming the JSON defaults file (the CDK app sets it in the cluster's spark-defaults).
DEFAULTS_CONF_KEY = CONF_PREFIX + "defaults"
# --k and --variance choose the number of components together: whichever layer sets one of them decides both.
_COMPONENTS = ("k", "variance")
_DAY = 24 * 3600


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
    calibration: str = ""  # litert-int8: where its calibration images come from ("": the input, all of it)
    # MobileNet 0.25 on the 41-class development set: 50, 100, 200 or 400 images gave the same accuracies.
    calibration_images: int = 200
    threads: int = 0
    # Each task has a fixed cost (a Parquet file, a Python stream, the JVM's task): on 2 cores, 2,048 images a
    # task featurized 20,000 images in 40.9-42.1 s against 43.7-43.9 s with 512 (and 2,500 in 6.5 against 6.9 s).
    images_per_task: int = 2048
    limit: int | None = None
    overwrite: bool = False
    keep_features: bool = False
    feature_store: str = ""
    reuse_pca: bool = False
    keep_runs: int = 0
    wait: int = 0
    lease_ttl: int = 300
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_mb: int = DEFAULT_MAX_FILE_MB
    allow_empty: bool = False
    check: bool = False
    skip_unchanged: bool = False
    trigger: str = ""

    @property
    def store_uri(self) -> str:
        """Where featurized vectors are kept: ``--feature-store`` or ``<output>/feature_store``."""
        return self.feature_store or default_feature_store(self.output)


@dataclass(frozen=True)
class Option:
    """How one :class:`JobOptions` field is given and checked.

    ``kind``: ``str``, ``int``, ``float`` or ``flag``; numbers must lie in ``[low, high]`` (``low_open``: above
    ``low``); ``choices`` lists the accepted strings, ``pattern`` (a regular expression) the accepted shape of a
    string; ``help`` is the command line's text (the default and the conf key are added to it).
    """

    name: str
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    pattern: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("input", "str", "folder or s3:// prefix of images, read recursively; label = parent folder"),
    Option("output", "str", "folder or s3:// prefix for the results"),
    Option("model", "str", "Keras backbone", choices=tuple(sorted(MODELS))),
    Option("alpha", "float", "width multiplier of MobileNet/MobileNetV2", low=0, high=2, low_open=True),
    Option(
        "weights",
        "str",
        "imagenet (Keras' file, pre-fetched on the cluster), a local .h5/.keras file, an s3:// URI, or none "
        "(random weights, marked as such in every output)",
    ),
    Option("image_size", "int", "side of the model's input in pixels", low=32, high=1024),
    Option(
        "decode_size",
        "int",
        "side images are decoded to before the model resizes them in its graph (Fruits-360: 100)",
        low=8,
        high=1024,
    ),
    Option("k", "int", "number of principal components", low=1, high=100_000),
    Option(
        "variance",
        "float",
        "keep the smallest k whose explained variance reaches this fraction",
        low=0,
        high=1,
        low_open=True,
    ),
    Option("batch_size", "int", "images per inference call", low=1, high=4096),
    Option(
        "engine",
        "str",
        "inference engine: litert (float), litert-int8 (full-integer quantized, calibrated: about twice as fast, "
        "features close to float but kept apart), keras (the reference)",
        choices=ENGINES,
    ),
    Option(
        "calibration",
        "str",
        "litert-int8: folder or s3:// prefix whose images calibrate the int8 model (default: the input); the "
        "store's first int8 run with this source and count calibrates and keeps it, later runs reuse it",
    ),
    Option(
        "calibration_images",
        "int",
        "litert-int8: how many calibration images (its Training split's when it has one)",
        low=1,
        high=10_000,
    ),
    Option("threads", "int", "inference threads per task (0: spark.task.cpus)", low=0, high=256),
    Option("images_per_task", "int", "images per featurization task", low=1, high=1_000_000),
    Option("limit", "int", "only the first N files found, in path order: a quick sample", low=1, high=10**12),
    Option("overwrite", "flag", "publish over an existing result"),
    Option("keep_features", "flag", "also write the full feature vectors into results.parquet"),
    Option("feature_store", "str", "where feature vectors are kept (default <output>/feature_store)"),
    Option(
        "reuse_pca", "flag", "project with the last committed run's PCA pipeline instead of fitting a new one"
    ),
    Option(
        "keep_runs",
        "int",
        "after committing, delete all but the newest N runs (0 keeps all)",
        low=0,
        high=10**6,
    ),
    Option(
        "wait",
        "int",
        "seconds to wait for another run holding the output (0: fail at once)",
        low=0,
        high=7 * _DAY,
    ),
    Option(
        "lease_ttl",
        "int",
        "seconds a run's lease on the output lasts unless renewed: how long a crashed run can block the output",
        low=30,
        high=_DAY,
    ),
    Option(
        "max_pixels", "int", "refuse images with more pixels (checked from the header)", low=1, high=10**10
    ),
    Option(
        "max_file_mb", "int", "refuse files larger than this many MiB, from the listing", low=1, high=2047
    ),
    Option(
        "allow_empty",
        "flag",
        "when the input holds no files or none can be featurized, log one line and exit 0 without committing "
        "(default: exit 2)",
    ),
    Option(
        "check",
        "flag",
        "check that this cluster can run the job (weights, input listing, output writes, the model, executors) "
        "on a few synthetic images, and exit: no image is featurized (litert-int8 reads its calibration images when "
        "its model is not kept yet) and nothing is committed",
    ),
    Option(
        "skip_unchanged",
        "flag",
        "when the images read (paths, labels, content ids) and the options that shape the results are those of the "
        "latest commit, commit nothing and exit 0 (outcome: unchanged)",
    ),
    Option(
        "trigger",
        "str",
        "what started this run (e.g. a Step Functions execution's name): its outcome record is also written "
        "under <output>/_triggered/<TRIGGER>.json, and its commit names it",
        pattern=TRIGGER_PATTERN,
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def option_names() -> list[str]:
    """The option names: :class:`JobOptions` fields, the keys of a defaults file."""
    return [spec.name for spec in fields(JobOptions)]


def conf_key(name: str) -> str:
    """The Spark conf key of an option: ``image_size`` -> ``spark.fruits.imageSize``."""
    head, *rest = name.split("_")
    return CONF_PREFIX + head + "".join(word.title() for word in rest)


def flag(name: str) -> str:
    """The command-line flag of an option: ``image_size`` -> ``--image-size``."""
    return "--" + name.replace("_", "-")


def default(name: str) -> Any:
    """The built-in default of an option (None when it has none)."""
    (spec,) = [spec for spec in fields(JobOptions) if spec.name == name]
    return None if spec.default is MISSING else spec.default


def convert(option: Option, value: Any) -> Any:
    """One value, from any layer, as the option's type; ValueError with a short reason when it does not fit."""
    if option.kind == "flag":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"must be true or false, got {value!r}")
    if isinstance(value, bool | list | dict):
        raise ValueError(f"invalid value {value!r}")
    if option.kind == "str":
        text = str(value)
        if option.choices is not None and text not in option.choices:
            raise ValueError(f"invalid choice {text!r} (choose from {', '.join(option.choices)})")
        if option.pattern is not None and not re.fullmatch(option.pattern, text):
            raise ValueError(f"must match {option.pattern}, got {text!r}")
        return text
    try:
        number: float = int(str(value).strip()) if option.kind == "int" else float(str(value).strip())
    except ValueError:
        kind = "a whole number" if option.kind == "int" else "a number"
        raise ValueError(f"must be {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    too_low = option.low is not None and (number <= option.low if option.low_open else number < option.low)
    too_high = option.high is not None and number > option.high
    if too_low or too_high:
        low = "" if option.low is None else f"{'>' if option.low_open else '>='} {option.low:g}"
        high = "" if option.high is None else f"<= {option.high:g}"
        raise ValueError(f"must be {' and '.join(part for part in (low, high) if part)}, got {value!r}")
    return number


def closest(name: str, known: Sequence[str]) -> str | None:
    """The known name ``name`` most likely misspells (``image_size`` -> ``imageSize``), or None.

    Spellings that differ only in case, ``_`` and ``-`` match first; then the nearest by difflib's ratio.
    """

    def plain(text: str) -> str:
        return re.sub(r"[^a-z0-9.]", "", text.lower())

    same = [candidate for candidate in known if plain(candidate) == plain(name)]
    if same:
        return same[0]
    near = difflib.get_close_matches(plain(name), [plain(candidate) for candidate in known], n=1, cutoff=0.6)
    return next(candidate for candidate in known if plain(candidate) == near[0]) if near else None


def _unknown(what: str, name: str, known: Sequence[str]) -> UsageError:
    """The one line for a name no layer knows, with the nearest known one."""
    guess = closest(name, known)
    hint = f" (did you mean {guess}?)" if guess else f" (known: {', '.join(known)})"
    return UsageError(f"{what}: unknown option{hint}")


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(option, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = option.kind
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


class _Once(argparse.Action):
    """Stores an option's value, refusing it a second time: no option is repeatable, so a repeat is a mistake
    (which one was meant?), never silently the last one."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise argparse.ArgumentError(self, "given twice: give it once")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option can also come from the Spark conf key shown in its help."""
    parser = _Parser(
        prog="featurize_pca.py",
        allow_abbrev=False,  # --vari is not --variance: every flag is spelt out
        description=(
            "Featurize fruit images with a pretrained CNN (transfer learning) and reduce the features with "
            "Spark MLlib PCA. Writes results.csv (path, label, pc_1..pc_k), results.parquet, the fitted "
            "pipeline, rejected.csv, manifest.json and plots under --output. Each option can also be set with "
            f"the Spark conf key in brackets, or as a key of the JSON file named by {DEFAULTS_CONF_KEY}."
        ),
    )
    components = parser.add_mutually_exclusive_group()
    for option in OPTIONS:
        value = default(option.name)
        shown = "" if value in (None, "", False) else f" (default {value})"
        text = f"{option.help}{shown} [{conf_key(option.name)}]"
        target = components if option.name in _COMPONENTS else parser
        if option.kind == "flag":
            target.add_argument(flag(option.name), action=_Once, nargs=0, default=None, help=text)
        else:
            target.add_argument(
                flag(option.name),
                action=_Once,
                type=_argparse_type(option),
                metavar=option.name.upper(),
                help=text,
            )
    return parser


def parse_command_line(argv: Sequence[str]) -> dict[str, Any]:
    """The options ``argv`` sets, checked: an unknown or abbreviated flag is one UsageError naming the nearest
    flag, a repeated one is refused, every value is converted and bounded. Needs neither Spark nor the other
    layers (``--input`` and ``--output`` may come from them)."""
    parser = build_parser()
    namespace, extra = parser.parse_known_args(list(argv))
    if extra:
        word = extra[0]
        if word.startswith("-"):
            raise _unknown(word.split("=", 1)[0], word.split("=", 1)[0], [flag(o.name) for o in OPTIONS])
        raise UsageError(f"unexpected argument {word!r}: every value follows its option (e.g. --k 50)")
    return {
        name: getattr(namespace, name)
        for name in option_names()
        if getattr(namespace, name, None) is not None
    }


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


def _conf_values(conf: Mapping[str, str]) -> dict[str, Any]:
    """The options the Spark conf sets (``spark.fruits.<name>``), by option name; any other ``spark.fruits.*``
    key is refused as the defaults file refuses an unknown key (``spark.fruits.image_size`` would otherwise be
    ignored and the run made at 224)."""
    names = {conf_key(name): name for name in option_names()}
    known = [*names, DEFAULTS_CONF_KEY]
    for key in sorted(conf):
        if key.startswith(CONF_PREFIX) and key not in known:
            raise _unknown(f"Spark conf key {key}", key, known)
    return {name: conf[key] for key, name in names.items() if key in conf}


def _layer(values: Mapping[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """Checked values of one layer; ``where(name)`` says where a value came from, for error messages."""
    layer: dict[str, Any] = {}
    for name, value in values.items():
        if name not in _BY_NAME:
            raise _unknown(where(name), name, option_names())
        if value is None or value == "":
            continue  # not set in this layer
        try:
            layer[name] = convert(_BY_NAME[name], value)
        except ValueError as error:
            raise UsageError(f"{where(name)}: {error}") from None
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
    command_line = parse_command_line(argv)
    from_conf = _layer(_conf_values(conf), conf_key)
    if defaults is None and conf.get(DEFAULTS_CONF_KEY):
        defaults_source = conf[DEFAULTS_CONF_KEY]
        defaults = load_defaults(defaults_source)
    from_file = _layer(defaults or {}, lambda name: f"job defaults file {defaults_source}, key {name!r}")

    values: dict[str, Any] = {}
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
    options = JobOptions(**values)
    try:
        check_alpha(get_spec(options.model), options.alpha)
        check_weights_source(options.weights)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return options


def wants_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for the help text (printed instead of a run)."""
    return any(arg in ("-h", "--help") for arg in argv)


def needs_spark_conf(argv: Sequence[str]) -> bool:
    """Whether the options may come from Spark's conf (spark-submit, a cluster): then they are parsed after Spark
    starts, not before."""
    return os.environ.get("PYSPARK_GATEWAY_PORT") is not None or not {"--input", "--output"} <= set(argv)


def check_command_line(argv: Sequence[str], *, network: bool = True) -> bool:
    """Check, before any JVM starts, a command line that is a whole run by itself: its options, its input and
    its output (:func:`check_locations`); UsageError if it is not valid. When the options may come from Spark's
    conf (:func:`needs_spark_conf`) only the command line's own flags and values are checked, and False says so.
    """
    if needs_spark_conf(argv):
        parse_command_line(argv)
        return False
    check_locations(parse_options(argv), network=network)
    return True


def valid_local_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` alone is a complete, valid run (no ``--help``), whose Spark may start right away.

    Checks nothing that needs a network request (an S3 input): that waits for the job's own check, which runs
    while this JVM boots."""
    if wants_help(argv):
        return False
    try:
        return check_command_line(argv, network=False)
    except UsageError:
        return False


def check_locations(options: JobOptions, *, network: bool = True) -> None:
    """Refuse, before Spark starts, an input (and ``litert-int8``'s ``--calibration``) that cannot be listed
    (:func:`fruits.listing.check_input`; on S3 one request when ``network``) and an output or feature store that
    cannot be written (:func:`check_output`): one UsageError."""
    from fruits.listing import InputError, check_input

    try:
        # --check lists the input without needing files in it (a fresh deploy's empty bucket passes)
        check_input(options.input, allow_empty=options.allow_empty or options.check, network=network)
    except InputError as error:
        raise UsageError(str(error)) from None
    if options.calibration and options.engine in CALIBRATED:
        try:  # a pinned calibration source must hold images: its store's first int8 run calibrates on them
            check_input(options.calibration, network=network)
        except InputError as error:
            raise UsageError(f"--calibration: {error}") from None
    check_output(options)


#: Stands for an S3 client where a store is built only to check its URI: no request is ever made with it.
_NO_CLIENT = object()


def check_output(options: JobOptions) -> None:
    """Refuse an output (or feature store) that cannot be written, before Spark starts: one UsageError.

    Its URI must be one the job's storage addresses (:func:`fruits.storage.open_store`: a local path,
    ``file://`` or ``s3://bucket/prefix``). Locally: the path must not be a file, and its nearest existing folder
    must be writable. On S3 the first write (the lease) tells; the job reports a refusal there in one line too.
    """
    from fruits.storage import LocalStore, open_store

    for what, location in (("--output", options.output), ("--feature-store", options.store_uri)):
        try:
            store = open_store(location, s3_client=_NO_CLIENT)
        except ValueError as error:
            raise UsageError(f"{what} {location}: {error}") from None
        if not isinstance(store, LocalStore):
            continue
        path = store.root
        if os.path.isfile(path):
            raise UsageError(f"{what} {location} is a file: give a folder (it is created if missing)")
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UsageError(f"{what} {location}: {existing} is a file, so the folder cannot be created")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {location}: {existing} is not writable")
