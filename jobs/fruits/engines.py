"""Inference engines: export the feature model once on the driver, load it once per Python worker.

``keras`` runs the Keras model itself (the reference); ``litert`` runs the same graph converted by TensorFlow's
``TFLiteConverter`` with LiteRT's XNNPACK kernels, which is several times faster on CPUs at equal outputs.
Workers of the ``litert`` engine never import TensorFlow.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ENGINES = ("litert", "keras")
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


def export(model: Any, engine: str, folder: str, stem: str) -> str:
    """Write ``model`` for ``engine`` into ``folder``; return the file's path."""
    if engine == "keras":
        path = os.path.join(folder, f"{stem}.keras")
        model.save(path)
        return path
    if engine == "litert":
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        # The converter prints the traced signature and every captured variable to stdout; keep logs readable.
        with contextlib.redirect_stdout(io.StringIO()):
            flatbuffer = converter.convert()
        path = os.path.join(folder, f"{stem}.tflite")
        with open(path, "wb") as handle:
            handle.write(flatbuffer)
        return path
    raise ValueError(f"unknown engine {engine!r}; supported: {', '.join(ENGINES)}")


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
            factory = {"keras": _keras_predictor, "litert": _litert_predictor}.get(engine)
            if factory is None:
                raise ValueError(f"unknown engine {engine!r}; supported: {', '.join(ENGINES)}")
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
