"""Reading listed files by their exact names: bytes and content id, or a reason; one file never fails a run."""

from __future__ import annotations

import hashlib

import pandas as pd

from fruits.reading import _s3_reader, read_frames
from tests.conftest import as_unprivileged


def frame(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "label": ["L"] * len(paths), "split": [None] * len(paths)})


def read_all(paths: list[str], max_bytes: int = 1000, **kwargs) -> dict[str, tuple]:
    (out,) = list(read_frames([frame(paths)], max_bytes, **kwargs))

    def value(x):  # type: ignore[no-untyped-def]
        return None if x is None or (isinstance(x, float) and pd.isna(x)) else x

    return {row.path: (value(row.id), value(row.content), value(row.reason)) for row in out.itertuples()}


def test_local_files_give_bytes_and_their_sha256_or_a_reason(shared_tmp):
    good = shared_tmp / "A" / "a [1] 10:30.jpg"
    good.parent.mkdir()
    good.write_bytes(b"jpeg bytes")
    (shared_tmp / "A" / "big.jpg").write_bytes(b"x" * 1001)
    (shared_tmp / "A" / "emptied.jpg").write_bytes(b"")
    locked = shared_tmp / "A" / "locked.jpg"
    locked.write_bytes(b"secret")
    locked.chmod(0)
    paths = [f"file:{good}", f"file:{shared_tmp}/A/gone.jpg", f"file:{shared_tmp}/A/big.jpg",
             f"file:{shared_tmp}/A/emptied.jpg", f"file:{locked}"]  # fmt: skip
    found = as_unprivileged(read_all, paths)
    assert found[paths[0]] == (hashlib.sha256(b"jpeg bytes").hexdigest(), b"jpeg bytes", None)
    assert found[paths[1]] == (None, None, "vanished after the listing")
    assert found[paths[2]][2].startswith("grew past the limit")
    assert found[paths[3]][2] == "empty file (0 bytes) when read"
    assert found[paths[4]][2] == "could not be read: Permission denied"


def test_rows_keep_their_order_labels_and_count(shared_tmp):
    for i in range(5):
        (shared_tmp / f"{i}.jpg").write_bytes(bytes([i + 1]) * 3)
    paths = [f"file:{shared_tmp}/{i}.jpg" for i in (3, 1, 4, 0, 2)]
    (out,) = list(read_frames([frame(paths)], 100))
    assert list(out["path"]) == paths and list(out["length"]) == [3] * 5 and list(out["label"]) == ["L"] * 5


def test_s3_objects_are_read_in_parallel_and_missing_ones_rejected(moto_s3):
    for i in range(20):
        moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=f"images/A/{i} [x].jpg", Body=f"img{i}".encode())
    paths = [f"s3://{moto_s3.bucket}/images/A/{i} [x].jpg" for i in range(20)] + [
        f"s3://{moto_s3.bucket}/no/such.jpg"
    ]
    reader = _s3_reader(moto_s3.client)
    found = read_all(paths, choose_reader=lambda _: (reader, 8))
    assert found[paths[7]][1] == b"img7" and found[paths[7]][0] == hashlib.sha256(b"img7").hexdigest()
    assert found[paths[-1]] == (None, None, "vanished after the listing")
