"""What a user would write instead of the Spark job: multiprocessing.Pool, one model per process, numpy PCA.

    python pool_script.py --input DIR --model model.tflite --output results.csv [--processes 2] [--k K]

Every .jpg/.jpeg/.png under DIR (label = parent folder) goes through the LiteRT flatbuffer (one interpreter per
process, one thread, one image per invoke), then a centered PCA (eigh of the covariance) keeps k components
(or the fewest reaching --variance); writes path,label,pc_1..pc_k and prints its stage times as JSON.
"""

import argparse
import csv
import json
import os
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image

MODEL = {}


def list_images(root):
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(("_", "."))]
        found += [os.path.join(folder, f) for f in files if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    return sorted(p for p in found if not os.path.basename(p).startswith(("_", ".")))


def load_model(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(source["index"], [1, *source["shape"][1:]])
    interpreter.allocate_tensors()
    MODEL.update(
        interpreter=interpreter, input=source["index"], output=target["index"], size=source["shape"][1]
    )


def featurize(path):
    interpreter, size = MODEL["interpreter"], int(MODEL["size"])
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        interpreter.set_tensor(MODEL["input"], np.asarray(image, dtype=np.uint8)[None])
    interpreter.invoke()
    return interpreter.get_tensor(MODEL["output"])[0].copy()


def pca(features, k=None, variance=0.95):
    """Centered PCA: (projections n x k, explained variance ratio of every component)."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(x.T @ x / (len(x) - 1))
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    explained = values / values.sum()
    k = k or min(int(np.searchsorted(np.cumsum(explained), variance - 1e-9)) + 1, len(explained))
    return x @ vectors[:, :k], explained


def write_csv(path, paths, projections):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"] + [f"pc_{i + 1}" for i in range(projections.shape[1])])
        for image, row in zip(paths, projections, strict=True):
            writer.writerow([image, os.path.basename(os.path.dirname(image)), *row.tolist()])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True, help="the LiteRT flatbuffer (.tflite)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--k", type=int)
    parser.add_argument("--variance", type=float, default=0.95)
    args = parser.parse_args()
    times, started = {}, time.perf_counter()
    paths = list_images(args.input)
    with Pool(args.processes, initializer=load_model, initargs=(args.model,)) as pool:
        features = np.stack(pool.map(featurize, paths, chunksize=64))
    times["featurize"] = time.perf_counter() - started
    projections, explained = pca(features, args.k, args.variance)
    times["pca"] = time.perf_counter() - started - times["featurize"]
    write_csv(args.output, paths, projections)
    times["write"] = time.perf_counter() - started - times["featurize"] - times["pca"]
    k = projections.shape[1]
    print(
        json.dumps(
            {"images": len(paths), "k": k, "explained_by_k": explained[:k].sum(), "timings_seconds": times}
        )
    )


if __name__ == "__main__":
    main()
