"""Shared fixtures: one local Spark session, generated images, and the paths of shared data and weights.

Shared files are reached through settings, never through a fixed path:
- ``FRUITS_DATA``: a Fruits-360 folder with Training/ and Test/ (the real-data tests skip without it);
- ``FRUITS_WEIGHTS``: an ImageNet weights file (e.g. Keras' mobilenet_2_5_224_tf_no_top.h5); when set, the
  real-data tests run with it too, with the model its Keras file name names (or FRUITS_MODEL/FRUITS_ALPHA).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["tests.moto_server", "tests.ops_stack"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every Spark the tests start (here, in subprocesses, in the notebook's kernel) listens on loopback only.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Exported models go to a cache of this test session, not the user's ~/.cache/fruits: shared by every test of the
# session (one export per model), gone afterwards.
if "FRUITS_CACHE" not in os.environ:
    os.environ["FRUITS_CACHE"] = tempfile.mkdtemp(prefix="fruits-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FRUITS_CACHE"], True)

# The smallest model on 32-pixel images with random weights: the job's whole path in seconds, not minutes.
FAST_MODEL = [
    "--model",
    "mobilenet",
    "--alpha",
    "0.25",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--decode-size",
    "32",
]


@pytest.fixture(scope="session")
def spark():
    """A local Spark session with two task slots, shared by every Spark test."""
    from pyspark.sql import SparkSession

    from fruits.session import prepare_local_mode

    prepare_local_mode()
    session = (
        SparkSession.builder.master("local[2]")
        .appName("fruits-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def write_image(
    path: Path, colour: tuple[int, int, int], size: int = 40, mode: str = "RGB", seed: int = 0
) -> Path:
    """A small image: a coloured disc with noise on white, so that classes differ by colour like fruit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    pixels = np.full((size, size, 3), 255, dtype=np.uint8)
    pixels[disc] = np.clip(np.array(colour) + rng.normal(0, 12, (disc.sum(), 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def make_image_tree(root: Path) -> Path:
    """Two labelled classes (one with a space in its name), a PNG, an upper-case extension, and bad files.

    14 images that decode and 4 files that cannot be used: empty, not an image, truncated, not .jpg/.png.
    """
    for i in range(6):
        write_image(root / "Red Apple" / f"r{i}.jpg", (200, 30, 30), seed=i)
        write_image(root / "Lemon" / f"l{i}.jpg", (230, 220, 40), seed=10 + i)
    write_image(root / "Lemon" / "l_png.png", (230, 220, 40), seed=99)
    write_image(root / "Red Apple" / "R_UPPER.JPG", (190, 20, 40), seed=98, mode="L")
    (root / "Lemon" / "empty.jpg").write_bytes(b"")
    (root / "Lemon" / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    (root / "Red Apple" / "notes.txt").write_text("a stray file")
    good = (root / "Lemon" / "l0.jpg").read_bytes()
    (root / "Lemon" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


def as_unprivileged(function, *args):  # type: ignore[no-untyped-def]
    """``function(*args)`` run as user ``nobody`` in a forked child when we are root (root reads every file, so
    a permission test needs another user); run directly otherwise. The result comes back through a pipe."""
    if os.geteuid() != 0:
        return function(*args)
    import multiprocessing

    def child(connection) -> None:  # type: ignore[no-untyped-def]
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            connection.send(("ok", function(*args)))
        except BaseException as error:  # shipped back to the test as it is
            connection.send(("error", error))

    context = multiprocessing.get_context("fork")
    parent, child_end = context.Pipe()
    process = context.Process(target=child, args=(child_end,))
    process.start()
    status, value = parent.recv()
    process.join()
    if status == "error":
        raise value
    return value


@pytest.fixture
def shared_tmp() -> Path:
    """A temporary folder every user can enter (pytest's own are private to the user running the tests)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fruits-test-"))
    folder.chmod(0o755)
    yield folder
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def fruits_data() -> Path:
    """The real Fruits-360 sample named by FRUITS_DATA (skips when unset)."""
    value = os.environ.get("FRUITS_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("FRUITS_DATA is not set to a Fruits-360 folder")
    return Path(value)


def weights_settings() -> list[tuple[str, str, float]]:
    """(weights, model, alpha) to run the real-data tests with: random always, a file when given."""
    settings = [("none", "mobilenet", 0.25)]
    path = os.environ.get("FRUITS_WEIGHTS")
    if path:
        from fruits.models import infer_model_from_filename

        model, alpha = infer_model_from_filename(path) or (
            os.environ.get("FRUITS_MODEL", "mobilenet_v2"),
            float(os.environ.get("FRUITS_ALPHA", "1.0")),
        )
        settings.append((path, model, alpha))
    return settings
