"""`make demo`: featurize + PCA a Fruits-360 sample into out/demo and say where everything is.

Data: FRUITS_DATA (a folder with Training/ and Test/), else a small public Fruits-360 sample downloaded once
into $FRUITS_CACHE, else ~/.cache/fruits (needs internet). Weights: FRUITS_WEIGHTS (a Keras .h5/.keras file or
s3:// URI; the model is read from Keras' file name, or FRUITS_MODEL / FRUITS_ALPHA), else ImageNet weights
through Keras' cache when the machine can download them, else random weights (and every output says so).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

from fruits.local_cache import cache_root  # noqa: E402  (the package sits in jobs/)

SAMPLE_URL = (
    "https://github.com/FarshidNooshi/Fruits-360-Dataset-Classifier/archive/"
    "26f66ea0bdfdbbfe8f590ce8919660ec181a7179.zip"
)
CACHE = Path(cache_root())


def _online(host: str = "storage.googleapis.com") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def fetch_sample() -> Path:
    """Download a small public Fruits-360 excerpt once (4 classes, Training/ and Test/)."""
    target = CACHE / "fruits360-sample"
    if target.is_dir():
        return target
    if not _online("github.com"):
        sys.exit("demo: no FRUITS_DATA and no internet: set FRUITS_DATA to a Fruits-360 folder")
    archive = CACHE / "sample.zip"
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"demo: downloading a Fruits-360 sample into {target} ...", flush=True)
    urllib.request.urlretrieve(SAMPLE_URL, archive)
    with zipfile.ZipFile(archive) as bundle:
        for name in bundle.namelist():
            marker = "Datasets/Fruits-360/"
            if marker in name and not name.endswith("/"):
                relative = Path(name.split(marker, 1)[1])
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                (target / relative).write_bytes(bundle.read(name))
    archive.unlink()
    return target


def choose_weights() -> list[str]:
    """Job options for the weights: a given file, ImageNet when downloadable, else random (loudly)."""
    from fruits.models import infer_model_from_filename

    given = os.environ.get("FRUITS_WEIGHTS")
    if given:
        model, alpha = infer_model_from_filename(given) or (
            os.environ.get("FRUITS_MODEL", "mobilenet_v2"),
            float(os.environ.get("FRUITS_ALPHA", "1.0")),
        )
        return ["--weights", given, "--model", model, "--alpha", str(alpha)]
    if _online():
        return ["--weights", "imagenet"]
    print("demo: no FRUITS_WEIGHTS and no internet: using RANDOM weights (--weights none)", flush=True)
    return ["--weights", "none"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="out/demo")
    known, extra = parser.parse_known_args()
    data = Path(os.environ["FRUITS_DATA"]) if os.environ.get("FRUITS_DATA") else fetch_sample()
    argv = ["--input", str(data), "--output", known.output, "--overwrite", *choose_weights(), *extra]
    print("demo: python jobs/featurize_pca.py " + " ".join(argv), flush=True)
    from fruits.job import main as job_main

    status = job_main(argv)
    if status == 0:
        manifest = json.loads((Path(known.output) / "manifest.json").read_text())
        counts, quality = manifest["counts"], manifest.get("quality") or {}
        print(
            f"\ndemo: {counts['found']} images found, {counts['featurized']} featurized, "
            f"{counts['rejected']} rejected; k = {manifest['pca']['k']}"
        )
        if quality:
            print(
                f"demo: test accuracy {quality['test_accuracy_pca']:.1%} on PCA features, "
                f"{quality['test_accuracy_full_features']:.1%} on all features"
            )
        print(f"demo: results in {Path(known.output).resolve()}/ (results.csv, manifest.json, *.png)")
    return status


if __name__ == "__main__":
    sys.exit(main())
