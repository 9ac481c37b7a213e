"""The embedded default: local mode on every core, on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
from fruits.session import get_session
spark = get_session("fruits-session-probe")
conf = spark.sparkContext.getConf()
print(conf.get("spark.master"), conf.get("spark.driver.host"))
spark.stop()
"""


def test_local_session_listens_on_loopback_only_unless_told_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_LOCAL_IP", "PYSPARK_SUBMIT_ARGS")}
    env["PYTHONPATH"] = str(Path("jobs").resolve())
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    master, host = run.stdout.split()[-2:]
    assert master == "local[*]" and host in ("127.0.0.1", "localhost")
    assert "resolves to a loopback address" not in run.stderr  # Spark did not pick another interface
