"""Every run's outcome, success or failure, as one small JSON object a person or a program can read.

A commit says what a run published; many runs publish nothing: a failed run, an empty input with
``--allow-empty``, a ``--check`` of the cluster. Each run that got as far as knowing its output (its options
parsed) writes ``<output>/_outcomes/<run_id>.json`` when it ends (the names are :mod:`fruits.layout`'s)::

    {"run_id": "20261207T120501Z-3f9a1c", "status": "failed", "exit_code": 2,
     "reason": "input is empty: no files under s3://.../images/", "application_id": "application_..._0007",
     "started_at": "...", "finished_at": "...", "input": "...", "output": "...", "host": "ip-10-0-1-12",
     "counts": null, "commit": null}

``status`` is one of :data:`STATUSES`. The operator CLI (``fruits status``) reads these records to name a step's
outcome; a run killed outright (SIGKILL, a lost container) writes none, and its driver log tells instead. A run
given ``--trigger NAME`` writes the same record a second time as ``<output>/_triggered/NAME.json``, where whatever
started it (the autorun state machine, which knows only its own execution's name) reads it; ``metrics`` carries
what that reader reports besides the counts (k, the quality report's accuracies). Writing is best effort: a run
never fails, nor hides its own error, because its record could not be written.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .layout import OUTCOMES_PREFIX, is_run_id, outcome_key, triggered_outcome_key
from .storage import Store

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"  # a run committed
NOTHING_TO_DO = "nothing-to-do"  # --allow-empty and nothing to featurize: exit 0, no commit
CHECKED = "checked"  # --check passed: the cluster can run the job
UNCHANGED = "unchanged"  # --skip-unchanged and nothing new since the latest commit: exit 0, no commit
FAILED = "failed"  # exit status 1 or 2: the reason says why
STATUSES = (SUCCEEDED, NOTHING_TO_DO, CHECKED, UNCHANGED, FAILED)


@dataclass(frozen=True)
class Outcome:
    """How one run ended. ``reason``: the one line the run printed on failure (None otherwise)."""

    run_id: str
    status: str
    exit_code: int
    reason: str | None
    started_at: str
    finished_at: str
    input: str | None
    output: str
    application_id: str | None = None
    host: str = ""
    counts: dict[str, Any] | None = None
    commit: int | None = None
    details: dict[str, Any] | None = None
    trigger: str | None = None
    metrics: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown outcome status {self.status!r} (known: {', '.join(STATUSES)})")
        if not is_run_id(self.run_id):
            raise ValueError(f"not a run id: {self.run_id!r}")

    def to_json(self) -> dict[str, Any]:
        """The record as written."""
        return asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> Outcome:
        """A record read back; ValueError when it is not one (a foreign or damaged object)."""
        if not isinstance(document, dict):
            raise ValueError(f"an outcome record is a JSON object, got {type(document).__name__}")
        known = {name: document.get(name) for name in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as error:
            raise ValueError(f"not an outcome record: {error}") from None


def this_host() -> str:
    """The host name a record names (a cluster node's, on EMR)."""
    return socket.gethostname()


def metrics_of(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a record reports of a committed run's manifest besides its counts: k and the quality report's
    accuracies (None where the run had no Training/Test split)."""
    if not manifest:
        return None
    quality = manifest.get("quality") or {}
    return {
        "k": (manifest.get("pca") or {}).get("k"),
        "test_accuracy_pca": quality.get("test_accuracy_pca"),
        "test_accuracy_full_features": quality.get("test_accuracy_full_features"),
    }


def write(store: Store, outcome: Outcome) -> str | None:
    """Write ``outcome`` under the output root (and under its trigger's name, when it has one); the URI of the
    run's record, or None (with a warning) when it could not be written."""
    data = (json.dumps(outcome.to_json(), indent=2) + "\n").encode()
    keys = [outcome_key(outcome.run_id)]
    if outcome.trigger:
        keys.append(triggered_outcome_key(outcome.trigger))
    written = []
    for key in keys:
        try:
            store.write_bytes(key, data, "application/json")
        except Exception as error:  # best effort: the run's own result and message come first
            log.warning("could not write the run's outcome record %s: %s", store.uri_for(key), error)
            continue
        written.append(key)
    return store.uri_for(keys[0]) if keys[0] in written else None


def started(run_id: str) -> datetime:
    """When run ``run_id`` started (its id begins with the UTC time, fruits.commits.new_run_id)."""
    return datetime.strptime(run_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def read_between(store: Store, earliest: datetime, latest: datetime) -> list[Outcome]:
    """The outcome records of runs that started between ``earliest`` and ``latest``, oldest first: only those
    objects are read (a run id names its start), however many runs the output has seen."""
    found = []
    for key in sorted(store.list_keys(OUTCOMES_PREFIX)):
        run_id = key[len(OUTCOMES_PREFIX) :].removesuffix(".json")
        if not (key.endswith(".json") and is_run_id(run_id) and earliest <= started(run_id) <= latest):
            continue
        try:
            found.append(Outcome.from_json(json.loads(store.read_bytes(key).decode("utf-8"))))
        except (ValueError, UnicodeDecodeError) as error:
            log.warning("skipping %s: not an outcome record (%s)", store.uri_for(key), error)
    return found


def read_all(store: Store) -> list[Outcome]:
    """Every outcome record under the output root, oldest first (run ids sort by start time); objects that are
    not records are skipped with a warning."""
    return read_between(store, datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
