"""`fruits identify` on the many-class development set (FRUITS_DEV_DATA: Fruits-360's Training/ and Test/, 41
classes): the job over it, then ONE `fruits identify --json` call over every Test photo, whose classes give the
run's own quality report (the same classifier), overall and per class, on all features and on the k components.
With FRUITS_WEIGHTS the run uses those pretrained weights, else random ones (the agreement holds either way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruits.job import run
from fruits.options import parse_options
from tests.conftest import weights_settings

pytestmark = [pytest.mark.spark, pytest.mark.realdata, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dev_run(spark, tmp_path_factory):
    value = os.environ.get("FRUITS_DEV_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("FRUITS_DEV_DATA is not set to the Fruits-360 development set (Training/ and Test/)")
    weights, model, alpha = weights_settings()[-1]  # the file FRUITS_WEIGHTS names, when it names one
    output = tmp_path_factory.mktemp("dev") / "out"
    options = parse_options(
        [
            "--input",
            value,
            "--output",
            str(output),
            "--model",
            model,
            "--alpha",
            str(alpha),
            "--weights",
            weights,
        ]
    )
    return Path(value), output, run(spark, options)


@pytest.mark.parametrize(
    ("classifier", "accuracy", "per_class"),
    [
        ("full", "test_accuracy_full_features", "accuracy_full_features"),
        ("pca", "test_accuracy_pca", "accuracy_pca"),
    ],
)
def test_identifying_every_test_photo_gives_the_runs_own_quality_report(
    dev_run, classifier, accuracy, per_class
):
    data, output, manifest = dev_run
    quality = manifest["quality"]
    photos = sorted(
        str(p) for p in (data / "Test").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    assert len(photos) == quality["test_images"] and quality["classes"] > 40
    command = ["identify", *photos, "--run", str(output), "--json", "--classifier", classifier]
    done = subprocess.run(
        [sys.executable, "-m", "fruits.ops.cli", *command],
        env={**os.environ, "PYTHONPATH": str(REPO / "jobs")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert [a["path"] for a in answers] == photos
    truth = {a["path"]: Path(a["path"]).parent.name for a in answers}
    right = [a["class"] == truth[a["path"]] for a in answers]
    # Within rounding: the same classifier on the same features; a near-tie of two classes' scores could flip
    # in the last bits of a product of another shape, so one photo in the whole Test split may differ.
    assert abs(sum(right) - round(quality[accuracy] * len(photos))) <= 1, (sum(right), quality[accuracy])
    mismatched_classes = 0
    for label, numbers in quality["per_class"].items():
        mine = [a["class"] == label for a in answers if truth[a["path"]] == label]
        mismatched_classes += abs(sum(mine) - round(numbers[per_class] * numbers["test_images"]))
    assert mismatched_classes <= 1
    assert all(len(a["similar"]) == 5 and a["similar"][0]["distance"] < 1e-3 for a in answers)
