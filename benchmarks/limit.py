"""Section 1, the physical limit: the inference engine alone on pre-decoded tensors, in two shapes.

- one process with every core's threads (batches of ``--batch-size``, and one image per invoke);
- one single-threaded process per core, all running at once (what Spark's one task per core does, minus
  Spark): each invokes image by image (LiteRT) or by batches (Keras).

The limit of an engine is the better of the two shapes; the machine's limit (what "x limit" divides by) is the
best engine's. Every shape runs in fresh processes started with ``spawn`` (no state from the benchmark), which
start together at a barrier for each timed pass; a pass's rate is all images over the time from the first
start to the last end.

The model files come from :func:`export_models`, a fresh Python process calling the job's public functions
``fruits.models.build_feature_model`` and ``fruits.engines.export`` (and for ``litert-int8``
``fruits.calibration.collect`` on the folder every int8 job run of the benchmark is given as ``--calibration``):
the same bytes the job exports (TensorFlow's conversion is deterministic in a fresh process; the job-runs
section checks the sha256 the job's workers ran).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import procwatch
from benchmarks.common import ROOT, calibration_folder, loadavg
from fruits.engines import RUNTIMES

# --------------------------------------------------------------------------------------------- model files


def export_models(args: argparse.Namespace, engines: list[str], folder: Path) -> dict[str, dict[str, str]]:
    """Export the feature model for each engine in a fresh process; {engine: {path, sha256}}."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.limit",
        "--export",
        json.dumps(
            {
                "model": args.model,
                "alpha": args.alpha,
                "weights": args.weights,
                "image_size": args.image_size,
                "decode_size": args.decode_size,
                "engines": engines,
                "folder": str(folder),
                "calibration": str(calibration_folder(args)) if calibration_folder(args) else None,
            }
        ),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"model export failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _calibration_images(spec: dict) -> list | None:
    """The int8 engine's calibration images, chosen and decoded by the job's own functions (the job's defaults
    for their count and the file size limit), from the folder the int8 job runs are given."""
    if not spec.get("calibration"):
        return None
    from fruits import calibration
    from fruits.listing import list_input
    from fruits.options import default

    megabytes = default("max_file_mb")
    listing = list_input(spec["calibration"], max_file_mb=megabytes)
    chosen = calibration.collect(listing, default("calibration_images"), megabytes * 1024 * 1024)
    return chosen.decoded(spec["decode_size"], default("max_pixels"))


def _export(spec: dict) -> dict[str, dict[str, str]]:
    from fruits import engines, models

    model = models.build_feature_model(
        models.get_spec(spec["model"]),
        image_size=spec["image_size"],
        decode_size=spec["decode_size"],
        alpha=spec["alpha"],
        weights=models.resolve_weights(spec["weights"]),
    )
    images = _calibration_images(spec) if set(spec["engines"]) & set(engines.CALIBRATED) else None
    files = {}
    for engine in spec["engines"]:
        exported = engines.export(model, engine, spec["folder"], f"{spec['model']}-export", images)
        sha = models.sha256_file(exported)
        # Named as the job names the file it ships: <name>-<sha256[:16]><extension>.
        path = os.path.join(spec["folder"], f"{spec['model']}-{sha[:16]}{engines.extension(engine)}")
        os.replace(exported, path)
        files[engine] = {"path": path, "sha256": sha}
    return files


def decoded_tensors(images: list[bytes], decode_size: int, path: Path) -> Path:
    """Decode ``images`` as the job does (``fruits.decoding.decode_image``) into one ``.npy`` array."""
    import numpy as np

    from fruits.decoding import decode_image

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack([decode_image(data, decode_size) for data in images]))
    return path


# --------------------------------------------------------------------------------------------- shapes


