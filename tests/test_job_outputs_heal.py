"""The whole job on what the second hostile-input round tried on its outputs and options.

A damaged commit or lease, an output named with glob characters, ``--reuse-pca`` with a pipeline that is
missing or of another model or k, too few images (known from the listing, or only after decoding), identical
images, and ``--k`` above the rank of the features: each run either commits correct numbers (saying in one
warning line and in the manifest what it did instead) or fails in one line naming the object and the fix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fruits import layout
from fruits.job import main
from tests.conftest import FAST_MODEL
from tests.job_faults import add_images, job_args

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def manifest(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def written(output: Path) -> list[Path]:
    """Every file under ``output`` but the outcome records, which every run leaves (fruits.outcomes)."""
    files = (path.relative_to(output) for path in output.rglob("*") if path.is_file())
    return sorted(path for path in files if not str(path).startswith(layout.OUTCOMES_PREFIX))


def warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("fruits")
    ]


@pytest.fixture(scope="module")
def committed(spark, tmp_path_factory):
    """One committed run over 6 images (k = 2), copied by the tests that change its output."""
    folder = tmp_path_factory.mktemp("committed")
    add_images(folder / "images", 6)
    assert main(job_args(folder / "images", folder / "out"), spark) == 0
    return folder


@pytest.fixture
def copy(committed, tmp_path) -> tuple[Path, Path]:
    shutil.copytree(committed, tmp_path, dirs_exist_ok=True)
    return tmp_path / "images", tmp_path / "out"


def test_glob_characters_in_the_output_and_the_feature_store_are_plain(spark, committed, tmp_path):
    output, store = tmp_path / "out[1]{a,b}*?", tmp_path / "store [x]\\{y}"
    args = job_args(committed / "images", output, "--feature-store", str(store))
    assert main(args, spark) == 0
    assert main([*args, "--overwrite", "--reuse-pca"], spark) == 0  # reads the store and the pipeline back
    second = manifest(output)
    assert second["counts"]["reused"] == 6 and second["pca"]["reused_from"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([output.name, store.name])


def test_reuse_pca_refits_with_a_warning_when_the_pipeline_is_missing(spark, copy, caplog):
    images, output = copy
    first = manifest(output)
    shutil.rmtree(output / "runs" / first["run_id"] / "pca_model")
    with caplog.at_level("WARNING"):
        assert main(job_args(images, output, "--overwrite", "--reuse-pca"), spark) == 0
    pca = manifest(output)["pca"]
    assert pca["fitted_in_this_run"] is True and "reused_from" not in pca
    assert f"run {first['run_id']}'s pipeline" in pca["not_reused"] and "cannot be read" in pca["not_reused"]
    (warning,) = [w for w in warnings(caplog) if "--reuse-pca" in w]
    assert pca["not_reused"] in warning and "fitting a new pipeline" in warning


def test_reuse_pca_refits_with_a_warning_for_another_model(spark, copy, caplog):
    images, output = copy
    with caplog.at_level("WARNING"):
        args = job_args(images, output, "--overwrite", "--reuse-pca")
        args[args.index("--image-size") + 1] = "48"
        assert main(args, spark) == 0
    pca = manifest(output)["pca"]
    assert pca["fitted_in_this_run"] is True
    assert "-s32-" in pca["not_reused"] and "-s48-" in pca["not_reused"]  # the two model keys


def test_reuse_pca_with_another_explicit_k_is_refused_before_any_work(spark, copy, capsys):
    images, output = copy
    before = written(output)
    args = ["--input", str(images), "--output", str(output), *FAST_MODEL, "--k", "3"]
    assert main([*args, "--overwrite", "--reuse-pca"], spark) == 2
    line = one_line(capsys)
    assert "--k 3 is not the k = 2 of run" in line and "drop --k" in line and "drop" in line
    assert written(output) == before  # nothing but the run's outcome record


def test_one_image_is_refused_from_the_listing_before_any_work(spark, tmp_path, capsys):
    add_images(tmp_path / "images", 1)
    (tmp_path / "images" / "Red" / "notes.txt").write_text("not an image")
    assert main(job_args(tmp_path / "images", tmp_path / "out"), spark) == 2
    line = one_line(capsys)
    assert "only 1 image to featurize under" in line and "img0.jpg" in line and "PCA needs at least 2" in line
    assert written(tmp_path / "out") == []  # no lease, no feature store: nothing but the outcome record


def test_one_image_left_after_decoding_is_one_line_naming_a_rejected_file(spark, tmp_path, capsys):
    add_images(tmp_path / "images", 1)
    (tmp_path / "images" / "Red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(job_args(tmp_path / "images", tmp_path / "out"), spark) == 2
    line = one_line(capsys)
    assert "only 1 image under" in line and "could be featurized (1 rejected, e.g. file:" in line
    assert "broken.jpg" in line and "PCA needs at least 2 images" in line
    assert not (tmp_path / "out" / "_commits").exists()


@pytest.mark.parametrize(("good", "status"), [(0, 0), (1, 2)])
def test_allow_empty_leaves_one_file_to_decoding(spark, tmp_path, capsys, good, status):
    """--allow-empty: a single file that is no image is nothing to featurize (exit 0); one image is too few."""
    if good:
        add_images(tmp_path / "images", 1)
    else:
        (tmp_path / "images" / "Red").mkdir(parents=True)
        (tmp_path / "images" / "Red" / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(job_args(tmp_path / "images", tmp_path / "out", "--allow-empty"), spark) == status
    if status:
        assert one_line(capsys).endswith("could be featurized (0 rejected): PCA needs at least 2 images")


def test_identical_images_are_one_line(spark, tmp_path, capsys):
    (image,) = add_images(tmp_path / "images", 1)
    shutil.copyfile(image, image.with_name("copy.jpg"))
    assert main(job_args(tmp_path / "images", tmp_path / "out"), spark) == 2
    assert "all have the same features (copies of one image?)" in one_line(capsys)


def test_k_above_the_rank_keeps_the_rank_and_says_so(spark, tmp_path, caplog):
    add_images(tmp_path / "images", 4)
    args = ["--input", str(tmp_path / "images"), "--output", str(tmp_path / "out"), *FAST_MODEL, "--k", "50"]
    with caplog.at_level("WARNING"):
        assert main(args, spark) == 0
    pca = manifest(tmp_path / "out")["pca"]
    assert (pca["k"], pca["rank"], pca["requested_k"], pca["k_limited_by_rank"]) == (3, 3, 50, True)
    (warning,) = [w for w in warnings(caplog) if "--k 50" in w]
    assert "above the rank of the features (3, from 4 images): keeping 3 components" in warning
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert [c for c in results.columns if c.startswith("pc_")] == ["pc_1", "pc_2", "pc_3"]
    assert np.isfinite(results[["pc_1", "pc_2", "pc_3"]].to_numpy()).all()


def test_k_within_the_rank_is_kept_and_not_flagged(committed):
    pca = manifest(committed / "out")["pca"]
    assert (pca["k"], pca["rank"]) == (2, 5) and "k_limited_by_rank" not in pca


def test_a_damaged_commit_is_one_line_and_overwrite_publishes_over_it(spark, copy, capsys, caplog):
    images, output = copy
    damaged = output / layout.commit_key(2)
    damaged.write_bytes(b'{"number": 2, "run_id": "../../x", "run_prefix": "../../x/"}')
    assert main(job_args(images, output), spark) == 2
    line = one_line(capsys)
    assert f"commit {damaged} is damaged (run_id '../../x' is not a run id)" in line
    assert "give --overwrite to publish a new run over it" in line

    with caplog.at_level("WARNING"):
        assert main(job_args(images, output, "--overwrite", "--reuse-pca"), spark) == 0
    assert any(f"commit {damaged} is damaged" in w for w in warnings(caplog))
    commit = json.loads((output / layout.commit_key(3)).read_text())
    assert commit["run_id"] == manifest(output)["run_id"] and damaged.exists()  # kept, superseded
    assert manifest(output)["pca"]["not_reused"] == "no committed run to reuse yet"


def test_an_unreadable_lease_is_taken_over_with_one_warning(spark, copy, caplog):
    images, output = copy
    (output / layout.LEASE_KEY).write_bytes(b"\x00garbage")
    with caplog.at_level("WARNING"):
        assert main(job_args(images, output, "--overwrite"), spark) == 0
    (warning,) = [w for w in warnings(caplog) if "lease" in w]
    assert str(output / layout.LEASE_KEY) in warning and "unreadable" in warning
    assert not (output / layout.LEASE_KEY).exists()  # released at the end, as any lease
