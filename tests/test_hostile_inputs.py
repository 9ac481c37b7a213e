"""Every file accounted for, every failure one line: hostile names, odd layouts, bad files, a file that vanishes.

The listing's rules are checked against an oracle written from the README's rules (not from the code) over
trees that Hypothesis generates: any printable unicode in names, spaces, colons and brackets, nesting, empty,
corrupt, oversized and non-image files, symbolic links (broken too). The whole job then runs on a few such trees
and on the specific cases that used to abort a run or lose a file; its two CSVs must name every file found, each
once, byte for byte.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fruits.job import main
from fruits.layout import model_key
from fruits.listing import list_input
from tests.conftest import FAST_MODEL
from tests.s3a_jobs import put_tree_on_s3, s3a_env, s3a_spark_home, s3a_submit_args

KINDS = ("jpg", "png", "corrupt", "empty", "text", "oversized", "broken_link", "link")
MAX_FILE_MB = 1
SPLIT_NAMES = ("training", "test")


def _image_bytes(fmt: str, seed: int) -> bytes:
    image = Image.new("RGB", (12, 12), ((seed * 37) % 256, (seed * 91) % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


NAME_CHARACTERS = st.characters(
    codec="utf-8",
    categories=("L", "N", "P", "S", "Zs"),
    include_characters="\t\n\r",
    exclude_characters="/\\",
)
NAMES = st.text(NAME_CHARACTERS, min_size=1, max_size=10).filter(lambda name: name not in (".", ".."))


@dataclass(frozen=True)
class Planned:
    """One file of a generated tree: its folders, its name (extension added by kind) and what it is."""

    folders: tuple[str, ...]
    stem: str
    kind: str

    @property
    def name(self) -> str:
        extension = {"png": ".png", "text": ".txt", "jpg": ".JPG"}.get(self.kind, ".jpg")
        return self.stem + extension

    @property
    def relative(self) -> str:
        return "/".join([*self.folders, self.name])


PLANS = st.lists(
    st.builds(
        Planned,
        st.lists(
            st.one_of(NAMES, st.sampled_from(["Training", "Test", "Apple Braeburn", "set[1]", "x:y"])),
            max_size=3,
        ).map(tuple),
        NAMES,
        st.sampled_from(KINDS),
    ),
    min_size=1,
    max_size=14,
    unique_by=lambda plan: plan.relative.lower(),
)


def build_tree(root: Path, plans: list[Planned]) -> list[Planned]:
    """Create the planned files; returns those that exist (a folder name may clash with a file name)."""
    made = []
    for index, plan in enumerate(plans):
        folder = root.joinpath(*plan.folders)
        path = folder / plan.name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                continue
            if plan.kind in ("jpg", "png"):
                path.write_bytes(_image_bytes("JPEG" if plan.kind == "jpg" else "PNG", index))
            elif plan.kind == "corrupt":
                path.write_bytes(b"\xff\xd8\xff not really a jpeg")
            elif plan.kind == "empty":
                path.write_bytes(b"")
            elif plan.kind == "text":
                path.write_text("notes")
            elif plan.kind == "oversized":
                with open(path, "wb") as handle:
                    handle.truncate(MAX_FILE_MB * 1024 * 1024 + 1)  # sparse: no disk used
            elif plan.kind == "broken_link":
                os.symlink(root / "no such target.jpg", path)
            elif plan.kind == "link":
                target = root / f".target-{index}.jpg"  # hidden itself, reached only through the link
                target.write_bytes(_image_bytes("JPEG", index))
                os.symlink(target, path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError, OSError):
            continue
        made.append(plan)
    return made


def expected_reason(plan: Planned) -> str | None:
    """The README's rules, written independently of the code: the prefix of the reason, or None (read it)."""
    kind_reasons = {
        "text": "unsupported file type",
        "empty": "empty file",
        "oversized": "too large",
        "broken_link": "broken symbolic link",
    }
    if plan.kind in kind_reasons:
        return kind_reasons[plan.kind]
    if not plan.folders:
        return "not in a class folder"
    if len(plan.folders) == 1 and plan.folders[0].lower() in SPLIT_NAMES:
        return "not in a class folder"
    return None


def hidden(plan: Planned) -> bool:
    return any(part.startswith((".", "_")) for part in [*plan.folders, plan.name])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=PLANS)
def test_the_listing_names_every_visible_file_once_with_the_rule_that_applies(plans):
    root = Path(tempfile.mkdtemp(prefix="fruits-hypothesis-"))
    try:
        made = build_tree(root, plans)
        listing = list_input(str(root), max_file_mb=MAX_FILE_MB)
        found = {entry.path: entry for entry in listing.entries}
        visible = [plan for plan in made if not hidden(plan)]
        assert len(found) == len(listing.entries), "a file was listed twice"
        assert set(found) == {f"file:{root}/{plan.relative}" for plan in visible}
        for plan in visible:
            entry = found[f"file:{root}/{plan.relative}"]
            reason = expected_reason(plan)
            assert (entry.reason is None) == (reason is None), (plan, entry)
            if reason:
                assert entry.reason.startswith(reason), (plan, entry)
            elif plan.folders:
                assert entry.label == plan.folders[-1]
        assert listing.hidden >= sum(hidden(plan) for plan in made if plan.kind != "link")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the whole job -------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_job(spark, root: Path, output: Path, *extra: str) -> int:
    model = FAST_MODEL
    if "--weights" in extra:  # an option is given once: the test's weights replace the fast model's
        at = FAST_MODEL.index("--weights")
        model = FAST_MODEL[:at] + FAST_MODEL[at + 2 :]
    args = ["--input", str(root), "--output", str(output), *model, "--k", "2"]
    return main([*args, "--max-file-mb", str(MAX_FILE_MB), *extra], spark)


