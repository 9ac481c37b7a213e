"""Featurize: decode images and run the feature model on them in Spark, with one model per Python worker.

:func:`featurize_frames` is the pure part (pandas in, pandas out, any numpy predictor), tested without
Spark. :func:`featurize` composes it with ``mapInPandas``: the exported model file reaches every node once
through ``SparkContext.addFile`` and each Python worker loads it once (see :mod:`fruits.engines`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from fruits.decoding import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from fruits.engines import ModelArtifact, Predictor, load_predictor
from fruits.faults import fail_first_attempt

FEATURES_SCHEMA = "id string, features array<float>, reason string"


def featurize_frames(
    frames: Iterable[pd.DataFrame],
    get_predictor: Callable[[], Predictor],
    *,
    decode_size: int,
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[pd.DataFrame]:
    """``id, content`` frames -> ``id, features, reason`` frames, one output row per input row.

    Undecodable images get a reason and no features; they never stop the batch. The predictor is fetched
    lazily so that a partition of only rejected images loads no model.
    """
    predictor: Predictor | None = None
    for frame in frames:
        for start in range(0, len(frame), batch_size):
            chunk = frame.iloc[start : start + batch_size]
            # Decoded straight into one batch array: no list of arrays to stack (a copy of the batch) after.
            batch = np.empty((len(chunk), decode_size, decode_size, 3), dtype=np.uint8)
            good: list[int] = []
            reasons: list[str | None] = [None] * len(chunk)
            for position, content in enumerate(chunk["content"]):
                try:
                    batch[len(good)] = decode_image(content, decode_size, max_pixels)
                    good.append(position)
                except ImageRejected as rejected:
                    reasons[position] = rejected.reason
            features: list[np.ndarray | None] = [None] * len(chunk)
            if good:
                if predictor is None:
                    predictor = get_predictor()
                output = predictor(batch[: len(good)])
                if output.shape[0] != len(good):
                    raise ValueError(f"model returned {output.shape[0]} rows for a batch of {len(good)}")
                for position, vector in zip(good, output, strict=True):
                    features[position] = vector.astype(np.float32, copy=False)
            yield pd.DataFrame({"id": chunk["id"].to_numpy(), "features": features, "reason": reasons})


def featurize(
    todo: DataFrame,
    artifact: ModelArtifact,
    *,
    batch_size: int,
    threads: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DataFrame:
    """``id, content`` rows -> ``id, features, reason`` rows, by ``mapInPandas`` over the shipped model."""
    file_name, engine, decode_size = artifact.file_name, artifact.engine, artifact.input_size

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        fail_first_attempt()

        def get_predictor() -> Predictor:
            return load_predictor(SparkFiles.get(file_name), engine, threads)

        yield from featurize_frames(
            frames, get_predictor, decode_size=decode_size, batch_size=batch_size, max_pixels=max_pixels
        )

    return todo.mapInPandas(run, FEATURES_SCHEMA)
