"""Helpers shared by the incremental, kill, retry and single-writer tests: tiny inputs, runs, snapshots."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from tests.conftest import FAST_MODEL, write_image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "featurize_pca.py"
FAST = [*FAST_MODEL, "--engine", "litert", "--k", "2"]
RED, YELLOW = (200, 30, 30), (230, 220, 40)


def add_images(root: Path, count: int, first_seed: int = 0, prefix: str = "img") -> list[Path]:
    """``count`` distinct 32-pixel JPEGs, alternating between two labelled folders."""
    paths = []
    for i in range(count):
        seed = first_seed + i
        label, colour = ("Red", RED) if seed % 2 == 0 else ("Lemon", YELLOW)
        paths.append(write_image(root / label / f"{prefix}{seed}.jpg", colour, size=32, seed=seed))
    return paths


def job_args(input_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["--input", str(input_dir), "--output", str(output), *FAST, *extra]


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``: equal digests mean byte-for-byte equal trees."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_job_process(
    args: list[str], log: Path, *, master: str | None = "local[2]", env: dict[str, str] | None = None
) -> int:
    """Run ``jobs/featurize_pca.py`` in its own process (its own SparkContext); returns its exit status.

    ``master`` None: none given, as a user's local run (the job's embedded default, its session started early).
    The process runs in a new session; whatever of it is left when the driver dies (the JVM, its Python
    workers) is killed with it, as when a whole driver container is lost.
    """
    with open(log, "wb") as handle:
        process = start_job_process(args, handle, master=master, env=env)
        try:
            return process.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_job_process(
    args: list[str], output: IO[bytes], *, master: str | None = "local[2]", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``jobs/featurize_pca.py`` started in a new session (its own process group, as a terminal's job), its
    stdout and stderr into ``output``; see :func:`run_job_process`."""
    child_env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYSPARK_SUBMIT_ARGS", "PYSPARK_GATEWAY_PORT")},
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "jobs"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(env or {}),
    }
    if master is not None:
        submit = f"--master {master} --driver-memory 1g --conf spark.ui.enabled=false "
        child_env["PYSPARK_SUBMIT_ARGS"] = submit + "--conf spark.sql.shuffle.partitions=4 pyspark-shell"
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=child_env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
