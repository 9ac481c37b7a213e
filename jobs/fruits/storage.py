"""One small interface over a local folder and an S3 prefix, with the writes a run commit needs.

``open_store(uri)`` accepts a local path, a ``file://`` URI or ``s3://bucket/prefix``. Keys are always
relative, ``/``-separated paths under that root (``"runs/abc/manifest.json"``), whatever the backend.

Every write replaces one whole object: a reader sees the old bytes or the new bytes, never a mix or a prefix.
On S3 a single PUT already behaves so; locally we write a temporary file in the same folder, fsync it and
rename (or hard-link) it into place. On top of that the store offers the three conditional operations the
commit protocol and the lease rely on, one name each:

- ``put_if_absent``: S3 ``PutObject(IfNoneMatch="*")``; locally ``os.link`` of a fully written temporary file,
  which fails if the name exists (the atomic equivalent of ``open(path, "x")``).
- ``put_if_match``: S3 ``PutObject(IfMatch=etag)``; locally a compare-and-replace under an ``flock`` on the
  folder, the etag being a SHA-256 of the content.
- ``delete_if_match``: S3 ``DeleteObject(IfMatch=etag)``; locally the same locked compare.

Conditional writes need botocore >= 1.35.69 (pinned in requirements.txt).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mimetypes
import os
import secrets
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlparse

# Local temporary files start with this so that listings can skip a write in progress.
_TMP_PREFIX = ".~tmp-"
# S3 answers 409 ConditionalRequestConflict while another conditional write to the same key is in flight; AWS
# asks callers to retry, after which the request succeeds or fails with a definite 412.
_CONFLICT_RETRIES = 5
_S3_DELETE_BATCH = 1000


class StoreError(Exception):
    """A storage operation failed in a way the caller should not retry blindly."""


class NotFound(StoreError):
    """The key does not exist."""


def _check_key(key: str) -> str:
    """Refuse keys that could escape the root or mean different things on S3 and on a disk."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid store key {key!r}: use a relative 'a/b/c' path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid store key {key!r}: empty, '.' or '..' segment")
    return key


def _check_prefix(prefix: str) -> str:
    """A prefix is '' (everything) or a key-like string, optionally ending in '/'."""
    if prefix:
        _check_key(prefix.rstrip("/") or "/")
    return prefix


def _dir_prefix(prefix: str) -> str:
    """'runs' and 'runs/' both mean the folder runs/."""
    _check_prefix(prefix)
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class Store(ABC):
    """A root (folder or S3 prefix) holding objects addressed by relative keys."""

    #: The root as given to :func:`open_store`, normalised (no trailing slash).
    root: str

    @abstractmethod
    def uri_for(self, key: str = "") -> str:
        """Full path or URI of ``key`` for Spark readers and writers ('' is the root; 'a/' keeps its /)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content; raises :class:`NotFound` if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object (not a folder) exists at ``key``."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, recursive), sorted."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate child folders of folder ``prefix`` that hold at least one object, sorted."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Create or replace ``key`` as one complete object."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if it does not exist; the new etag, or None if it already existed."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The content and etag of ``key``, or None if it does not exist."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace ``key`` only if its etag is still ``etag``; the new etag, or None (changed or gone)."""

    @abstractmethod
    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete ``key`` only if its etag is still ``etag``; whether it was deleted."""

    @abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Copy ``key`` to a local file, replacing it atomically; raises :class:`NotFound`."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy one object to another key (server-side on S3) as one complete write; raises NotFound."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error (as on S3)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (not '': that would be the whole root); how many were deleted."""

    # Shared helpers built on the primitives above.

    def read_json(self, key: str) -> Any:
        """Parse ``key`` as UTF-8 JSON; raises :class:`NotFound`."""
        return json.loads(self.read_bytes(key).decode("utf-8"))

    def write_json(self, key: str, value: Any) -> None:
        """Write ``value`` as indented, key-sorted JSON (stable diffs, readable by people)."""
        self.write_bytes(key, _json_bytes(value), content_type="application/json")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"


