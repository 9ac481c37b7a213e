"""Featurization benchmark: the engine's limit, decode, the Spark job per engine and N, the naive way, PCA.

One run, one machine, one model / image size / batch size (issue 7):

1. limit: raw inference on pre-decoded tensors in one process with every core (LiteRT and Keras);
2. decode (+ resize when the decode size is not the source's) per core;
3. the job (``jobs/featurize_pca.py``) in Spark local mode over N images, one fresh process per run, for each
   engine: end to end (sum of the manifest's stage timings, and the process's wall time) and the featurize
   stage alone, as a ratio of (1); peak memory (VmHWM) of the driver's JVM and Python and of each Python worker;
4. the naive way for contrast: a Keras model rebuilt for every batch, images read from paths one by one;
5. PCA fit + transform as N grows and as the feature width grows (synthetic low-rank features).

    FRUITS_DATA=/path/to/fruits360-sample .venv/bin/python benchmarks/featurize_bench.py

prints the table and writes ``out/bench/bench.json``. Images are generated once into ``out/bench-data``
(see ``make_dataset.py``). ``--quick`` runs N = 1,000 only. Other processes on the machine skew every number:
the JSON records the load average before and after each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "jobs"))
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import make_dataset  # noqa: E402


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine() -> dict[str, object]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def dataset(args: argparse.Namespace, count: int) -> Path:
    return make_dataset.make(Path(args.data), count, Path(args.cache) / f"n{count}")


def read_images(folder: Path, count: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*.jpg"))[:count]
    return [p.read_bytes() for p in files]


# ----------------------------------------------------------------------------------------------- 1 + 2


def timed_rate(work, items: int, repeats: int) -> dict[str, float]:
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


def limit_and_decode(args: argparse.Namespace, images: list[bytes], folder: str) -> dict[str, object]:
    """Sections 1 and 2 in this process."""
    import numpy as np

    from fruits import engines, models
    from fruits.decoding import decode_image

    cores = os.cpu_count() or 1
    spec = models.get_spec(args.model)
    model = models.build_feature_model(
        spec,
        image_size=args.image_size,
        decode_size=args.decode_size,
        alpha=args.alpha,
        weights=models.resolve_weights(args.weights),
    )
    tensors = np.stack([decode_image(data, args.decode_size) for data in images])
    batches = [tensors[i : i + args.batch_size] for i in range(0, len(tensors), args.batch_size)]
    result: dict[str, object] = {"load_before": loadavg(), "images": len(tensors)}

    tflite = engines.export(model, "litert", folder, "bench")
    for threads, batch in ((cores, args.batch_size), (cores, 1), (1, args.batch_size), (1, 1)):
        predict = engines.load_predictor(tflite, "litert", threads)
        chunks = batches if batch == args.batch_size else [t[None] for t in tensors]
        # The predictor re-plans when the batch length changes: time a whole pass at one batch length.
        name = f"litert_threads{threads}_batch{batch}"
        result[name] = timed_rate(lambda p=predict, c=chunks: [p(x) for x in c], len(tensors), args.repeats)
        engines._PREDICTORS.clear()  # a fresh interpreter for the next setting
    result["litert"] = result[f"litert_threads{cores}_batch{args.batch_size}"]

    # The keras engine as the job runs it (a traced tf.function), with TensorFlow's default threads (all cores).
    keras_predict = engines.load_predictor(engines.export(model, "keras", folder, "bench"), "keras", cores)
    result["keras"] = timed_rate(lambda: [keras_predict(x) for x in batches], len(tensors), args.repeats)
    result["keras_predict"] = timed_rate(
        lambda: model.predict(tensors, batch_size=args.batch_size, verbose=0), len(tensors), args.repeats
    )

    # 2: decode alone on one core, at the job's decode size and (for reference) straight to the model's size.
    sample = images[: min(len(images), 1000)]
    result["decode_per_core"] = timed_rate(
        lambda: [decode_image(d, args.decode_size) for d in sample], len(sample), args.repeats
    )
    result["decode_resize_per_core"] = timed_rate(
        lambda: [decode_image(d, args.image_size) for d in sample], len(sample), args.repeats
    )
    result["load_after"] = loadavg()
    return result


# ----------------------------------------------------------------------------------------------- 3


def _status(pid: int) -> tuple[str, int, float] | None:
    """(command line, VmHWM in MiB, user+system CPU seconds) of a live process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) // 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return cmdline, hwm, cpu
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def watch(command: list[str], env: dict[str, str], log_path: Path) -> dict[str, object]:
    """Run ``command``; poll its process tree for peak memory and CPU time per kind of process."""
    seen: dict[int, tuple[str, int, float]] = {}
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while process.poll() is None:
            for pid in _descendants(process.pid):
                status = _status(pid)
                if status:  # keep the largest seen: a pid can be reused, peaks never go down
                    old = seen.get(pid, ("", 0, 0.0))
                    seen[pid] = (
                        status[0] if status[1] >= old[1] else old[0],
                        max(status[1], old[1]),
                        max(status[2], old[2]),
                    )
            time.sleep(0.5)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log_path}")
    memory = {"driver_python_mib": 0, "driver_jvm_mib": 0, "worker_mib": 0, "workers": 0}
    worker_cpu = 0.0
    for pid, (cmdline, hwm, cpu) in seen.items():
        if pid == process.pid:
            memory["driver_python_mib"] = hwm
        elif "java" in cmdline.split(" ", 1)[0]:
            memory["driver_jvm_mib"] = max(memory["driver_jvm_mib"], hwm)
        elif "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
            # The daemon forks one worker per concurrent task: every fork has the daemon's command line.
            memory["worker_mib"] = max(memory["worker_mib"], hwm)
            memory["workers"] += 1
            worker_cpu += cpu
    return {
        "wall_seconds": round(wall, 2),
        "memory": memory,
        "python_worker_cpu_seconds": round(worker_cpu, 1),
    }