def _worker(model: str, engine: str, threads: int, batch: int, tensors: str, repeats: int, barrier, results):
    """One measuring process: load, warm up, then one timed pass per barrier crossing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from fruits.engines import load_predictor

    images = np.load(tensors)
    predict = load_predictor(model, engine, threads)
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    for chunk in chunks:  # warm-up pass: plans every batch length once
        predict(chunk)
    passes = []
    for _ in range(repeats):
        barrier.wait()
        started, cpu = time.perf_counter(), time.process_time()
        for chunk in chunks:
            predict(chunk)
        passes.append((started, time.perf_counter(), time.process_time() - cpu))
    results.put(passes)


def measure_shape(
    model: str,
    engine: str,
    *,
    processes: int,
    threads: int,
    batch: int,
    tensors: Path,
    images: int,
    repeats: int,
) -> dict[str, float]:
    """Images/s of ``processes`` concurrent processes with ``threads`` threads each: best and median pass."""
    busy_before, children_before, own_before = (
        procwatch.machine_busy_seconds(),
        _children_cpu(),
        time.process_time(),
    )
    started = time.perf_counter()
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(
            target=_worker, args=(model, engine, threads, batch, str(tensors), repeats, barrier, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: list[list[tuple[float, float, float]]] = []
    while len(outcomes) < processes:
        try:
            outcomes.append(results.get(timeout=5))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:  # the others wait at the barrier for it: stop them
                for worker in workers:
                    worker.terminate()
                raise RuntimeError(f"limit worker for {engine} exited with {failed[0]}") from None
    for worker in workers:
        worker.join()
    own = (
        _children_cpu() - children_before + time.process_time() - own_before
    )  # the workers (waited for) and us
    others = procwatch.others_share(
        busy_before, procwatch.machine_busy_seconds(), own, time.perf_counter() - started
    )
    return {"processes": processes, "threads": threads, "batch": batch, **combine(outcomes, images), **others}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def combine(outcomes: list[list[tuple[float, float, float]]], images: int) -> dict[str, float]:
    """Rates from each process's passes ``(start, end, cpu seconds)``: pass r of every process ran together.

    A pass's rate is every process's images over the time from the first start to the last end (the processes
    share the machine, so the slowest decides); per CPU-second divides by the CPU time they all used.
    """
    rates, cpu_rates = [], []
    for passes in zip(*outcomes, strict=True):
        wall = max(end for _, end, _ in passes) - min(start for start, _, _ in passes)
        rates.append(len(passes) * images / wall)
        cpu_rates.append(len(passes) * images / max(sum(cpu for _, _, cpu in passes), 1e-9))
    return {
        "best": round(max(rates), 1),
        "median": round(statistics.median(rates), 1),
        "per_cpu_second": round(max(cpu_rates), 1),
    }


def shapes(engine: str, cores: int, batch: int) -> dict[str, dict[str, int]]:
    """The settings measured for ``engine``: name -> processes, threads, batch."""
    single = {"processes": 1, "threads": cores}
    per_core = {"processes": cores, "threads": 1}
    found = {f"1 proc x {cores} threads, batch {batch}": {**single, "batch": batch}}
    if RUNTIMES[engine] == "litert":
        found[f"1 proc x {cores} threads, batch 1"] = {**single, "batch": 1}
        # LiteRT with one thread invokes image by image whatever the batch (fruits.engines).
        found[f"{cores} procs x 1 thread, per image"] = {**per_core, "batch": batch}
    else:
        found[f"{cores} procs x 1 thread, batch {batch}"] = {**per_core, "batch": batch}
    return found


def measure(
    args: argparse.Namespace, files: dict[str, dict[str, str]], tensors: Path, images: int
) -> dict[str, object]:
    """Every shape of every engine in ``files``; each engine's best, and the machine's limit."""
    cores = os.cpu_count() or 1
    result: dict[str, object] = {"images": images, "load_before": loadavg(), "engines": {}}
    for engine, file in files.items():
        measured = {}
        for name, shape in shapes(engine, cores, args.batch_size).items():
            measured[name] = measure_shape(
                file["path"], engine, tensors=tensors, images=images, repeats=args.repeats, **shape
            )
            print(f"limit {engine} {name}: {measured[name]['best']:.0f} img/s", file=sys.stderr, flush=True)
        best = max(measured, key=lambda n: measured[n]["best"])
        result["engines"][engine] = {  # type: ignore[index]
            "shapes": measured,
            "best_shape": best,
            "best": measured[best]["best"],
            "model_sha256": file["sha256"],
        }
    result["load_after"] = loadavg()
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--export"]:
        print(json.dumps(_export(json.loads(sys.argv[2]))))