def accounted(output: Path) -> tuple[dict[str, str], dict[str, str], dict]:
    manifest = json.loads((output / "manifest.json").read_text())
    results = {row["path"]: row["label"] for row in read_csv(output / "results.csv")}
    rejected = {row["path"]: row["reason"] for row in read_csv(output / "rejected.csv")}
    assert not set(results) & set(rejected), "a file is both featurized and rejected"
    counts = manifest["counts"]
    assert counts["found"] == counts["featurized"] + counts["rejected"]
    assert (len(results), len(rejected)) == (counts["featurized"], counts["rejected"])
    return results, rejected, manifest


@pytest.mark.spark
@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=PLANS)
def test_the_job_accounts_for_every_file_of_a_hostile_tree(spark, plans):
    root = Path(tempfile.mkdtemp(prefix="fruits-hypothesis-job-"))
    try:
        images = root / "in"
        anchors = [Planned(("Apple Braeburn",), f"anchor{i}", "jpg") for i in range(2)]  # PCA needs 2 images
        made = build_tree(images, [*anchors, *plans])
        visible = {f"file:{images}/{plan.relative}": plan for plan in made if not hidden(plan)}
        assert run_job(spark, images, root / "out") == 0
        results, rejected, _ = accounted(root / "out")
        assert set(results) | set(rejected) == set(visible)  # exact bytes of every path, nothing else
        for path, label in results.items():
            assert visible[path].kind in ("jpg", "png", "link") and label == visible[path].folders[-1]
        for path, reason in rejected.items():
            plan = visible[path]
            assert plan.kind not in ("jpg", "png", "link") or expected_reason(plan), (plan, reason)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.spark
