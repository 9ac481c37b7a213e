"""List: every file under the input, each one either an image to read or rejected with a reason, no byte read.

The listing is the job's only view of the input: the read stage (:mod:`fruits.reading`) opens exactly the paths
listed here, by name, so the set of files read is the set listed by construction (no second listing by Hadoop,
no glob interpretation of ``[``, ``*`` or ``{`` in names, no trouble with ``:`` in a name).

What counts as an image (the README's "What the job reads" says the same):

- a regular file, or a symbolic link to one, whose name ends in .jpg, .jpeg or .png (any case), in a class
  folder: ``<input>/<label>/<file>`` or ``<input>/<Training|Test>/<label>/<file>`` (deeper folders are fine:
  the label is always the parent folder, the split the top folder when it is Training or Test, in any case);
- not empty and not larger than ``--max-file-mb`` (rejected from its size, before any byte is read).

Everything else that is found is rejected with a reason, so ``found = featurized + rejected`` always holds:
other file types, files directly under the input (no class folder), files directly under Training/ or Test/,
special files (FIFOs, sockets, devices), broken symbolic links, a folder reached twice through links, names that are
not valid UTF-8, and folders that cannot be listed (one row for the folder). Names starting with ``.`` or ``_``
(``.DS_Store``, ``_SUCCESS``, ``_temporary/``, the operator's ``_smoke/``) are skipped by convention, as Spark and
Hadoop skip them: they are not found, and the manifest counts them under ``skipped_hidden``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = {"training": "Training", "test": "Test"}
DEFAULT_MAX_FILE_MB = (
    64  # a Fruits-360 image is ~5 KB; a phone photo ~5 MB; anything bigger is not a fruit photo
)
HIDDEN_EXAMPLES = 20
_FOLDER_MARKER = "_$folder$"  # EMRFS (s3:// on EMR before 7.10.0) marks folders with such keys
_S3_SCHEMES = ("s3", "s3a", "s3n")


class InputError(ValueError):
    """The input location is missing, not a folder, not supported, or holds no files."""


@dataclass(frozen=True)
class Entry:
    """One file found under the input.

    ``path`` is the file's full name as Spark shows paths (``file:/abs/path`` or ``s3://bucket/key``), exactly as
    the name is: never URL-encoded. ``version`` identifies the content without reading it (modification time
    locally, the ETag on S3). ``reason`` is None for an image to read, else why the file is rejected.
    """

    path: str
    size: int
    label: str
    split: str | None
    version: str
    reason: str | None = None


@dataclass
class Listing:
    """Everything found under one input root."""

    root: str
    entries: list[Entry] = field(default_factory=list)
    hidden: int = 0
    hidden_examples: list[str] = field(default_factory=list)

    @property
    def to_read(self) -> list[Entry]:
        """The images to read."""
        return [entry for entry in self.entries if entry.reason is None]

    @property
    def rejected(self) -> list[Entry]:
        """The files rejected from the listing alone."""
        return [entry for entry in self.entries if entry.reason is not None]

    def skip_hidden(self, path: str) -> None:
        """Count one hidden name (and keep a few of them to show)."""
        self.hidden += 1
        if len(self.hidden_examples) < HIDDEN_EXAMPLES:
            self.hidden_examples.append(path)


def is_supported(name: str) -> bool:
    """True when the name ends in .jpg, .jpeg or .png, in any letter case."""
    return name.lower().endswith(SUPPORTED_EXTENSIONS)


def is_hidden(name: str) -> bool:
    """Names Spark and Hadoop skip: ``.DS_Store``, ``_SUCCESS``, ``_temporary``..."""
    return name.startswith((".", "_"))


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size < 1e9 else f"{size / 1e9:,.1f} GB"


def place(parts: list[str], root_split: str | None = None) -> tuple[str, str | None, str | None]:
    """(label, split, reason) of a file from its path's parts below the input root.

    ``root_split`` is the split the root itself names (an input pointed at ``.../Training``).
    """
    if len(parts) < 2:
        return "", root_split, "not in a class folder: files directly under the input have no label"
    top = SPLITS.get(parts[0].lower())
    if top is not None and len(parts) == 2 and root_split is None:
        return "", top, f"not in a class folder: files directly under {parts[0]}/ have no label"
    return parts[-2], top or root_split, None


def judge(name: str, size: int, max_file_bytes: int) -> str | None:
    """Why a regular file cannot be an image, from its name and size alone; None when it may be one."""
    if not is_supported(name):
        return "unsupported file type (not .jpg, .jpeg or .png)"
    if size == 0:
        return "empty file (0 bytes)"
    if size > max_file_bytes:
        return f"too large: {_megabytes(size)} exceeds the limit of {_megabytes(max_file_bytes)} per file (--max-file-mb)"
    return None


def _entry(
    path: str, parts: list[str], size: int, version: str, max_file_bytes: int, root_split: str | None
) -> Entry:
    label, split, reason = place(parts, root_split)
    return Entry(path, size, label, split, version, judge(parts[-1], size, max_file_bytes) or reason)


def _printable(path: str) -> tuple[str, bool]:
    """(a UTF-8 form of ``path``, whether it is the name exactly); undecodable bytes are shown escaped."""
    try:
        path.encode("utf-8")
        return path, True
    except UnicodeEncodeError:  # os.fsdecode kept bytes that are not UTF-8 as surrogates
        return os.fsencode(path).decode("utf-8", "backslashreplace"), False


def _walk_local(root: str, listing: Listing, max_file_bytes: int, root_split: str | None) -> None:
    """Depth-first walk of a local folder; never raises for one file or folder, never follows a link twice."""
    root = os.path.abspath(root)
    seen = {(os.stat(root).st_dev, os.stat(root).st_ino)}
    stack: list[tuple[str, list[str]]] = [(root, [])]
    while stack:
        folder, parts = stack.pop()
        try:
            with os.scandir(folder) as found:
                children = sorted(found, key=lambda entry: entry.name)
        except OSError as error:
            shown, _ = _printable(folder)
            reason = f"folder could not be listed: {error.strerror or error}; its files are not counted"
            listing.entries.append(Entry(f"file:{shown}/", 0, "", None, "", reason))
            continue
        for child in children:
            shown, exact = _printable(child.path)
            path = f"file:{shown}"
            if is_hidden(child.name):
                listing.skip_hidden(path)
                continue
            child_parts = [*parts, _printable(child.name)[0]]
            if not exact:
                listing.entries.append(Entry(path, 0, "", None, "", "file name is not valid UTF-8"))
                continue
            try:
                info = os.stat(child.path)  # follows symbolic links
            except FileNotFoundError:
                reason = "broken symbolic link" if child.is_symlink() else "vanished while listing"
                listing.entries.append(Entry(path, 0, "", None, "", reason))
                continue
            except OSError as error:
                reason = f"could not be read: {error.strerror or error}"
                listing.entries.append(Entry(path, 0, "", None, "", reason))
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    reason = "folder already listed through another path (a symbolic link or a loop)"
                    listing.entries.append(Entry(path + "/", 0, "", None, "", reason))
                else:
                    seen.add(key)
                    stack.append((child.path, child_parts))
            elif stat.S_ISREG(info.st_mode):
                version = f"{info.st_mtime_ns}"
                listing.entries.append(
                    _entry(path, child_parts, info.st_size, version, max_file_bytes, root_split)
                )
            else:
                listing.entries.append(
                    Entry(path, 0, "", None, "", "not a regular file (FIFO, socket or device)")
                )


def _walk_s3(uri: str, listing: Listing, max_file_bytes: int, root_split: str | None, client: object) -> None:
    """Every object under the prefix, 1,000 keys a request."""
    parsed = urlparse(uri)
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix)  # type: ignore[attr-defined]
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            relative = key[len(prefix) :]
            if not relative or relative.endswith("/") or relative.endswith(_FOLDER_MARKER):
                continue  # folder markers made by the console or EMRFS: not files
            path = f"{parsed.scheme}://{parsed.netloc}/{key}"
            parts = relative.split("/")
            if any(is_hidden(part) for part in parts):
                listing.skip_hidden(path)
                continue
            version = str(item.get("ETag", "")).strip('"')
            listing.entries.append(
                _entry(path, parts, int(item["Size"]), version, max_file_bytes, root_split)
            )


def list_input(
    uri: str, *, max_file_mb: int = DEFAULT_MAX_FILE_MB, s3_client: object | None = None
) -> Listing:
    """Every file under ``uri`` (a local folder, ``file://`` or ``s3://`` prefix), sorted by path.

    Raises :class:`InputError` when the input is missing, is not a folder, or has an unsupported scheme. An
    input with no files gives an empty listing: whether that is an error is the caller's decision.
    """
    max_file_bytes = max_file_mb * 1024 * 1024
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    root_split = SPLITS.get(name.lower())
    listing = Listing(root=uri)
    root = _root(uri)
    if root is None:
        if s3_client is None:
            from fruits.storage import make_s3_client

            s3_client = make_s3_client()
        _walk_s3(uri, listing, max_file_bytes, root_split, s3_client)
    else:
        _walk_local(root, listing, max_file_bytes, root_split)
    listing.entries.sort(key=lambda entry: entry.path)
    return listing


def _root(uri: str) -> str | None:
    """The local folder ``uri`` names (a path, ``file:/x``, ``file:///x``, ``file://localhost/x``), or None for
    an ``s3://`` prefix with a bucket; InputError for anything the job cannot list, found without a request."""
    parsed = urlparse(uri)
    if parsed.scheme in _S3_SCHEMES:
        if not parsed.netloc:
            raise InputError(f"input {uri!r} names no bucket")
        return None
    if parsed.scheme not in ("", "file") and len(parsed.scheme) != 1:  # one letter: a Windows drive
        raise InputError(f"unsupported input {uri!r}: give a local folder or an s3:// prefix")
    root = uri
    if parsed.scheme == "file":
        root = uri[len("file:") :]
        if root.startswith("//"):  # file://host/path: only this host is local
            host, _, path = root[2:].partition("/")
            if host not in ("", "localhost"):
                raise InputError(f"unsupported input {uri!r}: {host} is another host; give a local folder")
            root = "/" + path
    if not os.path.exists(root):
        raise InputError(f"input not found: {uri}")
    if not os.path.isdir(root):
        raise InputError(f"input is not a folder: {uri} (give the folder that holds the class folders)")
    return root


def check_input(
    uri: str, *, allow_empty: bool = False, s3_client: object | None = None, network: bool = True
) -> None:
    """Refuse, before any work, an input :func:`list_input` would refuse: InputError in one line.

    Locally that is all of it (missing, not a folder, another host, an unsupported scheme). On S3 one request
    (``network``) also finds a bucket that does not exist or refuses listing, and, without ``allow_empty``, a
    prefix that holds no object at all; no JVM is needed for any of it.
    """
    if _root(uri) is not None or not network:
        return
    if s3_client is None:
        from fruits.storage import make_s3_client

        s3_client = make_s3_client()
    parsed = urlparse(uri)
    prefix = parsed.path.lstrip("/")
    prefix = prefix + "/" if prefix and not prefix.endswith("/") else prefix
    try:
        page = s3_client.list_objects_v2(Bucket=parsed.netloc, Prefix=prefix, MaxKeys=1)  # type: ignore[attr-defined]
    except Exception as error:
        response = getattr(error, "response", None)
        if not isinstance(response, dict):
            raise
        code = response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise InputError(f"input {uri}: bucket {parsed.netloc} does not exist") from None
        raise InputError(f"input {uri}: S3 refused to list it ({code}: {error})") from None
    if not allow_empty and not page.get("KeyCount"):
        raise InputError(f"input is empty: no files under {uri}")


def iter_rows(listing: Listing) -> Iterator[tuple[str, int, str, str | None, str, str | None]]:
    """The listing as rows of (path, size, label, split, version, reason), for a Spark or pandas frame."""
    for entry in listing.entries:
        yield entry.path, entry.size, entry.label, entry.split, entry.version, entry.reason
