"""Section 5: incremental runs on one output and feature store: N/1.1 images, then the same input + 10 %.

The second run must featurize only the new tenth and reuse the rest; its "prepare model" stage is the cost of
getting the model ready again for a run over (mostly) the same input.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from benchmarks.common import dataset, image_files
from benchmarks.job_runs import run_job


def run(args: argparse.Namespace) -> dict[str, object]:
    root = dataset(args, args.incremental_n)
    files = image_files(root)
    base = round(len(files) / 1.1)
    work = Path(args.out) / "incremental-input"
    output = Path(args.out) / "runs" / "incremental"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    runs = []
    for name, paths in (("first", files[:base]), ("second", files[base:])):
        for path in paths:  # hard links: the same bytes, no copy
            target = work / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
        job = run_job(args, "litert", work, output, name=f"incremental-{name}", keep_output=True)
        runs.append({"run": name, **job})
    first, second = runs
    return {
        "runs": runs,
        "work_ratio": round(
            second["counts"]["newly_featurized"] / max(first["counts"]["newly_featurized"], 1), 3
        ),
        "featurize_time_ratio": round(
            second["timings_seconds"].get("featurize", 0.0)
            / max(first["timings_seconds"]["featurize"], 1e-9),
            3,
        ),
    }
