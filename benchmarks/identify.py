"""`fruits identify`: what answering photos costs, and what keeping its files costs the job.

    python -m benchmarks.identify --input /path/to/fruits360-dev [--weights FILE] [--runs 3] [--repeats 3]

1. **The job**: ``--runs`` fresh runs over ``--input`` (each its own output; the exported model from the local
   cache after the first), each run's ``identify files`` stage (what the run adds for identify: the known
   images' Parquet written from the persisted projection, the arrays, the model pointer) against its stage sum and process wall.
2. **Its files**: bytes of ``identify/model.npz`` and ``identify/known.parquet`` for that run, and of a known
   images' file of ``--known`` (default 90,000) synthetic rows of the run's k, written as Spark writes it.
3. **The command**, each a fresh process (``python -m fruits.ops.cli identify ... --json``): one photo, and every
   Test photo under ``--input`` in one call (median of ``--repeats``); per photo after start-up = (all - one) /
   (photos - 1). In one process: imports, loading the run, per photo. Its answers' accuracy against the run's
   own quality report (the same classifier), on all features and on the k components.
4. **At 90,000 known images**: loading the synthetic known file and the nearest-image search per photo.

Progress on stderr; ONE markdown table on stdout (for docs/benchmark.md); every number in ``--json``
(default ``out/bench/identify.json``). Other processes on the machine skew every number: the load average is
recorded before and after each measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import JOB_SCRIPT, ROOT, image_files, loadavg

ENV = {"PYTHONPATH": str(ROOT / "jobs"), "TF_CPP_MIN_LOG_LEVEL": "2"}

# One process: import, load the run, then answer one photo (warm-up) and every photo; seconds of each as JSON.
IN_PROCESS = """
import json, sys, time
started = time.perf_counter()
from fruits import commits, identify
from fruits.storage import open_store
imported = time.perf_counter()
store = open_store(sys.argv[1])
identifier = identify.open_run(store, commits.latest_commit(store))
loaded = time.perf_counter()
photos = sys.argv[2:]
list(identifier.answer(photos[:1]))
warm = time.perf_counter()
list(identifier.answer(photos))
done = time.perf_counter()
print(json.dumps({"imports": imported - started, "open_run": loaded - imported, "first_photo": warm - loaded,
                  "per_photo": (done - warm) / len(photos)}))
"""


def _environment() -> dict[str, str]:
    import os

    return {**os.environ, **ENV}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_job(args: argparse.Namespace, output: Path) -> dict[str, object]:
    """One fresh job run over ``--input`` into ``output``: its stage seconds, wall and identify files."""
    from fruits.models import infer_model_from_filename

    model, alpha = infer_model_from_filename(args.weights) or (args.model, args.alpha)
    command = [sys.executable, str(JOB_SCRIPT), "--input", args.input, "--output", str(output)]
    command += ["--weights", args.weights, "--model", model, "--alpha", str(alpha), "--overwrite"]
    shutil.rmtree(output, ignore_errors=True)  # fresh: its own feature store, nothing reused
    before = loadavg()
    started = time.perf_counter()
    done = subprocess.run(command, env=_environment(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"the job failed: {done.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((output / "manifest.json").read_text())
    run_dir = output / "runs" / manifest["run_id"]
    known = sum(p.stat().st_size for p in (run_dir / "identify" / "known.parquet").glob("part-*"))
    timings = manifest["timings_seconds"]
    return {
        "run_id": manifest["run_id"],
        "wall_seconds": round(wall, 2),
        "stage_sum_seconds": round(sum(timings.values()), 2),
        "identify_files_seconds": timings.get("identify files"),
        "timings_seconds": timings,
        "featurized": manifest["counts"]["featurized"],
        "k": manifest["pca"]["k"],
        "feature_dim": manifest["model"]["feature_dim"],
        "model": f"{manifest['model']['name']} {manifest['model']['alpha']} ({manifest['model']['engine']})",
        "quality": {
            key: manifest["quality"][key] for key in ("test_accuracy_full_features", "test_accuracy_pca")
        },
        "test_images": manifest["quality"]["test_images"],
        "model_npz_bytes": (run_dir / "identify" / "model.npz").stat().st_size,
        "known_parquet_bytes": known,
        "load_before": before,
        "load_after": loadavg(),
    }


def identify_call(output: Path, photos: list[str], classifier: str = "full") -> tuple[float, dict]:
    """(process wall seconds, JSON document) of one `fruits identify --json` call."""
    command = [sys.executable, "-m", "fruits.ops.cli", "identify", *photos, "--run", str(output), "--json"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--classifier", classifier], env=_environment(), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"fruits identify failed: {done.stderr.strip()}")
    return wall, json.loads(done.stdout)


def accuracy(document: dict) -> tuple[int, int]:
    """(right, answered) of a `--json` document whose photos sit in class folders."""
    answered = [a for a in document["answers"] if a.get("class")]
    return sum(a["class"] == Path(a["path"]).parent.name for a in answered), len(answered)


def synthetic_known(count: int, k: int, folder: Path) -> Path:
    """A known images' Parquet file of ``count`` rows of ``k`` float32 components, written as Spark writes it
    (snappy, no dictionary) with Fruits-360-like paths and 131 labels: its size and load time at that scale."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    labels = [f"Fruit class {i}" for i in range(131)]
    chosen = rng.integers(0, len(labels), count)
    paths = [f"file:/data/fruits-360/Training/{labels[c]}/r_{i}_100.jpg" for i, c in enumerate(chosen)]
    values = pa.array(rng.normal(size=count * k).astype(np.float32))
    offsets = pa.array(np.arange(count + 1, dtype=np.int32) * k)
    table = pa.table(
        {
            "path": paths,
            "label": [labels[c] for c in chosen],
            "pcs": pa.ListArray.from_arrays(offsets, values),
        }
    )
    path = folder / "part-00000.snappy.parquet"
    pq.write_table(table, path, compression="snappy", use_dictionary=False)
    return path


