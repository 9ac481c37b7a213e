"""Inference engines: export the feature model once on the driver, load it once per Python worker.

``keras`` runs the Keras model itself (the reference); ``litert`` runs the same graph converted by TensorFlow's
``TFLiteConverter`` with LiteRT's XNNPACK kernels, which is several times faster on CPUs at equal outputs;
``litert-int8`` runs it with full-integer post-training quantization (int8 weights and activations, calibrated
on a set of images: :mod:`fruits.calibration`), about twice as fast again per image, at features that are
close to the float ones but not equal, so they are kept apart in the feature store. Workers of either LiteRT
engine never import TensorFlow.

:data:`ENGINES` is THE list of engines: the job's options, the CDK app's check, the benchmark, the notebook and
the tests take it from here.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ENGINES = ("litert", "litert-int8", "keras")
#: Engines whose model is calibrated on images, with the quantization their own features are kept under in the
#: feature store (the float engines' features agree, and share one key).
CALIBRATED = {"litert-int8": "int8"}
#: What runs each engine's file: its loader, and the file's extension.
RUNTIMES = {"litert": "litert", "litert-int8": "litert", "keras": "keras"}
EXTENSIONS = {"litert": ".tflite", "keras": ".keras"}
Predictor = Callable[[np.ndarray], np.ndarray]

# One predictor per Python worker process, keyed by the artifact's file name (which carries its hash). Spark
# reuses Python workers between tasks (spark.python.worker.reuse, the default), so the model loads once.
_PREDICTORS: dict[str, Predictor] = {}
_LOCK = threading.Lock()
LOADS = {"count": 0}  # how many times this process loaded a model: tests prove the caching with it


@dataclass(frozen=True)
class ModelArtifact:
    """An exported feature model: a file name shipped to every node with ``SparkContext.addFile``."""

    engine: str
    file_name: str
    input_size: int
    feature_dim: int


def check_engine(engine: str) -> None:
    """Raise ValueError naming the supported engines unless ``engine`` is one."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; supported: {', '.join(ENGINES)}")


def uncalibrated(engine: str) -> str:
    """The float engine of ``engine``'s runtime: ``litert`` for ``litert-int8``, a float engine itself."""
    check_engine(engine)
    if engine not in CALIBRATED:
        return engine
    return next(e for e in ENGINES if e not in CALIBRATED and RUNTIMES[e] == RUNTIMES[engine])


def extension(engine: str) -> str:
    """The exported file's extension: ``.tflite`` for both LiteRT engines, ``.keras`` for Keras."""
    check_engine(engine)
    return EXTENSIONS[RUNTIMES[engine]]


def export(
    model: Any, engine: str, folder: str, stem: str, calibration: Sequence[np.ndarray] | None = None
) -> str:
    """Write ``model`` for ``engine`` into ``folder``; return the file's path.

    ``calibration``: for a calibrated engine (:data:`CALIBRATED`), the images (``uint8``, the model's input
    shape without the batch) whose activations set the int8 ranges; ignored by the others.
    """
    check_engine(engine)
    if engine in CALIBRATED and not calibration:
        raise ValueError(f"engine {engine} needs calibration images")
    path = os.path.join(folder, f"{stem}{extension(engine)}")
    if engine == "keras":
        model.save(path)
        return path
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if engine in CALIBRATED:
        _full_integer(converter, calibration or ())
    # The converter prints the traced signature and every captured variable to stdout; keep logs readable.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the input is uint8 pixels, cast in the graph.
        warnings.simplefilter("ignore", UserWarning)
        flatbuffer = converter.convert()
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    return path


def _full_integer(converter: Any, calibration: Sequence[np.ndarray]) -> None:
    """Full-integer post-training quantization: int8 weights (per channel) and activations, every op an int8
    builtin, so a model that cannot be fully quantized fails here instead of running float ops in between.

    The input stays the graph's uint8 pixels (cast and quantized in the graph with scale 1: lossless) and the
    output float32 (dequantized in the graph): the predictor is the float engine's. Measured with MobileNet 0.25
    on one core: 0.86-0.90 ms per image with float output, 0.87-0.88 with int8 output dequantized in NumPy.
    """
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    def representative() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [np.ascontiguousarray(image, dtype=np.uint8)[None]]

    converter.representative_dataset = representative


def _keras_predictor(path: str, threads: int) -> Predictor:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Must happen before TensorFlow runs its first op in this process; Spark runs one task per core, so one
    # or a few threads per worker keep concurrent tasks from oversubscribing the cores.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.models.load_model(path, compile=False)
    # One traced graph for every batch length: calling the model eagerly runs op by op in Python and is about
    # twice as slow as predict(); predict() itself adds per-call callback and progress machinery.
    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8)]
    forward = tf.function(lambda batch: model(batch, training=False), input_signature=signature)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(forward(np.ascontiguousarray(batch, dtype=np.uint8)), dtype=np.float32)

    return predict


def _litert_predictor(path: str, threads: int) -> Predictor:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    shape = {"batch": 0}

    if threads == 1:
        # One thread (one Spark task per core): image by image is faster than a whole batch per invoke,
        # because one image's activations stay in the CPU caches (MobileNetV2 224: about 270 vs 200 images
        # per CPU-second in the benchmark). More threads need the batch to share the work between them.
        interpreter.resize_tensor_input(input_index, [1, *interpreter.get_input_details()[0]["shape"][1:]])
        interpreter.allocate_tensors()

        def predict_each(batch: np.ndarray) -> np.ndarray:
            rows = []
            for image in np.ascontiguousarray(batch, dtype=np.uint8):
                interpreter.set_tensor(input_index, image[None])
                interpreter.invoke()
                rows.append(interpreter.get_tensor(output_index)[0].copy())
            return np.stack(rows).astype(np.float32, copy=False)

        return predict_each

    def predict(batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != shape["batch"]:
            # Re-planning the graph is cheap but not free: only when the batch length changes.
            interpreter.resize_tensor_input(input_index, list(batch.shape))
            interpreter.allocate_tensors()
            shape["batch"] = batch.shape[0]
        interpreter.set_tensor(input_index, np.ascontiguousarray(batch, dtype=np.uint8))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(output_index), dtype=np.float32)

    return predict


def load_predictor(path: str, engine: str, threads: int = 1) -> Predictor:
    """A numpy -> numpy function for the model at ``path``, built once per process and then reused."""
    key = f"{engine}:{os.path.basename(path)}:{threads}"
    with _LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            check_engine(engine)
            factory = {"keras": _keras_predictor, "litert": _litert_predictor}[RUNTIMES[engine]]
            predictor = factory(path, threads)
            _PREDICTORS[key] = predictor
            LOADS["count"] += 1
            # The worker's imports and its model last as long as the process: out of the collector's way, so
            # that its full collections only walk what the batches make (0.35 s per worker and 1,250 images
            # before, 0.03 s after, measured with gc.callbacks). Collected first: what loading left as garbage
            # is not kept for the worker's life.
            gc.collect()
            gc.freeze()
        return predictor