def job_command(
    args: argparse.Namespace, engine: str, data: Path, output: Path, model: str, alpha: float, weights: str
) -> list[str]:
    """The job's command line for one benchmark run."""
    return [
        sys.executable,
        "jobs/featurize_pca.py",
        "--input",
        str(data),
        "--output",
        str(output),
        "--model",
        model,
        "--alpha",
        str(alpha),
        "--weights",
        weights,
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


def job_run(
    args: argparse.Namespace, engine: str, count: int, model: str, alpha: float, weights: str
) -> dict:
    """Section 3: the job in a fresh process over ``count`` images, fresh output (no feature-store reuse)."""
    data = dataset(args, count)
    output = Path(args.out) / "runs" / f"{model}-{alpha}-{engine}-n{count}"
    shutil.rmtree(output, ignore_errors=True)
    command = job_command(args, engine, data, output, model, alpha, weights)
    before = loadavg()
    watched = watch(command, dict(os.environ), Path(args.out) / f"log-{output.name}.txt")
    manifest = json.loads((output / "manifest.json").read_text())
    timings = manifest["timings_seconds"]
    featurized = manifest["counts"]["featurized"]
    end_to_end = sum(timings.values())
    return {
        "engine": engine,
        "model": model,
        "alpha": alpha,
        "n": count,
        "featurized": featurized,
        "timings_seconds": timings,
        "featurize_images_per_s": round(manifest["counts"]["newly_featurized"] / timings["featurize"], 1),
        "end_to_end_images_per_s": round(featurized / end_to_end, 1),
        "process_images_per_s": round(featurized / watched["wall_seconds"], 1),
        "featurize_images_per_worker_cpu_second": round(
            manifest["counts"]["newly_featurized"] / max(watched["python_worker_cpu_seconds"], 1e-9), 1
        ),
        "k": manifest["pca"]["k"],
        "load_before": before,
        "load_after": loadavg(),
        **watched,
    }


# ----------------------------------------------------------------------------------------------- 6


def incremental(args: argparse.Namespace) -> dict[str, object]:
    """Section 6: a second run over the same images plus 10% new ones, on the same output and feature store."""
    root = dataset(args, args.incremental_n)
    files = sorted(root.rglob("*.jpg"))
    base = round(len(files) / 1.1)
    work = Path(args.out) / "incremental-input"
    output = Path(args.out) / "runs" / "incremental"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)

    def link(paths: list[Path]) -> None:
        for path in paths:
            target = work / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)

    runs = []
    for name, paths in (("first", files[:base]), ("second", files[base:])):
        link(paths)
        command = job_command(args, "litert", work, output, args.model, args.alpha, args.weights)
        watch(command, dict(os.environ), Path(args.out) / f"log-incremental-{name}.txt")
        manifest = json.loads((output / "manifest.json").read_text())
        runs.append(
            {
                "run": name,
                "found": manifest["counts"]["found"],
                "newly_featurized": manifest["counts"]["newly_featurized"],
                "reused": manifest["counts"]["reused"],
                "featurize_seconds": manifest["timings_seconds"].get("featurize", 0.0),
                "end_to_end_seconds": round(sum(manifest["timings_seconds"].values()), 1),
            }
        )
    first, second = runs
    return {
        "runs": runs,
        "work_ratio": round(second["newly_featurized"] / first["newly_featurized"], 3),
        "featurize_time_ratio": round(second["featurize_seconds"] / max(first["featurize_seconds"], 1e-9), 3),
    }


