"""The images a calibrated engine (``litert-int8``) sets its int8 ranges on, and how a store keeps them fixed.

**Stable under growth.** The product's main path is incremental runs over a bucket that grows (runs triggered by
new images), and an int8 model's features depend on the images it was calibrated on. Choosing them anew on every
run would change the model whenever an added image ranks among the chosen ones, so the next run would featurize
everything again. So the feature store's model key names the calibration's *spec* (:func:`spec`: where the images
come from and how many), never the images themselves: the first int8 run on a store chooses them, calibrates and
keeps the model under that key (:func:`fruits.model_export.prepare_model`, create-only), and every later run with
the same spec takes that stored model, whatever the input holds by then, without reading an image for it. Its
record (:meth:`Calibration.describe`: source, split, count, the id of the chosen images' content) is in the
model's pointer and in every run's manifest. ``--limit`` takes only the first files of the input: the calibration
source is still the whole input (the spec names the input, not the listing), so a quick sample run calibrates the
model the full runs use. A new spec (another ``--calibration`` or ``--calibration-images``) is another key, and
its first run calibrates anew; a store keeps the calibration of its first int8 run until then, even if that input
was small (its count is in the record).

Where from: ``--calibration`` (a folder or ``s3://`` prefix, listed with the job's own rules), else the input. Which:
the pool is the source's ``Training`` split when it has one (the ``Test`` images stay held out for the quality
report), else all its images; of those, the ``--calibration-images`` with the smallest SHA-256 of
``<split>/<label>/<file name>`` that can be read. The rank comes from the listing alone, so choosing reads only the
chosen files (not a whole input to hash its bytes), spreads over the classes like a random draw, and picks the
same files wherever the folder is. The calibration's id is the SHA-256 of the chosen images' content ids (sorted).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from fruits.decoding import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from fruits.listing import Entry, InputError, Listing, list_input
from fruits.reading import Reader, default_reader, max_bytes, read_one

log = logging.getLogger(__name__)
POOL_SPLIT = "Training"
_S3_SCHEMES = ("s3://", "s3a://", "s3n://")


class NoCalibrationImages(InputError):
    """No image of the calibration source could be read and decoded: an int8 model cannot be calibrated."""


def source_uri(uri: str) -> str:
    """The calibration source as the key names it: ``s3://bucket/prefix`` (also for ``s3a``/``s3n``) or an
    absolute local path, without a trailing ``/``, so that one folder has one name."""
    for scheme in _S3_SCHEMES:
        if uri.startswith(scheme):
            return "s3://" + uri.removeprefix(scheme).rstrip("/")
    local = uri.removeprefix("file://").removeprefix("file:")
    return os.path.abspath(os.path.expanduser(local)).rstrip("/") or "/"


def spec(options: Any) -> str:
    """The calibration's part of the feature store's model key (``options``: fruits.options.JobOptions): its
    source (``--calibration``, else the input; 12 hex digits of its SHA-256) and ``--calibration-images``.
    Never the images chosen (module docstring): the input growing, or ``--limit``, leaves it unchanged."""
    source = source_uri(options.calibration or options.input)
    return f"c{hashlib.sha256(source.encode()).hexdigest()[:12]}-n{options.calibration_images}"


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
        """16 hex digits of the SHA-256 of the sorted content ids: which images a stored model was calibrated on
        (recorded with it; the same bytes give the same id wherever they are)."""
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What the exported model's pointer records about its calibration, and every manifest of a run that
        used the model repeats."""
        return {
            "source": self.source,
            "split": self.split,
            "images": len(self.ids),
            "id": self.identity,
            "rule": "smallest sha256 of <split>/<label>/<file name>",
        }

    def decoded(self, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
        """The images as the job decodes them (``size`` x ``size`` RGB ``uint8``); undecodable ones are left out
        (the same bytes are left out every time). NoCalibrationImages when none decodes."""
        images = []
        for content in self.contents:
            try:
                images.append(decode_image(content, size, max_pixels))
            except ImageRejected:
                continue
        if not images:
            raise NoCalibrationImages(
                f"none of the {len(self.ids)} calibration images of {self.source} could be decoded"
            )
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

    NoCalibrationImages when none can: an int8 model cannot be calibrated on nothing.
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
        raise NoCalibrationImages(f"no image to calibrate the int8 model on under {listing.root}")
    ids = tuple(hashlib.sha256(content).hexdigest() for content in contents)
    return Calibration(listing.root, split, tuple(paths), ids, tuple(contents))


def choose(options: Any, found: Listing) -> Calibration:
    """The images a store's first run with ``options`` calibrates on: those of ``--calibration``, else of
    ``found`` (every file under the input, before ``--limit``). Reads the chosen images only."""
    source = list_source(options.calibration, options.max_file_mb) if options.calibration else found
    chosen = collect(source, options.calibration_images, max_bytes(options.max_file_mb))
    log.info(
        "calibration: %d images of %s%s, id %s",
        len(chosen.ids),
        chosen.source,
        f" ({chosen.split})" if chosen.split else "",
        chosen.identity,
    )
    if len(chosen.ids) < options.calibration_images:
        log.warning(
            "calibration: %d images of the %d asked for; the feature store keeps this calibration for every "
            "later run with the same source and count",
            len(chosen.ids),
            options.calibration_images,
        )
    return chosen