@pytest.mark.slow
def test_names_that_used_to_abort_or_misread_a_run(spark, tmp_path):
    """A colon, glob characters beside their look-alike, spaces at the ends, a 3 GB video, a 2 MB 'photo'."""
    images = tmp_path / "in"
    files = {
        "set[1]/a.jpg": 1, "set1/b.jpg": 2, "star*{x,y}/c.jpg": 3, "Lemon/photo 10:30.jpg": 4,
        " Red Apple /d.jpg": 5, "Red Apple/e.jpg ": 6,
    }  # fmt: skip
    for relative, seed in files.items():
        (images / relative).parent.mkdir(parents=True, exist_ok=True)
        (images / relative).write_bytes(_image_bytes("JPEG", seed))
    (images / "Lemon" / "notes 10:30.txt").write_text("a note")
    with open(images / "Lemon" / "movie.mp4", "wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse
    with open(images / "Lemon" / "huge.jpg", "wb") as handle:
        handle.truncate(2 * 1024**2)
    assert run_job(spark, images, tmp_path / "out") == 0
    results, rejected, _ = accounted(tmp_path / "out")
    prefix = f"file:{images}/"
    assert {path.removeprefix(prefix): label for path, label in results.items()} == {
        "set[1]/a.jpg": "set[1]", "set1/b.jpg": "set1", "star*{x,y}/c.jpg": "star*{x,y}",
        "Lemon/photo 10:30.jpg": "Lemon", " Red Apple /d.jpg": " Red Apple ",
    }  # fmt: skip
    reasons = {path.removeprefix(prefix): reason for path, reason in rejected.items()}
    assert reasons["Red Apple/e.jpg "].startswith("unsupported file type")  # the name ends in a space
    assert reasons["Lemon/notes 10:30.txt"].startswith("unsupported file type")
    assert reasons["Lemon/movie.mp4"].startswith("unsupported file type")
    assert reasons["Lemon/huge.jpg"].startswith("too large: 2.1 MB exceeds the limit of 1.0 MB")


@pytest.mark.spark
@pytest.mark.slow
def test_a_file_that_vanishes_after_the_listing_is_rejected_and_counted(spark, tmp_path, monkeypatch):
    import fruits.job

    images = tmp_path / "in"
    for i in range(4):
        (images / "Kiwi").mkdir(parents=True, exist_ok=True)
        (images / "Kiwi" / f"{i}.jpg").write_bytes(_image_bytes("JPEG", i))
    real = fruits.job.list_input

    def list_then_delete(*args, **kwargs):  # type: ignore[no-untyped-def]
        listing = real(*args, **kwargs)
        (images / "Kiwi" / "3.jpg").unlink()  # gone between listing and reading
        return listing

    monkeypatch.setattr(fruits.job, "list_input", list_then_delete)
    assert run_job(spark, images, tmp_path / "out") == 0
    results, rejected, manifest = accounted(tmp_path / "out")
    assert manifest["counts"]["found"] == 4 and len(results) == 3
    assert rejected == {f"file:{images}/Kiwi/3.jpg": "vanished after the listing"}


@pytest.mark.spark
@pytest.mark.slow
def test_odd_placements_follow_the_documented_rules(spark, tmp_path):
    images = tmp_path / "in"
    layout = [
        "loose.jpg",  # directly under the input: rejected, no label
        "Training/loose.jpg",  # directly under a split folder: rejected
        "Training/Apple/a.jpg", "Training/Apple/b.jpg",  # Training, Apple
        "Training/Test/Pear/c.jpg",  # a Test/ inside Training/: the top folder decides: Training, Pear
        "Test/Apple/d.jpg",
        "_scratch/Apple/e.jpg", ".cache/Apple/f.jpg", "Apple/.g.jpg", "Apple/_h.jpg",  # hidden: skipped, counted
    ]  # fmt: skip
    for index, relative in enumerate(layout):
        (images / relative).parent.mkdir(parents=True, exist_ok=True)
        (images / relative).write_bytes(_image_bytes("JPEG", index))
    assert run_job(spark, images, tmp_path / "out") == 0
    results, rejected, manifest = accounted(tmp_path / "out")
    parquet_rows = {
        row["path"].removeprefix(f"file:{images}/"): (row["label"], row["split"])
        for row in spark.read.parquet(manifest["outputs"]["results.parquet"]).collect()
    }
    assert parquet_rows == {
        "Training/Apple/a.jpg": ("Apple", "Training"),
        "Training/Apple/b.jpg": ("Apple", "Training"),
        "Training/Test/Pear/c.jpg": ("Pear", "Training"),
        "Test/Apple/d.jpg": ("Apple", "Test"),
    }
    assert {path.removeprefix(f"file:{images}/") for path in rejected} == {"loose.jpg", "Training/loose.jpg"}
    assert all(reason.startswith("not in a class folder") for reason in rejected.values())
    assert manifest["skipped"]["hidden"] == 4 and manifest["counts"]["found"] == 6
    assert len(results) == 4


def test_a_weights_file_that_is_not_one_is_one_line(tmp_path, capsys):
    fake = tmp_path / "mobilenet_2_5_224_tf_no_top.h5"
    fake.write_text("<html>404 not found</html>")
    (tmp_path / "in" / "A").mkdir(parents=True)
    status = main(
        ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(fake)]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "is not an HDF5 file" in lines[0]


# --- S3 key shapes: every key by its exact characters ------------------------------------------------------

# Any UTF-8, with what a URL parser reads as syntax ('#', '?', '%', '+', '&', ';', '=', spaces, a tab, a carriage
# return). No newline: moto's server answers 404 for a key holding one (real S3 takes it), so the newline is
# tested on the split itself and on a disk.
KEY_CHARACTERS = st.characters(
    codec="utf-8",
    categories=("L", "N", "P", "S", "Zs"),
    include_characters="#?%+&;= \t\r",
    exclude_characters="/\\\n",
)
SEGMENTS = st.text(KEY_CHARACTERS, max_size=6).filter(lambda name: name not in (".", ".."))
S3_KEYS = st.lists(
    st.tuples(st.lists(SEGMENTS, min_size=0, max_size=3), SEGMENTS.filter(bool)).map(
        lambda key: "/".join([*key[0], key[1] + ".jpg"])
    ),
    min_size=1,
    max_size=8,
    unique=True,
)


def hidden_name(relative: str) -> str | None:
    """The hidden name a key lies in (its first name starting with '.' or '_', with the folders above), or None."""
    parts = relative.split("/")
    at = next((i for i, part in enumerate(parts) if part.startswith((".", "_"))), None)
    return None if at is None else "/".join(parts[: at + 1])


def s3_expected(relative: str) -> tuple[bool, str | None]:
    """(visible, label) of a key below the input, from the README's rules: hidden when any name starts with '.'
    or '_'; the label is the nearest folder name, empty names ('//') being no folder, as on a disk."""
    parts = relative.split("/")
    if any(part.startswith((".", "_")) for part in parts):
        return False, None
    folders = [part for part in parts[:-1] if part]
    return True, folders[-1] if folders else None


def test_a_location_is_split_by_its_exact_characters():
    from fruits.storage import local_path, split_s3_uri, uri_scheme

    assert split_s3_uri("s3://bucket/results#2?x=1%41+ é\n/a") == ("s3", "bucket", "results#2?x=1%41+ é\n/a")
    assert split_s3_uri("S3A://bucket") == ("s3a", "bucket", "")
    assert local_path("file:///tmp/a%20b#c?d") == "/tmp/a%20b#c?d"
    assert local_path("file://localhost/x") == "/x" and local_path("file:/x#1") == "/x#1"
    assert uri_scheme("C:/images") == "" and uri_scheme("/a:b") == "" and uri_scheme("s3://b") == "s3"


def test_an_s3_output_means_exactly_the_prefix_it_names(moto_s3):
    from fruits.storage import open_store

    store = open_store(moto_s3.uri("results#2"))
    store.write_json("manifest.json", {"run": 1})
    keys = [item["Key"] for item in moto_s3.client.list_objects_v2(Bucket=moto_s3.bucket)["Contents"]]
    assert keys == ["results#2/manifest.json"] and store.uri_for() == f"s3://{moto_s3.bucket}/results#2"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=S3_KEYS, prefix=SEGMENTS.filter(bool))
