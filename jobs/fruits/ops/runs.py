"""Committed runs under the stack's results URI, read with the job's own code (fruits.commits, fruits.storage).

The CLI keeps no copy of the commit protocol: the commit names, which commit is current and where a run's
files are come from :mod:`fruits.commits` and :mod:`fruits.layout`, over an S3 :class:`~fruits.storage.Store`
built on the CLI's own boto3 client (its profile, region and endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fruits import commits, layout
from fruits.storage import NotFound, Store, open_store

from .aws import OpsError, S3Client


def results_store(s3: S3Client, results_uri: str) -> Store:
    """The job's output root (`ResultsUri`) as a Store on the CLI's S3 client."""
    return open_store(results_uri, s3_client=s3)


def no_commits(store: Store) -> OpsError:
    """The error for an output root where nothing was ever published."""
    return OpsError(f"no commits yet under {store.uri_for()}/: no run of the job has completed and published")


#: What to do about a damaged current commit, from the operator's side.
DAMAGED_COMMIT_FIX = (
    "publish a new run over it with `fruits submit -- --overwrite` (it is kept, and superseded), or fetch an "
    "earlier run with `fruits results --run RUN_ID` (see `fruits runs`)"
)


def damaged(error: commits.DamagedCommit) -> OpsError:
    """The one line for a damaged current commit: the object, what is wrong with it, and what to do."""
    return OpsError(f"{error}; {DAMAGED_COMMIT_FIX}")


def scan_commits(store: Store) -> list[dict[str, Any] | commits.DamagedCommit]:
    """Every commit, oldest first, a damaged one as its `DamagedCommit`; `OpsError` when there is none."""
    found = commits.scan_commits(store)
    if not found:
        raise no_commits(store)
    return found


def list_commits(store: Store) -> list[dict[str, Any]]:
    """Every readable commit, oldest first; `OpsError` when there is none."""
    found = [commit for commit in scan_commits(store) if isinstance(commit, dict)]
    if not found:
        raise no_commits(store)
    return found


def find_commit(store: Store, run_id: str | None) -> dict[str, Any]:
    """The latest commit, or the one that published `run_id`.

    Only committed runs count: a run prefix without a commit is a run that died or is still writing, and its
    files may be incomplete. A damaged latest commit is an `OpsError` naming it (an older commit is not the
    latest run); a damaged one in the history names no run and is skipped.
    """
    if run_id is None:
        try:
            latest = commits.latest_commit(store)  # reads one commit object, not all of them
        except commits.DamagedCommit as error:
            raise damaged(error) from None
        if latest is None:
            raise no_commits(store)
        return latest
    for commit in reversed(list_commits(store)):
        if commit.get("run_id") == run_id:
            return commit
    raise OpsError(f"unknown run {run_id}: no commit under {store.uri_for()}/ names it (see `fruits runs`)")


def run_uri(store: Store, commit: dict[str, Any]) -> str:
    """The URI of the committed run's own prefix."""
    return store.uri_for(commit["run_prefix"])


@dataclass(frozen=True)
class Download:
    """What `download_run` fetched and what the run did not have."""

    files: list[Path]
    missing: list[str]


def download_run(store: Store, commit: dict[str, Any], dest: Path) -> Download:
    """Copy the run's published files (layout.PUBLISHED_NAMES) into `dest`.

    Files come from the run prefix the commit names, not from the top-level copies: those are replaced after
    each commit, so during a new run's publication they may already belong to a newer run than the commit we
    read. A missing required file (layout.REQUIRED_NAMES) is an error; the others are reported as missing
    (a run of an older job may not have them).
    """
    prefix = commit["run_prefix"]
    dest.mkdir(parents=True, exist_ok=True)
    files, missing = [], []
    for name in layout.PUBLISHED_NAMES:
        target = dest / name
        try:
            store.download_file(prefix + name, target)
        except NotFound:
            if name in layout.REQUIRED_NAMES:
                raise OpsError(
                    f"run {commit.get('run_id')} is committed but {store.uri_for(prefix + name)} is missing"
                ) from None
            missing.append(name)
            continue
        files.append(target)
    return Download(files, missing)


def commit_predates(commit: dict[str, Any], started: datetime | None) -> bool:
    """True when the commit was made before the step started, i.e. it is not the step's own run.

    False when either time is unknown or unparsable: the check only adds a warning and must not break status.
    """
    if started is None:
        return False
    try:
        committed = datetime.fromisoformat(str(commit["committed_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return False
    if committed.tzinfo is None or started.tzinfo is None:
        return False
    return committed < started