def _temp_name(path: str) -> str:
    """A unique hidden name in the same folder as ``path``, so that the final rename stays atomic."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{_TMP_PREFIX}{name}.{secrets.token_hex(6)}")


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _content_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore(Store):
    """A folder on a local (POSIX) file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *_check_key(key).split("/"))

    def uri_for(self, key: str = "") -> str:
        """Plain absolute path: what Spark and pandas expect for local files."""
        if key.endswith("/"):
            return self.uri_for(key.rstrip("/")) + os.sep
        return self._path(key) if key else self.root

    def read_bytes(self, key: str) -> bytes:
        """The file's content; raises :class:`NotFound`."""
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"{self.uri_for(key)} does not exist") from exc

    def exists(self, key: str) -> bool:
        """Whether a file exists at ``key``."""
        return os.path.isfile(self._path(key))

    def _walk_files(self, folder: str) -> Iterator[str]:
        """Keys of every file below ``folder`` (a key-like folder path, '' for the root)."""
        base = os.path.join(self.root, *folder.split("/")) if folder else self.root
        for dirpath, _dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            rel_key = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    yield rel_key + name

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every file whose key starts with ``prefix``, sorted."""
        _check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter as S3 would on the string prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        return sorted(key for key in self._walk_files(folder) if key.startswith(prefix))

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Child folders of ``prefix`` holding at least one file (empty folders do not exist on S3)."""
        folder = _dir_prefix(prefix)
        base = os.path.join(self.root, *folder.rstrip("/").split("/")) if folder else self.root
        try:
            entries = sorted(os.scandir(base), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [
            entry.name
            for entry in entries
            if entry.is_dir() and next(self._walk_files(folder + entry.name), None) is not None
        ]

    def _write_temp(self, path: str, data: bytes) -> str:
        """Write ``data`` to a durable temporary file next to ``path``; returns its name."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = _temp_name(path)
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    @staticmethod
    def _fsync_dir(folder: str) -> None:
        # Makes the rename itself durable: without it a power cut can bring back the old name.
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _replace_with(self, path: str, data: bytes) -> None:
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._fsync_dir(os.path.dirname(path))

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Temp file + fsync + ``os.replace``: readers never see half a file. ``content_type`` is S3-only."""
        self._replace_with(self._path(key), data)

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """Hard-link a complete temp file into place; ``link`` fails if the name exists, atomically."""
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        self._fsync_dir(os.path.dirname(path))
        return _content_etag(data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Content and its SHA-256 (the local etag), or None."""
        try:
            data = self.read_bytes(key)
        except NotFound:
            return None
        return data, _content_etag(data)

    @contextlib.contextmanager
    def _folder_lock(self, path: str) -> Iterator[None]:
        """Exclusive ``flock`` on the key's folder, serialising conditional replace/delete across processes.

        flock (not lockf) because its locks belong to the open file description, so two threads of one
        process exclude each other too.
        """
        folder = os.path.dirname(path)
        try:
            fd = os.open(folder, os.O_RDONLY)
        except FileNotFoundError:
            # No folder, so no object to compare against: the caller's condition fails on read.
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Compare the current content hash with ``etag`` and replace, under the folder lock."""
        path = self._path(key)
        with self._folder_lock(path):
            current = self.read_versioned(key)
            if current is None or current[1] != etag:
                return None
            self._replace_with(path, data)
        return _content_etag(data)

    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete only if the content hash is still ``etag``, under the folder lock."""
        path = self._path(key)
        with self._folder_lock(path):
            current = self.read_versioned(key)
            if current is None or current[1] != etag:
                return False
            os.unlink(path)
        return True

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Copy into a temp file next to ``local_path``, then rename over it."""
        if not self.exists(key):
            raise NotFound(f"{self.uri_for(key)} does not exist")
        _atomic_local_copy(self._path(key), os.fspath(local_path))

    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy the source file (streamed, not read into memory) and replace the destination in one rename."""
        if not self.exists(src_key):
            raise NotFound(f"{self.uri_for(src_key)} does not exist")
        _atomic_local_copy(self._path(src_key), self._path(dst_key))

    def delete(self, key: str) -> None:
        """Unlink the file if present."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete the files under ``prefix`` and the folders this leaves empty."""
        if not prefix:
            raise ValueError("delete_prefix('') would delete the whole root; name a prefix")
        keys = self.list_keys(prefix)
        for key in keys:
            self.delete(key)
        if prefix.endswith("/"):
            # A folder prefix: also sweep what listings skip (a killed writer's temp files, Spark .crc files).
            shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)
        self._remove_empty_dirs(prefix)
        return len(keys)

    def _remove_empty_dirs(self, prefix: str) -> None:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = os.path.join(self.root, *folder.split("/")) if folder else self.root
        for dirpath, _dirnames, _filenames in os.walk(base, topdown=False):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/") + "/"
            if dirpath != self.root and rel.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)  # fails (and is skipped) while the folder still holds anything


