"""The benchmark's pure parts: ratio arithmetic, targets, the one table, the PCA equality check, the process
watcher, the limit's rate arithmetic, the command line; and the Pool script on a few generated images.

The benchmark itself never runs here (it takes minutes of both cores); ``python -m benchmarks`` does.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench, limit, procwatch, report
from benchmarks.alternatives import compare
from benchmarks.alternatives.pool_script import pca, write_csv

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------- report


def job(n: int, *, featurize: float, other: float, wall: float, pca_seconds: float = 10.0) -> dict:
    timings = {"list": 0.1, "read": other, "featurize": featurize, "PCA": pca_seconds}
    return {
        "name": f"mobilenet_v2-1.0-litert-n{n}",
        "engine": "litert",
        "model": "mobilenet_v2",
        "alpha": 1.0,
        "n": n,
        "featurized": n,
        "counts": {"found": n, "featurized": n, "rejected": 0, "reused": 0, "newly_featurized": n},
        "k": 5,
        "timings_seconds": timings,
        "wall_seconds": wall,
        "worker_images_per_cpu_second": 250.0,
        "memory": {"jvm_mib": 3000, "root_mib": 1000, "spark_worker_mib": 200, "tree_peak_rss_mib": 4500},
        "load_before": 1.0,
        "model_files": ["/tmp/x/mobilenet_v2-0123456789abcdef.tflite"],
    }


def alternative(name: str, n: int, wall: float) -> dict:
    return {
        "name": name,
        "n": n,
        "wall_seconds": wall,
        "images_per_s": n / wall,
        "memory": {"tree_peak_rss_mib": 900},
        "load_before": 1.0,
        "equal_outputs": {
            "equal": True,
            "k": 5,
            "max_relative_deviation": 1e-9,
            "max_deviation_over_tolerance": 0.1,
        },
    }


@pytest.fixture
def state() -> dict:
    """A bench.json as the benchmark writes it: limit 500 images/s; jobs at 2,500 and 20,000 images."""
    shapes = {
        "1 proc x 2 threads, batch 64": {"best": 400.0, "median": 390.0, "per_cpu_second": 200.0},
        "2 procs x 1 thread, per image": {"best": 500.0, "median": 480.0, "per_cpu_second": 260.0},
    }
    return {
        "machine": {"cpu": "test CPU", "cores": 2, "memory_gib": 24},
        "commit": "abc1234",
        "model": "mobilenet_v2",
        "alpha": 1.0,
        "feature_dim": 1280,
        "weights": "none",
        "image_size": 224,
        "decode_size": 100,
        "batch_size": 64,
        "limit": {
            "images": 512,
            "load_before": 1.0,
            "load_after": 1.1,
            "engines": {
                "litert": {"shapes": shapes, "best_shape": "2 procs x 1 thread, per image", "best": 500.0},
                "keras": {"shapes": {}, "best_shape": "", "best": 200.0},
            },
        },
        # 2,500 images: stages 0.1 + 4.9 + 5 + 10 = 20 s -> 125 img/s = 0.25 x limit; wall 40 s.
        # 20,000 images: stages 0.1 + 9.9 + 45 + 1.5 = 56.5 s -> 354 img/s = 0.71 x limit; wall 70 s.
        "jobs": [
            job(2500, featurize=5.0, other=4.9, wall=40.0),
            job(20000, featurize=45.0, other=9.9, wall=70.0, pca_seconds=1.5),
        ],
        "alternatives": [
            {
                "n": 20000,
                "job": "mobilenet_v2-1.0-litert-n20000",
                "same_model_file": True,
                "runs": [alternative("pool", 20000, 60.0), alternative("ray", 20000, 80.0)],
            }
        ],
        "incremental": {
            "runs": [
                {
                    "run": "first",
                    "counts": {"found": 5000, "newly_featurized": 5000, "reused": 0},
                    "stage_sum_seconds": 60.0,
                    "timings_seconds": {"prepare model": 8.0, "featurize": 13.0},
                },
                {
                    "run": "second",
                    "counts": {"found": 5500, "newly_featurized": 500, "reused": 5000},
                    "stage_sum_seconds": 50.0,
                    "timings_seconds": {"prepare model": 7.5, "featurize": 3.0},
                },
            ],
            "work_ratio": 0.1,
            "featurize_time_ratio": 0.23,
        },
    }


def test_limit_is_the_best_engine_in_its_best_shape(state):
    assert report.limit_rate(state) == 500.0
    assert report.limit_rate(state, "keras") == 200.0
    assert report.limit_rate(state, "missing") is None
    assert report.limit_rate({}) is None


def test_end_to_end_is_images_over_the_stage_sum_and_overhead_is_the_rest_of_the_wall(state):
    small, big = state["jobs"]
    assert report.end_to_end_rate(small) == pytest.approx(2500 / 20.0)
    assert report.ratio(report.end_to_end_rate(small), 500.0) == pytest.approx(0.25)
    assert report.overhead_seconds(small) == pytest.approx(20.0)
    assert report.featurize_rate(big) == pytest.approx(20000 / 45.0)
    assert report.ratio(None, 500.0) is None and report.ratio(1.0, None) is None


def test_wall_ratios_compare_the_job_with_each_alternative(state):
    (row,) = report.wall_ratios(state)
    assert row["n"] == 20000
    assert row["job_over_pool"] == pytest.approx(70 / 60)
    assert row["job_over_ray"] == pytest.approx(70 / 80)
    assert row["pool_x_limit"] == pytest.approx(20000 / 60 / 500)
    assert row["ray_x_limit"] == pytest.approx(20000 / 80 / 500)
    assert row["job_end_to_end_x_limit"] == pytest.approx(20000 / 56.5 / 500)
    assert row["job_process_x_limit"] == pytest.approx(20000 / 70 / 500)
    # Without its own stages (here only PCA, 1.5 s: list, read and featurize are what the Pool script does too)
    # the job takes 68.5 s: 1.14 x the Pool script, past 1.10 x 60 = 66 s before any of its own stages ran.
    assert row["own_stage_seconds"] == pytest.approx(1.5)
    assert row["floor_over_pool"] == pytest.approx(68.5 / 60)
    assert row["room_for_own_stages_seconds"] == pytest.approx(66 - 68.5)


def pool_pair(index: int, job_wall: float, pool_wall: float, own: float) -> dict:
    """The Pool run of job/Pool pair ``index``: the job took ``job_wall`` s, ``own`` of them after featurize."""
    run = alternative("pool", 20000, pool_wall)
    run["pair"] = {
        "index": index,
        "job": f"mobilenet_v2-1.0-litert-n20000-pair{index}",
        "job_wall_seconds": job_wall,
        "job_timings_seconds": {
            "list": 0.1,
            "featurize": job_wall - own - 2.1,
            "PCA": own / 2,
            "write results": own / 2,
        },
        "job_model_files": ["/tmp/x/mobilenet_v2-0123456789abcdef.tflite"],
    }
    return run


def test_the_pool_target_takes_the_median_of_the_job_pool_pairs(state):
    # Three pairs; the host was slow during the second Pool run: ratios 1.05, 0.95 and 1.20.
    pairs = [pool_pair(1, 42.0, 40.0, 5.0), pool_pair(2, 38.0, 40.0, 4.0), pool_pair(3, 48.0, 40.0, 6.0)]
    state["alternatives"][0]["runs"] = [*pairs, alternative("ray", 20000, 80.0)]
    (row,) = report.wall_ratios(state)
    assert row["pairs"] == 3
    assert row["job_over_pool"] == pytest.approx(1.05)  # the median, not the jobs-section run's 70 / 60
    assert row["job_over_pool_range"] == pytest.approx((0.95, 1.20))
    # Floors 37/40, 34/40, 42/40; rooms 44 - floor: 7, 10, 2 s; own stages 5, 4, 6 s: medians of each.
    assert row["floor_over_pool"] == pytest.approx(37 / 40)
    assert row["room_for_own_stages_seconds"] == pytest.approx(7.0)
    assert row["own_stage_seconds"] == pytest.approx(5.0)
    assert row["pool_x_limit"] == pytest.approx(20000 / 40 / 500)
    assert row["job_over_ray"] == pytest.approx(70 / 80)  # Ray against the job-runs section's run
    pool = next(t for t in report.targets(state) if t.name.startswith("job wall <= 1.10"))
    assert pool.status == "PASS" and pool.where == "N=20,000, median of 3 job/Pool pairs: 0.95-1.20"
    lines = report.text_table(state).splitlines()
    pool_rows = [line for line in lines if "multiprocessing.Pool script" in line]
    assert len(pool_rows) == 3  # every pair shown, each with its own ratio and floor
    assert "(pair 3: right after a job run)" in pool_rows[2]
    assert (
        "job wall / this = 1.20 (the job without its stages after featurize: 1.05; the 1.10 x target "
        in (pool_rows[2])
    )
    assert "leaves 2.0 s for them, they took 6.0 s)" in pool_rows[2]
    # One pair: its ratio, and no median to speak of.
    state["alternatives"][0]["runs"] = [pairs[2]]
    pool = next(t for t in report.targets(state) if t.name.startswith("job wall <= 1.10"))
    assert pool.status == "MISS" and pool.value == pytest.approx(1.2) and pool.where == "N=20,000"


def test_targets_pass_miss_or_cannot_be_judged(state):
    found = {t.name: t for t in report.targets(state)}
    assert found["job wall <= 1.10 x Pool script wall at N=20,000"].status == "MISS"  # 1.17
    assert found["job wall < Ray Data wall at N=20,000"].status == "PASS"  # 0.875
    assert found["end to end >= 0.70 x limit at N=20,000"].status == "PASS"  # 0.708
    assert found["end to end >= 0.40 x limit at N=2,500"].status == "MISS"  # 0.25
    featurize = found["featurize stage >= 0.85 x limit"]
    assert featurize.status == "PASS" and featurize.value == pytest.approx(20000 / 45 / 500)
    assert found["PCA stage <= 2 s at N=20,000, width 1,280"].status == "PASS"  # 1.5 s
    model = found["second run over the same input prepares its model in < 1 s"]
    assert model.status == "MISS" and model.value == 7.5
    # Without the N=20,000 runs those targets are shown, with the value at the N measured, but not judged.
    state["jobs"] = state["jobs"][:1]
    state["alternatives"] = []
    found = {t.name: t for t in report.targets(state)}
    e2e = found["end to end >= 0.70 x limit at N=20,000"]
    assert e2e.status == "n/a" and e2e.where == "N=2,500" and e2e.value == pytest.approx(0.25)
    assert found["job wall <= 1.10 x Pool script wall at N=20,000"].status == "n/a"
    assert found["PCA stage <= 2 s at N=20,000, width 1,280"].status == "n/a"


def test_one_table_as_text_and_as_markdown(state):
    text = report.text_table(state)
    lines = text.splitlines()
    assert lines[0].startswith("machine: test CPU, 2 cores")
    assert lines[2].split()[:3] == ["section", "measurement", "N"]
    assert sum(1 for line in lines if line.startswith("target")) == 8
    assert "MISS 1.17 (N=20,000)" in text and "PASS 0.71 (N=20,000)" in text
    assert "start-up + teardown 13.5 s" in text  # 70 - 56.5
    pool_row = next(line for line in lines if "multiprocessing.Pool script" in line)
    assert (
        "job wall / this = 1.17 (the job without its stages after featurize: 1.14; the 1.10 x target leaves "
        "0.0 s for them, they took 1.5 s)" in pool_row
    )
    assert "stages after featurize" not in next(line for line in lines if "Ray Data" in line)
    assert "stages s: list 0.1, read 9.9, featurize 45.0, PCA 1.5" in text
    assert "beside them" not in text
    state["jobs"][1]["background_seconds"] = {"save PCA model": 1.2, "plots": 0.5}
    text = report.text_table(state)  # work beside the stages is named, and stays out of their sum
    assert (
        "stages s: list 0.1, read 9.9, featurize 45.0, PCA 1.5; beside them: save PCA model 1.2, plots 0.5"
        in text
    )
    assert "start-up + teardown 13.5 s" in text
    assert "MODEL FILE DIFFERS" not in text and "ran the limit's model file" not in text  # no export recorded
    state["model_files"] = {"litert": {"sha256": "0123456789abcdef" + "0" * 48}}
    assert report.text_table(state).count("workers ran the limit's model file") == 2
    state["model_files"] = {"litert": {"sha256": "f" * 64}}
    assert "MODEL FILE DIFFERS from the limit's: mobilenet_v2-0123456789abcdef.tflite" in report.text_table(
        state
    )
    markdown = report.markdown_table(state).splitlines()
    table = [line for line in markdown if line.startswith("|")]
    assert table[0] == "| section | measurement | N | s | img/s | x limit | notes |"
    assert all(line.count(" | ") == len(report.COLUMNS) - 1 for line in table if not line.startswith("|---"))
    assert len(table) == len(report.rows(state)) + 2


def int8_run(run: dict, featurize: float) -> dict:
    return {
        **run,
        "name": run["name"].replace("litert", "litert-int8"),
        "engine": "litert-int8",
        "timings_seconds": {**run["timings_seconds"], "featurize": featurize},
    }


def test_the_int8_engine_is_judged_against_float_in_the_same_run_and_on_its_own_limit(state):
    state["limit"]["engines"]["litert-int8"] = {"shapes": {}, "best_shape": "", "best": 1000.0}
    assert report.limit_rate(state) == 500.0  # the machine's limit stays the float engines' best
    assert report.run_limit(state, "litert-int8") == 1000.0 and report.run_limit(state, "keras") == 500.0
    target = f"litert-int8 featurize >= 1.7 x litert featurize at N={report.TARGET_N:,}"
    assert {t.name: t for t in report.targets(state)}[target].status == "n/a"  # not run
    state["jobs"].append(int8_run(state["jobs"][0], featurize=2.5))  # N = 2,500: 2.0x, but not at 20,000
    found = {t.name: t for t in report.targets(state)}[target]
    assert (found.status, found.value, found.where) == ("n/a", pytest.approx(2.0), "N=2,500, same run")
    state["jobs"].append(int8_run(state["jobs"][1], featurize=30.0))  # N = 20,000: 45 / 30 = 1.5x
    found = {t.name: t for t in report.targets(state)}[target]
    assert (found.status, found.value) == ("MISS", pytest.approx(1.5))
    state["jobs"][-1]["timings_seconds"]["featurize"] = 25.0  # 1.8x
    assert {t.name: t for t in report.targets(state)}[target].status == "PASS"
    # The featurize target of the float engine is untouched by the int8 runs.
    assert {t.name: t for t in report.targets(state)}[
        "featurize stage >= 0.85 x limit"
    ].value == pytest.approx(20000 / 45 / 500)
    int8_row = next(r for r in report.rows(state) if r[1] == "litert-int8: featurize stage" and r[2] == 20000)
    assert int8_row[5] == "0.80" and "x its own limit (litert-int8)" in int8_row[6]  # 800 / 1000


def test_a_failed_or_skipped_alternative_is_a_row_with_the_reason(state):
    state["alternatives"][0]["runs"][1] = {"name": "ray", "n": 20000, "skipped": "could not install ray"}
    text = report.text_table(state)
    assert "skipped: could not install ray" in text
    assert {t.name: t for t in report.targets(state)}["job wall < Ray Data wall at N=20,000"].status == "n/a"


# ----------------------------------------------------------------------------------------------- equality


def features(n: int = 300, width: int = 48, seed: int = 0) -> np.ndarray:
    """Float32 features with a well separated spectrum (like pooled CNN outputs: non-negative)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, width)) * np.geomspace(10, 0.01, width)
    return np.abs(z @ np.linalg.qr(rng.normal(size=(width, width)))[0]).astype(np.float32)


