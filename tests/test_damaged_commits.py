"""Commit and lease objects the job did not write: every reader (the job's commit code and the operator CLI)
names the object in one line, never follows it outside the output, and a new run can always be published over it.

Hypothesis writes any bytes, and any JSON shaped almost like a commit (a field dropped, replaced by any JSON
value, or a path with ``..``), as commit objects; the readers must either read a commit whose run folder is
``runs/<run_id>/`` or raise :class:`~fruits.commits.DamagedCommit` naming it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fruits import commits, layout
from fruits.commits import DamagedCommit
from fruits.ops import runs
from fruits.ops.aws import OpsError
from fruits.ops.cli import main as fruits
from fruits.ops.cli import print_runs
from fruits.storage import Store, open_store
from tests.ops_stack import Deployment, set_step_state

T0 = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)


def run_at(minutes: int) -> str:
    return commits.new_run_id(T0 + timedelta(minutes=minutes))


def publish(store: Store, minutes: int) -> dict[str, Any]:
    """A run's files under its prefix, committed by the job's own code."""
    run_id = run_at(minutes)
    for name in layout.PUBLISHED_NAMES:
        store.write_bytes(layout.run_prefix(run_id) + name, f"{run_id}:{name}".encode())
    payload = {"counts": {"found": 2}, layout.COMMIT_MANIFEST_FIELD: layout.manifest_key(run_id)}
    return commits.commit_run(store, run_id, payload)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
ESCAPES = st.sampled_from(
    ["../../x", "/etc", "runs/../../x/", "..", "", "runs//", "20261125T130000Z-abc123/.."]
)


@st.composite
def almost_commits(draw: st.DrawFn) -> dict[str, Any]:
    """A commit as the job writes it, then one or two fields dropped or replaced (by any JSON, or an escape)."""
    run_id = run_at(draw(st.integers(0, 10_000)))
    document: dict[str, Any] = {
        "number": 2,
        "run_id": run_id,
        "run_prefix": layout.run_prefix(run_id),
        "committed_at": "2026-11-25T13:00:00+00:00",
        "counts": {"found": 2, "featurized": 2, "rejected": 0},
        layout.COMMIT_MANIFEST_FIELD: layout.manifest_key(run_id),
        "feature_store": {"model_key": "m"},
    }
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(document)))
        change = draw(st.sampled_from(["drop", "json", "escape"]))
        if change == "drop":
            document.pop(field, None)
        else:
            document[field] = draw(JSON if change == "json" else ESCAPES)
    return document


def contents() -> st.SearchStrategy[bytes]:
    """Bytes of a commit object: any bytes, truncated JSON, any JSON, or an almost-commit."""
    commit_json = almost_commits().map(lambda doc: json.dumps(doc).encode())
    return st.one_of(
        st.binary(max_size=64),
        commit_json.flatmap(lambda data: st.integers(0, len(data)).map(lambda cut: data[:cut])),
        JSON.map(lambda value: json.dumps(value).encode()),
        commit_json,
    )


@settings(max_examples=60, deadline=None)
@given(data=contents())
def test_a_commit_is_read_whole_and_inside_its_run_folder_or_named_as_damaged(data: bytes) -> None:
    root = Path(tempfile.mkdtemp(prefix="fruits-commits-"))
    try:
        store = open_store(str(root))
        first = publish(store, 0)
        store.write_bytes(layout.commit_key(2), data)
        try:
            latest = commits.latest_commit(store)
        except DamagedCommit as damaged:
            assert store.uri_for(layout.commit_key(2)) in str(damaged) and "\n" not in str(damaged)
            assert commits.list_commits(store) == [first]  # the history skips it
            latest = None
        if latest is not None:  # then it is a commit the job could have written
            assert layout.is_run_id(latest["run_id"]) and latest["number"] == 2
            assert latest["run_prefix"] == layout.run_prefix(latest["run_id"])
            manifest = latest.get(layout.COMMIT_MANIFEST_FIELD, latest["run_prefix"])
            assert manifest.startswith(latest["run_prefix"]) and ".." not in manifest.split("/")
        # Whatever it is, a new run is published over it, and every reader then agrees on that run.
        third = publish(store, 20)
        assert third["number"] == 3 and commits.latest_commit(store) == third
        commits.publish_latest(store, third["run_id"], ["results.csv"])
        assert store.read_bytes("results.csv") == f"{third['run_id']}:results.csv".encode()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store(store_uri: str) -> Store:
    return open_store(store_uri)


def test_a_damaged_current_commit_is_never_replaced_by_an_older_one(store: Store) -> None:
    publish(store, 0)
    store.write_bytes(layout.commit_key(2), b'{"number": 2, "run_id": "../../x"')
    with pytest.raises(DamagedCommit, match=r"_commits/00000002\.json is damaged \(not valid JSON"):
        commits.latest_commit(store)
    with pytest.raises(DamagedCommit):
        commits.read_run_manifest(store)  # not the older run's manifest


def test_retention_removes_nothing_while_a_damaged_commit_is_among_the_kept(store: Store) -> None:
    published = [publish(store, minutes) for minutes in (0, 10, 20)]
    store.write_bytes(layout.commit_key(4), b"[]")
    newest = publish(store, 40)
    assert commits.prune_runs(store, keep=2) == []  # commit 4 may have named any of them
    assert commits.prune_runs(store, keep=1) == sorted(c["run_id"] for c in published)
    assert store.list_dirs("runs") == [newest["run_id"]]


# --- the operator CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def results(dep: Deployment, s3: Any) -> Store:
    return open_store(dep.results_uri, s3_client=s3)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


ODD_COMMITS = {
    "garbage": b"\x00\x01garbage",
    "truncated": b'{"number": 2, "run_id": "20261125T1',
    "not UTF-8": '{"number": 2}'.encode("utf-16"),
    "a list": b"[1, 2, 3]",
    "missing fields": b'{"number": 2}',
    "run_id ../../x": json.dumps({"number": 2, "run_id": "../../x", "run_prefix": "runs/../../x/"}).encode(),
    "absolute run_prefix": json.dumps(
        {"number": 2, "run_id": run_at(5), "run_prefix": "/tmp/elsewhere/"}
    ).encode(),
    "manifest outside": json.dumps(
        {
            "number": 2,
            "run_id": run_at(5),
            "run_prefix": layout.run_prefix(run_at(5)),
            "manifest": "../x.json",
        }
    ).encode(),
    "counts a string": json.dumps(
        {"number": 2, "run_id": run_at(5), "run_prefix": layout.run_prefix(run_at(5)), "counts": "lots"}
    ).encode(),
}


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("data", list(ODD_COMMITS.values()), ids=list(ODD_COMMITS))
def test_the_cli_meets_a_commit_the_job_did_not_write_with_one_line(
    results: Store, dep: Deployment, tmp_path: Path, capsys, data: bytes
) -> None:
    first = publish(results, 0)
    results.write_bytes(layout.commit_key(2), data)
    uri = results.uri_for(layout.commit_key(2))
    outside = sorted(tmp_path.parent.iterdir())

    assert fruits(["results"]) == 2  # the latest run is commit 2's, which cannot be read
    line = one_line(capsys.readouterr().err)
    assert f"commit {uri} is damaged" in line and "--overwrite" in line and "--run" in line

    assert (
        fruits(["results", "--run", first["run_id"], "--dest", "fetched"]) == 0
    )  # earlier runs still can be
    assert (tmp_path / "fetched" / "results.csv").read_text() == f"{first['run_id']}:results.csv"
    capsys.readouterr()

    assert fruits(["runs"]) == 0
    out, err = capsys.readouterr()
    rows = [row.split() for row in out.splitlines()[1:]]
    assert rows[0][:2] == ["1", first["run_id"]] and rows[1][:3] == ["*", "2", "damaged"]
    assert f"commit {uri} is damaged" in one_line(err)
    assert fruits(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0] == first and listed[1]["number"] == 2 and listed[1]["uri"] == uri

    assert fruits(["submit"]) == 0
    step = capsys.readouterr().out.strip()
    set_step_state(dep.cluster_id, step, "COMPLETED")
    assert fruits(["status", step]) == 0
    assert f"commit {uri} is damaged" in capsys.readouterr().out

    # Nothing was written outside the folders given (a run_id ../../x made fruits-results/../../x).
    assert sorted(tmp_path.parent.iterdir()) == outside
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("no-aws")) == [
        "fetched"
    ]


@settings(max_examples=100, deadline=None)
@given(data=contents())
def test_the_cli_reads_any_latest_commit_or_names_it_in_one_line(data: bytes) -> None:
    """The CLI's own reading code (fruits.ops.runs, cli.print_runs) on any commit; a local store for speed."""
    root = Path(tempfile.mkdtemp(prefix="fruits-cli-commits-"))
    try:
        store = open_store(str(root / "out"))
        store.write_bytes(layout.commit_key(1), data)
        try:
            commit = runs.find_commit(store, None)
        except OpsError as error:
            assert str(error).startswith(f"commit {store.uri_for(layout.commit_key(1))} is damaged")
            assert "\n" not in str(error)
        else:
            try:
                runs.download_run(store, commit, root / "dest")
            except OpsError as error:
                assert "is missing" in str(error)
            default = Path("fruits-results") / str(commit["run_id"])  # `fruits results` without --dest
            assert ".." not in default.parts and not default.is_absolute()
        print_runs(runs.scan_commits(store))  # never raises on what it was given
        assert sorted(root.iterdir()) in ([root / "dest", root / "out"], [root / "out"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_smoke_check_reports_a_damaged_commit_as_a_failed_check(tmp_path: Path) -> None:
    from fruits.ops.smoke import Expected, check_outputs

    store = open_store(str(tmp_path / "out"))
    store.write_bytes(layout.commit_key(1), b"[]")
    (check,) = check_outputs(store, Expected(2, 2, 0, frozenset({"a"})))
    assert check.ok is False and f"commit {store.uri_for(layout.commit_key(1))} is damaged" in check.detail
