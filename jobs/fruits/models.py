"""The supported Keras backbones, where their weights come from, and the feature model built from them.

The feature model takes raw ``uint8`` RGB images of ``decode_size`` and does the rest inside the graph:
cast, resize to the backbone's ``image_size``, the backbone's own ``preprocess_input``, the backbone without its
classifier, global average pooling. Keeping resize and scaling in the graph makes them run in the inference
engine's kernels instead of in Python, and makes both engines (Keras, LiteRT) see the very same computation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fruits.local_cache import local_cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A Keras application usable as a featurizer."""

    name: str
    module: str  # keras.applications submodule with preprocess_input
    constructor: str  # class name in keras.applications
    default_size: int
    has_alpha: bool = False

    def feature_dim(self, alpha: float = 1.0) -> int:
        """Width of the pooled feature vector (MobileNetV2: 1280, MobileNet alpha 0.25: 256)."""
        if self.name == "mobilenet_v2":
            return 1280 if alpha <= 1.0 else int(1280 * alpha)
        if self.name == "mobilenet":
            return int(1024 * alpha)
        return {"resnet50": 2048, "efficientnet_b0": 1280}[self.name]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mobilenet_v2", "mobilenet_v2", "MobileNetV2", 224, has_alpha=True),
        ModelSpec("mobilenet", "mobilenet", "MobileNet", 224, has_alpha=True),
        ModelSpec("resnet50", "resnet50", "ResNet50", 224),
        ModelSpec("efficientnet_b0", "efficientnet", "EfficientNetB0", 224),
    )
}
ALPHAS = {"mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), "mobilenet": (0.25, 0.5, 0.75, 1.0)}


def get_spec(name: str) -> ModelSpec:
    """The spec of a supported model; a ValueError lists the supported names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; supported: {', '.join(sorted(MODELS))}") from None


def check_alpha(spec: ModelSpec, alpha: float) -> None:
    """Raise ValueError when ``alpha`` is not a width Keras publishes for this model."""
    if not spec.has_alpha:
        if alpha != 1.0:
            raise ValueError(f"model {spec.name} has no alpha setting (got {alpha})")
        return
    if alpha not in ALPHAS[spec.name]:
        allowed = ", ".join(str(a) for a in ALPHAS[spec.name])
        raise ValueError(f"alpha {alpha} is not available for {spec.name}; choose one of {allowed}")


class WeightsError(ValueError):
    """``--weights`` names something that cannot be used."""


def check_weights_source(source: str) -> None:
    """Raise WeightsError unless ``source`` is imagenet, none, or a .h5/.keras path or s3:// URI."""
    if source.strip().lower() in ("imagenet", "none", "random"):
        return
    if not source.endswith((".h5", ".keras")):
        raise WeightsError(f"weights {source!r}: expected imagenet, none, or a .h5/.keras file or s3:// URI")
    if source.startswith("s3://"):
        return
    path = os.path.expanduser(source.removeprefix("file://"))
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {source}")
    check_weights_file(path)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: str) -> None:
    """Raise WeightsError unless the file is what its name says: HDF5 for .h5, a zip archive for .keras."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise WeightsError(f"weights file {path} cannot be read: {error.strerror or error}") from None
    if path.endswith(".h5") and head != _HDF5_SIGNATURE:
        raise WeightsError(
            f"weights file {path} is not an HDF5 file (a Keras .h5 weights file starts with one)"
        )
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise WeightsError(f"weights file {path} is not a .keras archive (a zip file)")


@dataclass(frozen=True)
class Weights:
    """Where the backbone's weights came from. ``path`` is a local file, or None for imagenet/random."""

    source: str  # what the user asked for: imagenet | none | a path | an s3:// URI
    kind: str  # imagenet | random | file
    path: str | None = None
    sha256: str | None = None

    @property
    def pretrained(self) -> bool:
        """False for random weights, which the outputs then mark loudly."""
        return self.kind != "random"


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _writable_cache(name: str) -> str:
    """The local cache's ``name`` folder, or one in the temp dir when the home is not writable (YARN's users)."""
    folder = local_cache_dir(name, temp_fallback=True)
    if folder is None:
        raise WeightsError(
            "no writable folder to keep the downloaded weights in (home and temp dir are read-only)"
        )
    return folder


