"""One writer at a time on an output: a live lease stops a run at once or makes it wait; a stale one is taken.

The other writer is played by a :class:`fruits.lease.Lease` made in the test on the same output.
"""

from __future__ import annotations

import threading
import time

import pytest

from fruits import commits
from fruits.job import main
from fruits.lease import Lease, LeaseLost
from fruits.storage import open_store
from tests.job_faults import add_images, job_args

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("writer") / "images"
    add_images(root, 4)
    return root


def _holder(output, owner: str = "other-run-20261125", **kwargs) -> Lease:
    output.mkdir(parents=True, exist_ok=True)
    return Lease(open_store(str(output)), owner=owner, ttl_seconds=600, background=False, **kwargs)


def test_live_lease_fails_at_once_naming_the_holder(spark, images, tmp_path, capsys):
    output = tmp_path / "out"
    holder = _holder(output).acquire()
    lease_before = (output / "_lease.json").read_bytes()
    started = time.monotonic()
    assert main(job_args(images, output), spark) == 2
    assert time.monotonic() - started < 30  # no featurization was attempted
    error = capsys.readouterr().err
    assert "output is in use" in error and "'other-run-20261125'" in error
    assert (output / "_lease.json").read_bytes() == lease_before  # the holder's lease is left alone
    assert not (output / "runs").exists() and not (output / "_commits").exists()
    assert holder.release()


def test_wait_proceeds_once_the_holder_releases(spark, images, tmp_path):
    output = tmp_path / "out"
    holder = _holder(output).acquire()
    released = []
    timer = threading.Timer(2.0, lambda: released.append(holder.release()))
    timer.start()
    started = time.monotonic()
    try:
        assert main([*job_args(images, output), "--wait", "60"], spark) == 0
    finally:
        timer.join()
    assert time.monotonic() - started >= 2.0
    # The holder's lease was still its own when it let go: the waiting run never took a live lease.
    assert released == [True]
    assert commits.commit_numbers(open_store(str(output))) == [1]
    assert not (output / "_lease.json").exists()


def test_run_that_waited_sees_the_commit_made_meanwhile(spark, images, tmp_path, capsys):
    """Without --overwrite, a run must not publish over a result that appeared while it waited."""
    output = tmp_path / "out"
    store = open_store(str(output))
    holder = _holder(output).acquire()
    other = commits.new_run_id()

    def finish_other_run():
        store.write_bytes(f"runs/{other}/manifest.json", b"{}")
        commits.commit_run(store, other)
        holder.release()

    timer = threading.Timer(1.0, finish_other_run)
    timer.start()
    try:
        assert main([*job_args(images, output), "--wait", "60"], spark) == 2
    finally:
        timer.join()
    assert f"already holds run {other}" in capsys.readouterr().err
    assert [c["run_id"] for c in commits.list_commits(store)] == [other]


def test_stale_lease_is_taken_over(spark, images, tmp_path):
    output = tmp_path / "out"
    # A crashed writer: its lease expired long ago and nobody renews it.
    stale = _holder(output, owner="crashed-run", clock=lambda: time.time() - 3600).acquire()
    assert main(job_args(images, output), spark) == 0
    assert commits.commit_numbers(open_store(str(output))) == [1]
    assert not (output / "_lease.json").exists()
    with pytest.raises(LeaseLost):  # were the crashed writer to wake up, it could not renew
        stale.renew()
