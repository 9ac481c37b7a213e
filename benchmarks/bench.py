"""Featurization benchmark: the engine's limit, decode, the job per N and engine, the alternatives, incremental
runs, PCA scaling, the naive way, and the job on a real Fruits-360 folder: one run, one machine, one table.

    FRUITS_DATA=/path/to/fruits360-sample python -m benchmarks                 # every section but realdata
    python -m benchmarks jobs alternatives --sizes 2500 --engines litert         # some sections
    python -m benchmarks realdata --input /path/to/fruits-360 [--limit N]        # the job on real images
    python -m benchmarks --table out/bench/bench.json [--markdown]               # an earlier run's table

Progress goes to stderr; the table to stdout; everything measured to ``<out>/bench.json`` (default
``out/bench/bench.json``), saved after each measurement so that ``--resume`` can carry on with the rest.
Other processes on the machine skew every number: each measurement records the load average around it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import alternatives, decode, incremental, job_runs, limit, realdata, report
from benchmarks.common import ROOT, dataset, machine, read_images, run_child
from fruits.engines import ENGINES

SECTIONS = ("limit", "decode", "jobs", "alternatives", "incremental", "pca", "naive", "realdata")
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "realdata")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def commit() -> str:
    """The checkout's commit, with ``+dirty`` when it has uncommitted changes."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def words(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"any of {', '.join(SECTIONS)} (default: all but realdata)",
    )
    add("--data", default=os.environ.get("FRUITS_DATA"), help="Fruits-360 sample to replicate (FRUITS_DATA)")
    add("--cache", default="out/bench-data", help="where generated image sets are kept")
    add("--out", default="out/bench", help="where runs, logs and bench.json go")
    add("--sizes", type=ints, default=[1000, 5000, 20000], help="N for the job runs")
    add(
        "--engines",
        type=words,
        default=list(ENGINES),
        help=f"engines for the job runs, any of {', '.join(ENGINES)} (default: all)",
    )
    add("--big-engines", type=words, default=[], help="engines for the largest N (default: --engines)")
    add(
        "--alt-venv",
        default=str(ROOT / "out" / "bench" / "alt-venv"),
        help="venv for the alternatives' own requirements (installed on first use)",
    )
    add("--alt-sizes", type=ints, default=None, help="N for the alternatives (default: --sizes)")
    add(
        "--pairs",
        type=int,
        default=None,
        help="job/Pool pairs run back to back at each --alt-sizes N; the Pool target takes their median ratio "
        "(default 3, with --quick 1)",
    )
    add("--model", default="mobilenet_v2")
    add("--alpha", type=float, default=1.0)
    add("--weights", default="none", help="timing does not depend on weight values")
    add("--image-size", type=int, default=224)
    add("--decode-size", type=int, default=100)
    add("--batch-size", type=int, default=64)
    add(
        "--k",
        type=int,
        default=None,
        help="fixed k for the job and the alternatives (default: variance 0.95)",
    )
    add("--repeats", type=int, default=3)
    add("--limit-images", type=int, default=512, help="pre-decoded images per pass in the limit section")
    add("--naive-count", type=int, default=256)
    add("--pca-sizes", type=ints, default=[1000, 5000, 20000, 100000])
    add("--pca-widths", type=ints, default=[256, 1280, 2048])
    add("--pca-width-n", type=int, default=5000)
    add("--incremental-n", type=int, default=5500, help="images in the incremental section's second run")
    add("--input", help="realdata: a Fruits-360 folder (Training/, Test/)")
    add("--limit", type=int, default=None, help="realdata: only the first N images")
    add("--realdata-engine", default="litert")
    add("--skip", type=words, default=[], help="comma list of sections to leave out")
    add("--quick", action="store_true", help="N = 1,000 only, small naive, PCA and incremental runs")
    add("--table", metavar="JSON", help="only print the table of an earlier run's bench.json")
    add("--markdown", action="store_true", help="print the table as Markdown (for docs/benchmark.md)")
    add("--resume", action="store_true", help="keep what <out>/bench.json already has, run the rest")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    strange = {*args.engines, *args.big_engines, args.realdata_engine} - set(ENGINES)
    if strange:
        parser.error(f"unknown engine(s) {', '.join(sorted(strange))}; choose from {', '.join(ENGINES)}")
    args.sections = [s for s in (args.sections or DEFAULT_SECTIONS) if s not in args.skip]
    if args.quick:
        args.sizes, args.naive_count, args.pca_sizes, args.incremental_n = [1000], 128, [1000, 5000], 1100
    if args.pairs is None:
        args.pairs = 1 if args.quick else 3
    args.big_engines = args.big_engines or args.engines
    args.out, args.cache = str(Path(args.out).resolve()), str(Path(args.cache).resolve())
    args.alt_sizes = args.alt_sizes if args.alt_sizes is not None else args.sizes
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.table:
        return args
    if "realdata" in args.sections and not args.input:
        parser.error("realdata needs --input DIR (a Fruits-360 folder)")
    generated = set(args.sections) - {"realdata"}
    if generated and not args.data:
        parser.error(
            "give --data or set FRUITS_DATA to the Fruits-360 sample (or run only: realdata --input DIR)"
        )
    return args


