"""A run's input fingerprint: does this run have anything new to publish since the latest commit?

A run triggered by new uploads may find nothing new: the same photos uploaded again, a burst that the previous run
already covered, a schedule firing on a quiet day. With ``--skip-unchanged`` it then commits nothing and ends
(outcome ``unchanged``) as soon as it has read the images, before anything is featurized, fitted or written.

Nothing new means the same fingerprint as the latest commit's: a digest of

- the options that shape the results (:data:`RESULT_OPTIONS`) and the feature store's model key (model, width,
  sizes, weights);
- every file rejected from the listing, with its reason (sorted, hashed on the driver);
- every image read: path, label, split and content id, or the reason it could not be read. Summed on the
  executors as two independent 64-bit hashes per row, exactly (``decimal(38,0)``), with the row count: the sum
  does not depend on the order of rows or partitions, and no row leaves its executor.

A moved image (a new label), a replaced one (a new content id), a deleted one or a new ``--k`` all change it. The
commit object keeps it (``fingerprint``), so the next run compares with one small read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

#: The options whose values change what a run publishes for the same images (the model's are in the model key).
RESULT_OPTIONS = (
    "input",
    "limit",
    "k",
    "variance",
    "keep_features",
    "reuse_pca",
    "max_file_mb",
    "max_pixels",
)
#: The commit object's field holding the fingerprint.
COMMIT_FIELD = "fingerprint"
_NULL = "\u0000"  # stands for a missing value, so (a, null) and (null, a) hash apart


def options_part(options: Any, model_key: str) -> dict[str, Any]:
    """The result-shaping options of a run (fruits.options.JobOptions) and its model key."""
    return {"model_key": model_key, **{name: getattr(options, name) for name in RESULT_OPTIONS}}


def listing_part(rejected: Iterable[tuple[str, str | None]]) -> str:
    """SHA-256 of the files rejected from the listing, (path, reason) pairs in any order."""
    digest = hashlib.sha256()
    for path, reason in sorted((path, reason or "") for path, reason in rejected):
        digest.update(json.dumps([path, reason]).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _row_columns() -> list[Column]:
    # A read failure's reason only where there is no content id: a one-pass batch also keeps decoding reasons
    # beside a content id, which a two-pass run's catalog does not have; either way the row is the same image.
    reason = F.when(F.col("id").isNull(), F.col("reason"))
    return [
        F.coalesce(c.cast("string"), F.lit(_NULL))
        for c in (F.col("path"), F.col("label"), F.col("split"), F.col("id"), reason)
    ]


def images_part(images: DataFrame) -> dict[str, Any]:
    """Row count and two exact sums of 64-bit hashes over ``images`` (``path, label, split, id, reason``)."""
    columns = _row_columns()
    row = images.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.xxhash64(*columns).cast("decimal(38,0)")).alias("a"),
        F.sum(F.xxhash64(F.lit("fruits"), *columns).cast("decimal(38,0)")).alias("b"),
    ).first()
    assert row is not None  # an aggregate without grouping always has one row
    return {"rows": int(row["rows"]), "a": str(row["a"] or 0), "b": str(row["b"] or 0)}


def combine(options: dict[str, Any], listing: str, images: dict[str, Any]) -> str:
    """The fingerprint: SHA-256 of the three parts as canonical JSON."""
    document = json.dumps({"options": options, "listing": listing, "images": images}, sort_keys=True)
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Unchanged:
    """A run that found nothing new: the commit it matched (its counts stand for this run's too)."""

    commit: dict[str, Any]
    found: int
    metrics: dict[str, Any] | None = None

    @property
    def counts(self) -> dict[str, Any]:
        """The matched commit's counts, as this run would have made them: everything reused, nothing new."""
        counts = dict(self.commit.get("counts") or {})
        if "featurized" in counts:
            counts.update(reused=counts["featurized"], newly_featurized=0)
        return {**counts, "found": self.found}


class NothingNew(Exception):
    """Raised inside a run under its lease when its fingerprint is the latest commit's; :func:`fruits.job.run`
    turns it into :class:`Unchanged` once the lease is released."""

    def __init__(self, commit: dict[str, Any]) -> None:
        super().__init__(f"nothing new since commit {commit.get('number')} (run {commit.get('run_id')})")
        self.commit = commit