def test_every_s3_key_shape_is_listed_read_and_stored_under_its_own_name(moto_s3, keys, prefix):
    from fruits.reading import _s3_reader, read_frames
    from fruits.storage import open_store

    client, bucket = moto_s3.client, moto_s3.bucket
    root = f"in {secrets.token_hex(3)} {prefix}"  # the input prefix itself holds such characters too
    for index, key in enumerate(keys):
        client.put_object(Bucket=bucket, Key=f"{root}/{key}", Body=f"{index}:{key}".encode())
    listing = list_input(f"s3://{bucket}/{root}", s3_client=client)
    expected = {f"s3://{bucket}/{root}/{key}": s3_expected(key) for key in keys}
    visible = {path: label for path, (shown, label) in expected.items() if shown}
    assert {entry.path for entry in listing.entries} == set(visible)
    for entry in listing.entries:
        assert (entry.label or None) == visible[entry.path]
        assert (entry.reason is None) == (visible[entry.path] is not None), entry
    assert listing.hidden == len(
        {hidden_name(key) for key in keys} - {None}
    )  # a hidden folder once, as on a disk
    paths = [entry.path for entry in listing.entries]
    if paths:  # each object read by its own key: never another object's bytes, never "vanished"
        frame = pd.DataFrame({"path": paths, "label": ["x"] * len(paths), "split": [None] * len(paths)})
        reader = _s3_reader(client)
        (read,) = read_frames([frame], 10_000, choose_reader=lambda _: (reader, 4))
        for path, content in zip(read["path"], read["content"], strict=True):
            key = path.removeprefix(f"s3://{bucket}/{root}/")
            assert content == f"{keys.index(key)}:{key}".encode(), path
    # The job's own store under such a prefix: writes, reads, lists and copies under exactly those names.
    store = open_store(f"s3://{bucket}/{root}/out#2?%41+")
    names = sorted({"/".join(part or "x" for part in key.split("/")) for key in keys})  # store keys: no '//'
    for name in names:
        store.write_bytes(name, name.encode())
        store.copy(name, name + ".copy")
    for name in names:
        assert store.read_bytes(name) == store.read_bytes(name + ".copy") == name.encode() and store.exists(
            name
        )
    assert store.list_keys() == sorted(name + copy for name in names for copy in ("", ".copy"))
    written = client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/out#2?%41+/")["Contents"]
    assert {item["Key"] for item in written} == {f"{root}/out#2?%41+/{key}" for key in store.list_keys()}


# Files an S3 tree can hold too: no links, nothing oversized (1 MB uploads), no newline (moto's server refuses it).
PORTABLE_PLANS = PLANS.map(
    lambda plans: [
        p for p in plans if p.kind in ("jpg", "png", "corrupt", "empty", "text") and "\n" not in p.relative
    ]
)


def placed(listing, base: str) -> dict[str, tuple]:
    return {e.path.removeprefix(base): (e.label, e.split, e.reason, e.size) for e in listing.entries}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=PORTABLE_PLANS)
def test_one_tree_is_listed_and_counted_alike_on_a_disk_and_on_s3(moto_s3, plans):
    root = Path(tempfile.mkdtemp(prefix="fruits-hypothesis-parity-"))
    try:
        build_tree(root, plans)
        prefix = f"tree-{secrets.token_hex(4)}"
        put_tree_on_s3(moto_s3, root, prefix)
        on_disk = list_input(str(root), max_file_mb=MAX_FILE_MB)
        on_s3 = list_input(moto_s3.uri(prefix), max_file_mb=MAX_FILE_MB, s3_client=moto_s3.client)
        assert placed(on_s3, f"s3://{moto_s3.bucket}/{prefix}/") == placed(on_disk, f"file:{root}/")
        assert on_s3.hidden == on_disk.hidden  # a hidden folder is one name, however many objects it holds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_s3_folder_markers_that_hold_data_are_rejected_and_empty_ones_are_folders(moto_s3):
    def put(key: str, body: bytes) -> None:
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=f"in/{key}", Body=body)

    put("Apple/", b"")  # the console's folder
    put("Apple/a.jpg", _image_bytes("JPEG", 1))
    put("Apple/full/", b"bytes under a folder's name")
    put("Kiwi_$folder$", b"")  # EMRFS's
    put("Pear_$folder$", b"12345")
    put("Pear//p2.jpg", _image_bytes("JPEG", 2))  # an empty folder name: placed as a disk places Pear/p2.jpg
    put("//loose.jpg", b"x")
    listing = list_input(moto_s3.uri("in"), s3_client=moto_s3.client)
    found = placed(listing, f"s3://{moto_s3.bucket}/in/")
    assert set(found) == {"Apple/a.jpg", "Apple/full/", "Pear_$folder$", "Pear//p2.jpg", "//loose.jpg"}
    assert (
        found["Apple/full/"][2] == "an S3 folder marker (a key ending in '/' or '_$folder$') holding 27 bytes"
    )
    assert found["Pear_$folder$"][2].startswith("an S3 folder marker") and found["Pear_$folder$"][3] == 5
    assert found["Pear//p2.jpg"][:3] == ("Pear", None, None)
    assert found["//loose.jpg"][2].startswith("not in a class folder")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_jobs_own_output_and_feature_store_inside_the_input_are_never_listed(where, tmp_path, request):
    """Only the names the job writes are skipped: a class folder beside them, or called 'runs', still counts."""
    images = _image_bytes("JPEG", 3)
    tree = {
        "Apple/a.jpg": images,
        "runs/r.jpg": images,  # a class folder named like the job's runs/ folder: its images are images
        "out/results.csv": b"path,label\n",
        "out/manifest.json": b"{}",
        "out/pca_scatter.png": images,
        "out/runs/20261125T134501Z-3f9a1c/results.csv": b"x",
        "out/runs/not-a-run/b.jpg": images,  # not a run id: not the job's
        "out/_commits/00000001.json": b"{}",
        f"out/feature_store/{model_key('mobilenet', 0.25, 32, 32, 'random-seed0')}/batch=x/part-0.parquet": b"x",
        "out/Lemon/c.jpg": images,  # the user's own folder inside the output folder
        f"store/{model_key('mobilenet_v2', 1.0, 224, 100, 'imagenet-0123')}/engines/litert.json": b"{}",
        "store/Kiwi/d.jpg": images,
    }
    if where == "local":
        for relative, data in tree.items():
            (tmp_path / "in" / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "in" / relative).write_bytes(data)
        root, base = str(tmp_path / "in"), f"file:{tmp_path}/in/"
        client = None
    else:
        moto_s3 = request.getfixturevalue("moto_s3")
        for relative, data in tree.items():
            moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=f"in/{relative}", Body=data)
        root, base, client = moto_s3.uri("in"), f"s3://{moto_s3.bucket}/in/", moto_s3.client
    listing = list_input(root, output=f"{root}/out", feature_store=f"{root}/store", s3_client=client)
    assert set(placed(listing, base)) == {
        "Apple/a.jpg", "runs/r.jpg", "out/runs/not-a-run/b.jpg", "out/Lemon/c.jpg", "store/Kiwi/d.jpg",
    }  # fmt: skip
    # results.csv, manifest.json, pca_scatter.png, runs/<run id>, feature_store/<model key>, store/<model key>
    assert listing.job_outputs == 6 and listing.hidden == 1  # _commits: hidden by its name


