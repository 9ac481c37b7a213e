"""The embedded default: local mode on every core, on loopback only."""

from __future__ import annotations

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
