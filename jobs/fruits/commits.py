"""Publish a run by creating ONE commit object, so a run killed at any point never costs the previous results.

Layout under an output root (the names are :mod:`fruits.layout`'s)::

    runs/<run_id>/...             everything one run writes (Parquet, results.csv, manifest.json, plots)
    _commits/00000001.json        one small object per published run; the highest number is current
    results.csv, manifest.json    copies of the current run's small files, for people (see publish_latest)

A run writes only under its own ``runs/<run_id>/`` and then calls :func:`commit_run`, which creates the next
commit number with a create-only-if-absent write. Until that object exists the run is invisible to readers;
after it exists the run is complete. Readers follow :func:`latest_commit`, never a listing of ``runs/``.

A commit object the job did not write (not UTF-8, not JSON, not an object, a ``run_id`` that is not a run id, a
``run_prefix`` or manifest outside that run's folder, a number that is not its name's) is *damaged*: every
reader (the job and the operator CLI alike) gets :class:`DamagedCommit`, naming the object, when the current
commit is damaged, and skips a damaged one in the history. It never names a folder to read or write. Such an
object is never repaired or deleted: a new run published over it (the job's ``--overwrite``) takes the next
number and supersedes it.

Overwriting outputs in place (``DataFrame.write.mode("overwrite")``) cannot give that: Spark deletes the old
output when the job starts, and S3 committers expose each task's files as tasks finish.
"""

from __future__ import annotations

import json
import logging
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
from .storage import NotFound, Store, StoreError

__all__ = [
    "CommitConflict",
    "DamagedCommit",
    "commit_key",
    "commit_numbers",
    "commit_run",
    "is_run_id",
    "latest_commit",
    "list_commits",
    "new_run_id",
    "parse_commit",
    "prune_runs",
    "publish_latest",
    "read_commit",
    "read_run_manifest",
    "run_prefix",
    "scan_commits",
]

log = logging.getLogger(__name__)

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


class DamagedCommit(StoreError):
    """A commit object that is not one :func:`commit_run` writes; ``uri`` names it, ``problem`` says why."""

    def __init__(self, uri: str, number: int, problem: str) -> None:
        self.uri = uri
        self.number = number
        self.problem = problem
        super().__init__(f"commit {uri} is damaged ({problem})")


def _commit_problem(document: Any, number: int) -> str | None:
    """What makes ``document`` (parsed JSON of commit ``number``) not a commit of the job; None if it is one."""
    if not isinstance(document, dict):
        return f"a JSON {type(document).__name__}, not an object"
    run_id = document.get("run_id")
    if not isinstance(run_id, str) or not is_run_id(run_id):
        return f"run_id {run_id!r} is not a run id"
    if document.get("run_prefix") != run_prefix(run_id):
        return f"run_prefix {document.get('run_prefix')!r} is not {run_prefix(run_id)!r}"
    if document.get("number") != number or isinstance(document.get("number"), bool):
        return f"number {document.get('number')!r} is not {number}, the number in its name"
    if not isinstance(document.get("committed_at", ""), str):
        return f"committed_at {document['committed_at']!r} is not a time"
    manifest = document.get(COMMIT_MANIFEST_FIELD)
    if manifest is not None and not (
        isinstance(manifest, str)
        and manifest.startswith(run_prefix(run_id))
        and all(part not in ("", ".", "..") for part in manifest.split("/"))
    ):
        return f"{COMMIT_MANIFEST_FIELD} {manifest!r} is not a file of run {run_id}"
    for field in ("counts", "feature_store"):
        if field in document and not isinstance(document[field], dict):
            return f"{field} {document[field]!r} is not an object"
    return None


def parse_commit(data: bytes, number: int, uri: str) -> dict[str, Any]:
    """The commit in ``data`` (the bytes of commit ``number``, stored at ``uri``); :class:`DamagedCommit` if
    it is not what :func:`commit_run` writes."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedCommit(uri, number, "not UTF-8 text") from None
    except (ValueError, RecursionError) as error:
        raise DamagedCommit(uri, number, f"not valid JSON: {str(error)[:120]}") from None
    problem = _commit_problem(document, number)
    if problem:
        raise DamagedCommit(uri, number, problem)
    return document


def read_commit(store: Store, number: int) -> dict[str, Any]:
    """Commit ``number``; :class:`DamagedCommit` if it is not one the job writes, NotFound if absent."""
    key = commit_key(number)
    return parse_commit(store.read_bytes(key), number, store.uri_for(key))


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


def scan_commits(store: Store) -> list[dict[str, Any] | DamagedCommit]:
    """Every commit, oldest first, a damaged one as its :class:`DamagedCommit` (for readers that show them)."""
    found: list[dict[str, Any] | DamagedCommit] = []
    for number in commit_numbers(store):
        try:
            found.append(read_commit(store, number))
        except DamagedCommit as damaged:
            found.append(damaged)
    return found


def list_commits(store: Store) -> list[dict[str, Any]]:
    """Every readable commit, oldest first: damaged ones are skipped (they name no run that can be read)."""
    return [commit for commit in scan_commits(store) if isinstance(commit, dict)]


def latest_commit(store: Store) -> dict[str, Any] | None:
    """The current commit (the highest number), or None if nothing was ever committed.

    :class:`DamagedCommit` when the current commit is damaged: an older commit is not current, and taking it
    as such would put older results over newer ones."""
    numbers = commit_numbers(store)
    return read_commit(store, numbers[-1]) if numbers else None


def _latest_if_readable(store: Store) -> dict[str, Any] | None:
    """The current commit, or None when there is none or it is damaged (commit_run then takes the next number)."""
    try:
        return latest_commit(store)
    except DamagedCommit:
        return None


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
    latest = _latest_if_readable(store) if numbers else None
    if latest is not None and latest.get("run_id") == run_id:
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
        winner: dict[str, Any] | None = read_commit(store, number)
    except (NotFound, DamagedCommit):  # commits are never deleted; a damaged one names no run
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
    scanned = scan_commits(store)
    damaged = [commit for commit in scanned[-keep:] if isinstance(commit, DamagedCommit)]
    if damaged:
        # A damaged commit among the kept ones names no run: any folder may be the one it published.
        log.warning("retention skipped: %s is among the newest %d commits", damaged[-1], keep)
        return []
    commits = [commit for commit in scanned if isinstance(commit, dict)]
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
    """The manifest of the latest committed run, or of committed run ``run_id``; raises NotFound (and
    :class:`DamagedCommit` when the latest commit is damaged)."""
    if run_id is None:
        latest = latest_commit(store)
        if latest is None:
            raise NotFound(f"no committed run under {store.uri_for()}")
        commit = latest
    else:
        matching = [commit for commit in list_commits(store) if commit.get("run_id") == run_id]
        if not matching:
            # An uncommitted run may be half-written or still running: never report it as a result.
            raise NotFound(f"run {run_id} was never committed under {store.uri_for()}")
        commit = matching[-1]
    # The job names the manifest in its commit; a commit without that field (a caller that did not) means
    # the run's own manifest.json.
    key = commit.get(COMMIT_MANIFEST_FIELD) or commit["run_prefix"] + MANIFEST_JSON
    return store.read_json(key)
