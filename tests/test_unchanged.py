"""--skip-unchanged and --trigger (fruits.fingerprint, fruits.outcomes): a triggered run with nothing new commits
nothing; its record is where its trigger looks for it. Pure parts without Spark, the run on local Spark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fruits import commits, fingerprint, layout, outcomes
from fruits.job import main
from fruits.options import UsageError, parse_options
from fruits.storage import open_store
from tests.conftest import FAST_MODEL, make_image_tree, write_image

BASE = {"input": "/in", "output": "/out"}


# -- options ----------------------------------------------------------------------------------------------


def test_trigger_and_skip_unchanged_come_from_every_layer():
    assert parse_options(["--trigger", "run-1"], {}, BASE).trigger == "run-1"
    assert parse_options([], {"spark.fruits.trigger": "a_b.c"}, BASE).trigger == "a_b.c"
    assert parse_options([], {}, {**BASE, "trigger": "f0e1d2c3-aaaa-bbbb"}).trigger == "f0e1d2c3-aaaa-bbbb"
    assert parse_options([], {}, BASE).trigger == ""
    assert parse_options(["--skip-unchanged"], {}, BASE).skip_unchanged is True
    assert parse_options([], {"spark.fruits.skipUnchanged": "true"}, BASE).skip_unchanged is True
    assert parse_options([], {}, {**BASE, "skip_unchanged": True}).skip_unchanged is True


@pytest.mark.parametrize(
    ("argv", "conf", "file"),
    [
        (["--trigger", "../x"], {}, {}),
        ([], {"spark.fruits.trigger": "has space"}, {}),
        ([], {}, {"trigger": "x" * 81}),
        ([], {}, {"trigger": "-leading-dash"}),
    ],
)
def test_a_trigger_that_cannot_name_an_object_is_refused_on_every_layer(argv, conf, file):
    with pytest.raises(UsageError, match="trigger"):
        parse_options(argv, conf, {**BASE, **file})


def test_the_triggered_record_key_is_the_layouts():
    assert layout.triggered_outcome_key("abc-1") == "_triggered/abc-1.json"
    with pytest.raises(ValueError, match="not a trigger name"):
        layout.triggered_outcome_key("a/b")


# -- the fingerprint's pure parts ---------------------------------------------------------------------------


def test_the_listing_part_ignores_order_and_sees_every_change():
    rejects = [("s3://b/a.txt", "unsupported file type"), ("s3://b/e.jpg", "empty file")]
    same = fingerprint.listing_part(reversed(rejects))
    assert fingerprint.listing_part(rejects) == same
    assert fingerprint.listing_part(rejects[:1]) != same
    assert fingerprint.listing_part([(rejects[0][0], "too large"), rejects[1]]) != same


def test_the_options_part_holds_the_result_shaping_options_and_the_model_key():
    options = parse_options(["--k", "5"], {}, BASE)
    part = fingerprint.options_part(options, "mobilenet-a0.25-s32")
    assert part["k"] == 5 and part["model_key"] == "mobilenet-a0.25-s32" and part["input"] == "/in"
    other = fingerprint.options_part(parse_options(["--k", "6"], {}, BASE), "mobilenet-a0.25-s32")
    assert fingerprint.combine(part, "", {}) != fingerprint.combine(other, "", {})
    # The batch size changes how fast a run is, not what it publishes.
    faster = fingerprint.options_part(
        parse_options(["--k", "5", "--batch-size", "8"], {}, BASE), part["model_key"]
    )
    assert faster == part


def test_unchanged_counts_are_the_commits_with_everything_reused():
    commit = {
        "number": 3,
        "counts": {"found": 18, "featurized": 14, "rejected": 4, "reused": 2, "newly_featurized": 12},
    }
    assert fingerprint.Unchanged(commit, 18).counts == {
        "found": 18,
        "featurized": 14,
        "rejected": 4,
        "reused": 14,
        "newly_featurized": 0,
    }


@pytest.mark.spark
def test_the_images_part_is_order_free_and_sees_a_moved_or_replaced_image(spark):
    rows = [
        ("file:/in/Lemon/l0.jpg", "Lemon", None, "aa", None),
        ("file:/in/Lemon/l1.jpg", "Lemon", "Training", "bb", None),
        ("file:/in/Lemon/gone.jpg", "Lemon", None, None, "vanished after the listing"),
    ]
    schema = "path string, label string, split string, id string, reason string"

    def part(data: list[tuple]) -> dict:
        return fingerprint.images_part(spark.createDataFrame(data, schema).repartition(3))

    base = part(rows)
    assert base["rows"] == 3 and part(list(reversed(rows))) == base
    moved = [("file:/in/Lime/l0.jpg", "Lime", None, "aa", None), *rows[1:]]
    replaced = [rows[0], ("file:/in/Lemon/l1.jpg", "Lemon", "Training", "cc", None), rows[2]]
    swapped = [("file:/in/Lemon/l0.jpg", "Lemon", "aa", None, None), *rows[1:]]  # a value in another column
    decoded_reason = [("file:/in/Lemon/l0.jpg", "Lemon", None, "aa", "corrupt image"), *rows[1:]]
    assert part(moved) != base and part(replaced) != base and part(swapped) != base
    # A decoding reason beside a content id (a one-pass batch) is the same image as without it (a catalog).
    assert part(decoded_reason) == base


# -- the run, on local Spark ------------------------------------------------------------------------------


def _triggered(output: Path, trigger: str) -> outcomes.Outcome:
    data = open_store(str(output)).read_bytes(layout.triggered_outcome_key(trigger))
    return outcomes.Outcome.from_json(json.loads(data))


@pytest.mark.spark
@pytest.mark.slow
def test_a_triggered_run_with_nothing_new_commits_nothing_and_says_unchanged(spark, tmp_path):
    root = make_image_tree(tmp_path / "images")
    output = tmp_path / "out"
    store = open_store(str(output))
    assert (
        main(
            [
                "--input",
                str(root),
                "--output",
                str(output),
                *FAST_MODEL,
                "--k",
                "2",
                "--skip-unchanged",
                "--trigger",
                "t1",
            ],
            spark,
        )
        == 0
    )
    first = _triggered(output, "t1")
    commit = commits.latest_commit(store)
    assert first.status == outcomes.SUCCEEDED and first.commit == commit["number"] == 1
    assert commit["trigger"] == "t1" and len(commit[fingerprint.COMMIT_FIELD]) == 64
    assert first.metrics == {"k": 2, "test_accuracy_pca": None, "test_accuracy_full_features": None}
    # The same record under the run's id, where `fruits status` looks.
    assert outcomes.read_all(store)[-1] == first
    batches = store.list_keys("feature_store/")

    args = [
        "--input",
        str(root),
        "--output",
        str(output),
        *FAST_MODEL,
        "--k",
        "2",
        "--overwrite",
        "--skip-unchanged",
    ]
    assert main([*args, "--trigger", "t2"], spark) == 0
    second = _triggered(output, "t2")
    assert second.status == outcomes.UNCHANGED and second.exit_code == 0 and second.commit is None
    assert commits.commit_numbers(store) == [1] and not store.exists(layout.LEASE_KEY)
    assert second.details == {"unchanged_since": {k: commit[k] for k in ("number", "run_id", "committed_at")}}
    assert second.counts == {**commit["counts"], "reused": 14, "newly_featurized": 0}
    assert second.metrics == first.metrics
    assert store.list_keys("feature_store/") == batches  # nothing was featurized
    assert not store.list_keys(layout.run_prefix(second.run_id))  # nor written

    # A new image: the next run featurizes only it and commits.
    write_image(root / "Lemon" / "l_new.jpg", (235, 215, 45), seed=123)
    assert main([*args, "--trigger", "t3"], spark) == 0
    third = _triggered(output, "t3")
    assert third.status == outcomes.SUCCEEDED and third.commit == 2
    assert third.counts["newly_featurized"] == 1 and third.counts["reused"] == 14

    # The same bytes under another label: a new result (the label changed), nothing to featurize.
    shutil.move(root / "Lemon" / "l_new.jpg", root / "Red Apple" / "l_new.jpg")
    assert main([*args, "--trigger", "t4"], spark) == 0
    assert _triggered(output, "t4").status == outcomes.SUCCEEDED and commits.commit_numbers(store) == [
        1,
        2,
        3,
    ]

    # Another k for the same images: a new result too.
    other_k = ["--input", str(root), "--output", str(output), *FAST_MODEL, "--k", "3", "--overwrite"]
    assert main([*other_k, "--skip-unchanged", "--trigger", "t5"], spark) == 0
    assert _triggered(output, "t5").status == outcomes.SUCCEEDED and commits.commit_numbers(store) == [
        1,
        2,
        3,
        4,
    ]