def svd_reference(x: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    """PCA another way (SVD of the centered data, float64), flipping every other sign like another library."""
    centered = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    signs = np.where(np.arange(k) % 2 == 0, -1.0, 1.0)
    explained = s**2 / np.sum(s**2)
    return centered @ vt[:k].T * signs, explained.tolist()


def write_job_csv(path: Path, paths: list[str], values: np.ndarray) -> None:
    """As the job writes results.csv: ``file:`` paths, 9 significant digits."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"] + [f"pc_{i + 1}" for i in range(values.shape[1])])
        for p, row in zip(paths, values, strict=True):
            writer.writerow([f"file:{p}", Path(p).parent.name, *(f"{v:.9g}" for v in row)])


def test_pool_script_pca_equals_another_pca_to_the_csv_precision(tmp_path):
    x = features()
    paths = [f"/data/{'a' if i % 2 else 'b'}/img{i:04d}.jpg" for i in range(len(x))]
    projections, explained = pca(x, k=6)
    reference, reference_explained = svd_reference(x, 6)
    np.testing.assert_allclose(explained, reference_explained, rtol=1e-9, atol=1e-15)
    write_job_csv(tmp_path / "job.csv", paths, reference)
    write_csv(tmp_path / "pool.csv", paths[::-1], projections[::-1])  # another row order
    result = compare.compare_files(tmp_path / "job.csv", tmp_path / "pool.csv", explained=reference_explained)
    assert result["equal"], result
    assert result["max_relative_deviation"] <= 1e-8
    assert result["k"] == 6 and result["same_rows"] and result["same_labels"]


def test_pool_script_chooses_k_by_explained_variance_like_the_job():
    x = features()
    _, explained = pca(x)
    projections, _ = pca(x, variance=0.95)
    cumulative = np.cumsum(explained)
    k = projections.shape[1]
    assert cumulative[k - 1] >= 0.95 > cumulative[k - 2]


def test_a_changed_component_or_other_rows_are_not_equal(tmp_path):
    x = features()
    paths = [f"/data/a/img{i:04d}.jpg" for i in range(len(x))]
    reference, explained = svd_reference(x, 4)
    changed = reference.copy()
    changed[7, 2] += 1e-6 * np.abs(reference[:, 2]).max()
    result = compare.compare(
        (paths, ["a"] * len(paths), reference), (paths, ["a"] * len(paths), changed), explained=explained
    )
    assert not result["equal"] and result["failing_components"] == [3]
    other_rows = compare.compare(
        (paths, ["a"] * len(paths), reference), (paths[1:], ["a"] * (len(paths) - 1), reference[1:])
    )
    assert not other_rows["equal"] and other_rows["why"] == "different rows or k"


def test_nearly_tied_eigenvalues_widen_the_tolerance_of_those_components_only():
    explained = [0.5, 0.3, 0.1 + 1e-9, 0.1, 1e-3]
    allowed = compare.tolerances(explained, 5, n=20000, width=1280)
    assert allowed[0] == pytest.approx(1e-8, rel=0.05)  # well separated: the CSV's 9 digits decide
    assert allowed[2] > 1e-6 and allowed[3] > 1e-6  # a 1e-9 gap: not determined to 9 digits
    assert compare.tolerances(None, 3, n=10, width=4).tolist() == [1e-8] * 3


# ----------------------------------------------------------------------------------------------- limit, procwatch, CLI


def test_limit_combines_concurrent_passes_by_their_common_wall_time():
    first = [(0.0, 1.0, 1.0), (10.0, 10.5, 0.5)]
    second = [(0.1, 1.2, 1.0), (10.0, 11.0, 1.0)]
    rates = limit.combine([first, second], images=100)
    assert rates["best"] == pytest.approx(200 / 1.0)  # pass 2: 10.0 .. 11.0
    assert rates["median"] == pytest.approx((200 / 1.2 + 200 / 1.0) / 2, rel=1e-3)
    assert rates["per_cpu_second"] == pytest.approx(200 / 1.5, abs=0.1)


def test_limit_shapes_cover_both_ways_of_using_the_cores():
    litert = limit.shapes("litert", 2, 64)
    assert {(s["processes"], s["threads"]) for s in litert.values()} == {(1, 2), (2, 1)}
    assert {s["batch"] for n, s in litert.items() if s["processes"] == 1} == {64, 1}
    assert {(s["processes"], s["threads"]) for s in limit.shapes("keras", 4, 64).values()} == {(1, 4), (4, 1)}


def test_cpu_used_by_others_is_the_machine_busy_time_minus_our_own():
    cores = os.cpu_count() or 1
    found = procwatch.others_share(100.0, 130.0, 20.0, wall=10.0)
    assert found == {"others_cpu_seconds": 10.0, "others_share": round(10.0 / (10.0 * cores), 3)}
    slack = procwatch.others_share(100.0, 110.0, 12.0, wall=10.0)  # our samples ran past the machine's
    assert slack["others_cpu_seconds"] == 0.0
    assert procwatch.machine_busy_seconds() > 0


def test_procwatch_sees_the_tree_its_memory_and_time(tmp_path):
    child = (
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'b = bytearray(60 * 2**20); import time; time.sleep(1.2)'])\n"
        "time.sleep(0.3); grandchild.wait(); print('done')\n"
    )
    watched = procwatch.watch([sys.executable, "-c", child], tmp_path / "log.txt", interval=0.1)
    assert watched["returncode"] == 0 and watched["wall_seconds"] >= 1.2
    assert watched["processes"] >= 2
    assert watched["memory"]["largest_child_mib"] >= 60
    assert (tmp_path / "log.txt").read_text().strip() == "done"
    assert 0 <= watched["others_share"] <= 1
    with pytest.raises(RuntimeError, match="failed"):
        procwatch.watch([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "fail.txt", interval=0.1)


def test_procwatch_wall_time_ends_when_the_process_does_not_at_the_next_poll(tmp_path):
    # A 0.3 s process watched with a 5 s polling interval: its wall time is its own, not the interval's.
    command = [sys.executable, "-c", "import time; time.sleep(0.3)"]
    watched = procwatch.watch(command, tmp_path / "log.txt", interval=5.0)
    assert 0.3 <= watched["wall_seconds"] < 2.0


def test_command_line_sections_and_checks(monkeypatch):
    monkeypatch.delenv("FRUITS_DATA", raising=False)
    args = bench.parse(["--data", "/d", "--sizes", "2500", "--engines", "litert"])
    assert args.sections == list(bench.DEFAULT_SECTIONS) and "realdata" not in args.sections
    assert bench.job_plan(args) == [("litert", 2500)] and args.alt_sizes == [2500]
    args = bench.parse(["--data", "/d", "--sizes", "1000,5000", "--big-engines", "litert"])
    assert bench.job_plan(args) == [
        ("litert", 1000),
        ("litert-int8", 1000),
        ("keras", 1000),
        ("litert", 5000),
    ]
    assert bench.parse(["realdata", "--input", "/x"]).sections == ["realdata"]
    assert args.pairs == 3 and bench.parse(["--data", "/d", "--quick"]).pairs == 1
    assert bench.parse(["--data", "/d", "--quick", "--pairs", "2"]).pairs == 2  # given, not overridden
    for wrong in (
        ["nosuch", "--data", "/d"],
        ["realdata"],
        ["jobs"],
        ["--data", "/d", "--pairs", "0"],
        ["--quick", "--data", "/d", "--pairs", "0"],
        ["--data", "/d", "--engines", "litert,onnx"],
    ):
        with pytest.raises(SystemExit):
            bench.parse(wrong)


def test_a_pair_whose_job_fails_is_an_error_to_measure_again_and_leaves_no_output(
    state, tmp_path, monkeypatch
):
    from benchmarks import alternatives, job_runs

    def failing_job(args, engine, data, output, *, name, **_):
        output.mkdir(parents=True)
        (output / "feature_store").write_text("half a run")
        raise RuntimeError(f"job failed (1); see {name}.txt")

    monkeypatch.setattr(job_runs, "run_job", failing_job)
    args = bench.parse(["--data", "/d", "--out", str(tmp_path)])
    run = alternatives.run_pair(args, 2500, tmp_path / "images", "model.tflite", 2)
    assert run["name"] == "pool" and run["pair"] == {"index": 2}
    assert run["error"].startswith("pair 2's job: job failed (1)")
    assert not any((tmp_path / "pairs").iterdir())  # its output removed all the same
    state["alternatives"][0]["runs"] = [run]
    assert "job_over_pool" not in report.wall_ratios(state)[0]  # not judged on a failed pair
    assert "FAILED: pair 2's job" in report.text_table(state)


def test_table_of_an_earlier_run(state, tmp_path, capsys):
    (tmp_path / "bench.json").write_text(json.dumps(state))
    assert bench.main(["--table", str(tmp_path / "bench.json"), "--markdown"]) == 0
    assert "| target | end to end >= 0.40 x limit at N=2,500 |" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- the Pool script


@pytest.mark.slow
def test_pool_script_on_generated_images_equals_the_engine_and_pca_of_the_job(tmp_path):
    from fruits import engines, models
    from fruits.decoding import decode_image
    from tests.conftest import write_image

    colours = {"red": (200, 30, 30), "green": (30, 180, 40)}
    paths = [
        write_image(tmp_path / "in" / label / f"{i:02d}.jpg", colour, seed=i)
        for label, colour in colours.items()
        for i in range(10)
    ]
    model = models.build_feature_model(
        models.get_spec("mobilenet"),
        image_size=32,
        decode_size=32,
        alpha=0.25,
        weights=models.resolve_weights("none"),
    )
    flatbuffer = engines.export(model, "litert", str(tmp_path), "tiny")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/alternatives/pool_script.py"),
            "--input",
            str(tmp_path / "in"),
            "--model",
            flatbuffer,
            "--output",
            str(tmp_path / "pool.csv"),
            "--processes",
            "2",
            "--k",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["images"] == 20 and printed["k"] == 3
    # The reference: the job's decode and engine functions, then PCA by SVD.
    predict = engines.load_predictor(flatbuffer, "litert", 1)
    x = predict(np.stack([decode_image(p.read_bytes(), 32) for p in sorted(paths)]))
    reference, explained = svd_reference(x, 3)
    write_job_csv(tmp_path / "job.csv", [str(p) for p in sorted(paths)], reference)
    result = compare.compare_files(tmp_path / "job.csv", tmp_path / "pool.csv", explained=explained)
    assert result["equal"], result


def test_int8_job_runs_calibrate_on_one_folder_and_the_limit_exports_from_it(tmp_path, monkeypatch):
    from benchmarks.common import calibration_folder, job_command

    monkeypatch.delenv("FRUITS_DATA", raising=False)

    args = bench.parse(["--data", str(tmp_path), "--sizes", "500"])
    command = job_command(args, "litert-int8", tmp_path / "n500", tmp_path / "out")
    assert command[command.index("--calibration") + 1] == str(tmp_path.resolve())
    assert "--calibration" not in job_command(args, "litert", tmp_path / "n500", tmp_path / "out")
    assert calibration_folder(bench.parse(["realdata", "--input", str(tmp_path)])) == tmp_path.resolve()
    assert {s["processes"] for s in limit.shapes("litert-int8", 2, 64).values()} == {1, 2}
    assert len(limit.shapes("litert-int8", 2, 64)) == 3  # the LiteRT shapes, per image included


def test_the_limit_measures_only_the_engines_the_sections_run():
    args = bench.parse(["--data", "/d", "--engines", "litert,keras"])
    assert bench.engines_needed(args, ["limit", "jobs"]) == {"litert", "keras"}
    assert bench.engines_needed(args, ["limit", "incremental", "pca"]) == {"litert"}
    assert bench.engines_needed(args, ["limit", "realdata"]) == {"litert"}
    assert bench.engines_needed(args, ["limit"]) == {"litert", "keras"}


@pytest.mark.parametrize(
    ("value", "threshold", "shown"),
    [
        (0.846, 0.85, "0.846"),
        (0.8496, 0.85, "0.8496"),
        (0.853, 0.85, "0.853"),
        (0.85, 0.85, "0.85"),
        (0.72, 0.70, "0.72"),
        (None, 1.0, ""),
    ],
)
def test_a_target_at_the_edge_shows_the_digit_that_decides_it(value, threshold, shown):
    target = report.Target("t", value, threshold, ">=", True, "here")
    assert target.shown == shown


def test_the_identify_benchmarks_synthetic_known_file_is_what_identify_reads_at_that_scale(tmp_path):
    from benchmarks import identify as identify_bench
    from fruits import identify

    path = identify_bench.synthetic_known(500, 7, tmp_path)
    known = identify.read_known([str(path)])
    assert len(known.paths) == len(set(known.paths)) == 500 and known.pcs.shape == (500, 7)
    assert len(set(known.labels)) > 100  # Fruits-360's many classes, not one
    scale = identify_bench.at_scale(500, 7, repeats=1)
    assert scale["known_parquet_bytes"] >= 500 * 7 * 4  # float32 components do not compress away
    assert scale["load_seconds"] > 0 and scale["nearest_seconds_per_photo"] > 0


def test_the_identify_benchmark_counts_right_answers_against_the_class_folders():
    from benchmarks.identify import accuracy

    document = {
        "answers": [
            {"path": "/d/Test/Lemon/1.jpg", "class": "Lemon"},
            {"path": "/d/Test/Lemon/2.jpg", "class": "Kiwi"},
            {"path": "/d/Test/Kiwi/3.jpg", "class": None, "reason": "corrupt image: broken data stream"},
        ]
    }
    assert accuracy(document) == (1, 2)  # an unanswered photo is neither right nor wrong


# ----------------------------------------------------------------------------------------------- machine


def test_simd_flags_names_the_int8_relevant_features_of_x86_and_arm() -> None:
    from benchmarks import common

    x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni\nprocessor\t: 1\nflags\t\t: fpu\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm\n"
    # the first CPU's line, in SIMD_FLAGS order
    assert common.simd_flags(x86) == ["avx2", "avx512f", "avx512_vnni"]
    assert common.simd_flags(arm) == ["asimddp", "i8mm"]
    assert common.simd_flags("model name\t: unknown\n") == []


def test_heading_shows_the_simd_features_and_reads_older_reports(state: dict) -> None:
    assert report.heading(state).startswith("machine: test CPU, 2 cores")  # a report from before "simd"
    state["machine"]["simd"] = ["avx2"]
    assert report.heading(state).startswith("machine: test CPU (avx2), 2 cores")
    state["machine"]["simd"] = []
    assert "test CPU (no int8-relevant SIMD)" in report.heading(state)
