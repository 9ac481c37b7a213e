"""The single-writer lease, on a local folder and on S3 (moto). Time is a fake clock except in one test."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fruits.lease import Lease, LeaseError, LeaseHeld, LeaseLost
from fruits.storage import Store, open_store

T0 = 1_795_000_000.0  # 2026-11-19T..., any fixed epoch time


class FakeClock:
    """Epoch seconds that move only when a test (or a waiting acquire) says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def store(store_uri: str) -> Store:
    return open_store(store_uri)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def lease(store: Store, clock: FakeClock, owner: str, **kwargs) -> Lease:
    kwargs.setdefault("ttl_seconds", 120)
    return Lease(store, owner, clock=clock, sleep=clock.sleep, background=False, **kwargs)


def body(store: Store) -> dict:
    return json.loads(store.read_bytes("_lease.json"))


def test_acquire_writes_the_holder_and_release_removes_it(store: Store, clock: FakeClock) -> None:
    first = lease(store, clock, "run-A", step_id="s-1").acquire()
    assert first.held
    written = body(store)
    assert written["owner"] == "run-A"
    assert written["step_id"] == "s-1"
    assert written["acquired_at"] == T0
    assert written["expires_at"] == T0 + 120
    assert {"host", "pid"} <= written.keys()
    first.check()
    assert first.release()
    assert not store.exists("_lease.json")
    assert not first.held
    lease(store, clock, "run-B").acquire()  # free again
    assert body(store)["owner"] == "run-B"


def test_held_lease_fails_at_once_naming_the_holder(store: Store, clock: FakeClock) -> None:
    lease(store, clock, "run-A", step_id="s-1").acquire()
    clock.now += 30
    with pytest.raises(LeaseHeld) as info:
        lease(store, clock, "run-B").acquire()
    message = str(info.value)
    assert "\n" not in message
    assert "'run-A'" in message
    assert "step s-1" in message
    assert "in 90s" in message
    assert store.uri_for("_lease.json") in message
    assert info.value.holder["owner"] == "run-A"
    assert clock.sleeps == []  # failed without waiting
    assert body(store)["owner"] == "run-A"


def test_waiting_acquire_takes_over_once_the_holder_expires(store: Store, clock: FakeClock) -> None:
    lease(store, clock, "crashed").acquire()  # never renewed, never released
    waiter = lease(store, clock, "run-B").acquire(wait=True, timeout=600, poll=50)
    assert waiter.held
    assert body(store)["owner"] == "run-B"
    # Polled at most every 50 s and no longer than the holder's expiry.
    assert clock.sleeps == [50, 50, 20]


def test_waiting_acquire_gives_up_at_the_timeout(store: Store, clock: FakeClock) -> None:
    holder = lease(store, clock, "run-A").acquire()
    with pytest.raises(LeaseHeld, match="run-A"):
        lease(store, clock, "run-B").acquire(wait=True, timeout=25, poll=10)
    assert clock.sleeps == [10, 10, 5]
    holder.check()


def test_expired_lease_is_taken_over_and_the_old_holder_finds_out(store: Store, clock: FakeClock) -> None:
    old = lease(store, clock, "stalled").acquire()
    clock.now += 121
    new = lease(store, clock, "run-B").acquire()
    assert body(store)["owner"] == "run-B"
    with pytest.raises(LeaseLost, match="expired"):
        old.check()
    with pytest.raises(LeaseLost, match="now held by 'run-B'"):
        old.renew()
    with pytest.raises(LeaseLost, match="run-B"):
        old.check()
    # Releasing a lease someone else took over leaves theirs intact.
    assert not old.release()
    assert body(store)["owner"] == "run-B"
    new.check()


def test_release_leaves_a_lease_taken_by_someone_else(store: Store, clock: FakeClock) -> None:
    mine = lease(store, clock, "run-A").acquire()
    clock.now += 500
    lease(store, clock, "run-B").acquire()
    assert not mine.release()
    assert body(store)["owner"] == "run-B"


def test_renew_extends_the_expiry(store: Store, clock: FakeClock) -> None:
    mine = lease(store, clock, "run-A").acquire()
    clock.now += 100
    mine.renew()
    assert body(store)["expires_at"] == T0 + 220
    assert body(store)["acquired_at"] == T0
    clock.now += 100  # 200 s after acquiring, still ours thanks to the renewal
    mine.check()
    with pytest.raises(LeaseHeld):
        lease(store, clock, "run-B").acquire()


def test_check_fails_when_renewals_stopped_for_a_whole_ttl(store: Store, clock: FakeClock) -> None:
    mine = lease(store, clock, "run-A").acquire()
    clock.now += 119
    mine.check()
    clock.now += 1
    with pytest.raises(LeaseLost, match="expired without being renewed"):
        mine.check()


