"""Section 6: the job's PCA (``fruits.reduce.fit`` + ``project``) as N and the feature width grow.

Synthetic low-rank features (32 directions plus noise, clipped at 0 like ReLU outputs), cached in Spark before
the clock starts; runs in a child process with its own local Spark session.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import child_main, child_session


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
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
        reduce.project(reduction.projection, features).write.format("noop").mode("overwrite").save()
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


if __name__ == "__main__":
    child_main(measure)
