"""The images a calibrated engine (``litert-int8``) sets its int8 ranges on: chosen the same way on every run.

Where from: ``--calibration`` (a folder or ``s3://`` prefix, listed with the job's own rules), else the input the
run lists (after ``--limit``). Which: the pool is the source's ``Training`` split when it has one (the ``Test``
images stay held out for the quality report), else all its images; of those, the ``--calibration-images``
with the smallest SHA-256 of ``<split>/<label>/<file name>`` that can be read. The rank comes from the listing
alone, so choosing reads only the chosen files (not a whole input to hash its bytes), spreads over the classes
like a random draw, and picks the same files wherever the folder is. The calibration's identity is the SHA-256
of the chosen images' content ids (sorted): the same bytes give the same int8 model wherever they are, and that
identity is part of the feature store's model key, so features of two calibrations never mix.

A source that changes changes the calibration: an input that grows gets other calibration images, hence a new
model key, and its next run featurizes everything again. For an input that grows, give ``--calibration`` a
folder that does not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from fruits.decoding import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from fruits.listing import Entry, InputError, Listing, list_input
from fruits.reading import Reader, default_reader, read_one

POOL_SPLIT = "Training"


@dataclass(frozen=True)
class Calibration:
    """The chosen images: where they came from, their paths and content ids, and their bytes (not compared)."""

    source: str
    split: str | None  # POOL_SPLIT when the pool was the source's Training split, else None (every image)
    paths: tuple[str, ...]
    ids: tuple[str, ...]
    contents: tuple[bytes, ...] = field(compare=False, repr=False)

    @property
    def identity(self) -> str:
        """16 hex digits of the SHA-256 of the sorted content ids: part of the feature store's model key."""
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What the manifest and the exported model's pointer say about the calibration."""
        return {
            "source": self.source,
            "split": self.split,
            "images": len(self.ids),
            "id": self.identity,
            "rule": "smallest sha256 of <split>/<label>/<file name>",
        }

    def decoded(self, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
        """The images as the job decodes them (``size`` x ``size`` RGB ``uint8``); undecodable ones are left out
        (the same bytes are left out every time)."""
        images = []
        for content in self.contents:
            try:
                images.append(decode_image(content, size, max_pixels))
            except ImageRejected:
                continue
        return images


def rank(entry: Entry) -> str:
    """An entry's place in the choice: the SHA-256 of ``<split>/<label>/<file name>``, which does not depend on
    where the folder is."""
    name = entry.path.rstrip("/").rsplit("/", 1)[-1]
    return hashlib.sha256(f"{entry.split or ''}/{entry.label}/{name}".encode()).hexdigest()


def candidates(entries: Sequence[Entry]) -> tuple[list[Entry], str | None]:
    """The images to choose from, best first, and the split they come from: the Training split's images when
    there are any, else every image (entries rejected by the listing never)."""
    images = [e for e in entries if e.reason is None]
    training = [e for e in images if e.split == POOL_SPLIT]
    pool, split = (training, POOL_SPLIT) if training else (images, None)
    return sorted(pool, key=lambda e: (rank(e), e.path)), split


def list_source(uri: str, max_file_mb: int) -> Listing:
    """The listing of a ``--calibration`` folder, by the job's own rules; InputError names the option."""
    try:
        return list_input(uri, max_file_mb=max_file_mb)
    except InputError as error:
        raise InputError(f"--calibration: {error}") from None


def collect(
    listing: Listing,
    count: int,
    max_bytes: int,
    choose_reader: Callable[[str], tuple[Reader, int]] = default_reader,
) -> Calibration:
    """Read the first ``count`` candidates of ``listing`` that can be read (S3 objects in parallel).

    InputError when none can: an int8 model cannot be calibrated on nothing.
    """
    ordered, split = candidates(listing.entries)
    paths: list[str] = []
    contents: list[bytes] = []
    start = 0
    while len(paths) < count and start < len(ordered):
        wanted = ordered[start : start + count - len(paths)]
        start += len(wanted)
        reader, threads = choose_reader(wanted[0].path)
        read = partial(read_one, reader=reader, max_bytes=max_bytes)
        with ThreadPoolExecutor(max(1, min(threads, len(wanted)))) as pool:
            results = list(pool.map(read, [entry.path for entry in wanted]))
        for entry, (content, _) in zip(wanted, results, strict=True):
            if content is not None:
                paths.append(entry.path)
                contents.append(content)
    if not contents:
        raise InputError(f"no image to calibrate the int8 model on under {listing.root}")
    ids = tuple(hashlib.sha256(content).hexdigest() for content in contents)
    return Calibration(listing.root, split, tuple(paths), ids, tuple(contents))
