"""Featurize: decode images and run the feature model on them in Spark, with one model per Python worker.

:func:`featurize_frames` is the pure part (pandas in, pandas out, any numpy predictor), tested without
Spark. Two compositions with ``mapInPandas`` use it; the exported model file reaches every node once through
``SparkContext.addFile`` and each Python worker loads it once (see :mod:`fruits.engines`):

- :func:`featurize`: ``id, content`` rows (images already read, e.g. those the feature store lacks) to
  ``id, features, reason``;
- :func:`read_and_featurize`: listed files straight to features in ONE pass (read, hash, decode, infer), for a
  run whose feature store holds nothing for this model yet: every image is new, so there is nothing to look up
  first and no reason to keep the bytes between two passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from fruits.decoding import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from fruits.engines import ModelArtifact, Predictor, load_predictor
from fruits.faults import fail_first_attempt, stall_task
from fruits.linalg import FEATURE_DTYPE, pack
from fruits.reading import read_frames

# features: float32 bytes (fruits.linalg.pack), which Spark moves and stores without touching each element.
FEATURES_SCHEMA = "id string, features binary, reason string"
ROWS_SCHEMA = (
    "path string, label string, split string, length long, id string, features binary, reason string"
)
#: The reason of an image whose feature vector holds NaN or infinity: never stored as features.
NON_FINITE = "the model's features for this image are not finite (NaN or infinity)"


def featurize_frames(
    frames: Iterable[pd.DataFrame],
    get_predictor: Callable[[], Predictor],
    *,
    decode_size: int,
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[pd.DataFrame]:
    """Frames with ``content`` (and optionally ``reason``) -> the same frames without ``content``, with
    ``features`` and ``reason``: one output row per input row, in order.

    A row without content keeps its reason (a file that could not be read); an undecodable image gets the
    decoder's reason and no features; an image whose features are not finite (NaN or infinity, in float32 as
    stored) gets :data:`NON_FINITE`; none of them stops the batch. The predictor is fetched lazily so that a
    partition of only rejected images loads no model.
    """
    predictor: Predictor | None = None
    for frame in frames:
        for start in range(0, len(frame), batch_size):
            chunk = frame.iloc[start : start + batch_size]
            # Decoded straight into one batch array: no list of arrays to stack (a copy of the batch) after.
            batch = np.empty((len(chunk), decode_size, decode_size, 3), dtype=np.uint8)
            good: list[int] = []
            given = chunk["reason"].tolist() if "reason" in chunk else [None] * len(chunk)
            reasons: list[str | None] = [None if pd.isna(r) else r for r in given]
            for position, content in enumerate(chunk["content"]):
                if content is None or (isinstance(content, float) and pd.isna(content)):
                    reasons[position] = reasons[position] or "not read"
                    continue
                try:
                    batch[len(good)] = decode_image(content, decode_size, max_pixels)
                    good.append(position)
                except ImageRejected as rejected:
                    reasons[position] = rejected.reason
            features: list[bytes | None] = [None] * len(chunk)
            if good:
                if predictor is None:
                    predictor = get_predictor()
                output = predictor(batch[: len(good)])
                if output.shape[0] != len(good):
                    raise ValueError(f"model returned {output.shape[0]} rows for a batch of {len(good)}")
                # Checked as stored: a float64 output above float32's range would be stored as infinity.
                vectors = np.asarray(output, dtype=FEATURE_DTYPE)
                finite = np.isfinite(vectors).all(axis=1)  # one vectorised pass over the batch's outputs
                for position, vector, usable in zip(good, vectors, finite, strict=True):
                    if usable:
                        features[position] = pack(vector)
                    else:
                        reasons[position] = NON_FINITE
            kept = chunk.drop(columns=["content", "reason"], errors="ignore")
            yield kept.assign(features=features, reason=reasons)


def _predictor_loader(artifact: ModelArtifact, threads: int) -> Callable[[], Predictor]:
    file_name, engine = artifact.file_name, artifact.engine

    def get_predictor() -> Predictor:
        from pyspark import SparkFiles

        return load_predictor(SparkFiles.get(file_name), engine, threads)

    return get_predictor


def featurize(
    todo: DataFrame,
    artifact: ModelArtifact,
    *,
    batch_size: int,
    threads: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DataFrame:
    """``id, content`` rows -> ``id, features, reason`` rows, by ``mapInPandas`` over the shipped model."""
    get_predictor, decode_size = _predictor_loader(artifact, threads), artifact.input_size

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        fail_first_attempt()
        stall_task()
        yield from featurize_frames(
            frames, get_predictor, decode_size=decode_size, batch_size=batch_size, max_pixels=max_pixels
        )

    return todo.select("id", "content").mapInPandas(run, FEATURES_SCHEMA)


def read_and_featurize(
    listed: DataFrame,
    artifact: ModelArtifact,
    *,
    batch_size: int,
    threads: int,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DataFrame:
    """``path, label, split`` rows (the listing) -> ``path, label, split, length, id, features, reason``.

    Each file is read by its exact name (:func:`fruits.reading.read_frames`), hashed, decoded and featurized in
    the same task; a file that cannot be read or decoded gets its reason.
    """
    get_predictor, decode_size = _predictor_loader(artifact, threads), artifact.input_size

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        fail_first_attempt()
        stall_task()
        yield from featurize_frames(
            read_frames(frames, max_bytes),
            get_predictor,
            decode_size=decode_size,
            batch_size=batch_size,
            max_pixels=max_pixels,
        )

    return listed.select("path", "label", "split").mapInPandas(run, ROWS_SCHEMA)