def at_scale(count: int, k: int, repeats: int) -> dict[str, float]:
    """Loading a known images' file of ``count`` rows, and the nearest-image search per photo in chunks of 64."""
    import numpy as np

    from fruits import identify

    with tempfile.TemporaryDirectory() as folder:
        path = synthetic_known(count, k, Path(folder))
        size = path.stat().st_size
        loads = []
        for _ in range(repeats):
            started = time.perf_counter()
            known = identify.read_known([str(path)])
            loads.append(time.perf_counter() - started)
    queries = np.random.default_rng(1).normal(size=(identify.CHUNK, k))
    searches = []
    for _ in range(repeats):
        started = time.perf_counter()
        known.nearest(queries, 5)
        searches.append((time.perf_counter() - started) / len(queries))
    return {
        "known_images": count,
        "k": k,
        "known_parquet_bytes": size,
        "load_seconds": statistics.median(loads),
        "nearest_seconds_per_photo": statistics.median(searches),
    }


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Every measurement of this module, as one JSON-ready dict."""
    out = Path(args.out)
    runs = []
    for index in range(args.runs):
        _say(f"job run {index + 1}/{args.runs} over {args.input} ...")
        runs.append(run_job(args, out / f"run{index + 1}"))
    output = out / f"run{args.runs}"
    photos = [str(p) for p in image_files(Path(args.input) / "Test")]
    if len(photos) < 2:
        raise SystemExit(f"{args.input}/Test holds {len(photos)} photos: at least two are needed")
    _say(f"fruits identify: 1 photo and {len(photos)} photos, {args.repeats} times each ...")
    calls: dict[str, list[float]] = {"one": [], "all": []}
    before = loadavg()
    for _ in range(args.repeats):
        calls["one"].append(identify_call(output, photos[:1])[0])
        wall, document = identify_call(output, photos)
        calls["all"].append(wall)
    after = loadavg()
    agreement = {"full": accuracy(document)}
    agreement["pca"] = accuracy(identify_call(output, photos, "pca")[1])
    _say("in one process ...")
    inside = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", IN_PROCESS, str(output), *photos],
                env=_environment(),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(args.repeats)
    ]
    _say(f"{args.known:,} synthetic known images ...")
    scale = at_scale(args.known, int(runs[-1]["k"]), args.repeats)
    one, whole = statistics.median(calls["one"]), statistics.median(calls["all"])
    return {
        "input": args.input,
        "photos": len(photos),
        "job_runs": runs,
        "identify": {
            "one_photo_wall_seconds": calls["one"],
            "all_photos_wall_seconds": calls["all"],
            "per_photo_after_startup_seconds": (whole - one) / (len(photos) - 1),
            "per_photo_with_startup_seconds": whole / len(photos),
            "load_before": before,
            "load_after": after,
        },
        "in_process": {key: statistics.median(r[key] for r in inside) for key in inside[0]},
        "agreement": {space: {"right": right, "answered": n} for space, (right, n) in agreement.items()},
        "at_scale": scale,
    }


def table(result: dict) -> str:
    """The markdown table of one measurement."""
    runs, last = result["job_runs"], result["job_runs"][-1]
    call, inside, scale = result["identify"], result["in_process"], result["at_scale"]
    quality = last["quality"]
    rows = [
        (
            "job runs over the input (fresh outputs)",
            f"{len(runs)}: {last['featurized']:,} images, k = {last['k']}",
        ),
        (
            "job: `identify files` stage, s (per run)",
            ", ".join(f"{r['identify_files_seconds']:.2f}" for r in runs),
        ),
        (
            "job: stage sum / process wall, s (per run)",
            ", ".join(f"{r['stage_sum_seconds']:.1f} / {r['wall_seconds']:.1f}" for r in runs),
        ),
        (
            "job: load average before-after (per run)",
            ", ".join(f"{r['load_before']:.1f}-{r['load_after']:.1f}" for r in runs),
        ),
        (
            "files: model.npz + known.parquet, this run",
            f"{last['model_npz_bytes'] / 1e3:,.0f} KB + {last['known_parquet_bytes'] / 1e3:,.0f} KB",
        ),
        (
            f"files: known.parquet at {scale['known_images']:,} images, k = {scale['k']}",
            f"{scale['known_parquet_bytes'] / 1e6:,.1f} MB ({scale['known_parquet_bytes'] / scale['known_images']:.0f} bytes an image)",
        ),
        (
            "`fruits identify`, 1 photo: process wall, s (each call)",
            ", ".join(f"{s:.2f}" for s in call["one_photo_wall_seconds"]),
        ),
        (
            f"`fruits identify`, {result['photos']} photos in one call: process wall, s",
            ", ".join(f"{s:.2f}" for s in call["all_photos_wall_seconds"]),
        ),
        (
            "per photo after start-up, ms (medians: (all - one) / (photos - 1))",
            f"{1e3 * call['per_photo_after_startup_seconds']:.1f}",
        ),
        (
            f"per photo, start-up included ({result['photos']} in one call), ms",
            f"{1e3 * call['per_photo_with_startup_seconds']:.1f}",
        ),
        ("load average before-after the calls", f"{call['load_before']:.1f}-{call['load_after']:.1f}"),
        (
            "in one process: imports / load the run / first photo, s",
            f"{inside['imports']:.2f} / {inside['open_run']:.2f} / {inside['first_photo']:.3f}",
        ),
        ("in one process: per photo after the first, ms", f"{1e3 * inside['per_photo']:.1f}"),
        *(
            (
                f"Test photos right, classifier on {'all features' if space == 'full' else 'the k components'}",
                f"{a['right']} / {a['answered']} = {a['right'] / a['answered']:.4f} (the run's report: {quality[key]:.4f})",
            )
            for space, key in (("full", "test_accuracy_full_features"), ("pca", "test_accuracy_pca"))
            for a in [result["agreement"][space]]
        ),
        (
            f"at {scale['known_images']:,} known images: load the known file, s",
            f"{scale['load_seconds']:.2f}",
        ),
        (
            f"at {scale['known_images']:,} known images: nearest search per photo, ms",
            f"{1e3 * scale['nearest_seconds_per_photo']:.1f}",
        ),
    ]
    header = f"`fruits identify` on {result['input']} ({last['model']}, {last['feature_dim']} features)"
    lines = [header, "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.identify", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--input", required=True, help="a Fruits-360 folder with Training/ and Test/")
    parser.add_argument("--weights", default="none", help="a Keras weights file (its name gives the model)")
    parser.add_argument("--model", default="mobilenet", help="model when the weights file name does not say")
    parser.add_argument(
        "--alpha", type=float, default=0.25, help="alpha when the weights file name does not say"
    )
    parser.add_argument("--runs", type=int, default=3, help="fresh job runs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each identify measurement")
    parser.add_argument(
        "--known", type=int, default=90_000, help="synthetic known images (default: %(default)s)"
    )
    parser.add_argument("--out", default=str(ROOT / "out" / "bench" / "identify"), help="job outputs")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench" / "identify.json"), help="every number")
    args = parser.parse_args(argv)
    result = measure(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