def _download_s3(uri: str, cache_dir: str) -> str:
    """Fetch an s3:// object once into ``cache_dir`` (keyed by URI) and return the local path."""
    from fruits.storage import make_s3_client  # the job's one S3 client factory: region, endpoint, retries

    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise WeightsError(f"weights URI {uri!r} has no bucket or key")
    folder = os.path.join(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:16])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(key))
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=folder)
        os.close(fd)
        make_s3_client().download_file(bucket, key, tmp)
        os.replace(tmp, path)  # a killed download never leaves a file that looks complete
    return path


def resolve_weights(
    source: str,
    cache_dir: str | None = None,
    *,
    model: str | None = None,
    alpha: float = 1.0,
    image_size: int = 224,
) -> Weights:
    """Turn ``--weights`` into a :class:`Weights`: ``imagenet``, ``none``, a local .h5/.keras file or s3:// URI.

    For ``imagenet`` with ``model`` given, Keras' own file for (model, alpha, image_size) is looked up in the
    local caches (:func:`find_imagenet_file`); when it is there the backbone loads exactly that file, and
    nothing is downloaded or written. Otherwise Keras downloads it when the model is built.
    """
    lowered = source.strip().lower()
    if lowered == "imagenet":
        path = find_imagenet_file(model, alpha, image_size) if model else None
        return Weights(
            source="imagenet", kind="imagenet", path=path, sha256=sha256_file(path) if path else None
        )
    if lowered in ("none", "random"):
        return Weights(source="none", kind="random")
    check_weights_source(source)
    if source.startswith("s3://"):
        path = _download_s3(source, cache_dir or _writable_cache("weights"))
        check_weights_file(path)
    else:
        path = os.path.abspath(os.path.expanduser(source.removeprefix("file://")))
    return Weights(source=source, kind="file", path=path, sha256=sha256_file(path))


@dataclass(frozen=True)
class ImagenetFile:
    """The ImageNet no-top weights file Keras fetches for one backbone: its cache file name, origin URL and, where
    known, its SHA-256 (the cluster's bootstrap refuses a download with another digest)."""

    file_name: str
    url: str
    sha256: str | None = None


#: SHA-256 of Keras' published files, where known. Keras itself pins none for MobileNet; this one was taken from a
#: byte-for-byte copy of the published file whose git blob id was checked (the team's shared folder, PROVENANCE.md).
#: Other files: the CDK context weightsSha256 pins them (the bootstrap logs each file's digest).
KNOWN_SHA256 = {
    "mobilenet_2_5_224_tf_no_top.h5": "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf",
}


_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"
# Input sizes Keras publishes MobileNet (v1, v2) ImageNet weights for; for any other size it loads the 224 file.
_MOBILENET_ROWS = (128, 160, 192, 224)
_MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)
_MOBILENET_ALPHA_TEXT = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}


def imagenet_weights_file(model: str, alpha: float = 1.0, image_size: int = 224) -> ImagenetFile:
    """Exactly the file ``keras.applications.<Model>(include_top=False, weights="imagenet")`` would fetch.

    The one owner of Keras' names: the job looks for this file in its caches, and the CDK app has the cluster's
    bootstrap download it (tests/test_imagenet_files.py pins every name against Keras itself).
    """
    spec = get_spec(model)
    check_alpha(spec, alpha)
    if spec.name == "mobilenet":
        rows = image_size if image_size in _MOBILENET_ROWS else 224
        name = f"mobilenet_{_MOBILENET_ALPHA_TEXT[float(alpha)]}_{rows}_tf_no_top.h5"
        return ImagenetFile(name, f"{_KERAS_WEIGHTS}mobilenet/{name}", KNOWN_SHA256.get(name))
    if spec.name == "mobilenet_v2":
        rows = image_size if image_size in _MOBILENET_V2_ROWS else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"
        return ImagenetFile(name, f"{_KERAS_WEIGHTS}mobilenet_v2/{name}")
    if spec.name == "resnet50":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return ImagenetFile(name, f"{_KERAS_WEIGHTS}resnet/{name}")
    name = "efficientnetb0_notop.h5"  # efficientnet_b0: Keras keeps EfficientNet files in another bucket
    return ImagenetFile(name, f"https://storage.googleapis.com/keras-applications/{name}")


