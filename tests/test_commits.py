"""Publishing runs through numbered, create-only commit objects, on a local folder and on S3 (moto)."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fruits import layout
from fruits.commits import (
    CommitConflict,
    commit_key,
    commit_run,
    latest_commit,
    list_commits,
    new_run_id,
    prune_runs,
    publish_latest,
    read_run_manifest,
)
from fruits.storage import NotFound, Store, open_store

T0 = datetime(2026, 11, 25, 13, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(store_uri: str) -> Store:
    return open_store(store_uri)


def run_at(minutes: int) -> str:
    return new_run_id(T0 + timedelta(minutes=minutes))


def write_run(store: Store, run_id: str, results: bytes = b"path,label\n", **extra: bytes) -> None:
    """What a finished run leaves under runs/<id>/ before it commits."""
    base = f"runs/{run_id}/"
    store.write_bytes(base + "features/part-0000.parquet", b"PAR1")
    store.write_bytes(base + "results.csv", results)
    store.write_json(base + "manifest.json", {"run_id": run_id, "found": 2})
    for name, data in extra.items():
        store.write_bytes(base + name, data)


def test_run_ids_sort_by_time_and_are_unique() -> None:
    first = new_run_id(T0)
    assert re.fullmatch(r"20261125T130000Z-[0-9a-f]{6}", first)
    assert new_run_id(T0 + timedelta(seconds=1)) > first
    assert len({new_run_id(T0) for _ in range(200)}) == 200
    # Another time zone is converted, not mislabelled.
    assert new_run_id(datetime(2026, 11, 25, 14, 0, tzinfo=timezone(timedelta(hours=1)))).startswith(
        "20261125T130000Z-"
    )
    with pytest.raises(ValueError, match="timezone"):
        new_run_id(datetime(2026, 11, 25))


def test_commits_are_numbered_and_latest_is_highest(store: Store) -> None:
    assert latest_commit(store) is None
    first, second = run_at(0), run_at(1)
    write_run(store, first)
    write_run(store, second)
    c1 = commit_run(store, first, {"counts": {"found": 2}, "feature_batches": ["b1"]}, now=T0)
    assert c1 == {
        "number": 1,
        "run_id": first,
        "run_prefix": f"runs/{first}/",
        "committed_at": "2026-11-25T13:00:00+00:00",
        "counts": {"found": 2},
        "feature_batches": ["b1"],
    }
    assert store.read_json("_commits/00000001.json") == c1
    c2 = commit_run(store, second, {"counts": {"found": 3}})
    assert c2["number"] == 2
    assert latest_commit(store) == c2
    assert [c["run_id"] for c in list_commits(store)] == [first, second]
    # The highest number wins, not the newest run id or the last listed: a gap is fine, stray files ignored.
    store.write_json(commit_key(10), {"number": 10, "run_id": first, "run_prefix": f"runs/{first}/"})
    store.write_bytes("_commits/README.txt", b"not a commit")
    assert latest_commit(store)["number"] == 10
    assert commit_run(store, second)["number"] == 11


class RivalCommitsFirst:
    """A store on which another writer commits just before our commit object is created."""

    def __init__(self, inner: Store, rival_run: str) -> None:
        self.inner = inner
        self.rival_run = rival_run

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        if key.startswith("_commits/"):
            commit_run(self.inner, self.rival_run)
        return self.inner.put_if_absent(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_commit_conflict_names_the_winner_and_takes_no_other_number(store: Store) -> None:
    ours, rival = run_at(0), run_at(1)
    write_run(store, ours)
    write_run(store, rival)
    with pytest.raises(
        CommitConflict, match=rf"commit 00000001 .* run {rival} .* run {ours} was not published"
    ):
        commit_run(RivalCommitsFirst(store, rival), ours)  # type: ignore[arg-type]
    assert [c["run_id"] for c in list_commits(store)] == [rival]


def test_concurrent_commits_never_share_or_lose_a_number(store: Store) -> None:
    runs = [run_at(i) for i in range(4)]
    for run_id in runs:
        write_run(store, run_id)
    outcomes: dict[str, Any] = {}
    barrier = threading.Barrier(len(runs))

    def commit(run_id: str) -> None:
        barrier.wait()
        try:
            outcomes[run_id] = commit_run(store, run_id)["number"]
        except CommitConflict as exc:
            outcomes[run_id] = exc

    threads = [threading.Thread(target=commit, args=(r,)) for r in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    committed = {c["run_id"]: c["number"] for c in list_commits(store)}
    won = {run_id: n for run_id, n in outcomes.items() if isinstance(n, int)}
    assert won == committed  # whoever was told "committed" is in the history, under that number
    assert len(set(committed.values())) == len(committed)
    assert all(isinstance(outcomes[r], CommitConflict) for r in runs if r not in committed)


def test_committing_the_same_run_again_is_a_no_op(store: Store) -> None:
    run_id = run_at(0)
    write_run(store, run_id)
    first = commit_run(store, run_id)
    assert commit_run(store, run_id) == first
    assert len(list_commits(store)) == 1


def test_commit_refuses_empty_runs_and_reserved_fields(store: Store) -> None:
    run_id = run_at(0)
    with pytest.raises(ValueError, match="nothing was written"):
        commit_run(store, run_id)
    write_run(store, run_id)
    with pytest.raises(ValueError, match="number"):
        commit_run(store, run_id, {"number": 7})
    with pytest.raises(ValueError, match="not a run id"):
        commit_run(store, "../escape")
    assert list_commits(store) == []


def test_publish_latest_replaces_results_whole(store: Store) -> None:
    names = ["results.csv", "manifest.json"]
    old, new = run_at(0), run_at(1)
    write_run(store, old, results=b"path,label\n" + b"old/apple.jpg,Apple\n" * 500)
    commit_run(store, old)
    publish_latest(store, old, names)
    assert store.read_bytes("results.csv").count(b"old/") == 500
    write_run(store, new, results=b"path,label\nnew/kiwi.jpg,Kiwi\n")
    commit_run(store, new)
    assert publish_latest(store, new, names) == names
    # Exactly the new run's file: nothing of the longer old one survives.
    assert store.read_bytes("results.csv") == b"path,label\nnew/kiwi.jpg,Kiwi\n"
    assert store.read_json("manifest.json")["run_id"] == new
    # The old run is no longer current: publishing it would put old results over new ones.
    with pytest.raises(ValueError, match="not the current commit"):
        publish_latest(store, old, names)
    assert store.read_json("manifest.json")["run_id"] == new


def test_publish_latest_copies_nothing_if_a_file_is_missing(store: Store) -> None:
    run_id = run_at(0)
    write_run(store, run_id)
    commit_run(store, run_id)
    with pytest.raises(NotFound, match=r"rejected\.csv"):
        publish_latest(store, run_id, ["results.csv", "rejected.csv"])
    assert not store.exists("results.csv")


def test_publish_refuses_an_uncommitted_run(store: Store) -> None:
    run_id = run_at(0)
    write_run(store, run_id)
    with pytest.raises(ValueError, match="nothing is"):
        publish_latest(store, run_id, ["results.csv"])


def test_prune_keeps_current_kept_and_newer_than_latest_runs(store: Store) -> None:
    committed = [run_at(i) for i in (0, 10, 20, 30)]
    failed = run_at(15)  # died before committing, between two published runs
    running = run_at(40)  # newer than the latest commit: may still be writing
    for run_id in [*committed, failed, running]:
        write_run(store, run_id)
    store.write_bytes("runs/not-a-run/keep.txt", b"x")
    for run_id in committed:
        commit_run(store, run_id)

    deleted = prune_runs(store, keep=2)

    assert sorted(deleted) == sorted([committed[0], committed[1], failed])
    assert store.list_dirs("runs") == sorted([committed[2], committed[3], running, "not-a-run"])
    assert store.list_keys(f"runs/{committed[0]}/") == []
    assert len(list_commits(store)) == 4  # history stays
    assert prune_runs(store, keep=1) == [committed[2]]
    assert store.list_dirs("runs") == sorted([committed[3], running, "not-a-run"])
    assert read_run_manifest(store)["run_id"] == committed[3]
    with pytest.raises(ValueError, match="keep"):
        prune_runs(store, keep=0)


def test_prune_without_commits_deletes_nothing(store: Store) -> None:
    run_id = run_at(0)
    write_run(store, run_id)
    assert prune_runs(store, keep=1) == []
    assert store.list_dirs("runs") == [run_id]


def test_read_run_manifest(store: Store) -> None:
    with pytest.raises(NotFound, match="no committed run"):
        read_run_manifest(store)
    first, second, uncommitted = run_at(0), run_at(1), run_at(2)
    for run_id in (first, second, uncommitted):
        write_run(store, run_id)
    commit_run(store, first)
    # The field the job writes (job.py's commit payload): the reader must follow it, not a fallback.
    commit_run(store, second, {layout.COMMIT_MANIFEST_FIELD: f"runs/{second}/other.json"})
    store.write_json(f"runs/{second}/other.json", {"run_id": second, "via": "the commit's manifest field"})
    assert read_run_manifest(store) == {"run_id": second, "via": "the commit's manifest field"}
    assert read_run_manifest(store, first)["run_id"] == first  # no field: the run's own manifest.json
    with pytest.raises(NotFound, match="never committed"):
        read_run_manifest(store, uncommitted)


def test_the_manifest_field_is_the_one_the_job_writes() -> None:
    # The job's commits already on S3 say "manifest"; a reader looking for another name silently falls back.
    assert layout.COMMIT_MANIFEST_FIELD == "manifest"


def test_only_canonical_commit_names_count(store: Store) -> None:
    run_id = run_at(0)
    write_run(store, run_id)
    commit_run(store, run_id)
    stray = {"number": 5, "run_id": run_id, "run_prefix": f"runs/{run_id}/"}
    # Not commit names: too short, a second name for commit 1, a name for 0, another extension.
    for name in ("1.json", "7.json", "000000001.json", "00000000.json", "00000009.json.tmp"):
        store.write_json(f"_commits/{name}", stray)
    assert [c["number"] for c in list_commits(store)] == [1]
    assert latest_commit(store)["number"] == 1


@pytest.mark.parametrize(
    ("key", "number"),
    [
        ("_commits/00000001.json", 1),
        ("_commits/99999999.json", 99_999_999),
        ("_commits/100000000.json", 100_000_000),
        ("_commits/1.json", None),
        ("_commits/0100000000.json", None),
        ("_commits/00000000.json", None),
        ("_commits/sub/00000001.json", None),
        ("runs/00000001.json", None),
    ],
)
def test_commit_number_parses_exactly_what_commit_key_writes(key: str, number: int | None) -> None:
    assert layout.commit_number(key) == number
    if number is not None:
        assert commit_key(number) == key


def test_a_publication_that_fails_halfway_leaves_no_manifest_naming_a_mix(store: Store, monkeypatch) -> None:
    """manifest.json says which run the root shows: it goes first and comes back last, so a root whose copies
    could not all be replaced has none; unpublish then leaves no run's files at all rather than two runs'."""
    from fruits.commits import published_run, unpublish

    names = ("results.csv", "manifest.json", "rejected.csv")
    old, new = run_at(0), run_at(1)
    write_run(store, old, b"old\n", **{"rejected.csv": b"old rejected\n"})
    commit_run(store, old)
    publish_latest(store, old, names)
    assert published_run(store) == old
    write_run(store, new, b"new\n", **{"rejected.csv": b"new rejected\n"})
    commit_run(store, new)
    real_copy = type(store).copy

    def copy(self: Store, src: str, dst: str) -> None:  # the disk fills up at the second copy
        if dst == "rejected.csv":
            raise OSError(28, "No space left on device", dst)
        real_copy(self, src, dst)

    monkeypatch.setattr(type(store), "copy", copy)
    with pytest.raises(OSError, match="No space left"):
        publish_latest(store, new, names)
    assert published_run(store) is None and not store.exists("manifest.json")
    assert (
        store.read_bytes("results.csv") == b"new\n" and store.read_bytes("rejected.csv") == b"old rejected\n"
    )
    unpublish(store, names)
    assert not any(store.exists(name) for name in names)
    monkeypatch.setattr(type(store), "copy", real_copy)
    publish_latest(store, new, names)  # what the next run does when it finds the root showing no run
    assert published_run(store) == new and store.read_bytes("rejected.csv") == b"new rejected\n"