def _atomic_local_copy(src: str, dst: str) -> None:
    """Copy ``src`` to a durable temporary file beside ``dst``, then rename it over ``dst``."""
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_name(dst)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    LocalStore._fsync_dir(folder)


class S3Store(Store):
    """A prefix in an S3 bucket, through one (thread-safe) boto3 client."""

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        if not bucket:
            raise ValueError("an S3 store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.root = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client if client is not None else make_s3_client()

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def uri_for(self, key: str = "") -> str:
        """``s3://bucket/prefix/key`` (Spark on EMR reads s3:// through S3A since emr-7.10.0, EMRFS before)."""
        if key.endswith("/"):
            return self.uri_for(key.rstrip("/")) + "/"
        return f"s3://{self.bucket}/{self._key(key)}" if key else self.root

    def read_bytes(self, key: str) -> bytes:
        """GET the object; raises :class:`NotFound`."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFound(f"{self.uri_for(key)} does not exist") from exc
            raise
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        """HEAD the object."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def _list(self, full_prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        yield from self._client.get_paginator("list_objects_v2").paginate(**kwargs)

    def list_keys(self, prefix: str = "") -> list[str]:
        """LIST under ``prefix``; folder markers (keys ending in '/') are skipped."""
        _check_prefix(prefix)
        start = len(self.prefix)
        keys = [
            item["Key"][start:]
            for page in self._list(self.prefix + prefix)
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
        return sorted(keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """LIST with Delimiter='/': the common prefixes one level below ``prefix``."""
        folder = self.prefix + _dir_prefix(prefix)
        names = [
            common["Prefix"][len(folder) :].rstrip("/")
            for page in self._list(folder, delimiter="/")
            for common in page.get("CommonPrefixes", [])
        ]
        return sorted(name for name in names if name)

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """One PUT: S3 never exposes a partly written object."""
        self._client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, **_content_args(key, content_type)
        )

    def _conditional(self, call: Any, **kwargs: Any) -> dict[str, Any] | None:
        """Run a conditional request; None if its precondition fails (412, or 404: If-Match on nothing)."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return call(Bucket=self.bucket, **kwargs)
            except Exception as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "412") or _is_not_found(exc):
                    return None
                if code == "ConditionalRequestConflict" and attempt + 1 < _CONFLICT_RETRIES:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise
        raise StoreError("unreachable")  # pragma: no cover - the loop returns or raises

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """``PutObject(IfNoneMatch="*")``."""
        response = self._conditional(
            self._client.put_object,
            Key=self._key(key),
            Body=data,
            IfNoneMatch="*",
            **_content_args(key, None),
        )
        return None if response is None else response["ETag"]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """GET body and ETag in one request, so they belong to the same version."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """``PutObject(IfMatch=etag)``."""
        response = self._conditional(
            self._client.put_object, Key=self._key(key), Body=data, IfMatch=etag, **_content_args(key, None)
        )
        return None if response is None else response["ETag"]

    def delete_if_match(self, key: str, etag: str) -> bool:
        """``DeleteObject(IfMatch=etag)`` (S3 conditional deletes; needs s3:GetObject as well)."""
        return self._conditional(self._client.delete_object, Key=self._key(key), IfMatch=etag) is not None

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Managed download into a temp file next to ``local_path``, then rename."""
        dst = os.fspath(local_path)
        folder = os.path.dirname(os.path.abspath(dst))
        os.makedirs(folder, exist_ok=True)
        tmp = _temp_name(dst)
        try:
            self._client.download_file(self.bucket, self._key(key), tmp)
            os.replace(tmp, dst)
        except Exception as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if _is_not_found(exc):
                raise NotFound(f"{self.uri_for(key)} does not exist") from exc
            raise

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side managed copy (CopyObject, or UploadPartCopy above the multipart threshold)."""
        try:
            self._client.copy(
                {"Bucket": self.bucket, "Key": self._key(src_key)},
                self.bucket,
                self._key(dst_key),
            )  # metadata, content type included, is copied from the source
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFound(f"{self.uri_for(src_key)} does not exist") from exc
            raise

    def delete(self, key: str) -> None:
        """DeleteObject (succeeds on a missing key)."""
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        """DeleteObjects in batches of 1000; any per-key error is raised, not ignored."""
        if not prefix:
            raise ValueError("delete_prefix('') would delete the whole root; name a prefix")
        _check_prefix(prefix)
        full_keys = [
            item["Key"] for page in self._list(self.prefix + prefix) for item in page.get("Contents", [])
        ]
        for start in range(0, len(full_keys), _S3_DELETE_BATCH):
            batch = full_keys[start : start + _S3_DELETE_BATCH]
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StoreError(
                    f"could not delete {len(response['Errors'])} objects under {self.uri_for(prefix)}: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )
        return len(full_keys)


def _content_args(key: str, content_type: str | None) -> dict[str, str]:
    # A content type lets the console and browsers open results.csv and the plots directly.
    content_type = content_type or mimetypes.guess_type(key)[0]
    return {"ContentType": content_type} if content_type else {}


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


def _is_not_found(exc: Exception) -> bool:
    return _error_code(exc) in ("NoSuchKey", "404", "NotFound")


def s3_region() -> tuple[str, str]:
    """(region, where it came from) for the job's S3 clients.

    botocore reads ``AWS_DEFAULT_REGION`` and the config file but not ``AWS_REGION``, and never asks the instance
    metadata for it, so inside a YARN container (no config file, only what the cluster's Spark conf exports)
    the region is read here explicitly; without any, boto3 would talk to us-east-1.
    """
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name], name
    import boto3

    try:
        configured = boto3.session.Session().region_name
    except Exception:  # e.g. AWS_PROFILE names a profile that does not exist here
        configured = None
    if configured:
        return configured, "AWS config file"
    return "us-east-1", "fallback: no AWS_REGION, AWS_DEFAULT_REGION or config"


def make_s3_client() -> Any:
    """A boto3 S3 client honouring AWS_ENDPOINT_URL(_S3) (moto, MinIO) and the region of :func:`s3_region`."""
    import boto3  # imported here so local-only use of this module does not need boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region, _ = s3_region()
    config = Config(retries={"max_attempts": 8, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def open_store(uri: str | os.PathLike[str], *, s3_client: Any | None = None) -> Store:
    """A :class:`Store` for a local path, ``file://`` URI or ``s3://bucket/prefix`` (also s3a://, s3n://)."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("s3", "s3a", "s3n"):
        return S3Store(parsed.netloc, parsed.path, client=s3_client)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a remote host is not supported: {text}")
        return LocalStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ValueError(f"unsupported storage URI {text!r}: use a local path, file:// or s3://bucket/prefix")
    return LocalStore(text)


__all__ = [
    "LocalStore",
    "NotFound",
    "S3Store",
    "Store",
    "StoreError",
    "make_s3_client",
    "open_store",
    "s3_region",
]
