"""Every file accounted for, every failure one line: hostile names, odd layouts, bad files, a file that vanishes.

The listing's rules are checked against an oracle written from the README's rules (not from the code) over
trees that Hypothesis generates: any printable unicode in names, spaces, colons and brackets, nesting, empty,
corrupt, oversized and non-image files, symbolic links (broken too). The whole job then runs on a few such trees
and on the specific cases that used to abort a run or lose a file; its two CSVs must name every file found, each
once, byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fruits.job import main
from fruits.listing import list_input
from tests.conftest import FAST_MODEL

KINDS = ("jpg", "png", "corrupt", "empty", "text", "oversized", "broken_link", "link")
MAX_FILE_MB = 1
SPLIT_NAMES = ("training", "test")


def _image_bytes(fmt: str, seed: int) -> bytes:
    image = Image.new("RGB", (12, 12), ((seed * 37) % 256, (seed * 91) % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


NAME_CHARACTERS = st.characters(
    codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="/\\"
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
    args = ["--input", str(root), "--output", str(output), *FAST_MODEL, "--k", "2"]
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
