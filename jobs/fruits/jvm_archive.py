"""A class-data-sharing archive for the local driver JVM, so that a local run does not load Spark's classes anew.

Every local run starts a JVM that reads, parses and verifies several thousand classes from Spark's jars before
its first job: about 1.3 s of a run on 2 cores (session start 1.45 -> 1.0 s, first jobs 3.4 -> 2.5 s, measured).
JDK 13 and later can write the classes a run loaded into an archive as the JVM exits
(``-XX:ArchiveClassesAtExit``) and map that archive at the next start (``-XX:SharedArchiveFile``): "dynamic
CDS" (JEP 350). The first local run on a machine writes it (that run waits a few seconds more for its JVM to
exit); the runs after it map it.

The archive is named after the JDK's release and Spark's jars, so another JDK or Spark writes a new one; the JVM
also checks both itself and, on a mismatch, starts without the archive rather than failing. A cluster's JVMs
are started by YARN, not here: this is for local mode only. ``FRUITS_DRIVER_JAVA_OPTIONS`` replaces the local
JVM options, this archive included.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CACHE_NAME = "jvm"  # the folder in the machine's cache (fruits.local_cache)
#: Quiet: the JVM lists every class it cannot archive (signed jars, old class files) as a warning.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"
MIN_JAVA = 13  # the first release with -XX:ArchiveClassesAtExit
EXIT_TIMEOUT_S = 120  # writing the archive (about 130 MB for Spark 3.5) takes a few seconds
STALE_AFTER_S = 24 * 3600  # a half-written archive of a run that died is removed after this


@dataclass(frozen=True)
class Archive:
    """Where the archive is (``path``) and the JVM options of this run: map it, or write it at exit."""

    path: str
    options: str
    writing: str | None = None  # this run's JVM writes here as it exits; then it is moved to ``path``


_WRITING: dict[str, Archive] = {}  # the archive this process's JVM is writing, if any


def java_release(java_home: str | None) -> str | None:
    """The ``JAVA_RUNTIME_VERSION`` (else ``JAVA_VERSION``) of the JDK at ``java_home``, from its release file."""
    if not java_home:
        return None
    try:
        with open(os.path.join(java_home, "release"), encoding="utf-8") as handle:
            fields = dict(line.strip().split("=", 1) for line in handle if "=" in line)
    except OSError:
        return None
    value = fields.get("JAVA_RUNTIME_VERSION") or fields.get("JAVA_VERSION")
    return value.strip('"') if value else None


def major_version(release: str) -> int | None:
    """17 for ``17.0.15+6-Debian``, 8 for ``1.8.0_392``; None if unreadable."""
    parts = release.replace("+", ".").replace("-", ".").replace("_", ".").split(".")
    try:
        first = int(parts[0])
        return int(parts[1]) if first == 1 else first
    except (ValueError, IndexError):
        return None


def java_home() -> str | None:
    """The JDK that Spark's launcher runs: ``JAVA_HOME``, else the one of ``java`` on the PATH."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    return os.path.dirname(os.path.dirname(os.path.realpath(java))) if java else None


def archive_name(release: str, jars: list[tuple[str, int]]) -> str:
    """The archive's file name: a digest of the JDK release and Spark's jars (names and sizes)."""
    digest = hashlib.sha256(release.encode())
    for name, size in sorted(jars):
        digest.update(f"\n{name}:{size}".encode())
    return f"spark-driver-{digest.hexdigest()[:16]}.jsa"


def _spark_jars() -> list[tuple[str, int]]:
    from pyspark.find_spark_home import _find_spark_home

    folder = os.path.join(_find_spark_home(), "jars")
    return [(entry.name, entry.stat().st_size) for entry in os.scandir(folder) if entry.name.endswith(".jar")]


def plan(cache: str | None, release: str | None, jars: list[tuple[str, int]], pid: int) -> Archive | None:
    """What the next local JVM should do with the archive in ``cache``: map it if it is there, else write it.

    None when there is no cache folder or the JDK is too old (or unknown) to write one.
    """
    if cache is None or release is None or (major_version(release) or 0) < MIN_JAVA:
        return None
    path = os.path.join(cache, archive_name(release, jars))
    if os.path.isfile(path):
        return Archive(path, f"{QUIET} -XX:SharedArchiveFile={path}")
    writing = f"{path}.{pid}.tmp"
    return Archive(path, f"{QUIET} -XX:ArchiveClassesAtExit={writing}", writing)


def remove_stale(cache: str, now: float) -> None:
    """Remove what runs that died while writing left behind."""
    for entry in os.scandir(cache):
        if entry.name.endswith(".tmp") and now - entry.stat().st_mtime > STALE_AFTER_S:
            with contextlib.suppress(OSError):
                os.remove(entry.path)


def options_for_this_run(cache: str | None) -> str:
    """The local driver JVM's archive options ("" when none); remembers an archive this run will write."""
    try:
        if cache:
            remove_stale(cache, time.time())
        archive = plan(cache, java_release(java_home()), _spark_jars() if cache else [], os.getpid())
    except OSError as error:
        log.info("no JVM class archive: %s", error)
        return ""
    if archive is None:
        return ""
    if archive.writing:
        _WRITING["archive"] = archive
        log.info("the first local run with this JDK and Spark: its JVM writes a class archive as it exits")
    return archive.options


def finish(spark: Any) -> None:
    """If this run's JVM is writing the archive: stop it, wait for it to exit, and move the archive in place.

    A no-op for every other run (they map the archive, or have none).
    """
    archive = _WRITING.pop("archive", None)
    if archive is None or archive.writing is None:
        return
    from pyspark import SparkContext

    process = getattr(SparkContext._gateway, "proc", None)
    spark.stop()
    if process is None or process.stdin is None:
        return
    started = time.perf_counter()
    try:
        process.stdin.close()  # Spark's gateway exits on end of input; the JVM writes the archive as it exits
        process.wait(timeout=EXIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("the JVM did not exit to write its class archive (%s); the next run tries again", error)
        return
    if process.returncode == 0 and os.path.isfile(archive.writing) and os.path.getsize(archive.writing) > 0:
        os.replace(archive.writing, archive.path)  # atomic: a run starting now maps all of it or none
        log.info(
            "JVM class archive written in %.1f s: %s (later local runs start sooner)",
            time.perf_counter() - started,
            archive.path,
        )
    else:
        log.info(
            "the JVM wrote no class archive (exit status %s); the next run tries again", process.returncode
        )
        with contextlib.suppress(OSError):
            os.remove(archive.writing)
