"""The pandas-level featurizer with toy numpy models: batching, caching, rejections. No Spark, no TF."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruits import engines
from fruits.featurize import NON_FINITE, featurize_frames


def jpeg(colour: tuple[int, int, int], size: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def frame(contents: list[bytes]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"id{i}" for i in range(len(contents))], "content": contents})


class BatchLength:
    """A toy model whose one feature is the length of the batch it was called with: proves batching."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.shape[1:] == (8, 8, 3)
        self.calls.append(len(batch))
        return np.full((len(batch), 1), len(batch), dtype=np.float32)


def test_batches_are_cut_at_batch_size_and_rows_keep_their_order():
    model = BatchLength()
    contents = [jpeg((i * 20, 0, 0)) for i in range(7)]
    out = pd.concat(featurize_frames([frame(contents)], lambda: model, decode_size=8, batch_size=3))
    assert model.calls == [3, 3, 1]
    assert list(out["id"]) == [f"id{i}" for i in range(7)]
    assert [float(np.frombuffer(v, "<f4")[0]) for v in out["features"]] == [3, 3, 3, 3, 3, 3, 1]
    assert out["reason"].isna().all()


def test_bad_images_get_a_reason_and_do_not_stop_the_batch():
    model = BatchLength()
    contents = [jpeg((255, 0, 0)), b"", b"garbage", jpeg((0, 255, 0))]
    out = next(featurize_frames([frame(contents)], lambda: model, decode_size=8, batch_size=10))
    assert model.calls == [2]  # only the two good images reach the model
    assert out["features"].isna().tolist() == [False, True, True, False]
    assert out.loc[1, "reason"].startswith("empty file")
    assert out.loc[2, "reason"].startswith("not an image")


def test_a_partition_of_only_bad_images_loads_no_model():
    def explode():
        raise AssertionError("model loaded for nothing")

    out = next(featurize_frames([frame([b"", b"x"])], explode, decode_size=8, batch_size=4))
    assert out["features"].isna().all()


def test_model_loads_once_per_worker_process(tmp_path, monkeypatch):
    """A toy engine that draws a random number when loaded: every batch sees the same number."""
    counter = itertools.count()

    def toy_factory(path: str, threads: int) -> engines.Predictor:
        seed = next(counter)
        value = np.random.default_rng(seed).random()
        return lambda batch: np.full((len(batch), 1), value, dtype=np.float32)

    monkeypatch.setattr(engines, "_PREDICTORS", {})
    monkeypatch.setattr(engines, "_litert_predictor", toy_factory)
    model_file = tmp_path / "toy-123.tflite"
    model_file.write_bytes(b"")
    before = engines.LOADS["count"]

    def get():
        return engines.load_predictor(str(model_file), "litert", threads=1)

    frames = [frame([jpeg((9, 9, 9))] * 5) for _ in range(3)]
    outputs = [pd.concat(featurize_frames(frames, get, decode_size=8, batch_size=2)) for _ in range(2)]
    values = {float(np.frombuffer(v, "<f4")[0]) for out in outputs for v in out["features"]}
    assert len(values) == 1
    assert engines.LOADS["count"] == before + 1


def test_a_model_returning_the_wrong_number_of_rows_is_an_error():
    with pytest.raises(ValueError, match="returned 1 rows for a batch of 2"):
        next(
            featurize_frames(
                [frame([jpeg((1, 2, 3))] * 2)],
                lambda: lambda b: np.zeros((1, 4)),
                decode_size=8,
                batch_size=5,
            )
        )


def test_unknown_engine_is_refused(tmp_path):
    with pytest.raises(ValueError, match=f"unknown engine 'onnx'; supported: {', '.join(engines.ENGINES)}$"):
        engines.load_predictor(str(tmp_path / "m"), "onnx")


def test_an_image_whose_features_are_not_finite_is_rejected_and_never_stored():
    """NaN, infinity, or a float64 beyond float32's range (stored as infinity): that image only is rejected."""

    def model(batch: np.ndarray) -> np.ndarray:
        red = batch[:, 0, 0, 0].astype(np.float64)  # each image's own value picks what the model returns
        out = np.stack([red, red + 1.0], axis=1)
        out[red > 250, 1] = np.nan
        out[(red > 180) & (red <= 250), 0] = np.inf
        out[(red > 100) & (red <= 180), 1] = (
            1e39  # finite as float64, infinite as the float32 it is stored as
        )
        return out

    contents = [jpeg((0, 0, 0)), jpeg((255, 0, 0)), jpeg((200, 0, 0)), jpeg((140, 0, 0)), jpeg((20, 0, 0))]
    out = next(featurize_frames([frame(contents)], lambda: model, decode_size=8, batch_size=10))
    assert out["features"].isna().tolist() == [False, True, True, True, False]
    assert (
        out["reason"].tolist()[1:4] == [NON_FINITE] * 3 and out["reason"].isna().tolist()[::4] == [True] * 2
    )
    assert all(np.isfinite(np.frombuffer(v, "<f4")).all() for v in out["features"].dropna())