def test_reentrant_key_lets_the_same_step_back_in(store: Store, clock: FakeClock) -> None:
    first_attempt = lease(store, clock, "attempt-1", reentrant_key="s-ABC").acquire()
    second_attempt = lease(store, clock, "attempt-2", reentrant_key="s-ABC").acquire()
    assert body(store)["owner"] == "attempt-2"
    with pytest.raises(LeaseLost):
        first_attempt.renew()
    with pytest.raises(LeaseHeld, match="attempt-2"):
        lease(store, clock, "other-step", reentrant_key="s-XYZ").acquire()
    with pytest.raises(LeaseHeld):
        lease(store, clock, "no-key").acquire()
    second_attempt.check()


def test_two_takers_of_a_stale_lease_one_wins(store: Store, clock: FakeClock) -> None:
    lease(store, clock, "crashed").acquire()
    clock.now += 1000
    takers = [lease(store, clock, f"taker-{i}") for i in range(6)]
    barrier = threading.Barrier(len(takers))
    outcomes: list[object] = [None] * len(takers)

    def take(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = takers[i].acquire()
        except LeaseHeld as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(takers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [t for t in takers if t.held]
    assert len(winners) == 1, outcomes
    assert body(store)["owner"] == winners[0].owner
    assert all(isinstance(o, LeaseHeld) for o in outcomes if o is not winners[0])


def test_context_manager_releases_even_on_error(store: Store, clock: FakeClock) -> None:
    with pytest.raises(RuntimeError, match="boom"), lease(store, clock, "run-A") as held:
        assert held.held
        assert store.exists("_lease.json")
        raise RuntimeError("boom")
    assert not store.exists("_lease.json")
    with lease(store, clock, "run-B").acquire(wait=True, timeout=1) as held:
        assert body(store)["owner"] == "run-B"
    assert not held.held


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"\xff\xfe not UTF-8",
        b"[1, 2]",
        b'{"owner": "x"}',  # no expiry
        b'{"owner": "x", "expires_at": "soon"}',
        b'{"owner": "x", "expires_at": NaN}',  # Python's json reads it: it would never expire
        b'{"owner": "x", "expires_at": 1e300}',  # no run's ttl reaches that far
        b"",
    ],
)
def test_a_lease_no_run_wrote_is_taken_over_with_one_warning_naming_it(
    store: Store, clock: FakeClock, caplog, data: bytes
) -> None:
    store.write_bytes("_lease.json", data)
    with caplog.at_level("WARNING", logger="fruits.lease"):
        taken = lease(store, clock, "run-A").acquire()
    assert taken.held and body(store)["owner"] == "run-A"
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "fruits.lease"]
    assert store.uri_for("_lease.json") in warning and "unreadable" in warning and "\n" not in warning


def test_a_holder_whose_lease_was_replaced_by_garbage_stops_at_its_next_check(
    store: Store, clock: FakeClock
) -> None:
    holder = lease(store, clock, "run-A").acquire()
    store.write_bytes("_lease.json", b"garbage")  # damaged in storage, or by hand, while run-A works
    taker = lease(store, clock, "run-B").acquire()
    with pytest.raises(LeaseLost, match="run-B"):
        holder.renew()
    with pytest.raises(LeaseLost):
        holder.check()
    assert taker.held and body(store)["owner"] == "run-B"


def test_acquiring_twice_is_an_error(store: Store, clock: FakeClock) -> None:
    mine = lease(store, clock, "run-A").acquire()
    with pytest.raises(LeaseError, match="already holds"):
        mine.acquire()


def test_background_renewer_keeps_the_lease_and_detects_loss(store: Store) -> None:
    # Real time, tiny ttl: renewals every 0.1 s.
    mine = Lease(store, "run-A", ttl_seconds=0.3)
    mine.acquire()
    try:
        first_expiry = body(store)["expires_at"]
        deadline = time.time() + 3
        while body(store)["expires_at"] == first_expiry and time.time() < deadline:
            time.sleep(0.02)
        assert body(store)["expires_at"] > first_expiry, "the renewer never renewed"
        mine.check()
        # Someone else takes the lease (as after an expiry): the next renewal must notice.
        store.write_bytes(
            "_lease.json", json.dumps({"owner": "intruder", "expires_at": time.time() + 60}).encode()
        )
        deadline = time.time() + 3
        while mine.held and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(LeaseLost, match="intruder"):
            mine.check()
    finally:
        assert not mine.release()
    assert body(store)["owner"] == "intruder"
