"""Prepare the feature model for the engine once, keep it, and ship it to every node.

Building the Keras model and converting it for LiteRT costs seconds and a TensorFlow import, on every run,
although the exported file depends only on what decides the features (model, alpha, image size, decode size,
weights: the feature store's model key) and on the engine. So the export is kept, named by its SHA-256:

1. in a local cache, ``$FRUITS_CACHE/models`` or ``~/.cache/fruits/models`` (skipped when it is not writable, as for
   YARN's users on a cluster);
2. in the feature store, beside the features it produced: ``<store>/<model key>/engines/<engine>.json`` names
   ``<engine>-<sha>.<ext>`` there, for every run on any node.

A run that finds it downloads one file and never imports TensorFlow on the driver (and the LiteRT engine never
imports it on the workers). A run that builds it writes it to both places; the store's JSON pointer is created
only if absent, so two runs sharing a store agree on one file. ``fruits identify`` finds the very file a run
used the same way (:func:`kept_pointer`, :func:`kept_model`), without Spark: nothing here imports pyspark.

A calibrated engine (``litert-int8``) differs in one way: its model depends on the images it was calibrated on,
which its key names only by their spec (:mod:`fruits.calibration`: so that a growing input keeps its key). Two
builds under one key may then differ, so the feature store's pointer is the one authority for that key: it is read
first (one small request), the local cache only serves the file it names, and a model built or found in the
local cache is used only once it is the store's (create-only; a run that loses the race takes the winner's), and
a store that cannot keep it fails the run. Every feature under the key thus comes from one model.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fruits import engines, models
from fruits.local_cache import local_cache_dir
from fruits.storage import NotFound, Store

if TYPE_CHECKING:  # fruits identify imports this module and must not load pyspark
    from pyspark.sql import SparkSession

    from fruits.calibration import Calibration

log = logging.getLogger(__name__)
ENGINES_DIR = "engines"


class ModelMismatch(ValueError):
    """The model file found under a run's model key is not the one the run used (its SHA-256 differs)."""


def _pointer_key(key: str, engine: str) -> str:
    return f"{key}/{ENGINES_DIR}/{engine}.json"


def _file_key(key: str, file_name: str) -> str:
    return f"{key}/{ENGINES_DIR}/{file_name}"


def _from_local(folder: str | None, key: str, engine: str) -> tuple[dict[str, Any], str] | None:
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, key, f"{engine}.json"), encoding="utf-8") as handle:
            pointer = json.load(handle)
        path = os.path.join(folder, key, pointer["file_name"])
        if os.path.isfile(path) and models.sha256_file(path).startswith(pointer["sha256"]):
            return pointer, path
    except (OSError, ValueError, KeyError):
        pass
    return None


def _to_local(folder: str | None, key: str, engine: str, pointer: dict[str, Any], path: str) -> None:
    if folder is None:
        return
    try:
        target = os.path.join(folder, key)
        os.makedirs(target, exist_ok=True)
        copy = os.path.join(target, pointer["file_name"])
        if not os.path.exists(copy):
            with open(path, "rb") as source, tempfile.NamedTemporaryFile(dir=target, delete=False) as out:
                out.write(source.read())
            os.replace(out.name, copy)
        with tempfile.NamedTemporaryFile("w", dir=target, delete=False, encoding="utf-8") as out:
            json.dump(pointer, out)
        os.replace(out.name, os.path.join(target, f"{engine}.json"))
    except OSError as error:  # a cache that cannot be written is only slower
        log.info("model cache %s not updated: %s", folder, error)


def _from_store(store: Store, key: str, engine: str, folder: str) -> tuple[dict[str, Any], str] | None:
    try:
        pointer = store.read_json(_pointer_key(key, engine))
        path = os.path.join(folder, pointer["file_name"])
        store.download_file(_file_key(key, pointer["file_name"]), path)
    except (NotFound, ValueError, KeyError, TypeError):  # none, or a damaged pointer: build it again
        return None
    if not models.sha256_file(path).startswith(pointer["sha256"]):
        log.warning("the stored %s model does not match its checksum: building it again", engine)
        return None
    return pointer, path