def imagenet_cache_dirs() -> list[str]:
    """Where a pre-fetched ImageNet file may be: ``$KERAS_HOME/models`` (the cluster's), then ``~/.keras/models``."""
    folders = []
    if os.environ.get("KERAS_HOME"):
        folders.append(os.path.join(os.environ["KERAS_HOME"], "models"))
    folders.append(os.path.join(os.path.expanduser("~"), ".keras", "models"))
    return folders


def find_imagenet_file(model: str, alpha: float = 1.0, image_size: int = 224) -> str | None:
    """Path of Keras' ImageNet file for these settings in a local cache, or None (Keras will download it)."""
    name = imagenet_weights_file(model, alpha, image_size).file_name
    for folder in imagenet_cache_dirs():
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return path
    return None


def build_backbone(spec: ModelSpec, image_size: int, alpha: float, weights: Weights) -> Any:
    """The Keras application without its classifier, with global average pooling, weights loaded.

    A weights file that does not fit the architecture raises :class:`WeightsError` (one line, exit 2).
    """
    import keras

    if weights.kind == "file" and weights.path and weights.path.endswith(".keras"):
        try:
            return keras.models.load_model(weights.path, compile=False)
        except Exception as error:
            raise WeightsError(f"weights {weights.path} do not load: {_first_line(error)}") from None
    if weights.kind == "random":
        keras.utils.set_random_seed(0)  # random weights, but the same ones on every run and worker
    # ImageNet weights already on disk load like any file: Keras neither downloads nor writes its cache.
    download = weights.kind == "imagenet" and not weights.path
    kwargs: dict[str, Any] = {
        "input_shape": (image_size, image_size, 3),
        "include_top": False,
        "pooling": "avg",
        "weights": "imagenet" if download else None,
    }
    if spec.has_alpha:
        kwargs["alpha"] = alpha
    backbone = getattr(keras.applications, spec.constructor)(**kwargs)
    if weights.path and not download:
        try:
            backbone.load_weights(weights.path)
        except Exception as error:
            what = spec.name + (f" alpha {alpha}" if spec.has_alpha else "")
            raise WeightsError(
                f"weights {weights.path} do not load into {what}: {_first_line(error)}"
            ) from None
    return backbone


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, shortened: Keras' messages run to many lines."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preprocess_function(spec: ModelSpec) -> Callable[[Any], Any]:
    """The model's own ``keras.applications.<model>.preprocess_input``."""
    import importlib

    return importlib.import_module(f"keras.applications.{spec.module}").preprocess_input


def build_feature_model(
    spec: ModelSpec, *, image_size: int, decode_size: int, alpha: float, weights: Weights
) -> Any:
    """uint8 images (N, decode_size, decode_size, 3) -> float32 features (N, feature_dim)."""
    import keras

    backbone = build_backbone(spec, image_size, alpha, weights)
    inputs = keras.Input((decode_size, decode_size, 3), dtype="uint8", name="image")
    x = keras.ops.cast(inputs, "float32")
    if decode_size != image_size:
        x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(x)
    x = preprocess_function(spec)(x)
    features = backbone(x, training=False)
    return keras.Model(inputs, features, name=f"{spec.name}_features")


def infer_model_from_filename(path: str) -> tuple[str, float] | None:
    """(model, alpha) for a weights file named as Keras publishes it, e.g. ``mobilenet_2_5_224_tf_no_top.h5``."""
    import re

    name = os.path.basename(path)
    match = re.match(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_([0-9.]+)_\d+", name)
    if match:
        return "mobilenet_v2", float(match.group(1))
    match = re.match(r"mobilenet_(\d)_(\d)_\d+_tf", name)
    if match:
        return "mobilenet", {"1_0": 1.0, "7_5": 0.75, "5_0": 0.5, "2_5": 0.25}[
            f"{match.group(1)}_{match.group(2)}"
        ]
    if name.startswith("resnet50_weights"):
        return "resnet50", 1.0
    if name.startswith("efficientnetb0"):
        return "efficientnet_b0", 1.0
    return None