def test_every_model_key_the_job_makes_is_recognised_as_the_stores():
    from fruits import layout
    from fruits.models import ALPHAS, MODELS

    for model in MODELS:
        for alpha in ALPHAS.get(model, (1.0,)):
            for weights in ("random-seed0", "0123456789abcdef", "imagenet-0123456789abcdef", "imagenet"):
                key = layout.model_key(model, alpha, 224, 100, weights)
                assert layout.store_owned([key, "batch=x"]) == 1 and layout.output_owned(
                    ["feature_store", key]
                )
    assert not layout.store_owned(["Apple"]) and not layout.output_owned(["feature_store", "Apple"])


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_never_featurizes_its_own_outputs_inside_the_input(spark, tmp_path):
    for case, store in (("output", None), ("feature store", "features")):
        images = tmp_path / case / "in"
        for index in range(4):
            (images / ("Apple", "Kiwi")[index % 2]).mkdir(parents=True, exist_ok=True)
            (images / ("Apple", "Kiwi")[index % 2] / f"{index}.jpg").write_bytes(_image_bytes("JPEG", index))
        extra = ["--feature-store", str(images / store)] if store else []
        assert run_job(spark, images, images / "out", *extra) == 0
        first = accounted(images / "out")
        assert run_job(spark, images, images / "out", "--overwrite", *extra) == 0  # its plots, CSVs, Parquet
        results, rejected, manifest = accounted(images / "out")
        assert (results, rejected) == first[:2] and len(results) == 4 and not rejected, case
        assert manifest["counts"]["reused"] == 4 and manifest["skipped"]["job_outputs"] >= 6, case


# --- never commit a wrong result -----------------------------------------------------------------------


def overflowing_model(path: Path) -> Path:
    """A .keras backbone whose last feature is exp(100 x the sum of the image's mean colour): finite for dark
    images, infinite (float32 overflow) for bright ones; a real model through the job's real engines."""
    import keras

    inputs = keras.Input((32, 32, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)  # preprocessed colours in [-1, 1]
    grow = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(100.0))(mean)
    keras.Model(
        inputs, keras.layers.Concatenate()([mean, keras.layers.Activation("exponential")(grow)])
    ).save(path)
    return path


def solid_jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


@pytest.mark.spark
@pytest.mark.slow
def test_images_whose_features_are_not_finite_are_rejected_and_counts_stay_honest(spark, tmp_path):
    """Bright images overflow the model: rejected with the reason, never stored as features; neither they nor
    undecodable files count as newly featurized, in a first (one-pass) run and in a later (two-pass) one."""
    images, output = tmp_path / "in", tmp_path / "out"
    weights = ["--weights", str(overflowing_model(tmp_path / "overflow.keras"))]
    for i in range(4):
        solid_jpeg(images / "Dark" / f"d{i}.jpg", (20 + 20 * i, 10 * i, 30))
    solid_jpeg(images / "Bright" / "b0.jpg", (250, 250, 250))
    (images / "Dark" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert run_job(spark, images, output, *weights) == 0
    results, rejected, manifest = accounted(output)
    non_finite = "the model's features for this image are not finite (NaN or infinity)"
    assert rejected[f"file:{images}/Bright/b0.jpg"] == non_finite and len(results) == 4
    assert manifest["counts"]["newly_featurized"] == 4  # not 6: two images were read but not featurized
    solid_jpeg(images / "Dark" / "d9.jpg", (5, 60, 5))
    solid_jpeg(images / "Bright" / "b1.jpg", (240, 250, 250))
    (images / "Dark" / "broken2.jpg").write_bytes(b"\xff\xd8\xff still not a jpeg")
    assert run_job(spark, images, output, "--overwrite", *weights) == 0
    results, rejected, manifest = accounted(output)
    counts = manifest["counts"]
    assert (counts["featurized"], counts["rejected"], counts["reused"], counts["newly_featurized"]) == (
        5,
        4,
        4,
        1,
    )
    assert rejected[f"file:{images}/Bright/b1.jpg"] == non_finite
    assert all(
        all(math.isfinite(float(row[f"pc_{i}"])) for i in (1, 2)) for row in read_csv(output / "results.csv")
    )


@pytest.mark.spark
@pytest.mark.slow
def test_non_finite_statistics_fail_the_run_before_anything_is_committed(
    spark, tmp_path, monkeypatch, capsys
):
    """Whatever let a non-finite value into the sums (a stored batch from an older job, say), the fit refuses."""
    import fruits.summaries

    real = fruits.summaries.summarize

    def poisoned(rows, dim):  # type: ignore[no-untyped-def]
        sums = real(rows, dim)
        sums.total.total[0] = float("nan")
        return sums

    monkeypatch.setattr(fruits.summaries, "summarize", poisoned)
    images = tmp_path / "in"
    for i in range(3):
        solid_jpeg(images / "Dark" / f"d{i}.jpg", (20 + 30 * i, 10, 30))
    assert run_job(spark, images, tmp_path / "out") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the PCA's sum of the features (mean and covariance) is not finite" in last, last
    assert not (tmp_path / "out" / "_commits").exists() or not list((tmp_path / "out" / "_commits").iterdir())
    assert not (tmp_path / "out" / "results.csv").exists()


def test_s3_weights_replaced_under_the_same_uri_are_downloaded_again(moto_s3, tmp_path):
    """The cache is keyed by the object's version, asked of S3 on every run; unchanged weights are not fetched."""
    from fruits import models

    uri = f"s3://{moto_s3.bucket}/models/ours #2.h5"

    def publish(body: bytes) -> bytes:
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key="models/ours #2.h5", Body=body)
        return body

    first = publish(b"\x89HDF\r\n\x1a\n" + b"version one")
    one = models.resolve_weights(uri, cache_dir=str(tmp_path))
    assert Path(one.path).read_bytes() == first and one.sha256 == hashlib.sha256(first).hexdigest()
    assert models.resolve_weights(uri, cache_dir=str(tmp_path)).path == one.path  # the same version: kept
    second = publish(b"\x89HDF\r\n\x1a\n" + b"version two, replaced")
    two = models.resolve_weights(uri, cache_dir=str(tmp_path))
    assert Path(two.path).read_bytes() == second and two.sha256 == hashlib.sha256(second).hexdigest()
    moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key="models/ours #2.h5")
    with pytest.raises(models.WeightsError, match="weights not found: s3://"):
        models.resolve_weights(uri, cache_dir=str(tmp_path))


