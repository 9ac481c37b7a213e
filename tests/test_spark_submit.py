"""The deployable bundle itself: spark-submit of the shipped script with only fruits.zip on --py-files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_MODEL, write_image

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_the_bundle_runs_under_spark_submit_without_the_checkout(tmp_path):
    sys.path.insert(0, str(REPO / "cdk"))
    from fruits_infra.artifacts import build_bundle

    bundle = tmp_path / "bundle"
    build_bundle(bundle)
    for i in range(3):
        write_image(tmp_path / "in" / "Kiwi" / f"{i}.jpg", (120, 160, 40), seed=i)
        write_image(tmp_path / "in" / "Plum" / f"{i}.jpg", (90, 20, 110), seed=i)
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": "",  # workers must import fruits from the zip, not from this checkout
    }
    command = [
        str(venv_bin / "spark-submit"),
        "--master", "local[2]",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.fruits.output={tmp_path / 'out'}",  # an option from the conf, as on the cluster
        "--py-files", str(bundle / "job" / "fruits.zip"),
        str(bundle / "job" / "featurize_pca.py"),
        "--input", str(tmp_path / "in"), *FAST_MODEL, "--k", "2",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["featurized"] == 6 and manifest["spark_master"] == "local[2]"
    assert (tmp_path / "out" / "results.csv").read_text().splitlines()[0] == "path,label,pc_1,pc_2"
