"""What every section shares: paths, the machine, generated image sets, timing, the job's command line."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JOB_SCRIPT = ROOT / "jobs" / "featurize_pca.py"
if str(ROOT / "jobs") not in sys.path:
    sys.path.insert(0, str(ROOT / "jobs"))  # the job's package, public functions only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import make_dataset  # noqa: E402
from fruits.engines import CALIBRATED  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def loadavg() -> float:
    """The 1-minute load average: other work on the machine skews every number, so each one records it."""
    return float(Path("/proc/loadavg").read_text().split()[0])


# The CPU features that decide int8 against float32 speed: without an 8-bit dot product (x86 VNNI, ARM's
# asimddp/i8mm) int8 convolutions run no faster than float32 ones (docs/benchmark.md, "The int8 engine").
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def simd_flags(cpuinfo: str) -> list[str]:
    """The :data:`SIMD_FLAGS` this CPU has, from ``/proc/cpuinfo``'s first ``flags`` (x86) or ``Features`` line."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [flag for flag in SIMD_FLAGS if flag in have]
    return []


def machine() -> dict[str, object]:
    """CPU model and its int8-relevant SIMD features, cores, memory, OS and Python of this machine."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo").read_text()
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "simd": simd_flags(cpuinfo),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def dataset(args: argparse.Namespace, count: int) -> Path:
    """The generated set of ``count`` images (made once, kept in ``--cache``)."""
    return make_dataset.make(Path(args.data), count, Path(args.cache) / f"n{count}")


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder``, sorted, skipping hidden names as the job does (``_x``, ``.x``)."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(("_", ".")))
        found += [
            Path(directory) / f
            for f in files
            if not f.startswith(("_", ".")) and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def read_images(folder: Path, count: int) -> list[bytes]:
    """The bytes of the first ``count`` images under ``folder``."""
    return [p.read_bytes() for p in image_files(folder)[:count]]


def warm_page_cache(folder: Path) -> int:
    """Read every file under ``folder`` once so that each contender starts with the same (hot) page cache."""
    total = 0
    for path in image_files(folder):
        total += len(path.read_bytes())
    return total


def timed_rate(work: Callable[[], object], items: int, repeats: int) -> dict[str, float]:
    """Images/s of ``work()`` (which handles ``items`` images): best and median of ``repeats`` warmed runs."""
    work()  # warm up
    rates, cpu_rates = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        work()
        rates.append(items / (time.perf_counter() - started))
        cpu_rates.append(items / max(time.process_time() - cpu, 1e-9))
    # Images per CPU-second hardly moves when other processes share the machine; images/s does.
    return {
        "best": round(max(rates), 1),
        "median": round(statistics.median(rates), 1),
        "per_cpu_second": round(max(cpu_rates), 1),
    }


def calibration_folder(args: argparse.Namespace) -> Path | None:
    """The folder every ``litert-int8`` run of the benchmark calibrates on: the sample the image sets are made
    from (``--data``), else the real-data input; one folder for every N, so every int8 run, the limit and the
    alternatives share one int8 model file."""
    folder = getattr(args, "data", None) or getattr(args, "input", None)
    return Path(folder).resolve() if folder else None


def job_command(
    args: argparse.Namespace,
    engine: str,
    data: Path,
    output: Path,
    *,
    model: str | None = None,
    alpha: float | None = None,
    weights: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """``python jobs/featurize_pca.py ...`` for one benchmark run (fresh output unless the caller keeps it)."""
    command = [
        sys.executable,
        str(JOB_SCRIPT),
        "--input",
        str(data),
        "--output",
        str(output),
        "--model",
        model or args.model,
        "--alpha",
        str(args.alpha if alpha is None else alpha),
        "--weights",
        weights or args.weights,
        "--engine",
        engine,
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--decode-size",
        str(args.decode_size),
        "--overwrite",
    ]
    if engine in CALIBRATED and calibration_folder(args):
        command += ["--calibration", str(calibration_folder(args))]
    if getattr(args, "k", None):
        command += ["--k", str(args.k)]
    if limit:
        command += ["--limit", str(limit)]
    return command


def child_session():
    """A local Spark session like the job's, for the sections that run Spark in a child process."""
    from pyspark.sql import SparkSession

    from fruits.session import prepare_local_mode

    prepare_local_mode()
    session = (
        SparkSession.builder.master("local[*]")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def run_child(args: argparse.Namespace, module: str) -> dict[str, object]:
    """Run ``python -m benchmarks.<module> <args.json> <result.json>`` watched; its result and the watch."""
    import json

    from benchmarks import procwatch

    folder = Path(args.out) / "children"
    folder.mkdir(parents=True, exist_ok=True)
    arguments, target = folder / f"{module}-args.json", folder / f"{module}.json"
    arguments.write_text(json.dumps(vars(args), default=str))
    target.unlink(missing_ok=True)
    watched = procwatch.watch(
        [sys.executable, "-m", f"benchmarks.{module}", str(arguments), str(target)],
        Path(args.out) / "logs" / f"{module}.txt",
        cwd=ROOT,
    )
    return {"result": json.loads(target.read_text()), **watched}


def child_main(function: Callable[[argparse.Namespace], object]) -> None:
    """Entry of a child process: ``function(args)`` with the parent's arguments, its JSON to the target."""
    import json

    arguments, target = sys.argv[1:3]
    result = function(argparse.Namespace(**json.loads(Path(arguments).read_text())))
    Path(target).write_text(json.dumps(result))
