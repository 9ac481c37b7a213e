"""Section 4, alternatives: what a user could run instead of the job, side by side in the same run.

For each N: ``--pairs`` job/Pool pairs, each the job (litert) then ``pool_script.py`` (multiprocessing.Pool) right
after it, then ``ray_data.py`` (Ray Data actor pool) against the job-runs section's run at that N. All run on the
same generated images with a hot page cache, the same LiteRT flatbuffer (the sha256 of the file the job's workers
mapped is checked against it), the same cores, and one process per core. Each is watched like a job run (wall
time, peak memory) and its CSV is compared with its job's results.csv (see
:mod:`benchmarks.alternatives.compare`).

Why pairs: the host's speed drifts by more than the Pool target's margin between two runs minutes apart (the
same code measured 1.09, 1.17 and 1.23 x the Pool script in three runs). A job and the Pool run back to back see
about the same host; the target is judged on the median of the pairs' ratios, and their spread is shown.

Ray is not a project dependency: ``benchmarks/requirements-alternatives.txt`` is installed on demand into
``out/bench/alt-venv`` (``--alt-venv``; a fresh venv of this Python, with requirements.txt as constraints); when that fails the Ray
rows are skipped with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import job_runs, procwatch
from benchmarks.alternatives.compare import compare_files
from benchmarks.common import ROOT, dataset, loadavg, warm_page_cache

HERE = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "benchmarks" / "requirements-alternatives.txt"
CONSTRAINTS = ROOT / "requirements.txt"


def alt_python(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The alternatives' venv interpreter, installed if needed: (path, "") or (None, why not)."""
    venv = Path(args.alt_venv).resolve()
    python = venv / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python, ""
    print(f"installing {REQUIREMENTS.name} into {venv} (once) ...", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS), "-c", str(CONSTRAINTS)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return None, f"could not install {REQUIREMENTS.name}: {lines[-1] if lines else done.returncode}"
    stamp.write_text(wanted)
    return python, ""


def script_output(log: Path) -> dict:
    """The JSON line an alternative prints last (images, k, its own stage timings)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and "timings_seconds" in line:
            return json.loads(line)
    return {}


def run_alternative(
    args: argparse.Namespace,
    name: str,
    python: Path,
    data: Path,
    model: str,
    job: dict,
    count: int,
    suffix: str = "",
) -> dict[str, object]:
    """One alternative over ``data``: watched, then compared with the job's results.csv. ``suffix`` tells its CSV
    and log apart from another run of the same alternative at the same N (a pair's)."""
    folder = Path(args.out) / "alternatives"
    output = folder / f"{name}-n{count}{suffix}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    script = HERE / ("pool_script.py" if name == "pool" else "ray_data.py")
    command = [str(python), str(script), "--input", str(data), "--model", model, "--output", str(output)]
    command += ["--processes" if name == "pool" else "--actors", str(os.cpu_count() or 1)]
    if name == "ray":
        command += ["--batch-size", str(args.batch_size), "--size", str(args.decode_size)]
    if args.k:
        command += ["--k", str(args.k)]
    warm_page_cache(data)
    before = loadavg()
    watched = procwatch.watch(
        command, Path(args.out) / "logs" / f"{name}-n{count}{suffix}.txt", cwd=ROOT, check=False
    )
    result: dict[str, object] = {
        "name": name,
        "n": count,
        **watched,
        "load_before": before,
        "load_after": loadavg(),
    }
    if watched["returncode"] != 0:
        return {**result, "error": f"exit status {watched['returncode']}; see {watched['log']}"}
    printed = script_output(Path(watched["log"]))  # type: ignore[arg-type]
    manifest = json.loads((Path(job["output"]) / "manifest.json").read_text())
    result.update(
        images=printed.get("images"),
        k=printed.get("k"),
        timings_seconds=printed.get("timings_seconds"),
        images_per_s=round(count / watched["wall_seconds"], 1),  # type: ignore[operator]
        equal_outputs=compare_files(
            Path(job["output"]) / "results.csv",
            output,
            explained=manifest["pca"]["explained_variance"],
            width=manifest["model"]["feature_dim"],
        ),
    )
    return result


def run_pair(args: argparse.Namespace, count: int, data: Path, model: str, index: int) -> dict[str, object]:
    """Pair ``index``: the job over ``data``, then the Pool script right after it, compared with that job's output.

    Returns the Pool run with ``pair``: the job's wall, its stage timings and name; or, when the job failed, a
    Pool run with ``error`` (measured again on ``--resume``). The job's output is removed either way: a feature
    store per pair would fill the disk at large N."""
    name = f"{job_runs.run_name(args.model, args.alpha, 'litert', count)}-pair{index}"
    output = Path(args.out) / "pairs" / name
    try:
        try:
            job = job_runs.run_job(args, "litert", data, output, name=name)
        except RuntimeError as failed:  # the watcher's "failed (code); see log"
            return {
                "name": "pool",
                "n": count,
                "error": f"pair {index}'s job: {failed}",
                "pair": {"index": index},
            }
        pool = run_alternative(args, "pool", Path(sys.executable), data, model, job, count, f"-pair{index}")
        pool["pair"] = {
            "index": index,
            "job": name,
            "job_wall_seconds": job["wall_seconds"],
            "job_timings_seconds": job["timings_seconds"],
            "job_model_files": job.get("model_files", []),
        }
        return pool
    finally:
        shutil.rmtree(output, ignore_errors=True)


def run_size(args: argparse.Namespace, count: int, job: dict, files: dict) -> dict[str, object]:
    """``--pairs`` job/Pool pairs at ``count`` images, then Ray against the job run ``job`` (litert, same N)."""
    model = files["litert"]
    data = dataset(args, count)
    pairs = [run_pair(args, count, data, model["path"], index) for index in range(1, args.pairs + 1)]
    # The job names the file it ships <model>-<sha256[:16]>.tflite; its workers map it. Every job compared here,
    # the job-runs section's and each pair's, must have mapped the limit's file.
    job_files = [os.path.basename(f) for f in job.get("model_files", [])]
    pair_files = [os.path.basename(f) for p in pairs for f in p["pair"].get("job_model_files", [])]  # type: ignore[attr-defined]
    expected = f"-{model['sha256'][:16]}.tflite"
    section: dict[str, object] = {
        "n": count,
        "job": job["name"],
        "model_file": model["path"],
        "model_sha256": model["sha256"],
        "job_model_files": job_files,
        "same_model_file": bool(job_files) and all(f.endswith(expected) for f in job_files + pair_files),
        "runs": pairs,
    }
    python, why = alt_python(args)
    if python is None:
        print(f"alternatives: Ray Data skipped: {why}", file=sys.stderr, flush=True)
        section["runs"].append({"name": "ray", "n": count, "skipped": why})  # type: ignore[union-attr]
    else:
        section["runs"].append(run_alternative(args, "ray", python, data, model["path"], job, count))  # type: ignore[union-attr]
    return section