def _to_store(store: Store, key: str, engine: str, pointer: dict[str, Any], path: str) -> None:
    try:
        with open(path, "rb") as handle:
            store.put_if_absent(_file_key(key, pointer["file_name"]), handle.read())
        if store.put_if_absent(_pointer_key(key, engine), json.dumps(pointer).encode()) is None:
            log.info("another run stored this %s model first; both are the same model", engine)
    except Exception as error:  # keeping the export is an optimisation, never a failure
        log.warning("could not keep the exported model in the feature store: %s", error)


def _calibration_images(options: Any, calibration: Calibration | None) -> list[np.ndarray] | None:
    """The decoded calibration images of a calibrated engine (None for the others)."""
    if options.engine not in engines.CALIBRATED:
        return None
    if calibration is None:
        raise ValueError(f"engine {options.engine} needs calibration images")
    return calibration.decoded(options.decode_size, options.max_pixels)


def _build(
    options: Any, weights: models.Weights, folder: str, calibration: Calibration | None
) -> tuple[dict[str, Any], str]:
    images = _calibration_images(options, calibration)
    model = models.build_feature_model(
        models.get_spec(options.model),
        image_size=options.image_size,
        decode_size=options.decode_size,
        alpha=options.alpha,
        weights=weights,
    )
    exported = engines.export(model, options.engine, folder, options.engine, images)
    sha = models.sha256_file(exported)[:16]
    stem, extension = os.path.splitext(exported)
    path = f"{stem}-{sha}{extension}"
    os.replace(exported, path)  # named by its content: workers cache models by file name
    pointer = {
        "file_name": os.path.basename(path),
        "sha256": sha,
        "engine": options.engine,
        "input_size": options.decode_size,
        "feature_dim": int(model.output_shape[-1]),
        "calibration": calibration.describe() if images is not None and calibration else None,
        "built_with": {
            name: getattr(sys.modules.get(name), "__version__", "not loaded")
            for name in ("tensorflow", "keras")
        },
    }
    return pointer, path


def stored_feature_dim(store: Store, key: str) -> int | None:
    """The feature width of the model kept in the store for ``key``, as its pointer says; None without one.

    What the model makes, so what every stored vector of ``key`` must be: a vector of another width is damage.
    """
    for pointer_key in store.list_keys(f"{key}/{ENGINES_DIR}/"):
        if pointer_key.endswith(".json"):
            try:
                return int(store.read_json(pointer_key)["feature_dim"])
            except (NotFound, ValueError, KeyError, TypeError):
                continue
    return None


def prepare_model(
    spark: SparkSession,
    options: Any,
    weights: models.Weights,
    store: Store,
    key: str,
    folder: str,
    calibrate: Callable[[], Calibration] | None = None,
) -> tuple[engines.ModelArtifact, str]:
    """The engine's model for this model key, shipped to every node with ``addFile``; (artifact, where from:
    ``local cache``, ``feature store`` or ``built``).

    ``folder`` is a scratch folder that must outlive the Spark jobs using the artifact (Spark copies the file
    when it is added, but the path must stay valid while this session runs). ``calibrate``: for a calibrated
    engine, what chooses its calibration images (:func:`fruits.calibration.choose`), called only when the store
    has no model for ``key`` yet and the local cache neither.
    """
    cache = local_cache_dir("models")
    if options.engine in engines.CALIBRATED:
        found, source = _calibrated(options, weights, store, key, folder, cache, calibrate)
    else:
        found, source = _from_local(cache, key, options.engine), "local cache"
        if found is None:
            found, source = _from_store(store, key, options.engine, folder), "feature store"
        if found is None:
            found, source = _build(options, weights, folder, None), "built"
            _to_store(store, key, options.engine, *found)
    pointer, path = found
    if source != "local cache":
        _to_local(cache, key, options.engine, pointer, path)
    spark.sparkContext.addFile(path)
    artifact = engines.ModelArtifact(
        pointer["engine"], pointer["file_name"], int(pointer["input_size"]), int(pointer["feature_dim"])
    )
    log.info(
        "model %s (%s): %s, feature width %d",
        artifact.file_name,
        source,
        options.engine,
        artifact.feature_dim,
    )
    return artifact, source


