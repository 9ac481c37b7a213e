"""The store behaves the same on a local folder and on S3 (moto server): every test runs on both."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fruits.storage import LocalStore, NotFound, S3Store, Store, open_store


@pytest.fixture
def store(store_uri: str) -> Store:
    return open_store(store_uri)


def race(n: int, action) -> list:
    """Run ``action(i)`` in ``n`` threads released together; the results in thread order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_open_store_picks_the_backend(tmp_path: Path, moto_s3) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    local = open_store(f"file://{tmp_path}/out")
    assert isinstance(local, LocalStore)
    assert local.uri_for("a/b.csv") == str(tmp_path / "out" / "a" / "b.csv")
    s3 = open_store(f"s3://{moto_s3.bucket}/some/prefix/")
    assert isinstance(s3, S3Store)
    assert s3.root == f"s3://{moto_s3.bucket}/some/prefix"
    assert s3.uri_for("runs/x/results.csv") == f"s3://{moto_s3.bucket}/some/prefix/runs/x/results.csv"
    assert open_store(f"s3://{moto_s3.bucket}").uri_for("k") == f"s3://{moto_s3.bucket}/k"
    with pytest.raises(ValueError, match="unsupported"):
        open_store("gs://bucket/x")


def test_write_read_roundtrip(store: Store) -> None:
    store.write_bytes("runs/a/results.csv", b"path,label\n")
    store.write_json("runs/a/manifest.json", {"found": 3, "rejected": 0})
    assert store.read_bytes("runs/a/results.csv") == b"path,label\n"
    assert store.read_json("runs/a/manifest.json") == {"found": 3, "rejected": 0}
    assert store.exists("runs/a/results.csv")
    assert not store.exists("runs/a/missing.csv")
    assert not store.exists("runs/a")  # a folder is not an object
    with pytest.raises(NotFound, match=r"missing\.csv"):
        store.read_bytes("runs/a/missing.csv")


def test_uri_for_points_at_what_was_written(store: Store, store_uri: str) -> None:
    store.write_bytes("runs/a/x.bin", b"1")
    assert store.uri_for("runs/a/x.bin") == f"{store_uri}/runs/a/x.bin"
    assert store.uri_for() == store_uri
    assert store.uri_for("runs/a/") == f"{store_uri}/runs/a/"
    if isinstance(store, LocalStore):
        assert Path(store.uri_for("runs/a/x.bin")).read_bytes() == b"1"


def test_listing_is_sorted_recursive_and_by_string_prefix(store: Store) -> None:
    for key in ["runs/b/x.csv", "runs/a/deep/er/y.parquet", "runs/a/z.json", "runsheet.txt", "top.csv"]:
        store.write_bytes(key, b"x")
    assert store.list_keys("runs/") == ["runs/a/deep/er/y.parquet", "runs/a/z.json", "runs/b/x.csv"]
    # A string prefix, as on S3: "runs" also matches "runsheet.txt".
    assert store.list_keys("runs") == [
        "runs/a/deep/er/y.parquet",
        "runs/a/z.json",
        "runs/b/x.csv",
        "runsheet.txt",
    ]
    assert store.list_keys("runs/a/d") == ["runs/a/deep/er/y.parquet"]
    assert store.list_keys("nothing/") == []
    assert len(store.list_keys()) == 5
    assert store.list_dirs("runs/") == ["a", "b"]
    assert store.list_dirs("runs") == ["a", "b"]
    assert store.list_dirs("runs/a") == ["deep"]
    assert store.list_dirs() == ["runs"]
    assert store.list_dirs("nothing") == []


def test_write_bytes_replaces_the_whole_object(store: Store) -> None:
    store.write_bytes("results.csv", b"a much longer first version\n" * 10)
    store.write_bytes("results.csv", b"short\n")
    assert store.read_bytes("results.csv") == b"short\n"
    assert store.list_keys() == ["results.csv"]  # no temporary files left behind or listed