def job_plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(engine, N) of every job run: the largest N with --big-engines, the others with --engines."""
    largest = max(args.sizes)
    return [(e, n) for n in sorted(args.sizes) for e in (args.big_engines if n == largest else args.engines)]


def engines_needed(args: argparse.Namespace, sections: list[str]) -> set[str]:
    """Engines whose model file and limit the requested sections need (--engines when only the limit is asked)."""
    needed = {e for e, _ in job_plan(args)} if "jobs" in sections else set()
    if "realdata" in sections:
        needed.add(args.realdata_engine)
    if {"alternatives", "incremental"} & set(sections):
        needed.add("litert")  # the alternatives run the job's LiteRT file; the incremental runs use litert
    return needed or set(args.engines)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.table:
        loaded = json.loads(Path(args.table).read_text())
        print(report.markdown_table(loaded) if args.markdown else report.text_table(loaded))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "bench.json"
    from fruits.models import get_spec

    state: dict = {
        "machine": machine(),
        "commit": commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
        "model": args.model,
        "alpha": args.alpha,
        "feature_dim": get_spec(args.model).feature_dim(args.alpha),
        "weights": args.weights,
        "image_size": args.image_size,
        "decode_size": args.decode_size,
        "batch_size": args.batch_size,
        "k": args.k,
        "jobs": [],
    }
    if args.resume and json_path.exists():
        state = json.loads(json_path.read_text())
        say(f"resuming {json_path}: has {', '.join(k for k in SECTIONS if state.get(k))}")

    def save() -> None:
        json_path.write_text(json.dumps(state, indent=2))

    sections = args.sections
    needs_limit = {"jobs", "alternatives", "naive", "realdata"} & set(sections)
    if needs_limit and "limit" not in sections and not state.get("limit"):
        sections = ["limit", *sections]  # ratios need a limit measured in the same run
    engines = sorted(engines_needed(args, sections))
    generated = [s for s in sections if s != "realdata"]
    if generated:
        for count in sorted({*args.sizes, *(args.alt_sizes if "alternatives" in sections else [])}):
            say(f"image set n{count}: {dataset(args, count)}")
    images_from = (
        Path(args.input)
        if sections == ["limit", "realdata"] or not generated
        else dataset(args, min(args.sizes))
    )

    files = state.get("model_files") or {}
    if ("limit" in sections and not state.get("limit")) or "alternatives" in sections:
        missing = [e for e in engines if e not in files or not Path(files[e]["path"]).exists()]
        if missing:
            say(
                f"exporting the model for {', '.join(missing)} (fruits.models + fruits.engines, fresh process)"
            )
            files.update(limit.export_models(args, missing, out / "model"))
            state["model_files"] = files
            save()

    if "limit" in sections and not state.get("limit"):
        images = read_images(images_from, args.limit_images)
        tensors = limit.decoded_tensors(
            images, args.decode_size, out / "model" / f"tensors-{args.decode_size}.npy"
        )
        say(f"limit: {len(images)} pre-decoded images from {images_from}, engines {', '.join(engines)}")
        state["limit"] = limit.measure(args, {e: files[e] for e in engines}, tensors, len(images))
        state["limit"]["images_from"] = str(images_from)
        save()
    if "decode" in sections and not state.get("decode"):
        state["decode"] = decode.measure(args, read_images(images_from, 1000))
        save()
    job_engines = {e for e, _ in job_plan(args)} if "jobs" in sections else set()
    if {"alternatives", "incremental"} & set(sections):
        job_engines.add("litert")  # both run the job with the default engine
    for engine in sorted(job_engines):
        if engine not in state.setdefault("warm_up_seconds", {}):
            say(
                f"warm-up: one {job_runs.WARM_UP_IMAGES}-image run ({engine}): model cache and JVM class archive"
            )
            state["warm_up_seconds"][engine] = job_runs.warm_up(args, engine)
            save()
    if "jobs" in sections:
        for engine, count in job_plan(args):
            if job_runs.find(state, engine, count, args.model, args.alpha):
                continue
            say(f"job: {engine} N={count}")
            run = job_runs.run_size(args, engine, count)
            state["jobs"].append(run)
            say(
                f"job: {engine} N={count}: featurize {run['featurize_images_per_s']} img/s, wall {run['wall_seconds']} s"
            )
            save()
    if "alternatives" in sections:
        # A failed alternative is measured again on --resume; a skipped one (no Ray) is kept.
        kept = [s for s in state.get("alternatives", []) if not any(r.get("error") for r in s["runs"])]
        state["alternatives"], done = kept, {s["n"] for s in kept}
        for count in args.alt_sizes:
            if count in done:
                continue
            job = job_runs.find(state, "litert", count, args.model, args.alpha)
            if job is None:
                say(f"alternatives: the job at N={count} first (litert)")
                job = job_runs.run_size(args, "litert", count)
                state["jobs"].append(job)
                save()
            say(f"alternatives: {args.pairs} job/Pool pair(s), then Ray Data, at N={count}")
            state.setdefault("alternatives", []).append(alternatives.run_size(args, count, job, files))
            save()
    if "incremental" in sections and not state.get("incremental"):
        say(f"incremental: {round(args.incremental_n / 1.1)} then {args.incremental_n} images")
        state["incremental"] = incremental.run(args)
        save()
    for name in ("pca", "naive"):
        if name in sections and not state.get(name):
            say(f"{name}: child process")
            state[name] = run_child(args, "pca_scaling" if name == "pca" else "naive")
            save()
    if "realdata" in sections:
        found = realdata.run(args)
        state["realdata"] = [r for r in state.get("realdata", []) if r["name"] != found["name"]] + [found]
        save()
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state["table"] = report.text_table(state)
    save()
    print(report.markdown_table(state) if args.markdown else state["table"])
    say(f"written: {json_path}")
    return 0
