"""The embedded default: local mode on every core, on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fruits.session import LOCAL_DRIVER_JAVA_OPTIONS

PROBE = """
from fruits.session import get_session
spark = get_session("fruits-session-probe")
conf = spark.sparkContext.getConf()
# What the driver JVM was started with, not what the conf says it should have been.
arguments = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
print("jvm:", " ".join(str(a) for a in arguments))
print(conf.get("spark.master"), conf.get("spark.driver.host"))
from fruits import jvm_archive
jvm_archive.finish(spark)  # stops it; a first run waits for its JVM to write the class archive
"""


def test_local_session_listens_on_loopback_only_unless_told_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_LOCAL_IP", "PYSPARK_SUBMIT_ARGS")}
    env["PYTHONPATH"] = str(Path("jobs").resolve())
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    master, host = run.stdout.split()[-2:]
    assert master == "local[*]" and host in ("127.0.0.1", "localhost")
    assert "resolves to a loopback address" not in run.stderr  # Spark did not pick another interface


def _jvm_arguments(env: dict[str, str]) -> list[str]:
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return next(line for line in run.stdout.splitlines() if line.startswith("jvm:")).split()[1:]


def test_local_driver_jvm_runs_without_the_optimizing_compiler_unless_told_otherwise() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("FRUITS_DRIVER_JAVA_OPTIONS", "PYSPARK_SUBMIT_ARGS")
    }
    env["PYTHONPATH"] = str(Path("jobs").resolve())
    assert LOCAL_DRIVER_JAVA_OPTIONS in _jvm_arguments(env)
    env["FRUITS_DRIVER_JAVA_OPTIONS"] = "-XX:+UseSerialGC"
    chosen = _jvm_arguments(env)
    assert "-XX:+UseSerialGC" in chosen and LOCAL_DRIVER_JAVA_OPTIONS not in chosen


EARLY_PROBE = """
import signal, sys, threading
from fruits.logs import configure_logging
from fruits.session import get_session, start_early
configure_logging()
start_early(sys.argv[1:])
starting = [t.name for t in threading.enumerate() if t.name == "fruits-start-session"]
print("starting:", len(starting))
try:
    spark = get_session("not-the-early-one")
except Exception as error:
    print("error:", type(error).__name__)
    raise SystemExit(0)
print("app:", spark.sparkContext.appName)
print("sigint:", signal.getsignal(signal.SIGINT) is not signal.default_int_handler)
print("active:", spark._jvm.SparkSession.getActiveSession().isDefined())
spark.stop()
"""


def _early(tmp_path: Path, *argv: str, **extra_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_SUBMIT_ARGS", "PYSPARK_GATEWAY_PORT")}
    env.update(PYTHONPATH=str(Path("jobs").resolve()), **extra_env)
    run = subprocess.run(
        [sys.executable, "-c", EARLY_PROBE, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    seen = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    return {**seen, "stderr": run.stderr}


def test_a_valid_local_command_starts_its_session_early_and_the_job_gets_that_one(tmp_path: Path) -> None:
    # A fresh cache: the session's start plans a class archive and says so in the log.
    cache = tmp_path / "cache"
    seen = _early(
        tmp_path, "--input", str(tmp_path), "--output", str(tmp_path / "out"), FRUITS_CACHE=str(cache)
    )
    assert seen["starting"] == "1" and seen["app"] == "fruits-featurize-pca"
    assert seen["sigint"] == "True"  # Ctrl-C still cancels the jobs, as a main-thread SparkContext arranges
    assert (
        seen["active"] == "True"
    )  # and the caller's thread sees the session as active, as getOrCreate's does
    assert "writes a class archive" in seen["stderr"]  # logged during the early start, not lost before main()


def test_the_entry_runs_a_whole_job_through_the_early_session(tmp_path: Path) -> None:
    from tests.job_faults import add_images, job_args, run_job_process

    add_images(tmp_path / "images", 6)
    output, log = tmp_path / "out", tmp_path / "run.log"
    assert run_job_process(job_args(tmp_path / "images", output), log, master=None) == 0, log.read_text()[
        -3000:
    ]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["featurized"] == 6 and manifest["spark_master"] == "local[*]"


def test_an_invalid_or_incomplete_command_starts_no_jvm_early(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert _early(tmp_path, "--input", str(tmp_path), "--output", out, "--k", "0")["starting"] == "0"
    assert _early(tmp_path, "--input", str(tmp_path), "--output", out, "--help")["starting"] == "0"
    assert _early(tmp_path, "--input", str(tmp_path))["app"] == "not-the-early-one"  # conf may bring --output


def test_a_session_that_fails_to_start_early_fails_in_the_callers_thread(tmp_path: Path) -> None:
    seen = _early(
        tmp_path,
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "out"),
        FRUITS_DRIVER_JAVA_OPTIONS="-Xmx1k",  # too small a heap: the JVM exits at once
    )
    assert seen["starting"] == "1" and seen["error"] == "PySparkRuntimeError"
