"""Listing the input without reading it: locally, on S3 (moto server), and through Spark's JVM."""

from __future__ import annotations

import pytest

from fruits.catalog import InputError, scan_input


def make_tree(put) -> None:
    put("Apple/a.jpg", b"x" * 10)
    put("Apple/B.JPEG", b"x")
    put("Apple/empty.png", b"")
    put("Apple/notes.txt", b"text")
    put("Lemon Meyer/c.jpg", b"y")
    put("Lemon Meyer/.DS_Store", b"hidden")
    put("_temporary/0/part.jpg", b"hidden folder")


def test_local_listing_counts_every_visible_file_and_keeps_the_odd_ones(tmp_path):
    def put(key: str, data: bytes) -> None:
        path = tmp_path / "in" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    make_tree(put)
    scan = scan_input(None, str(tmp_path / "in"))  # no Spark needed for local paths
    assert scan.files == 5
    assert scan.empty == [f"file:{tmp_path}/in/Apple/empty.png"]
    assert scan.unsupported == [f"file:{tmp_path}/in/Apple/notes.txt"]


def test_s3_listing_pages_through_the_prefix(moto_s3):
    def put(key: str, data: bytes) -> None:
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=f"images/{key}", Body=data)

    make_tree(put)
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key="images/Apple/", Body=b"")  # a console "folder"
    moto_s3.client.put_object(
        Bucket=moto_s3.bucket, Key="images-other/x.jpg", Body=b"z"
    )  # not under the prefix
    scan = scan_input(None, moto_s3.uri("images"))
    assert scan.files == 5
    assert scan.empty == [f"s3://{moto_s3.bucket}/images/Apple/empty.png"]
    assert scan.unsupported == [f"s3://{moto_s3.bucket}/images/Apple/notes.txt"]


def test_missing_and_empty_inputs_are_input_errors(tmp_path, moto_s3):
    with pytest.raises(InputError, match="input not found"):
        scan_input(None, str(tmp_path / "nope"))
    (tmp_path / "only-hidden").mkdir()
    (tmp_path / "only-hidden" / ".keep").write_text("")
    with pytest.raises(InputError, match="input is empty"):
        scan_input(None, str(tmp_path / "only-hidden"))
    with pytest.raises(InputError, match="input is empty"):
        scan_input(None, moto_s3.uri("nothing-here"))


@pytest.mark.spark
def test_other_file_systems_are_listed_through_spark(spark, tmp_path):
    """The JVM path (used for hdfs:// and the like), exercised with Hadoop's own local file system."""
    from fruits.catalog import _list_hadoop

    (tmp_path / "in" / "A").mkdir(parents=True)
    (tmp_path / "in" / "A" / "a.jpg").write_bytes(b"abc")
    (tmp_path / "in" / "A" / "_SUCCESS").write_bytes(b"")
    listed = list(_list_hadoop(spark, f"file://{tmp_path}/in"))
    assert listed == [(f"file:{tmp_path}/in/A/a.jpg", 3)]


@pytest.mark.spark
@pytest.mark.parametrize(
    ("path", "label", "split"),
    [
        ("file:/data/Training/Apple Braeburn/r_1_100.jpg", "Apple Braeburn", "Training"),
        ("s3://bucket/images/test/Lemon Meyer/1.JPG", "Lemon Meyer", "Test"),
        ("file:/data/Mango/a.png", "Mango", None),
        ("file:/data/Validation/Kiwi/a.png", "Kiwi", None),
        ("a.jpg", "", None),
    ],
)
def test_label_and_split_columns_from_spark_paths(spark, path, label, split):
    from pyspark.sql import functions as F

    from fruits.catalog import label_column, split_column

    row = (
        spark.createDataFrame([(path,)], "path string")
        .select(label_column(F.col("path")).alias("label"), split_column(F.col("path")).alias("split"))
        .first()
    )
    assert (row["label"], row["split"]) == (label, split)
