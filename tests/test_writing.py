"""results.csv and rejected.csv keep the exact bytes of every path and label (Spark trims spaces by default)."""

from __future__ import annotations

import csv

import pytest

from fruits.storage import open_store
from fruits.writing import write_single_csv

pytestmark = pytest.mark.spark

HOSTILE = [
    (" leading.jpg", " Red Apple "),
    ("trailing.jpg ", "tab\tlabel"),
    ('comma,quote"newline\nname.jpg', "ünïcødé 🍎"),
    ("\u00a0nbsp\u3000wide.jpg", "'single' \"double\""),
]


def test_paths_and_labels_survive_the_csv_byte_for_byte(spark, tmp_path):
    frame = spark.createDataFrame(HOSTILE, "path string, label string")
    store = open_store(str(tmp_path))
    write_single_csv(frame, store, "out.csv", len(HOSTILE))
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "label"]
    assert sorted(map(tuple, rows[1:])) == sorted(HOSTILE)
    assert not (tmp_path / "out.csv.parts").exists()


def test_the_one_csv_is_sorted_by_path_whatever_the_partitions(spark, tmp_path):
    paths = [f"/data/{i:05d}.jpg" for i in range(3000)]
    shuffled = [paths[(i * 7919) % len(paths)] for i in range(len(paths))]  # 7919 is prime: a permutation
    frame = spark.createDataFrame([(p, "x") for p in shuffled], "path string, label string").repartition(5)
    store = open_store(str(tmp_path))
    write_single_csv(frame, store, "out.csv", len(paths))
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert [row[0] for row in rows[1:]] == paths
