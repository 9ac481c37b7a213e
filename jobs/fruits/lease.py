"""One writer at a time on an output root: a lease object with an expiry, renewed while the run works.

The lease is one small JSON object (``_lease.json`` by default) holding owner, host, pid, acquired_at and
expires_at (epoch seconds). Every change is conditional, so two runs can never both believe they hold it:

- acquire: create-only-if-absent; if present and unexpired, fail at once with :class:`LeaseHeld` naming the
  holder (or poll until ``timeout`` with ``wait=True``); if expired (a crashed run) or unreadable (no run wrote
  it, see :func:`_holder`), take it over with a write conditional on the ETag we read, so of two runs taking
  over the same stale lease exactly one wins;
- renew (a background thread, every ttl/3): replace conditional on our own ETag; a failure means someone took
  it over, which :meth:`Lease.check` then reports as :class:`LeaseLost`;
- release: delete conditional on our ETag, so a lease someone else took over is left alone.

Re-entrant: a lease held under the same ``reentrant_key`` (the YARN application id, when YARN starts a second
attempt of the same driver) is taken over at once instead of blocking the step on its own first attempt.

Dead holders: ``probes`` (:mod:`fruits.liveness`) can tell that an unexpired lease's holder is certainly gone
(its process on this host exited, its YARN application ended); the lease is then taken over at once, with the
same conditional write as an expired one, and the reason is logged.

Expiry compares the holder's clock with ours; keep ``ttl_seconds`` far above any clock skew (minutes, not
seconds). The lease alone cannot stop a writer that stalls beyond its expiry: the create-only commit
(:func:`fruits.commits.commit_run`) is the final guard, and writers should call :meth:`Lease.check` before it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from .layout import LEASE_KEY
from .liveness import Probe, first_reason, identity, local_process_probe
from .storage import Store

log = logging.getLogger(__name__)

DEFAULT_KEY = LEASE_KEY


class LeaseError(RuntimeError):
    """Base class of lease failures."""


class LeaseHeld(LeaseError):
    """Another, unexpired writer holds the lease."""

    def __init__(
        self, uri: str, holder: dict[str, Any], now: float, hint: str = "wait for that run to end"
    ) -> None:
        self.holder = holder
        expires_at = float(holder.get("expires_at", 0))
        when = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds")
        where = f"host {holder.get('host')}, pid {holder.get('pid')}"
        if holder.get("step_id"):
            where += f", step {holder['step_id']}"
        super().__init__(
            f"output is in use: {uri} is held by {holder.get('owner')!r} ({where}) until {when} "
            f"(in {max(0, round(expires_at - now))}s unless renewed); {hint}"
        )


class LeaseLost(LeaseError):
    """We no longer hold the lease (taken over, released, or expired without renewal): stop writing."""


#: A lease expiring further ahead than this was not written by a run (their ttl is at most a day).
LONGEST_EXPIRY = 7 * 24 * 3600


def _holder(data: bytes, now: float) -> tuple[dict[str, Any], str | None]:
    """(the holder's lease, None), or ({}, why it is unreadable) for a lease no run of ours wrote.

    Every write of a lease is one whole JSON object with a finite expiry within a day, so anything else (not
    UTF-8 or JSON, not an object, no usable ``expires_at``) was made by hand or by another tool, or damaged in
    storage. No live run holds such a lease: a holder's renewal is conditional on its own write, so it fails on
    this one and the holder stops at its next check; the create-only commit guards the rest. It is taken over at
    once, with a warning naming it, rather than blocking the output until someone deletes it by hand.
    """
    try:
        holder = json.loads(data.decode("utf-8"))
        if not isinstance(holder, dict):
            return {}, f"it is unreadable (a JSON {type(holder).__name__}, not an object)"
        expires_at = float(holder["expires_at"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as error:
        return {}, f"it is unreadable ({type(error).__name__}: {str(error)[:120]})"
    if not math.isfinite(expires_at) or expires_at > now + LONGEST_EXPIRY:
        return {}, f"it is unreadable (expires_at {holder['expires_at']!r} is not a time a run writes)"
    return holder, None


class Lease:
    """A single-writer lease on ``key`` in ``store``.

    ``clock`` (epoch seconds) and ``sleep`` are injectable so tests control time; ``background=False`` turns
    off the renewer thread (then call :meth:`renew` yourself). ``probes`` recognise dead holders (default: a
    process of this host that is gone); ``hint`` ends the message of :class:`LeaseHeld` (what the user can do).
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        ttl_seconds: float = 120,
        key: str = DEFAULT_KEY,
        *,
        reentrant_key: str | None = None,
        step_id: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        background: bool = True,
        probes: list[Probe] | None = None,
        hint: str = "wait for that run to end",
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.store = store
        self.owner = owner
        self.ttl_seconds = float(ttl_seconds)
        self.key = key
        self.reentrant_key = reentrant_key
        self.step_id = step_id
        self._clock = clock
        self._sleep = sleep
        self._background = background
        self._probes = [local_process_probe] if probes is None else probes
        self._hint = hint
        # Guards the fields below: the renewer thread and the caller both change them.
        self._lock = threading.RLock()
        self._etag: str | None = None
        self._body: dict[str, Any] | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # State

    @property
    def held(self) -> bool:
        """Whether we acquired the lease and have not released or lost it (expiry is checked by check())."""
        with self._lock:
            return self._etag is not None and self._lost is None

    @property
    def expires_at(self) -> float | None:
        """When our lease expires unless renewed (epoch seconds), or None if not acquired."""
        with self._lock:
            return None if self._body is None else float(self._body["expires_at"])

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless we still hold an unexpired lease. Call it before committing."""
        with self._lock:
            if self._lost is not None:
                raise LeaseLost(self._lost)
            if self._etag is None or self._body is None:
                raise LeaseLost(f"lease {self.store.uri_for(self.key)} is not held by {self.owner!r}")
            if self._clock() >= float(self._body["expires_at"]):
                # Renewals failed for a whole ttl: another run may already have taken it over.
                raise LeaseLost(
                    f"lease {self.store.uri_for(self.key)} of {self.owner!r} expired without being renewed"
                )

    # Operations

    def _new_body(self, now: float, acquired_at: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "owner": self.owner,
            **identity(),
            "acquired_at": now if acquired_at is None else acquired_at,
            "expires_at": now + self.ttl_seconds,
            "ttl_seconds": self.ttl_seconds,
        }
        if self.step_id is not None:
            body["step_id"] = self.step_id
        if self.reentrant_key is not None:
            body["reentrant_key"] = self.reentrant_key
        return body

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def _try_once(self) -> dict[str, Any] | None:
        """One attempt to take the lease; None on success, else the live holder's body."""
        now = self._clock()
        body = self._new_body(now)
        etag = self.store.put_if_absent(self.key, self._encode(body))
        if etag is not None:
            self._took(body, etag)
            return None
        current = self.store.read_versioned(self.key)
        if current is None:
            return {}  # released between our two requests: try again at once
        data, current_etag = current
        holder, damage = _holder(data, now)
        if damage:
            log.warning("taking over the lease %s at once: %s", self.store.uri_for(self.key), damage)
        same_step = self.reentrant_key is not None and holder.get("reentrant_key") == self.reentrant_key
        expires_at = float(holder.get("expires_at", 0))
        live = not (damage or same_step or expires_at <= now)
        gone = first_reason(self._probes, holder) if live else None
        if gone:
            log.warning("taking over the lease of %r at once: %s", holder.get("owner"), gone)
        if not live or gone:
            etag = self.store.put_if_match(self.key, self._encode(body), current_etag)
            if etag is not None:
                self._took(body, etag)
                return None
            return {}  # someone else changed it between our read and write: look again
        return holder

    def _took(self, body: dict[str, Any], etag: str) -> None:
        with self._lock:
            self._body = body
            self._etag = etag
            self._lost = None
        if self._background:
            self._start_renewer()

    def acquire(self, wait: bool = False, timeout: float = 3600.0, poll: float = 5.0) -> Lease:
        """Take the lease or raise :class:`LeaseHeld`; ``wait=True`` polls every ``poll`` s up to ``timeout``.

        Returns self, so ``with Lease(...).acquire(wait=True):`` works.
        """
        if self.held:
            raise LeaseError(f"{self.owner!r} already holds {self.store.uri_for(self.key)}")
        deadline = self._clock() + timeout
        while True:
            holder = self._try_once()
            if holder is None:
                return self
            if not holder:
                continue  # the lease changed under us; the next attempt sees its new state
            now = self._clock()
            if not wait or now >= deadline:
                raise LeaseHeld(self.store.uri_for(self.key), holder, now, self._hint)
            # Never sleep past the holder's expiry or our deadline: take over as soon as it is stale.
            self._sleep(max(0.0, min(poll, deadline - now, float(holder["expires_at"]) - now)) or 0.01)

    def renew(self) -> None:
        """Push our expiry to now + ttl; raises :class:`LeaseLost` if someone else holds the lease now."""
        with self._lock:
            if self._lost is not None:
                raise LeaseLost(self._lost)
            if self._etag is None or self._body is None:
                raise LeaseLost(f"cannot renew {self.store.uri_for(self.key)}: not acquired")
            body = self._new_body(self._clock(), acquired_at=self._body["acquired_at"])
            etag = self.store.put_if_match(self.key, self._encode(body), self._etag)
            if etag is None:
                self._lost = self._lost_message()
                raise LeaseLost(self._lost)
            self._body, self._etag = body, etag

    def _lost_message(self) -> str:
        current = self.store.read_versioned(self.key)
        holder = "nobody (it was deleted)"
        if current is not None:
            body, damage = _holder(current[0], self._clock())
            holder = "an unreadable lease" if damage else repr(body.get("owner"))
        return f"lease {self.store.uri_for(self.key)} of {self.owner!r} was lost: now held by {holder}"

    def release(self) -> bool:
        """Stop renewing and delete the lease if it is still ours; whether it was deleted."""
        self._stop_renewer()
        with self._lock:
            etag, lost = self._etag, self._lost
            self._etag = None
            self._body = None
            if etag is None or lost is not None:
                return False
            # Conditional: if someone took the lease over, their lease stays.
            return self.store.delete_if_match(self.key, etag)

    # Background renewal

    def _start_renewer(self) -> None:
        self._stop_renewer()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_loop, args=(self._stop,), name=f"lease-renewer-{self.owner}", daemon=True
        )
        self._thread.start()

    def _stop_renewer(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _renew_loop(self, stop: threading.Event) -> None:
        # Real time on purpose: the thread must keep renewing whatever clock the expiry arithmetic uses.
        while not stop.wait(self.ttl_seconds / 3):
            try:
                self.renew()
            except LeaseLost:
                return  # recorded in self._lost; check() raises it in the writer's thread
            except Exception:  # a network blip: retry next period; check() reports a lease that expired
                continue

    # Context manager

    def __enter__(self) -> Lease:
        if not self.held:
            self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
