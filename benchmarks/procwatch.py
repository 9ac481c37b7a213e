"""Run a command and watch its whole process tree: wall time, peak memory, CPU time, mapped model files.

Polls ``/proc`` (Linux) every ``interval`` seconds. Per process it keeps the peak resident set (``VmHWM``, which
the kernel tracks exactly, so short peaks between polls are not missed), its CPU seconds, and which model files
it has mapped (LiteRT maps its ``.tflite`` file: this is how the benchmark sees which file the job's Python
workers really ran). The sum of the tree's current RSS is sampled at each poll: the peak of that sum is the most
memory the whole tree held at once (to within one poll).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MODEL_SUFFIXES = (".tflite",)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Seen:
    """What was seen of one process over its life."""

    cmdline: str
    peak_mib: int = 0
    cpu_seconds: float = 0.0
    models: set[str] = field(default_factory=set)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``: all but idle, iowait
    and steal). Its rise over a measurement minus what the measured processes used is what everything else on
    the machine took: the honest measure of a disturbed run, which the load average only hints at."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, _steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def others_share(busy_before: float, busy_after: float, own_cpu: float, wall: float) -> dict[str, float]:
    """CPU seconds used outside the measured processes, and their share of the machine over ``wall``."""
    others = max(busy_after - busy_before - own_cpu, 0.0)
    cores = os.cpu_count() or 1
    return {
        "others_cpu_seconds": round(others, 1),
        "others_share": round(others / max(wall * cores, 1e-9), 3),
    }


def _reaped_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for (and theirs, likewise)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def sample(pid: int) -> tuple[int, str, int, float, float] | None:
    """(start time, command line, VmHWM MiB, CPU seconds, RSS MiB) of a live process, None when it is gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) // 1024
                break
        fields = _stat(pid)
        if fields is None:
            return None
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss = int(fields[21]) * PAGE_MIB
        return int(fields[19]), cmdline.strip(), hwm, cpu, rss
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError, ValueError):
        return None


def mapped_models(pid: int) -> set[str]:
    """Model files (``.tflite``) mapped into ``pid``."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return {line.split()[-1] for line in maps if line.rstrip().endswith(MODEL_SUFFIXES)}
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return set()


def is_java(cmdline: str) -> bool:
    return os.path.basename(cmdline.split(" ", 1)[0]) == "java"


def is_spark_python_worker(cmdline: str) -> bool:
    # The pyspark daemon forks one worker per concurrent task: every fork has the daemon's command line.
    return "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline


def watch(
    command: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    interval: float = 0.5,
    check: bool = True,
) -> dict[str, object]:
    """Run ``command`` (output to ``log_path``) and summarise its process tree.

    Returns wall seconds, return code, the CPU seconds other processes on the machine used meanwhile, peak MiB of the root process, of the largest JVM and of the largest
    other child, the peak of the tree's summed RSS, CPU seconds (all, and Spark's Python workers), the number
    of processes, and the model files mapped. Raises RuntimeError on a non-zero exit when ``check``.
    """
    seen: dict[tuple[int, int], Seen] = {}  # by (pid, start time): a reused pid is another process
    tree_peak = 0.0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    busy_before, reaped_before = machine_busy_seconds(), _reaped_cpu()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, env=env or dict(os.environ), stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
        while True:
            rss_now = 0.0
            for pid in descendants(process.pid):
                status = sample(pid)
                if status is None:
                    continue
                start, cmdline, hwm, cpu, rss = status
                record = seen.setdefault((pid, start), Seen(cmdline))
                record.cmdline = cmdline or record.cmdline
                record.peak_mib = max(record.peak_mib, hwm)
                record.cpu_seconds = max(record.cpu_seconds, cpu)
                rss_now += rss
                if not is_java(cmdline) and not record.models:
                    record.models = mapped_models(pid)
            tree_peak = max(tree_peak, rss_now)
            try:
                # Returns as soon as the process ends: a sleep here would add up to an interval to its wall time
                # (every wall measured before this was 0-0.5 s long, in steps of the polling).
                process.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                continue
    wall = time.perf_counter() - started
    busy_after = machine_busy_seconds()
    # Sampled CPU misses a process's last interval; the kernel's count for the reaped root (which includes the
    # children it waited for) does not. The larger of the two is the tree's CPU.
    tree_cpu = max(sum(s.cpu_seconds for s in seen.values()), _reaped_cpu() - reaped_before)
    if check and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log_path}")
    root = next((s for (pid, _), s in seen.items() if pid == process.pid), Seen(""))
    others = [s for (pid, _), s in seen.items() if pid != process.pid]
    jvms = [s for s in others if is_java(s.cmdline)]
    workers = [s for s in others if is_spark_python_worker(s.cmdline)]
    children = [s for s in others if not is_java(s.cmdline)]
    return {
        "wall_seconds": round(wall, 2),
        "returncode": process.returncode,
        "memory": {
            "root_mib": root.peak_mib,
            "jvm_mib": max((s.peak_mib for s in jvms), default=0),
            "largest_child_mib": max((s.peak_mib for s in children), default=0),
            "spark_worker_mib": max((s.peak_mib for s in workers), default=0),
            "tree_peak_rss_mib": round(tree_peak),
        },
        "processes": len(seen),
        "spark_workers": len(workers),
        "cpu_seconds": round(tree_cpu, 1),
        **others_share(busy_before, busy_after, tree_cpu, wall),
        "python_worker_cpu_seconds": round(sum(s.cpu_seconds for s in workers), 1),
        "model_files": sorted({m for s in seen.values() for m in s.models}),
        "log": str(log_path),
    }
