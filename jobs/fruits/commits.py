"""Publish a run by creating ONE commit object, so a run killed at any point never costs the previous results.

Layout under an output root (the names are :mod:`fruits.layout`'s)::

    runs/<run_id>/...             everything one run writes (Parquet, results.csv, manifest.json, plots)
    _commits/00000001.json        one small object per published run; the highest number is current
    results.csv, manifest.json    copies of the current run's small files, for people (see publish_latest)

A run writes only under its own ``runs/<run_id>/`` and then calls :func:`commit_run`, which creates the next
commit number with a create-only-if-absent write. Until that object exists the run is invisible to readers;
after it exists the run is complete. Readers follow :func:`latest_commit`, never a listing of ``runs/``.

Overwriting outputs in place (``DataFrame.write.mode("overwrite")``) cannot give that: Spark deletes the old
output when the job starts, and S3 committers expose each task's files as tasks finish.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from .layout import (
    COMMIT_MANIFEST_FIELD,
    COMMITS_PREFIX,
    MANIFEST_JSON,
    PUBLISHED_NAMES,
    RUNS_PREFIX,
    commit_key,
    commit_number,
    is_run_id,
    run_prefix,
)
from .storage import NotFound, Store

__all__ = [
    "CommitConflict",
    "commit_key",
    "commit_numbers",
    "commit_run",
    "is_run_id",
    "latest_commit",
    "list_commits",
    "new_run_id",
    "prune_runs",
    "publish_latest",
    "read_run_manifest",
    "run_prefix",
]

# Fields commit_run writes itself; a caller's payload must not override them.
RESERVED_FIELDS = ("number", "run_id", "run_prefix", "committed_at")


class CommitConflict(RuntimeError):
    """Another writer created this commit number first; this run was NOT published."""

    def __init__(self, number: int, run_id: str, winner: dict[str, Any] | None) -> None:
        self.number = number
        self.run_id = run_id
        self.winner = winner
        who = (
            f"run {winner.get('run_id')} (committed at {winner.get('committed_at')})"
            if winner
            else "another writer"
        )
        super().__init__(
            f"commit {number:08d} was already created by {who}; run {run_id} was not published. "
            "Two writers ran on the same output (did this run outlive its lease?): rerun it."
        )


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC start time and 6 random hex digits, e.g. ``20261125T134501Z-3f9a1c``."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        # A naive time would silently be taken as local time and break the ordering across machines.
        raise ValueError("new_run_id needs a timezone-aware datetime")
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def commit_numbers(store: Store) -> list[int]:
    """Every commit number present, ascending (other files under _commits/ are ignored).

    Sorted as numbers, not as names: past 99999999 a ninth digit must not sort first.
    """
    numbers = (commit_number(key) for key in store.list_keys(COMMITS_PREFIX))
    return sorted(number for number in numbers if number is not None)


def list_commits(store: Store) -> list[dict[str, Any]]:
    """Every commit, oldest first."""
    return [store.read_json(commit_key(number)) for number in commit_numbers(store)]


def latest_commit(store: Store) -> dict[str, Any] | None:
    """The current commit (the highest number), or None if nothing was ever committed."""
    numbers = commit_numbers(store)
    return store.read_json(commit_key(numbers[-1])) if numbers else None


def commit_run(
    store: Store, run_id: str, payload: dict[str, Any] | None = None, *, now: datetime | None = None
) -> dict[str, Any]:
    """Publish ``run_id`` as the next commit number with a create-only-if-absent write; returns the commit.

    Raises :class:`CommitConflict` if that number appeared meanwhile: we never take the next number instead,
    because the other writer's run is now current and ours was computed without knowing it.
    """
    prefix = run_prefix(run_id)
    clash = sorted(set(payload or {}) & set(RESERVED_FIELDS))
    if clash:
        raise ValueError(f"commit payload may not set {clash}: commit_run writes them")
    if not store.list_keys(prefix):
        raise ValueError(
            f"refusing to commit run {run_id}: nothing was written under {store.uri_for(prefix)}"
        )
    numbers = commit_numbers(store)
    if numbers:
        latest = store.read_json(commit_key(numbers[-1]))
        if latest.get("run_id") == run_id:
            return latest  # already the current commit: committing twice must not add a second entry
    number = (numbers[-1] if numbers else 0) + 1
    commit = {
        **(payload or {}),
        "number": number,
        "run_id": run_id,
        "run_prefix": prefix,
        "committed_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
    }
    data = (json.dumps(commit, indent=2, sort_keys=True) + "\n").encode("utf-8")
    if store.put_if_absent(commit_key(number), data) is not None:
        return commit
    try:
        winner = store.read_json(commit_key(number))
    except NotFound:  # pragma: no cover - commits are never deleted
        winner = None
    if winner is not None and winner.get("run_id") == run_id:
        # Our own earlier attempt landed (e.g. a retried PUT whose first response was lost): not a conflict.
        return winner
    raise CommitConflict(number, run_id, winner)


def publish_latest(
    store: Store, run_id: str, names: list[str] | tuple[str, ...] = PUBLISHED_NAMES
) -> list[str]:
    """Copy the committed run's small files to the root, each as one whole-object write; the keys written.

    Every name must exist in the run (checked before anything is copied), so the root never mixes a new
    ``results.csv`` with an old ``rejected.csv``: write an empty (header-only) file rather than none. Refuses
    to publish a run that is not the current commit, which would put older results over newer ones.
    """
    latest = latest_commit(store)
    if latest is None or latest.get("run_id") != run_id:
        current = f"run {latest.get('run_id')} is" if latest else "nothing is"
        raise ValueError(f"run {run_id} is not the current commit ({current}): publishing it would be wrong")
    prefix = run_prefix(run_id)
    for name in names:
        if not name or "/" in name:
            raise ValueError(f"published names are top-level file names, got {name!r}")
    missing = [name for name in names if not store.exists(prefix + name)]
    if missing:
        raise NotFound(f"run {run_id} has no {', '.join(missing)} under {store.uri_for(prefix)}")
    for name in names:
        store.copy(prefix + name, name)
    return list(names)


def prune_runs(store: Store, keep: int) -> list[str]:
    """Delete old run folders; the run ids deleted. Call it between runs (holding the lease), never from one.

    A run folder is deleted when it is not named by one of the newest ``keep`` commits AND it sorts before the
    current (latest committed) run. So the current run always stays, and so does every folder newer than it:
    that may be a job still writing. Folders under runs/ that are not run ids are left alone. Commit objects
    are kept: they are tiny and are the history of what was published.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1: the current run is never deleted")
    commits = list_commits(store)
    if not commits:
        return []  # nothing committed: every folder might be a run in progress
    current = commits[-1]["run_id"]
    kept = {commit["run_id"] for commit in commits[-keep:]}
    doomed = [
        run_id
        for run_id in store.list_dirs(RUNS_PREFIX)
        if is_run_id(run_id) and run_id not in kept and run_id < current
    ]
    for run_id in doomed:
        store.delete_prefix(run_prefix(run_id))
    return doomed


def read_run_manifest(store: Store, run_id: str | None = None) -> dict[str, Any]:
    """The manifest of the latest committed run, or of committed run ``run_id``; raises NotFound."""
    commits = list_commits(store)
    if run_id is None:
        if not commits:
            raise NotFound(f"no committed run under {store.uri_for()}")
        commit = commits[-1]
    else:
        matching = [commit for commit in commits if commit.get("run_id") == run_id]
        if not matching:
            # An uncommitted run may be half-written or still running: never report it as a result.
            raise NotFound(f"run {run_id} was never committed under {store.uri_for()}")
        commit = matching[-1]
    # The job names the manifest in its commit; a commit without that field (a caller that did not) means
    # the run's own manifest.json.
    key = commit.get(COMMIT_MANIFEST_FIELD) or commit["run_prefix"] + MANIFEST_JSON
    return store.read_json(key)