def _calibrated(
    options: Any,
    weights: models.Weights,
    store: Store,
    key: str,
    folder: str,
    cache: str | None,
    calibrate: Callable[[], Calibration] | None,
) -> tuple[tuple[dict[str, Any], str], str]:
    """A calibrated engine's model: the store's for ``key``, else this run's (from the local cache, else built
    on ``calibrate()``'s images) once the store keeps it (module docstring)."""
    engine = options.engine
    try:
        pointer = dict(store.read_json(_pointer_key(key, engine)))
    except NotFound:
        mine = _from_local(cache, key, engine)
        source = "local cache"
        if mine is None:
            if calibrate is None:
                raise ValueError(
                    f"engine {engine} has no model under {key} yet and no calibration images"
                ) from None
            mine, source = _build(options, weights, folder, calibrate()), "built"
        pointer = _keep_calibrated(store, key, engine, *mine)
        if pointer["sha256"] == mine[0]["sha256"]:
            return mine, source
        log.info("another run kept its %s model under %s first: this run uses that one", engine, key)
    return _kept_file(store, key, pointer, folder, cache)


def _keep_calibrated(
    store: Store, key: str, engine: str, pointer: dict[str, Any], path: str
) -> dict[str, Any]:
    """Make ``pointer``'s model the store's for ``key`` (create-only); the store's pointer, this one or the
    one another run kept first. Failing to keep it fails the run: features under ``key`` must name their model."""
    with open(path, "rb") as handle:
        store.put_if_absent(_file_key(key, pointer["file_name"]), handle.read())
    if store.put_if_absent(_pointer_key(key, engine), json.dumps(pointer).encode()) is not None:
        return pointer
    return dict(store.read_json(_pointer_key(key, engine)))


def _kept_file(
    store: Store, key: str, pointer: dict[str, Any], folder: str, cache: str | None
) -> tuple[tuple[dict[str, Any], str], str]:
    """((pointer, local path), where from) of the file ``pointer`` names, checked against its SHA-256: the local
    cache's copy, else downloaded from the feature store into ``folder``."""
    name, sha = pointer["file_name"], pointer["sha256"]
    if cache is not None:
        cached = os.path.join(cache, key, name)
        if os.path.isfile(cached) and models.sha256_file(cached).startswith(sha):
            return (pointer, cached), "local cache"
    path = os.path.join(folder, name)
    try:
        store.download_file(_file_key(key, name), path)
    except NotFound:
        raise NotFound(
            f"the model file {name} is neither in the local cache nor in {store.uri_for(_file_key(key, name))}"
        ) from None
    if not models.sha256_file(path).startswith(sha):
        raise ModelMismatch(
            f"{store.uri_for(_file_key(key, name))} is not the model the run used (its SHA-256 does not start "
            f"with {sha})"
        )
    return (pointer, path), "feature store"


def kept_pointer(store: Store, key: str, engine: str) -> dict[str, Any] | None:
    """The pointer (``file_name``, ``sha256``, ``engine``, ``input_size``, ``feature_dim``, and a calibrated
    engine's ``calibration``) to the exported model of ``key`` for ``engine`` in the feature store; None when
    neither the store nor the local cache has one.

    A run that took its model from the local cache wrote nothing to the store: the cache's file and pointer are
    copied there now (once per store), so that `fruits identify` on another machine finds the run's model. Never
    for a calibrated engine, whose model is the store's alone (module docstring)."""
    try:
        return dict(store.read_json(_pointer_key(key, engine)))
    except (NotFound, ValueError):
        pass
    if engine in engines.CALIBRATED:
        return None
    found = _from_local(local_cache_dir("models"), key, engine)
    if found is None:
        return None
    _to_store(store, key, engine, *found)
    return found[0]


def kept_model(store: Store, key: str, pointer: dict[str, Any], folder: str) -> str:
    """The local path of the exported model file ``pointer`` names (:func:`kept_pointer`), checked against its
    SHA-256: from the local cache, else downloaded from the feature store into ``folder`` and then kept in the
    cache. Raises :class:`~fruits.storage.NotFound` when neither holds it, :class:`ModelMismatch` when the file
    found is another model."""
    cache = local_cache_dir("models")
    (_, path), source = _kept_file(store, key, pointer, folder, cache)
    if source != "local cache":
        _to_local(cache, key, pointer["engine"], pointer, path)
    return path


def calibration_of(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibration a kept model's pointer records (None for a float engine's, or no model)."""
    return (pointer or {}).get("calibration")
