"""Read: the bytes and content id of every listed image, each file opened by its exact name, never failing a run.

:func:`read_frames` is the pure part (pandas in, pandas out), tested without Spark; :func:`read_images` runs it
with ``mapInPandas`` on the executors. A file that cannot be read (permissions, gone since the listing, grown
past the size limit, an S3 error) gets a reason instead of content, and the run goes on. The content id is the
SHA-256 of the bytes, as the feature store keys features by it.

Why not Spark's ``binaryFile`` source: it lists the input again through Hadoop, which reads ``[``, ``*`` and
``{`` in names as a glob, cannot represent a ``:`` in a local file name, and aborts the whole read on one
unreadable file or folder; and it reads every file's bytes before any filter on size. Reading the listed
paths here keeps one listing, one decision per file, and one line per failure in rejected.csv.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame

from fruits.storage import S3_SCHEMES, make_s3_client, split_s3_uri, uri_scheme

READ_SCHEMA = "path string, label string, split string, length long, id string, content binary, reason string"
S3_THREADS = 16  # S3 answers each GET in tens of milliseconds: overlap them; local reads need no threads

Reader = Callable[[str, int], bytes]


class Unreadable(Exception):
    """A listed file that cannot be read; the message is the reason for rejected.csv."""


def _read_local(path: str, max_bytes: int) -> bytes:
    name = path.removeprefix("file:")
    try:
        with open(name, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise Unreadable("vanished after the listing") from None
    except IsADirectoryError:
        raise Unreadable("became a folder after the listing") from None
    except OSError as error:
        raise Unreadable(f"could not be read: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise Unreadable(f"grew past the limit of {max_bytes // (1024 * 1024)} MB per file after the listing")
    return data


def _s3_reader(client: Any) -> Reader:
    from botocore.exceptions import BotoCoreError, ClientError

    def read(path: str, max_bytes: int) -> bytes:
        _, bucket, key = split_s3_uri(path)  # the exact key: '#', '?', '%' are part of it
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            data = body.read(max_bytes + 1)
            body.close()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                raise Unreadable("vanished after the listing") from None
            if code in ("AccessDenied", "403"):
                raise Unreadable("could not be read: access denied") from None
            raise Unreadable(f"could not be read: {code or error}") from None
        except BotoCoreError as error:
            raise Unreadable(f"could not be read: {error}") from None
        if len(data) > max_bytes:
            raise Unreadable(
                f"grew past the limit of {max_bytes // (1024 * 1024)} MB per file after the listing"
            )
        return data

    return read


_S3_CLIENT: dict[str, Any] = {}  # one client per Python worker (boto3 clients are thread-safe)


def default_reader(path: str) -> tuple[Reader, int]:
    """(reader, threads) for a path: local files directly, S3 objects with this worker's boto3 client."""
    if uri_scheme(path) in S3_SCHEMES:
        if "client" not in _S3_CLIENT:
            _S3_CLIENT["client"] = make_s3_client()
        return _s3_reader(_S3_CLIENT["client"]), S3_THREADS
    return _read_local, 1


def read_one(path: str, reader: Reader, max_bytes: int) -> tuple[bytes | None, str | None]:
    """(content, None) or (None, reason) for one listed file."""
    try:
        data = reader(path, max_bytes)
    except Unreadable as error:
        return None, str(error)
    if not data:
        return None, "empty file (0 bytes) when read"
    return data, None


def read_frames(
    frames: Iterable[pd.DataFrame],
    max_bytes: int,
    choose_reader: Callable[[str], tuple[Reader, int]] = default_reader,
) -> Iterator[pd.DataFrame]:
    """``path, label, split`` frames -> ``path, label, split, length, id, content, reason`` frames, row for row."""
    for frame in frames:
        paths = list(frame["path"])
        if not paths:
            continue
        reader, threads = choose_reader(paths[0])
        if threads > 1 and len(paths) > 1:
            with ThreadPoolExecutor(min(threads, len(paths))) as pool:
                results = list(pool.map(partial(read_one, reader=reader, max_bytes=max_bytes), paths))
        else:
            results = [read_one(path, reader, max_bytes) for path in paths]
        contents = [content for content, _ in results]
        yield pd.DataFrame(
            {
                "path": paths,
                "label": frame["label"].to_numpy(),
                "split": frame["split"].to_numpy(),
                "length": [len(c) if c is not None else None for c in contents],
                "id": [hashlib.sha256(c).hexdigest() if c is not None else None for c in contents],
                "content": contents,
                "reason": [reason for _, reason in results],
            }
        )


def read_images(listed: DataFrame, max_bytes: int) -> DataFrame:
    """Read every ``path`` of ``listed`` (``path, label, split``) on the executors (see :func:`read_frames`)."""

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from read_frames(frames, max_bytes)

    return listed.select("path", "label", "split").mapInPandas(run, READ_SCHEMA)


def max_bytes(max_file_mb: int) -> int:
    """The per-file limit in bytes."""
    return max_file_mb * 1024 * 1024
