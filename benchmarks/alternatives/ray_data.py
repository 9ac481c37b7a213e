"""The same work with Ray Data: read_images, an actor pool of LiteRT featurizers, numpy PCA on the driver.

    python ray_data.py --input DIR --model model.tflite --output results.csv [--actors 2] [--k K]

Runs in its own virtual environment (``ray[data]`` is not a project dependency; see
benchmarks/requirements-alternatives.txt). Each actor asks for ``--actor-cpus`` (0.5) CPUs: with Ray's default
of one CPU per actor, two actors take both CPUs of a 2-core machine and the read tasks wait forever. PCA and the
CSV are pool_script's (same folder), so the two alternatives differ only in how they featurize.
"""

import argparse
import json
import os
import time

import numpy as np
from pool_script import pca, write_csv


class Featurizer:
    """One LiteRT interpreter per actor, one thread, one image per invoke (as the job's workers do)."""

    def __init__(self, model):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=model, num_threads=1)
        source = self.interpreter.get_input_details()[0]
        self.input, self.output = source["index"], self.interpreter.get_output_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input, [1, *source["shape"][1:]])
        self.interpreter.allocate_tensors()

    def __call__(self, batch):
        rows = []
        for image in batch["image"]:
            self.interpreter.set_tensor(self.input, np.ascontiguousarray(image, dtype=np.uint8)[None])
            self.interpreter.invoke()
            rows.append(self.interpreter.get_tensor(self.output)[0].copy())
        return {"path": batch["path"], "features": np.stack(rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True, help="the LiteRT flatbuffer (.tflite)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--actor-cpus", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--size", type=int, default=100, help="side images are decoded to (the model's input)"
    )
    parser.add_argument("--k", type=int)
    parser.add_argument("--variance", type=float, default=0.95)
    args = parser.parse_args()
    times, started = {}, time.perf_counter()
    # Loopback only, the rule for servers a run starts here: without this Ray binds its node to the machine's
    # first interface (ray/_private/services.py: get_node_ip_address returns loopback only when it is 0).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    times["ray_init"] = time.perf_counter() - started
    dataset = ray.data.read_images(
        os.path.abspath(args.input), include_paths=True, mode="RGB", size=(args.size, args.size)
    ).map_batches(
        Featurizer,
        fn_constructor_args=(os.path.abspath(args.model),),
        batch_size=args.batch_size,
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=args.actor_cpus,
    )
    paths, features = [], []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        paths += list(batch["path"])
        features.append(batch["features"])
    order = np.argsort(paths, kind="stable")
    paths, features = [paths[i] for i in order], np.concatenate(features)[order]
    times["featurize"] = time.perf_counter() - started - times["ray_init"]
    projections, explained = pca(features, args.k, args.variance)
    times["pca"] = time.perf_counter() - started - times["ray_init"] - times["featurize"]
    write_csv(args.output, paths, projections)
    times["write"] = time.perf_counter() - started - sum(times.values())
    ray.shutdown()
    k = projections.shape[1]
    print(
        json.dumps(
            {"images": len(paths), "k": k, "explained_by_k": explained[:k].sum(), "timings_seconds": times}
        )
    )


if __name__ == "__main__":
    main()