# --- honest messages -----------------------------------------------------------------------------------


def test_labels_a_spreadsheet_would_run_are_found_and_nothing_else():
    from fruits.writing import formula_like

    labels = ["=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\rx", "a=b", " =x", "Apple", "=SUM(A1)", "é+"]
    assert formula_like(labels) == ["\tx", "\rx", "+1", "-2", "=SUM(A1)", "@cmd"]


@pytest.mark.spark
@pytest.mark.slow
def test_formula_labels_stay_exact_in_the_csv_and_are_warned_about(spark, tmp_path, caplog):
    """Also a newline and a '#' in local names: every path and label comes back byte for byte."""
    images = tmp_path / "in"
    labels = ['=HYPERLINK("x","y")', "+Lemon", "-Kiwi", "@Pear", "Apple #2", "line\nbreak"]
    for index, label in enumerate(labels):
        (images / label).mkdir(parents=True)
        (images / label / f"{index} ?%41+.jpg").write_bytes(_image_bytes("JPEG", index))
    with caplog.at_level("WARNING", logger="fruits.job"):
        assert run_job(spark, images, tmp_path / "out") == 0
    results, _, manifest = accounted(tmp_path / "out")
    assert results == {f"file:{images}/{label}/{i} ?%41+.jpg": label for i, label in enumerate(labels)}
    assert manifest["labels_like_formulas"] == {"count": 4, "examples": sorted(labels[:4])}
    (warning,) = [r.getMessage() for r in caplog.records if "spreadsheet may run them" in r.getMessage()]
    assert warning.startswith("4 labels start with =, +, -, @") and "'@Pear'" in warning


@pytest.mark.spark
@pytest.mark.slow
def test_a_publication_that_fails_after_the_commit_exits_0_and_the_next_run_heals_the_root(
    spark, tmp_path, monkeypatch, caplog
):
    """A full disk while the top-level copies are made: the run IS committed (exit 0, a warning naming the cause
    and the run's folder), the root shows no run rather than a mix, and the next run writes the copies again."""
    from fruits import commits
    from fruits.storage import LocalStore

    images, output = tmp_path / "in", tmp_path / "out"
    for index in range(4):
        solid_jpeg(images / ("Dark", "Dim")[index % 2] / f"{index}.jpg", (20 + 30 * index, 10, 30))
    assert run_job(spark, images, output) == 0
    real_copy = LocalStore.copy

    def full_disk(self, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
        if dst == "rejected.csv":  # results.csv is already the new run's
            raise OSError(28, "No space left on device", self.uri_for(dst))
        real_copy(self, src, dst)

    monkeypatch.setattr(LocalStore, "copy", full_disk)
    caplog.clear()
    with caplog.at_level("INFO", logger="fruits"):
        assert run_job(spark, images, output, "--overwrite") == 0
    last = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][-1]  # the run's last word
    current = commits.latest_commit(LocalStore(output))
    assert current["number"] == 2 and f"run {current['run_id']} is committed (commit 2)" in last
    assert f"no space left on the device: {output}/rejected.csv" in last and "runs/" in last, last
    assert not [name for name in layout_names() if (output / name).exists()]  # no mix: no run at the root
    monkeypatch.setattr(LocalStore, "copy", real_copy)
    assert run_job(spark, images, output) == 2  # no --overwrite: refused, but the root is healed first
    run_folder = output / "runs" / current["run_id"]
    for name in layout_names():
        assert (output / name).read_bytes() == (run_folder / name).read_bytes(), name


def layout_names() -> tuple[str, ...]:
    from fruits.layout import PUBLISHED_NAMES

    return PUBLISHED_NAMES


