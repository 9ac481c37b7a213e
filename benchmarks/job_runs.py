"""Section 3: the whole job, ``python jobs/featurize_pca.py ...``, as a fresh subprocess per N and engine.

Each run gets a fresh output (so nothing is reused from a feature store) and a hot page cache (its input is read
once before). From the run: the manifest's stage timings and counts; from the process watcher: the process's
wall time, peak memory (driver JVM, driver Python, largest Spark Python worker, the tree at once), CPU seconds
of the Python workers, and the model file the workers mapped (its name carries the sha256 of its bytes).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks import procwatch
from benchmarks.common import ROOT, dataset, job_command, loadavg, warm_page_cache


def run_name(model: str, alpha: float, engine: str, count: int) -> str:
    return f"{model}-{alpha}-{engine}-n{count}"


def summarise(manifest: dict, watched: dict) -> dict[str, object]:
    """The numbers of one job run: stage timings, counts, rates, startup and teardown overhead."""
    timings = manifest["timings_seconds"]
    counts = manifest["counts"]
    stage_sum = sum(timings.values())
    featurize = timings.get("featurize", 0.0)
    return {
        "counts": counts,
        "featurized": counts["featurized"],
        "k": manifest["pca"]["k"],
        "timings_seconds": timings,
        # Beside the stages (the commit waits for them): in the wall time, not in the stage sum.
        "background_seconds": manifest.get("background_seconds", {}),
        "stage_sum_seconds": round(stage_sum, 2),
        # Process start (JVM, imports, session) and teardown: what the manifest's stages do not see.
        "overhead_seconds": round(watched["wall_seconds"] - stage_sum, 2),
        "featurize_images_per_s": round(counts["newly_featurized"] / featurize, 1) if featurize else None,
        "end_to_end_images_per_s": round(counts["featurized"] / stage_sum, 1),
        "process_images_per_s": round(counts["featurized"] / watched["wall_seconds"], 1),
        "worker_images_per_cpu_second": round(
            counts["newly_featurized"] / max(watched["python_worker_cpu_seconds"], 1e-9), 1
        ),
    }


def run_job(
    args: argparse.Namespace,
    engine: str,
    data: Path,
    output: Path,
    *,
    name: str,
    limit: int | None = None,
    keep_output: bool = False,
) -> dict[str, object]:
    """One job run over ``data`` into ``output`` (emptied first unless ``keep_output``), watched."""
    if not keep_output:
        shutil.rmtree(output, ignore_errors=True)
    warm_page_cache(data)
    before = loadavg()
    watched = procwatch.watch(
        job_command(args, engine, data, output, limit=limit),
        Path(args.out) / "logs" / f"job-{name}.txt",
        cwd=ROOT,
    )
    manifest = json.loads((output / "manifest.json").read_text())
    return {
        "name": name,
        "engine": engine,
        "model": args.model,
        "alpha": args.alpha,
        "weights": args.weights,
        "input": str(data),
        "output": str(output),
        **summarise(manifest, watched),
        **watched,
        "load_before": before,
        "load_after": loadavg(),
    }


def run_size(args: argparse.Namespace, engine: str, count: int) -> dict[str, object]:
    """The job over the generated set of ``count`` images."""
    name = run_name(args.model, args.alpha, engine, count)
    result = run_job(args, engine, dataset(args, count), Path(args.out) / "runs" / name, name=name)
    return {"n": count, **result}


WARM_UP_IMAGES = 64


def warm_up(args: argparse.Namespace, engine: str) -> float:
    """One small run before any measured one, so that every measured run meets a machine that has run the job
    before: the model exported into the local cache and the driver JVM's class archive written (the first run
    on a machine pays for both, about 20 s). Returns its wall seconds."""
    data = dataset(args, min(args.sizes))
    output = Path(args.out) / "warm-up"
    return run_job(args, engine, data, output, name=f"warm-up-{engine}", limit=WARM_UP_IMAGES)["wall_seconds"]


def find(report: dict, engine: str, count: int, model: str, alpha: float) -> dict | None:
    """The job run of ``report`` for this engine, N and model, if there is one."""
    for run in report.get("jobs", []):
        if (run["engine"], run["n"], run["model"], run["alpha"]) == (engine, count, model, alpha):
            return run
    return None
