"""The int8 engine's calibration images (chosen the same way wherever the folder is) and the feature store's key
(float stores keep theirs; an int8 key names its calibration's source and count, never the images, so that an input
that grows, or a run with --limit, keeps it)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from fruits import calibration, engines, feature_store, layout, models
from fruits.listing import Entry, InputError, Listing, list_input
from fruits.options import parse_options
from fruits.reading import Unreadable
from tests.conftest import write_image


def tree(root, classes=("Kiwi", "Plum", "Red Apple"), per_class=6):
    """Training and Test images of a few classes, each image's bytes its own."""
    for c, label in enumerate(classes):
        for i in range(per_class):
            for split, offset in (("Training", 0), ("Test", 100)):
                write_image(root / split / label / f"{i}.jpg", (40 * c, 90 + i, 60), seed=offset + 10 * c + i)
    return root


def test_the_training_split_is_the_pool_and_the_choice_does_not_depend_on_where_the_folder_is(tmp_path):
    first = tree(tmp_path / "a" / "fruits")
    second = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, second)
    one = calibration.collect(list_input(str(first)), 7, 1 << 20)
    two = calibration.collect(list_input(str(second)), 7, 1 << 20)
    assert one.split == "Training" and len(one.ids) == 7
    assert all("/Training/" in path for path in one.paths)
    assert [p.split("/Training/")[1] for p in one.paths] == [p.split("/Training/")[1] for p in two.paths]
    assert one.identity == two.identity and one.source != two.source
    # Spread like a random draw, not the first class in path order.
    assert len({path.split("/")[-2] for path in one.paths}) == 3


def test_without_splits_every_image_is_in_the_pool_and_rejected_entries_never(tmp_path):
    entries = [Entry(f"file:/d/{label}/{i}.jpg", 10, label, None, "v") for label in "AB" for i in range(3)]
    entries.append(Entry("file:/d/A/x.txt", 10, "A", None, "v", reason="unsupported file type"))
    pool, split = calibration.candidates(entries)
    assert split is None and len(pool) == 6 and all(e.reason is None for e in pool)
    assert pool == sorted(pool, key=calibration.rank)


def test_unreadable_candidates_are_replaced_by_the_next_ones_and_the_identity_is_their_content(tmp_path):
    entries = [Entry(f"file:/d/A/{i}.jpg", 10, "A", "Training", "v") for i in range(8)]
    ordered, _ = calibration.candidates(entries)
    broken = {ordered[0].path, ordered[2].path}

    def reader(path, max_bytes):
        if path in broken:
            raise Unreadable("vanished after the listing")
        return path.encode()

    found = calibration.collect(Listing("/d", entries), 3, 100, lambda _: (reader, 4))
    assert found.paths == (ordered[1].path, ordered[3].path, ordered[4].path)
    ids = sorted(hashlib.sha256(path.encode()).hexdigest() for path in found.paths)
    assert found.identity == hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    assert found.describe()["images"] == 3 and found.describe()["id"] == found.identity


def test_nothing_readable_is_one_clear_error():
    entries = [Entry("file:/d/A/0.jpg", 10, "A", None, "v")]

    def reader(path, max_bytes):
        raise Unreadable("could not be read: Permission denied")

    with pytest.raises(
        calibration.NoCalibrationImages, match="no image to calibrate the int8 model on under /d"
    ):
        calibration.collect(Listing("/d", entries), 5, 100, lambda _: (reader, 1))
    with pytest.raises(InputError, match="--calibration: input not found"):
        calibration.list_source("/no/such/folder", 64)


def test_undecodable_calibration_bytes_are_left_out_of_the_images(tmp_path):
    from fruits.decoding import decode_image

    good = write_image(tmp_path / "Training" / "A" / "good.jpg", (200, 30, 30))
    (tmp_path / "Training" / "A" / "bad.jpg").write_bytes(b"not an image")
    found = calibration.collect(list_input(str(tmp_path)), 5, 1 << 20)
    assert len(found.ids) == 2  # the same bytes are left out every time: the identity may name them
    (image,) = found.decoded(16)
    assert (image == decode_image(good.read_bytes(), 16)).all()
    (tmp_path / "Training" / "A" / "good.jpg").write_bytes(b"no longer an image")
    with pytest.raises(
        calibration.NoCalibrationImages, match=r"none of the 2 calibration images of .* decoded"
    ):
        calibration.collect(list_input(str(tmp_path)), 5, 1 << 20).decoded(16)


def test_the_float_key_is_the_key_stores_already_have_and_each_calibration_has_its_own():
    # Stores already written are found by this exact name: it changes only with layout.STORE_FORMAT, on purpose.
    assert (
        feature_store.model_key("mobilenet_v2", 1.0, 224, 100, "imagenet")
        == "mobilenet_v2-a1-s224-d100-wimagenet-f32-upright"
    )
    assert feature_store.model_key("mobilenet", 0.25, 224, 100, "dbdb03ee2a22fd89", None) == (
        "mobilenet-a0.25-s224-d100-wdbdb03ee2a22fd89-f32-upright"
    )
    one = feature_store.model_key("mobilenet", 0.25, 224, 100, "w", "int8-c0123456789ab-n200")
    two = feature_store.model_key("mobilenet", 0.25, 224, 100, "w", "int8-cfedcba987654-n200")
    assert one == "mobilenet-a0.25-s224-d100-ww-int8-c0123456789ab-n200-f32-upright" and one != two


def key(*argv: str) -> str:
    """The model key of a run with these arguments (random weights: nothing is read)."""
    options = parse_options(["--input", "/data/fruits", "--output", "/o", "--weights", "none", *argv])
    return feature_store.model_key_for(options, models.resolve_weights("none"))


def test_an_int8_key_names_the_calibration_source_and_count_and_nothing_a_growing_input_changes(tmp_path):
    int8 = key("--engine", "litert-int8")
    float_key = key()
    assert key("--engine", "keras") == float_key and "int8" not in float_key
    source = hashlib.sha256(b"/data/fruits").hexdigest()[:12]
    assert (
        int8
        == float_key.removesuffix(f"-{layout.STORE_FORMAT}") + f"-int8-c{source}-n200-{layout.STORE_FORMAT}"
    )
    # What a run's options say about its input beyond where it is changes nothing: a sample, the file limit.
    assert key("--engine", "litert-int8", "--limit", "10") == int8
    assert key("--engine", "litert-int8", "--max-file-mb", "8") == int8
    # One source, one name: a trailing slash or file: is the same folder; the input given as --calibration too.
    assert key("--engine", "litert-int8", "--calibration", "file:/data/fruits/") == int8
    # Another source or count is another calibration: another key, calibrated anew by its first run.
    others = {
        key("--engine", "litert-int8", "--calibration", "/data/calibration"),
        key("--engine", "litert-int8", "--calibration-images", "100"),
        key("--engine", "litert-int8", "--calibration", "s3://b/cal/"),
    }
    assert len(others) == 3 and int8 not in others and float_key not in others
    assert key("--engine", "litert-int8", "--calibration", "s3a://b/cal") in others


def test_engines_name_their_files_and_refuse_to_quantize_without_images(tmp_path):
    assert {engines.extension(e) for e in engines.ENGINES} == {".tflite", ".keras"}
    assert set(engines.CALIBRATED) <= set(engines.ENGINES)
    with pytest.raises(ValueError, match="litert-int8 needs calibration images"):
        engines.export(object(), "litert-int8", str(tmp_path), "m", [])
    with pytest.raises(ValueError, match="unknown engine 'onnx'; supported: litert, litert-int8, keras"):
        engines.export(object(), "onnx", str(tmp_path), "m")
