"""The local driver JVM's class archive: named after the JDK and Spark, written once, then mapped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fruits import jvm_archive
from fruits.jvm_archive import archive_name, major_version, plan, remove_stale

JARS = [("spark-core_2.12-3.5.6.jar", 15_000_000), ("arrow-vector-12.0.1.jar", 2_000_000)]


def test_major_version_reads_old_and_new_release_strings():
    assert major_version("17.0.15+6-Debian-1deb12u1") == 17
    assert major_version("21") == 21
    assert major_version("1.8.0_392") == 8
    assert major_version("not a version") is None


def test_the_archive_is_named_after_the_jdk_and_sparks_jars():
    name = archive_name("17.0.15", JARS)
    assert name == archive_name("17.0.15", list(reversed(JARS)))  # the listing's order does not matter
    assert name != archive_name("17.0.16", JARS)
    assert name != archive_name("17.0.15", [JARS[0], (JARS[1][0], JARS[1][1] + 1)])


def test_a_run_writes_the_archive_when_missing_and_maps_it_once_there(tmp_path: Path):
    first = plan(str(tmp_path), "17.0.15", JARS, pid=42)
    assert first is not None and first.writing == f"{first.path}.42.tmp"
    assert f"-XX:ArchiveClassesAtExit={first.writing}" in first.options and "-Xlog:cds=off" in first.options
    Path(first.path).write_bytes(b"archive")
    later = plan(str(tmp_path), "17.0.15", JARS, pid=43)
    assert later is not None and later.writing is None
    assert f"-XX:SharedArchiveFile={first.path}" in later.options


def test_no_archive_without_a_cache_or_with_a_jdk_that_cannot_write_one(tmp_path: Path):
    assert plan(None, "17.0.15", JARS, pid=1) is None
    assert plan(str(tmp_path), "11.0.20", JARS, pid=1) is None  # -XX:ArchiveClassesAtExit came in JDK 13
    assert plan(str(tmp_path), None, JARS, pid=1) is None


def test_only_old_half_written_archives_are_removed(tmp_path: Path):
    old, fresh, done = tmp_path / "a.jsa.1.tmp", tmp_path / "a.jsa.2.tmp", tmp_path / "a.jsa"
    for path in (old, fresh, done):
        path.write_bytes(b"x")
    long_ago = time.time() - jvm_archive.STALE_AFTER_S - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(done, (long_ago, long_ago))
    remove_stale(str(tmp_path), time.time())
    assert not old.exists() and fresh.exists() and done.exists()


PROBE = """
import sys
from fruits import jvm_archive
from fruits.session import get_session
spark = get_session("fruits-archive-probe")
arguments = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
print("jvm:", " ".join(str(a) for a in arguments))
spark.range(10).count()
jvm_archive.finish(spark)
"""


def _probe(env: dict[str, str]) -> list[str]:
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return next(line for line in run.stdout.splitlines() if line.startswith("jvm:")).split()[1:]


@pytest.mark.spark
def test_the_first_local_run_writes_a_valid_archive_and_the_next_maps_it(tmp_path: Path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("FRUITS_DRIVER_JAVA_OPTIONS", "PYSPARK_SUBMIT_ARGS")
    }
    env["PYTHONPATH"] = str(Path("jobs").resolve())
    env["FRUITS_CACHE"] = str(tmp_path)
    first = _probe(env)
    written = [arg.split("=", 1)[1] for arg in first if arg.startswith("-XX:ArchiveClassesAtExit=")]
    assert len(written) == 1
    archives = list((tmp_path / jvm_archive.CACHE_NAME).glob("*.jsa"))
    assert len(archives) == 1 and archives[0].stat().st_size > 10_000_000  # moved into place, not the .tmp
    assert not Path(written[0]).exists()
    second = _probe(env)
    assert f"-XX:SharedArchiveFile={archives[0]}" in second
    # -Xshare:on refuses to start unless the archive maps: it is a valid archive for this JDK and classpath.
    env["FRUITS_DRIVER_JAVA_OPTIONS"] = f"-Xshare:on -XX:SharedArchiveFile={archives[0]}"
    assert "-Xshare:on" in _probe(env)


REUSED = """
from pyspark.sql import SparkSession
from fruits import jvm_archive
from fruits.session import get_session
mine = SparkSession.builder.master("local[1]").appName("mine").getOrCreate()
again = get_session("fruits-archive-probe")
assert again is mine
jvm_archive.finish(again)  # must leave a session it did not start alone
assert mine.range(3).count() == 3
print("ok")
"""


@pytest.mark.spark
def test_a_session_that_already_runs_is_neither_given_archive_options_nor_stopped(tmp_path: Path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("FRUITS_DRIVER_JAVA_OPTIONS", "PYSPARK_SUBMIT_ARGS")
    }
    env.update(PYTHONPATH=str(Path("jobs").resolve()), FRUITS_CACHE=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", REUSED], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
    assert not list((tmp_path / jvm_archive.CACHE_NAME).glob("*.tmp"))
