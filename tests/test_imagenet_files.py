"""ImageNet weights: the file names the job owns match Keras, and a pre-fetched file is loaded without downloads.

Keras is asked for real: each application is built with ``weights="imagenet"`` while ``file_utils.get_file`` (the
function ``keras.applications`` calls) records what it was asked for and raises, so no network is needed.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from fruits import models
from fruits.models import WeightsError, imagenet_weights_file

# (model, alpha, image size): every supported model, the MobileNet widths, and sizes Keras has no file for.
CASES = [
    ("mobilenet", 0.25, 224),
    ("mobilenet", 0.5, 160),
    ("mobilenet", 0.75, 128),
    ("mobilenet", 1.0, 100),
    ("mobilenet_v2", 1.0, 224),
    ("mobilenet_v2", 0.35, 96),
    ("mobilenet_v2", 1.4, 300),
    ("resnet50", 1.0, 224),
    ("efficientnet_b0", 1.0, 224),
]


class _Fetched(Exception):
    pass


@pytest.fixture
def record_get_file(monkeypatch):
    """Patch Keras' get_file as keras.applications reaches it; returns the list of (fname, origin) asked for."""
    from keras.src.utils import file_utils

    asked: list[tuple[str, str]] = []

    def fake_get_file(fname=None, origin=None, *args, **kwargs):
        asked.append((fname, origin))
        raise _Fetched(fname)

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    return asked


@pytest.mark.parametrize(("model", "alpha", "size"), CASES)
def test_file_name_and_url_are_what_keras_fetches(record_get_file, model, alpha, size):
    import keras

    spec = models.get_spec(model)
    kwargs = {"alpha": alpha} if spec.has_alpha else {}
    with pytest.raises(_Fetched):
        getattr(keras.applications, spec.constructor)(
            include_top=False, weights="imagenet", input_shape=(size, size, 3), **kwargs
        )
    expected = imagenet_weights_file(model, alpha, size)
    assert record_get_file == [(expected.file_name, expected.url)]


def test_the_shared_weights_file_is_keras_mobilenet_025_file():
    path = os.environ.get("FRUITS_WEIGHTS")
    if not path:
        pytest.skip("FRUITS_WEIGHTS is not set")
    assert Path(path).name == imagenet_weights_file("mobilenet", 0.25, 224).file_name
    assert models.infer_model_from_filename(path) == ("mobilenet", 0.25)


@pytest.fixture
def read_only_keras_home(tmp_path, monkeypatch):
    """KERAS_HOME holding Keras' MobileNet 0.25 file, read-only; HOME where nothing can be created."""
    source = os.environ.get("FRUITS_WEIGHTS")
    if not source:
        pytest.skip("FRUITS_WEIGHTS is not set")
    home = tmp_path / "keras"
    name = imagenet_weights_file("mobilenet", 0.25, 224).file_name
    (home / "models").mkdir(parents=True)
    shutil.copyfile(source, home / "models" / name)
    for path in (home / "models" / name, home / "models", home):
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0 if path.is_file() else 0o555))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # a HOME below a regular file cannot be created, not even by root
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("HOME", str(blocker / "home"))
    yield home
    for path in (home, home / "models"):
        path.chmod(0o755)


def test_a_prefetched_file_is_loaded_without_any_download(read_only_keras_home, record_get_file):
    import keras

    before = sorted(p.name for p in read_only_keras_home.rglob("*"))
    weights = models.resolve_weights("imagenet", model="mobilenet", alpha=0.25, image_size=224)
    expected = read_only_keras_home / "models" / "mobilenet_2_5_224_tf_no_top.h5"
    assert weights.kind == "imagenet" and weights.path == str(expected)
    assert weights.sha256 == models.sha256_file(str(expected))
    backbone = models.build_backbone(models.get_spec("mobilenet"), 224, 0.25, weights)
    assert record_get_file == []  # no download was attempted
    assert sorted(p.name for p in read_only_keras_home.rglob("*")) == before  # and nothing was written
    reference = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    )
    reference.load_weights(str(expected))
    for mine, theirs in zip(backbone.get_weights(), reference.get_weights(), strict=True):
        assert (mine == theirs).all()


def test_without_a_cached_file_keras_is_asked_to_download(tmp_path, monkeypatch, record_get_file):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    weights = models.resolve_weights("imagenet", model="mobilenet", alpha=0.25, image_size=128)
    assert weights.path is None and weights.sha256 is None
    with pytest.raises(_Fetched):
        models.build_backbone(models.get_spec("mobilenet"), 128, 0.25, weights)
    assert record_get_file[0][0] == "mobilenet_2_5_128_tf_no_top.h5"


def test_weights_of_another_architecture_are_one_weights_error(tmp_path):
    import keras

    other = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    )
    path = tmp_path / "mobilenet_025.weights.h5"
    other.save_weights(path)
    weights = models.resolve_weights(str(path))
    with pytest.raises(WeightsError) as caught:
        models.build_backbone(models.get_spec("mobilenet_v2"), 32, 1.0, weights)
    message = str(caught.value)
    assert message.startswith(f"weights {path} do not load into mobilenet_v2 alpha 1.0:")
    assert "\n" not in message