# --- how a run ends: the last line names the cause -------------------------------------------------------


def last_line(log: Path) -> str:
    """The last line a terminal would show (the console progress bar redraws with carriage returns)."""
    return [
        line for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()
    ][-1]


@pytest.mark.slow
@pytest.mark.parametrize("master", [None, "local[2]"])  # a user's local run (early session), and a chosen one
def test_ctrl_c_exits_130_with_one_last_line_and_releases_the_output(tmp_path, master):
    """A real SIGINT to the job's whole process group, as a terminal's Ctrl-C sends it, while Spark works."""
    from tests.job_faults import add_images, job_args, start_job_process

    add_images(tmp_path / "in", 6)
    log = tmp_path / "job.log"
    with open(log, "wb") as handle:
        process = start_job_process(
            job_args(tmp_path / "in", tmp_path / "out"),
            handle,
            master=master,
            env={"FRUITS_FAULT": "stall-tasks"},
        )
        try:
            deadline = time.monotonic() + 300
            while b"featurize 6 images" not in log.read_bytes():  # the tasks are now stalled inside Spark
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(1)
            os.killpg(process.pid, signal.SIGINT)
            status = process.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text(errors="replace")
    assert status == 130 and last_line(log) == "featurize_pca: interrupted", text[-3000:]
    assert "Traceback" not in text and "Py4J" not in text, text[-3000:]
    assert not (tmp_path / "out" / "_lease.json").exists() and not (tmp_path / "out" / "_commits").exists()


