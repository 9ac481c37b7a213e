"""Listing the input without reading it: what is an image, what is rejected and why, on a disk and on S3."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fruits.listing import InputError, list_input, place
from tests.conftest import as_unprivileged


def put_local(root: Path):
    def put(key: str, data: bytes) -> Path:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return put


def make_tree(put) -> None:
    put("Apple/a.jpg", b"x" * 10)
    put("Apple/B.JPEG", b"x")
    put("Apple/empty.png", b"")
    put("Apple/notes.txt", b"text")
    put("Lemon Meyer/c.jpg", b"y")
    put("Lemon Meyer/.DS_Store", b"hidden")
    put("_temporary/0/part.jpg", b"hidden folder")
    put("loose.jpg", b"z")


def reasons(listing) -> dict[str, str | None]:
    return {entry.path.rsplit("/", 1)[-1]: entry.reason for entry in listing.entries}


def test_local_listing_judges_every_visible_file_and_counts_hidden_ones(tmp_path):
    make_tree(put_local(tmp_path / "in"))
    listing = list_input(str(tmp_path / "in"))
    found = reasons(listing)
    assert set(found) == {"a.jpg", "B.JPEG", "empty.png", "notes.txt", "c.jpg", "loose.jpg"}
    assert found["a.jpg"] is None and found["B.JPEG"] is None and found["c.jpg"] is None
    assert found["empty.png"] == "empty file (0 bytes)"
    assert found["notes.txt"].startswith("unsupported file type")
    assert found["loose.jpg"].startswith("not in a class folder")
    assert listing.hidden == 2
    (lemon,) = [e for e in listing.entries if e.path.endswith("c.jpg")]
    assert (
        lemon.path == f"file:{tmp_path}/in/Lemon Meyer/c.jpg"
        and lemon.label == "Lemon Meyer"
        and lemon.size == 1
    )


def test_s3_listing_pages_through_the_prefix_and_skips_folder_markers(moto_s3):
    def put(key: str, data: bytes) -> None:
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=f"images/{key}", Body=data)

    make_tree(put)
    put("Apple/", b"")  # a console "folder"
    put("Kiwi_$folder$", b"")  # an EMRFS folder marker
    moto_s3.client.put_object(
        Bucket=moto_s3.bucket, Key="images-other/x.jpg", Body=b"z"
    )  # not under the prefix
    listing = list_input(moto_s3.uri("images"), s3_client=moto_s3.client)
    found = reasons(listing)
    assert set(found) == {"a.jpg", "B.JPEG", "empty.png", "notes.txt", "c.jpg", "loose.jpg"}
    assert found["empty.png"] == "empty file (0 bytes)" and found["loose.jpg"].startswith(
        "not in a class folder"
    )
    (apple,) = [e for e in listing.entries if e.path.endswith("/a.jpg")]
    assert apple.path == f"s3://{moto_s3.bucket}/images/Apple/a.jpg" and apple.version  # the ETag


def test_missing_file_and_unsupported_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        list_input(str(tmp_path / "nope"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        list_input(str(tmp_path / "file.jpg"))
    with pytest.raises(InputError, match="unsupported input"):
        list_input("hdfs://namenode/images")
    (tmp_path / "only-hidden").mkdir()
    (tmp_path / "only-hidden" / ".keep").write_text("")
    assert list_input(str(tmp_path / "only-hidden")).entries == []


@pytest.mark.parametrize(
    ("parts", "root_split", "expected"),
    [
        (["Apple Braeburn", "r_1_100.jpg"], None, ("Apple Braeburn", None, None)),
        (["Training", "Apple", "a.jpg"], None, ("Apple", "Training", None)),
        (["test", "Lemon", "a.jpg"], None, ("Lemon", "Test", None)),
        (["Training", "Test", "Apple", "a.jpg"], None, ("Apple", "Training", None)),  # the top folder decides
        (["Validation", "Kiwi", "a.png"], None, ("Kiwi", None, None)),
        (["Apple", "a.jpg"], "Training", ("Apple", "Training", None)),  # the input is .../Training itself
    ],
)
def test_label_is_the_parent_folder_and_split_the_top_folder(parts, root_split, expected):
    assert place(parts, root_split) == expected


@pytest.mark.parametrize("parts", [["a.jpg"], ["Training", "a.jpg"], ["TEST", "b.png"]])
def test_files_outside_a_class_folder_are_rejected(parts):
    label, _, reason = place(parts)
    assert label == "" and reason.startswith("not in a class folder")


def test_names_hadoop_or_glob_would_misread_are_listed_exactly(tmp_path):
    put = put_local(tmp_path / "in")
    for name in ("set[1]/a.jpg", "set1/a.jpg", "notes 10:30/b.jpg", "star*{x,y}/c.jpg", " padded /d.jpg "):
        put(name, b"jpeg")
    listing = list_input(str(tmp_path / "in"))
    assert {e.path.removeprefix(f"file:{tmp_path}/in/") for e in listing.entries} == {
        "set[1]/a.jpg", "set1/a.jpg", "notes 10:30/b.jpg", "star*{x,y}/c.jpg", " padded /d.jpg ",
    }  # fmt: skip
    (padded,) = [e for e in listing.entries if e.label == " padded "]
    assert padded.reason == "unsupported file type (not .jpg, .jpeg or .png)"  # "d.jpg " ends in a space


def test_oversized_files_are_rejected_from_their_size_without_reading(tmp_path):
    put = put_local(tmp_path / "in")
    big = put("Apple/big.jpg", b"")
    with open(big, "wb") as handle:  # sparse: 2 MB of nothing on disk
        handle.truncate(2 * 1024 * 1024 + 1)
    big.chmod(0)  # unreadable too: only its size may be looked at
    listing = list_input(str(tmp_path / "in"), max_file_mb=2)
    (entry,) = listing.entries
    assert entry.reason.startswith("too large: 2.1 MB exceeds the limit of 2.1 MB per file")


def test_links_special_files_and_unreadable_folders_are_rejected_not_fatal(shared_tmp):
    tmp_path = shared_tmp
    put = put_local(tmp_path / "in")
    target = put("Apple/a.jpg", b"jpeg")
    os.symlink(target, tmp_path / "in" / "Apple" / "link.jpg")
    os.symlink(tmp_path / "in" / "Apple" / "gone.jpg", tmp_path / "in" / "Apple" / "broken.jpg")
    os.symlink(tmp_path / "in", tmp_path / "in" / "Apple" / "loop")
    os.mkfifo(tmp_path / "in" / "Apple" / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "in" / "Apple" / "sock.png"))
    locked = tmp_path / "in" / "Locked"
    locked.mkdir()
    (locked / "x.jpg").write_bytes(b"x")
    locked.chmod(0)
    listing = as_unprivileged(list_input, str(tmp_path / "in"))  # root could read the locked folder
    found = reasons(listing)
    assert found["a.jpg"] is None and found["link.jpg"] is None
    assert found["broken.jpg"] == "broken symbolic link"
    assert found["pipe.jpg"].startswith("not a regular file") and found["sock.png"].startswith(
        "not a regular file"
    )
    by_path = {entry.path: entry.reason for entry in listing.entries}
    assert by_path[f"file:{locked}/"].startswith("folder could not be listed: Permission denied")
    assert by_path[f"file:{tmp_path}/in/Apple/loop/"].startswith("folder already listed")
    assert len(listing.entries) == 7  # a, link, broken, pipe, sock, loop, Locked: every one accounted for