# ----------------------------------------------------------------------------------------------- 4 + 5


def child_session():
    from pyspark.sql import SparkSession

    from fruits.job import ship_package_to_local_workers

    ship_package_to_local_workers()
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


def naive(args: argparse.Namespace) -> dict[str, object]:
    """Section 4 (child process): what many published versions do, timed from paths to features."""
    spark = child_session()
    folder = dataset(args, max(args.naive_count, 320))
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))[: args.naive_count]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size))
    frame = spark.createDataFrame([(p,) for p in paths], "path string").repartition(
        spark.sparkContext.defaultParallelism
    )
    size, model_name, alpha = args.image_size, args.model, args.alpha

    def featurize(batches):
        import numpy as np
        import pandas as pd
        from PIL import Image

        from fruits import models

        spec = models.get_spec(model_name)
        for batch in batches:
            import keras

            kwargs = {"alpha": alpha} if spec.has_alpha else {}
            model = getattr(keras.applications, spec.constructor)(  # rebuilt for every batch
                include_top=False, pooling="avg", weights=None, input_shape=(size, size, 3), **kwargs
            )
            arrays = []
            for path in batch["path"]:  # one by one, from the path
                with Image.open(path) as image:
                    arrays.append(np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32))
            x = models.preprocess_function(spec)(np.stack(arrays))
            features = model.predict(x, verbose=0)
            yield pd.DataFrame({"path": batch["path"], "n": [len(f) for f in features]})

    started = time.perf_counter()
    count = frame.mapInPandas(featurize, "path string, n int").count()
    seconds = time.perf_counter() - started
    spark.stop()
    return {"n": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1)}


def pca(args: argparse.Namespace) -> list[dict[str, object]]:
    """Section 5 (child process): reduce.fit + project on synthetic low-rank features, in Spark only."""
    import numpy as np
    import pandas as pd

    from fruits import reduce
    from fruits.models import get_spec

    spark = child_session()
    default_width = get_spec(args.model).feature_dim(args.alpha)
    cases = [(n, default_width) for n in args.pca_sizes] + [
        (args.pca_width_n, w) for w in args.pca_widths if w != default_width
    ]
    results = []
    for n, width in cases:

        def generate(batches, width=width):
            for batch in batches:
                rng = np.random.default_rng(int(batch["id"].iloc[0]))
                basis = np.random.default_rng(0).normal(size=(32, width))
                z = rng.normal(size=(len(batch), 32)) * np.linspace(3, 0.1, 32)
                x = np.maximum(z @ basis + rng.normal(scale=0.05, size=(len(batch), width)), 0)
                yield pd.DataFrame({"id": batch["id"], "features": list(x.astype(np.float32))})

        features = (
            spark.range(n).repartition(4).mapInPandas(generate, "id long, features array<float>").cache()
        )
        features.count()
        started = time.perf_counter()
        reduction = reduce.fit(features, feature_dim=width, k=None, variance=0.95)
        fitted = time.perf_counter() - started
        reduce.project(reduction.model, features, reduction.k).write.format("noop").mode("overwrite").save()
        total = time.perf_counter() - started
        features.unpersist()
        results.append(
            {
                "n": n,
                "width": width,
                "k": reduction.k,
                "fit_seconds": round(fitted, 2),
                "seconds": round(total, 2),
            }
        )
    spark.stop()
    return results


def child(args: argparse.Namespace, section: str) -> object:
    """Run section 4 or 5 in a fresh process (its own Spark), return its JSON."""
    target = Path(args.out) / f"{section}.json"
    command = [sys.executable, __file__, *sys.argv[1:], "--child", section, "--child-output", str(target)]
    watched = watch(command, dict(os.environ), Path(args.out) / f"log-{section}.txt")
    return {"result": json.loads(target.read_text()), **watched}


# ----------------------------------------------------------------------------------------------- table


def limit_rate(limit: dict) -> float:
    """The limit (1): the fastest engine's best images/s in one process with every core, at any batch."""
    cores = max(int(k.split("_")[1].removeprefix("threads")) for k in limit if k.startswith("litert_threads"))
    litert = max(v["best"] for k, v in limit.items() if k.startswith(f"litert_threads{cores}_"))
    return max(litert, limit["keras"]["best"])