@pytest.fixture
def tiny_disk(tmp_path):  # type: ignore[no-untyped-def]
    """A 64 KB tmpfs: a real full disk (root only), too small for a feature store batch."""
    folder = tmp_path / "tiny disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=False)
    if mounted.returncode != 0:
        pytest.skip("this machine does not let root mount a tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_the_last_line_with_the_path(tmp_path, tiny_disk):
    from tests.job_faults import add_images, job_args, run_job_process

    add_images(tmp_path / "in", 40)
    log = tmp_path / "job.log"
    status = run_job_process(job_args(tmp_path / "in", tiny_disk / "out"), log)
    line = last_line(log)
    assert status == 1 and line.startswith("featurize_pca: error: no space left on the device: "), line
    assert str(tiny_disk / "out") in line, line
    assert not (tiny_disk / "out" / "_commits").exists()


def test_a_full_disk_is_found_in_python_and_spark_errors_with_the_path_they_name():
    from fruits.failures import no_space

    class Py4JLike(Exception):  # what str() of a Py4JJavaError holds: the Java trace, causes included
        pass

    spark_write = Py4JLike(
        "An error occurred while calling o169.parquet.\n: org.apache.spark.SparkException: Job aborted.\n"
        "Caused by: org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to "
        "file:/data/my out/feature_store/k/batch=1.\n\tat org.apache.spark.sql.X(X.scala:1)\n"
        "Caused by: java.io.IOException: No space left on device\n"
    )
    assert no_space(spark_write) == "no space left on the device: file:/data/my out/feature_store/k/batch=1"
    opened = Py4JLike("java.io.FileNotFoundException: /tmp/blockmgr-1/0e/shuffle_0 (No space left on device)")
    assert no_space(opened) == "no space left on the device: /tmp/blockmgr-1/0e/shuffle_0"
    assert no_space(Py4JLike("java.io.IOException: No space left on device"), ["/o", "/o/fs", "/o"]) == (
        "no space left on the device (while writing under /o or /o/fs)"
    )
    try:
        try:
            raise OSError(28, "No space left on device", "/src", None, "/dst/.~tmp-x")
        except OSError as error:
            raise RuntimeError("copy failed") from error
    except RuntimeError as wrapped:
        assert no_space(wrapped) == "no space left on the device: /dst/.~tmp-x"
    assert no_space(OSError(13, "Permission denied", "/x")) is None and no_space(ValueError("x")) is None


def test_a_local_write_that_fails_names_the_file_meant_and_leaves_no_temp_file(tmp_path, tiny_disk):
    from fruits.storage import LocalStore

    store = LocalStore(tiny_disk)
    with pytest.raises(OSError) as raised:
        store.write_bytes("big file.bin", b"x" * 200_000)
    assert raised.value.errno == 28 and raised.value.filename == str(tiny_disk / "big file.bin")
    assert sorted(os.listdir(tiny_disk)) == []


# --- S3 key shapes through Spark's own file system -------------------------------------------------------


@pytest.mark.slow
def test_spark_writes_and_reads_back_an_s3_output_under_exactly_the_prefix_named(
    moto_s3, tmp_path, monkeypatch
):
    """The issue's --output s3://bucket/results#2, and more: the job's Parquet, CSVs, pipeline and feature store
    go through Spark (S3A), its lease, commits and copies through boto3; a second run reads the store back."""
    from tests.job_faults import FAST, run_job_process

    home = s3a_spark_home(monkeypatch)
    prefix = "results#2 ?%41+&=é\tx"  # what a URL parser would cut or decode, and a tab
    keys = [
        "in/Kiwi #1/a?.jpg",
        "in/Kiwi #1/b%41.jpg",
        "in/Pear+/c d.jpg",
        "in/Pear+/é#.jpg",
        "in/Pear//e.jpg",
    ]
    for index, key in enumerate(keys):
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=key, Body=_image_bytes("JPEG", index))
    output = f"s3://{moto_s3.bucket}/{prefix}"
    args = ["--input", f"s3://{moto_s3.bucket}/in", "--output", output, *FAST]
    env = s3a_env(moto_s3, home)
    for run, extra in enumerate(([], ["--overwrite"])):
        log = tmp_path / f"run{run}.log"
        assert run_job_process([*args, *extra], log, master=None, env=env) == 0, log.read_text()[-3000:]
    written = [
        item["Key"]
        for page in moto_s3.client.get_paginator("list_objects_v2").paginate(Bucket=moto_s3.bucket)
        for item in page.get("Contents", [])
        if not item["Key"].startswith("in/")
    ]
    assert written and all(key.startswith(prefix + "/") for key in written), written  # never results/ etc.
    names = {key[len(prefix) + 1 :].split("/")[0] for key in written}
    assert {"results.csv", "manifest.json", "_commits", "runs", "feature_store"} <= names, names
    body = moto_s3.client.get_object(Bucket=moto_s3.bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    manifest = json.loads(body)
    assert manifest["counts"]["found"] == manifest["counts"]["featurized"] == 5
    assert (
        manifest["counts"]["reused"] == 5 and manifest["counts"]["newly_featurized"] == 0
    )  # read back by Spark
    results = moto_s3.client.get_object(Bucket=moto_s3.bucket, Key=f"{prefix}/results.csv")["Body"].read()
    rows = list(csv.DictReader(io.StringIO(results.decode("utf-8"))))
    assert {row["path"]: row["label"] for row in rows} == {
        f"s3://{moto_s3.bucket}/{key}": ("Pear" if "//" in key else key.split("/")[1]) for key in keys
    }


@pytest.mark.slow
def test_every_s3_prefix_shape_is_written_and_read_back_by_spark_under_its_own_name(
    moto_s3, tmp_path, monkeypatch
):
    """Hypothesis, in a process whose Spark has S3A (tests/spark_s3_shapes.py): the feature store's Parquet and
    results.csv, written and read through Spark and the job's store, land under exactly the prefix generated."""
    home = s3a_spark_home(monkeypatch)
    script = Path(__file__).parent / "spark_s3_shapes.py"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1] / "jobs"), str(Path(__file__).parents[1])]
        ),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_HOME": str(home),
        "PYSPARK_SUBMIT_ARGS": s3a_submit_args(moto_s3.endpoint_url),
    }
    done = subprocess.run(
        [sys.executable, str(script), moto_s3.bucket],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_a_publication_refused_before_anything_changed_leaves_the_older_run_whole(tmp_path, monkeypatch):
    """The root's manifest.json cannot even be removed (a refused write): nothing was replaced, nothing is
    removed, and the warning says which run the root still shows."""
    from fruits import commits
    from fruits.job import publish_copies
    from fruits.layout import PUBLISHED_NAMES
    from fruits.storage import LocalStore

    store = LocalStore(tmp_path / "out")
    old, new = "20261125T130000Z-aaaaaa", "20261125T140000Z-bbbbbb"
    for run_id in (old, new):
        for name in PUBLISHED_NAMES:
            data = {"run_id": run_id} if name == "manifest.json" else {"name": name, "run": run_id}
            store.write_json(f"runs/{run_id}/{name}", data)
        commits.commit_run(store, run_id)
        if run_id == old:
            commits.publish_latest(store, old)

    def refused(self, key: str) -> None:  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", self.uri_for(key))

    monkeypatch.setattr(LocalStore, "delete", refused)
    message = publish_copies(store, new, "commit 2")
    assert message and f"run {new} is committed (commit 2)" in message
    assert f"the output's root still shows run {old}, whole" in message and "Permission denied" in message
    assert all(store.read_bytes(name) == store.read_bytes(f"runs/{old}/{name}") for name in PUBLISHED_NAMES)


@pytest.mark.slow
def test_one_tree_gives_the_same_manifest_counts_on_a_disk_and_on_s3(moto_s3, tmp_path):
    """The job itself, once over a folder and once over the same tree as S3 objects (with the console's empty
    folder markers): found, featurized, rejected and the hidden names counted alike."""
    from tests.job_faults import job_args, run_job_process

    tree = tmp_path / "tree"
    files = {
        "Apple/a.jpg": _image_bytes("JPEG", 1),
        "Apple/b.png": _image_bytes("PNG", 2),
        "Kiwi/c.jpg": _image_bytes("JPEG", 3),
        "Kiwi/notes.txt": b"text",
        "Kiwi/.DS_Store": b"x",
        "_scratch/Apple/d.jpg": _image_bytes("JPEG", 4),  # one hidden folder of three objects: one name
        "_scratch/Apple/e.jpg": _image_bytes("JPEG", 5),
        "_scratch/f.jpg": _image_bytes("JPEG", 6),
        "Pear/.cache/g.jpg": _image_bytes("JPEG", 7),
        "Pear/h.jpg": b"\xff\xd8\xff broken",
    }
    for relative, data in files.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(data)
    put_tree_on_s3(moto_s3, tree, "tree")
    manifests = []
    for where, root in (("disk", str(tree)), ("s3", moto_s3.uri("tree"))):
        log = tmp_path / f"{where}.log"
        assert run_job_process(job_args(root, tmp_path / f"out-{where}"), log) == 0, log.read_text()[-3000:]
        manifests.append(json.loads((tmp_path / f"out-{where}" / "manifest.json").read_text()))
    on_disk, on_s3 = manifests
    assert on_disk["counts"] == on_s3["counts"] and on_disk["counts"]["found"] == 5
    assert on_disk["skipped"]["hidden"] == on_s3["skipped"]["hidden"] == 3