def test_local_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    # Two large, different versions written over each other while a reader loops: every read must be one of
    # them exactly. A plain open(path, "wb").write() fails this (the reader sees truncated files).
    store = open_store(str(tmp_path))
    versions = [bytes([65 + i]) * 3_000_000 for i in range(2)]
    store.write_bytes("results.csv", versions[0])
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = store.read_bytes("results.csv")
            if data not in versions:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            store.write_bytes("results.csv", versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert bad == []


def test_put_if_absent_creates_once(store: Store) -> None:
    assert store.put_if_absent("_commits/00000001.json", b"first") is not None
    assert store.put_if_absent("_commits/00000001.json", b"second") is None
    assert store.read_bytes("_commits/00000001.json") == b"first"


def test_put_if_absent_race_has_exactly_one_winner(store: Store) -> None:
    # moto checks If-None-Match and then writes without a lock; in practice (300 trials of 8 threads, see the
    # report) that window never opened, and real S3 makes the check atomic.
    for trial in range(5):
        key = f"_commits/{trial:08d}.json"
        won = race(8, lambda i, key=key: store.put_if_absent(key, f"writer {i}".encode()) is not None)
        assert won.count(True) == 1, won
        assert store.read_bytes(key) == f"writer {won.index(True)}".encode()


def test_put_if_match_follows_the_etag(store: Store) -> None:
    assert store.read_versioned("_lease.json") is None
    assert store.put_if_match("_lease.json", b"x", "no-such-etag") is None
    assert not store.exists("_lease.json")  # IfMatch never creates
    store.write_bytes("_lease.json", b"v1")
    data, etag = store.read_versioned("_lease.json")
    assert data == b"v1"
    assert store.put_if_match("_lease.json", b"v2", etag) is not None
    assert store.read_bytes("_lease.json") == b"v2"
    assert store.put_if_match("_lease.json", b"v3", etag) is None  # stale etag
    assert store.read_bytes("_lease.json") == b"v2"


def test_put_returns_the_etag_that_read_versioned_sees(store: Store) -> None:
    etag = store.put_if_absent("k.json", b"one")
    assert etag is not None
    assert store.read_versioned("k.json") == (b"one", etag)
    new_etag = store.put_if_match("k.json", b"two", etag)
    assert new_etag is not None and new_etag != etag
    assert store.read_versioned("k.json") == (b"two", new_etag)


def test_put_if_match_race_has_exactly_one_winner(store: Store) -> None:
    store.write_bytes("_lease.json", b"stale")
    _, etag = store.read_versioned("_lease.json")
    won = race(6, lambda i: store.put_if_match("_lease.json", f"taker {i}".encode(), etag) is not None)
    assert won.count(True) == 1, won
    assert store.read_bytes("_lease.json") == f"taker {won.index(True)}".encode()


def test_delete_if_match(store: Store) -> None:
    store.write_bytes("_lease.json", b"mine")
    _, mine = store.read_versioned("_lease.json")
    store.write_bytes("_lease.json", b"theirs")
    assert not store.delete_if_match("_lease.json", mine)
    assert store.read_bytes("_lease.json") == b"theirs"
    _, theirs = store.read_versioned("_lease.json")
    assert store.delete_if_match("_lease.json", theirs)
    assert not store.exists("_lease.json")
    assert not store.delete_if_match("_lease.json", theirs)


def test_download_and_copy(store: Store, tmp_path: Path) -> None:
    store.write_bytes("runs/a/pca_scatter.png", b"\x89PNG fake")
    store.copy("runs/a/pca_scatter.png", "pca_scatter.png")
    dst = tmp_path / "down" / "plot.png"
    store.download_file("pca_scatter.png", dst)
    assert dst.read_bytes() == b"\x89PNG fake"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["plot.png"]  # no temp file left
    with pytest.raises(NotFound):
        store.copy("runs/a/nothing.csv", "nothing.csv")
    with pytest.raises(NotFound):
        store.download_file("nothing.csv", tmp_path / "n.csv")
    assert not (tmp_path / "n.csv").exists()


def test_delete_and_delete_prefix(store: Store) -> None:
    for key in ["runs/a/1", "runs/a/sub/2", "runs/ab/3", "runs/b/4", "keep.csv"]:
        store.write_bytes(key, b"x")
    store.delete("keep-missing.csv")  # deleting nothing is fine
    assert store.delete_prefix("runs/a/") == 2
    assert store.list_keys() == ["keep.csv", "runs/ab/3", "runs/b/4"]
    assert store.list_dirs("runs") == ["ab", "b"]
    store.delete("keep.csv")
    assert store.list_keys() == ["runs/ab/3", "runs/b/4"]
    with pytest.raises(ValueError, match="whole root"):
        store.delete_prefix("")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "../up", "a\\b", "./a"])
def test_bad_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="invalid store key"):
        store.write_bytes(key, b"x")


def test_s3_objects_get_a_content_type(moto_s3) -> None:
    store = open_store(moto_s3.uri("out"))
    store.write_bytes("results.csv", b"a,b\n")
    store.put_if_absent("_commits/00000001.json", b"{}")
    head = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key="out/results.csv")
    assert head["ContentType"] == "text/csv"
    head = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key="out/_commits/00000001.json")
    assert head["ContentType"] == "application/json"
    store.copy("results.csv", "published/results.csv")  # a server-side copy keeps the source's type
    head = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key="out/published/results.csv")
    assert head["ContentType"] == "text/csv"


def test_moto_enforces_conditional_requests(moto_s3) -> None:
    # The protocol is only as good as the server's checks: prove moto (server mode) rejects with 412 rather
    # than silently overwriting, so the tests above test something.
    from botocore.exceptions import ClientError

    client, bucket = moto_s3.client, moto_s3.bucket
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as info:
        client.delete_object(Bucket=bucket, Key="k", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"