def worker_rate(run: dict) -> float:
    """Images featurized per CPU-second of the Python workers (the other stages hardly use them)."""
    return round(run["featurized"] / max(run["python_worker_cpu_seconds"], 1e-9), 1)


def table(report: dict) -> str:
    limit = report["limit"]
    fastest = limit_rate(limit)
    lines = [
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB; model {report['model']} image {report['image_size']} "
        f"decode {report['decode_size']} batch {report['batch_size']} weights {report['weights']}",
        "",
        f"1. limit (one process, all cores, pre-decoded): {fastest:.0f} img/s; at batch {report['batch_size']}: "
        f"litert {limit['litert']['best']:.0f} img/s (median {limit['litert']['median']:.0f}), "
        f"keras {limit['keras']['best']:.0f} img/s, keras predict {limit['keras_predict']['best']:.0f} img/s",
        "   litert by threads/batch: "
        + ", ".join(
            f"{k.removeprefix('litert_')} {v['best']:.0f}"
            for k, v in limit.items()
            if k.startswith("litert_threads")
        ),
        f"2. decode per core: {limit['decode_per_core']['best']:.0f} img/s at {report['decode_size']} px, "
        f"{limit['decode_resize_per_core']['best']:.0f} img/s decoded and resized to {report['image_size']} px",
        "   per CPU-second (robust to other load): litert "
        + str(limit["litert"].get("per_cpu_second", "-"))
        + ", keras "
        + str(limit["keras"].get("per_cpu_second", "-")),
        "",
        "3. job in Spark local mode           featurize         end to end        process  peak MiB              worker",
        "   model          engine     N      img/s  x limit   img/s  x limit    wall s   drv-jvm drv-py worker  img/CPU-s",
    ]
    for run in report["jobs"]:
        reference = fastest if run["model"] == report["model"] else run.get("limit", fastest)
        memory = run["memory"]
        lines.append(
            f"   {run['model'] + ' ' + str(run['alpha']):14} {run['engine']:7} {run['n']:6}  "
            f"{run['featurize_images_per_s']:6.0f}  {run['featurize_images_per_s'] / reference:6.2f}  "
            f"{run['end_to_end_images_per_s']:7.0f}  {run['end_to_end_images_per_s'] / reference:6.2f}  "
            f"{run['wall_seconds']:8.1f}  {memory['driver_jvm_mib']:7} {memory['driver_python_mib']:6} "
            f"{memory['worker_mib']:6}  {worker_rate(run):>9}"
        )
    if report.get("naive"):
        naive_rate = report["naive"]["result"]["images_per_s"]
        best_job = max(r["featurize_images_per_s"] for r in report["jobs"] if r["model"] == report["model"])
        lines += [
            "",
            f"4. naive (model rebuilt per batch, paths read one by one): {naive_rate:.1f} img/s over "
            f"{report['naive']['result']['n']} images; the job's featurize stage is {best_job / naive_rate:.1f}x faster",
        ]
    if report.get("pca"):
        lines += ["", "5. PCA fit + transform      N   width    k   fit s  total s"]
        for case in report["pca"]["result"]:
            lines.append(
                f"                       {case['n']:7} {case['width']:6} {case['k']:4} "
                f"{case['fit_seconds']:7.1f} {case['seconds']:8.1f}"
            )
    if report.get("incremental"):
        inc = report["incremental"]
        lines += ["", "6. incremental: same output and feature store, +10% new images"]
        lines.append("   run       found  newly featurized  reused  featurize s  end to end s")
        for r in inc["runs"]:
            lines.append(
                f"   {r['run']:8} {r['found']:6} {r['newly_featurized']:17} {r['reused']:7} "
                f"{r['featurize_seconds']:12.1f} {r['end_to_end_seconds']:13.1f}"
            )
        lines.append(
            f"   second run's featurization work: {inc['work_ratio']:.1%} of the first "
            f"(featurize stage time {inc['featurize_time_ratio']:.1%})"
        )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", default=os.environ.get("FRUITS_DATA"), help="Fruits-360 sample to replicate (FRUITS_DATA)")
    add("--cache", default="out/bench-data", help="where generated image sets are kept")
    add("--out", default="out/bench", help="where runs, logs and bench.json go")
    add("--sizes", default="1000,5000,20000", help="N for the job runs")
    add("--engines", default="litert,keras")
    add("--big-engines", default="", help="engines for the largest N (default: --engines)")
    add("--model", default="mobilenet_v2")
    add("--alpha", type=float, default=1.0)
    add("--weights", default="none", help="timing does not depend on weight values")
    add("--image-size", type=int, default=224)
    add("--decode-size", type=int, default=100)
    add("--batch-size", type=int, default=64)
    add("--repeats", type=int, default=3)
    add("--naive-count", type=int, default=256)
    add("--pca-sizes", default="1000,5000,20000,100000")
    add("--pca-widths", default="256,1280,2048")
    add("--pca-width-n", type=int, default=5000)
    add(
        "--extra-model",
        default="mobilenet:0.25:none",
        help="model:alpha:weights also run with litert, '' skips",
    )
    add("--extra-sizes", default="1000,5000")
    add("--incremental-n", type=int, default=5500, help="images in the incremental section's second run")
    add("--skip", default="", help="comma list of sections to skip: limit,jobs,naive,pca,extra,incremental")
    add("--quick", action="store_true", help="N = 1,000 only, small naive and PCA runs")
    add("--table", metavar="JSON", help="only print the table of an earlier run's bench.json")
    add("--resume", action="store_true", help="keep the sections already in <out>/bench.json, run the others")
    add("--child", help=argparse.SUPPRESS)
    add("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.data and not args.table:
        parser.error("give --data or set FRUITS_DATA to the Fruits-360 sample")
    if args.quick:
        args.sizes, args.extra_sizes, args.naive_count, args.pca_sizes = "1000", "1000", 128, "1000,5000"
        args.incremental_n = 1100
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.extra_sizes = [int(s) for s in args.extra_sizes.split(",") if s]
    args.pca_sizes = [int(s) for s in args.pca_sizes.split(",") if s]
    args.pca_widths = [int(s) for s in args.pca_widths.split(",") if s]
    args.engines = [e for e in args.engines.split(",") if e]
    args.big_engines = [e for e in args.big_engines.split(",") if e] or args.engines
    args.skip = set(args.skip.split(",")) - {""}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if args.child:
        result = naive(args) if args.child == "naive" else pca(args)
        Path(args.child_output).write_text(json.dumps(result))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "alpha": args.alpha,
        "weights": args.weights,
        "image_size": args.image_size,
        "decode_size": args.decode_size,
        "batch_size": args.batch_size,
        "jobs": [],
    }
    json_path = Path(args.out) / "bench.json"
    if args.resume and json_path.exists():
        report = json.loads(json_path.read_text())

    def save() -> None:
        json_path.write_text(json.dumps(report, indent=2))

    for count in sorted(set(args.sizes) | set(args.extra_sizes)):
        dataset(args, count)
    if "limit" not in report:
        with tempfile.TemporaryDirectory(prefix="fruits-bench-") as folder:
            report["limit"] = limit_and_decode(args, read_images(dataset(args, min(args.sizes)), 512), folder)
        print(json.dumps(report["limit"]), flush=True)
        save()
    if "jobs" not in args.skip and not report["jobs"]:
        for count in args.sizes:
            for engine in args.big_engines if count == max(args.sizes) else args.engines:
                run = job_run(args, engine, count, args.model, args.alpha, args.weights)
                report["jobs"].append(run)
                print(json.dumps({k: run[k] for k in ("engine", "n", "featurize_images_per_s")}), flush=True)
                save()
    if args.extra_model and "extra" not in args.skip and "extra_limit" not in report:
        model, alpha, weights = args.extra_model.split(":")
        extra = argparse.Namespace(
            **{**vars(args), "model": model, "alpha": float(alpha), "weights": weights}
        )
        with tempfile.TemporaryDirectory(prefix="fruits-bench-") as folder:
            limit = limit_and_decode(extra, read_images(dataset(args, min(args.sizes)), 512), folder)
        report["extra_limit"] = {"model": model, "alpha": float(alpha), **limit}
        for count in args.extra_sizes:
            run = job_run(args, "litert", count, model, float(alpha), weights)
            run["limit"] = limit_rate(limit)
            report["jobs"].append(run)
            save()
    if "incremental" not in args.skip and "incremental" not in report:
        report["incremental"] = incremental(args)
        print(json.dumps(report["incremental"]), flush=True)
        save()
    if "naive" not in args.skip and "naive" not in report:
        report["naive"] = child(args, "naive")
        save()
    if "pca" not in args.skip and "pca" not in report:
        report["pca"] = child(args, "pca")
        save()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["table"] = table(report)
    save()
    print(report["table"])
    print(f"\nwritten: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
