"""Section 8: the job on a real Fruits-360 folder given on the command line (``--input``, any size).

    python -m benchmarks realdata --input /path/to/fruits-360 [--limit N]

Measures the limit on pre-decoded images of that folder in the same run (unless this run measured it already),
then the job over the folder (its first ``--limit`` images), with a hot page cache and a fresh output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.job_runs import run_job


def run(args: argparse.Namespace) -> dict[str, object]:
    data = Path(args.input).resolve()
    name = f"realdata-{data.name}-{args.realdata_engine}" + (f"-limit{args.limit}" if args.limit else "")
    result = run_job(
        args, args.realdata_engine, data, Path(args.out) / "runs" / name, name=name, limit=args.limit
    )
    return {"n": result["featurized"], "limit_images": args.limit, **result}
