"""Identify new photos with a committed run: its classifier and its nearest known images, without Spark.

A run keeps, under its prefix (names: :mod:`fruits.layout`), what an answer needs, and its manifest's
``identify`` section (:func:`describe`) names it:

- ``identify/model.npz``: the PCA's mean and first k components, and the quality report's own classifiers
  (shrinkage LDA on all features and on the k components, with the shrinkage the holdout chose) as plain arrays
  (:func:`model_npz`), so that no JVM is needed to use them;
- ``identify/known.parquet/``: path, label and the k components (float32) of every image the run featurized,
  written by the executors (:func:`fruits.writing.write_known`). Every answer compares a photo with all of them
  (one matrix product): exact, and fast at Fruits-360's 90,000 images; millions would want an approximate index;
- the model key, the exported model file the run's features came from (kept in the feature store's
  ``<model key>/engines/`` and the local cache), and the decode settings.

A photo is read, decoded and featurized exactly as the job does: the listing's judgement of its name and size
(:func:`fruits.listing.judge`), :func:`fruits.decoding.decode_image` with the run's decode size and pixel limit,
and the run's own model file, one image per invoke as in a Spark task (:mod:`fruits.engines`). It is then
projected, classified (the posterior of each class under the LDA) and compared with every known image (Euclidean
distance on the k components, as the notebook's nearest neighbours). Nothing here imports pyspark: an answer
never starts a JVM.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fruits import engines, layout, model_export
from fruits.decoding import ImageRejected, decode_image
from fruits.lda import SPACES, LinearClassifier
from fruits.listing import judge
from fruits.local_cache import local_cache_dir
from fruits.storage import LocalStore, NotFound, Store, open_store

CLASSIFIER = "shrinkage LDA, fitted on every Training row (the quality report's)"
RUNNERS_UP = 3  # classes shown after the predicted one
CHUNK = 64  # photos decoded and featurized at a time: a batch of any length holds only this many images
KNOWN_DTYPE = np.dtype(
    "<f4"
)  # the known images' components (Spark's float): half of float64's bytes, ample here


class IdentifyError(ValueError):
    """A run that cannot answer photos (an older job's run, its model file missing or another): one line."""


# --- what a run keeps (the job writes it) ----------------------------------------------------------------


def model_npz(
    mean: np.ndarray, components: np.ndarray, classifiers: dict[str, LinearClassifier] | None
) -> bytes:
    """``identify/model.npz``: ``mean`` (d), ``components`` (d, k) and, with ``classifiers`` (one per space of
    :data:`fruits.lda.SPACES`), ``classes`` and each space's ``<space>_weights`` and ``<space>_bias``; float64,
    as the report scored them. Plain arrays: read back with ``allow_pickle=False``."""
    arrays: dict[str, np.ndarray] = {"mean": np.asarray(mean), "components": np.asarray(components)}
    if classifiers:
        classes = classifiers[SPACES[0]].classes
        if any(classifiers[space].classes != classes for space in SPACES):
            raise ValueError("the classifiers of a run must share their classes")
        arrays["classes"] = np.array(classes, dtype=str)
        for space in SPACES:
            arrays[f"{space}_weights"] = classifiers[space].weights
            arrays[f"{space}_bias"] = classifiers[space].bias
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_model_npz(data: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, LinearClassifier] | None]:
    """(mean, components, classifiers or None) from :func:`model_npz`'s bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        mean, components = arrays["mean"], arrays["components"]
        if "classes" not in arrays:
            return mean, components, None
        classes = [str(name) for name in arrays["classes"]]
        return (
            mean,
            components,
            {
                space: LinearClassifier(classes, arrays[f"{space}_weights"], arrays[f"{space}_bias"])
                for space in SPACES
            },
        )


def no_classifier_reason(has_training: bool) -> str:
    """Why a run has no classifier (the report's classifiers need two classes of Training rows)."""
    if not has_training:
        return (
            "its input had no Training/ split, so no classifier was fitted (Fruits-360's Training/ and Test/)"
        )
    return "its Training/ split had fewer than two classes, so no classifier was fitted"


def describe(
    *,
    model_key: str,
    feature_store: str,
    model_file: dict[str, Any] | None,
    classifiers: dict[str, LinearClassifier] | None,
    shrinkage: dict[str, float] | None,
    no_classifier: str | None,
    known_images: int,
    k: int,
    feature_dim: int,
    decode_size: int,
    max_file_mb: int,
    max_pixels: int,
) -> dict[str, Any]:
    """The manifest's ``identify`` section: where the files are (inside the run's prefix), what they hold, and
    what featurizes a photo as the run did (model key, exported model file, decode settings)."""
    return {
        "model": layout.IDENTIFY_MODEL,
        "known": layout.IDENTIFY_KNOWN,
        "known_images": known_images,
        "k": k,
        "feature_dim": feature_dim,
        "classifier": (
            {"name": CLASSIFIER, "classes": len(classifiers[SPACES[0]].classes), "shrinkage": shrinkage}
            if classifiers
            else None
        ),
        "no_classifier": None if classifiers else no_classifier,
        "model_key": model_key,
        "feature_store": feature_store,
        "model_file": model_file,
        "decode_size": decode_size,
        "max_file_mb": max_file_mb,
        "max_pixels": max_pixels,
    }


# --- the known images ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """Every image the run featurized: its path, label and k components (one row each, in the same order)."""

    paths: list[str]
    labels: list[str]
    pcs: np.ndarray  # (images, k), KNOWN_DTYPE
    norms: np.ndarray = field(init=False)  # squared length of each row, for the distances' one product

    def __post_init__(self) -> None:
        pcs = np.ascontiguousarray(self.pcs, dtype=KNOWN_DTYPE)
        object.__setattr__(self, "pcs", pcs)
        object.__setattr__(self, "norms", np.einsum("ij,ij->i", pcs, pcs))

    def nearest(self, queries: np.ndarray, top: int) -> list[list[tuple[int, float]]]:
        """For each row of ``queries`` (k components), its ``top`` nearest known images, nearest first, as
        (row, Euclidean distance); ties in row order (path order within each file of the run).

        One matrix product finds the candidates (``|a|^2 - 2 a.q + |q|^2`` in float32); the distances shown
        are recomputed exactly (float64) for a few more than ``top`` of them, which then decide the order.
        """
        count = len(self.paths)
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float64))
        if top <= 0 or not count:
            return [[] for _ in queries]
        wanted = min(count, top + 8)
        q = queries.astype(KNOWN_DTYPE)
        squared = self.norms[None, :] - 2 * (q @ self.pcs.T) + np.einsum("ij,ij->i", q, q)[:, None]
        candidates = (
            np.argpartition(squared, wanted - 1, axis=1)[:, :wanted]
            if wanted < count
            else np.broadcast_to(np.arange(count), squared.shape)
        )
        found = []
        for query, rows in zip(queries, candidates, strict=True):
            distances = np.sqrt(((self.pcs[rows].astype(np.float64) - query) ** 2).sum(axis=1))
            order = np.lexsort((rows, distances))[: min(top, count)]  # by distance, then by row (path order)
            found.append([(int(rows[i]), float(distances[i])) for i in order])
        return found


def read_known(paths: Sequence[str]) -> Known:
    """:class:`Known` from the Parquet files of ``identify/known.parquet`` (local paths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not paths:
        return Known([], [], np.zeros((0, 0), dtype=KNOWN_DTYPE))
    # ParquetFile, not read_table: the dataset reader read_table goes through imports pandas (0.4-0.7 s).
    table = pa.concat_tables(pq.ParquetFile(path).read(columns=["path", "label", "pcs"]) for path in paths)
    rows = table.num_rows
    # Read from Arrow's buffers themselves: its flatten() and to_numpy() import pyarrow.compute and pandas, a
    # second of start-up between them.
    column = table.column("pcs").combine_chunks()
    width = np.dtype(np.int64 if pa.types.is_large_list(column.type) else np.int32)
    offsets = np.frombuffer(column.buffers()[1], width, rows + 1, column.offset * width.itemsize)
    k = int(offsets[-1] - offsets[0]) // rows if rows else 0
    values = column.values
    if (
        column.null_count
        or values.null_count
        or not np.array_equal(offsets - offsets[0], np.arange(rows + 1) * k)
    ):
        raise IdentifyError("the known images' components are not all of one length")
    start = (values.offset + int(offsets[0])) * KNOWN_DTYPE.itemsize
    pcs = np.frombuffer(values.buffers()[1], KNOWN_DTYPE, rows * k, start)
    return Known(
        table.column("path").to_pylist(),
        table.column("label").to_pylist(),
        pcs.reshape(rows, k),
    )


# --- a photo ---------------------------------------------------------------------------------------------


S3_SCHEMES = ("s3://", "s3a://", "s3n://")


def read_photo(path: str, max_file_bytes: int, s3_client: Any | None = None) -> bytes:
    """The bytes of a photo, a local file (``file:`` prefix allowed) or an ``s3://`` object, judged as the job's
    listing judges a file (type, emptiness, size) before a byte is read; raises
    :class:`~fruits.decoding.ImageRejected` with the reason. ``s3_client``: default the job's own."""
    if path.startswith(S3_SCHEMES):
        return _read_s3_photo(path, max_file_bytes, s3_client)
    name = path.removeprefix("file://") if path.startswith("file://") else path.removeprefix("file:")
    if "://" in name:
        raise ImageRejected("not a local file nor an s3:// object")
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise ImageRejected("not found") from None
    except OSError as error:
        raise ImageRejected(f"could not be read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageRejected("a folder, not a photo")
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected("not a regular file (FIFO, socket or device)")
    reason = judge(os.path.basename(name), info.st_size, max_file_bytes)
    if reason:
        raise ImageRejected(reason)
    try:
        with open(name, "rb") as handle:
            data = handle.read(max_file_bytes + 1)
    except OSError as error:
        raise ImageRejected(f"could not be read: {error.strerror or error}") from None
    return _checked(data, max_file_bytes)


def _checked(data: bytes, max_file_bytes: int) -> bytes:
    """The bytes read, unless the file changed since it was judged (as the job's reader says it)."""
    if not data:
        raise ImageRejected("empty file (0 bytes) when read")
    if len(data) > max_file_bytes:
        raise ImageRejected(
            f"grew past the limit of {max_file_bytes // (1024 * 1024)} MB per file after the listing"
        )
    return data


def _read_s3_photo(uri: str, max_file_bytes: int, s3_client: Any | None) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    from fruits.storage import make_s3_client

    bucket, _, key = uri.split("://", 1)[1].partition("/")
    client = s3_client or make_s3_client()
    try:
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        reason = judge(key.rsplit("/", 1)[-1], size, max_file_bytes)
        if reason:
            raise ImageRejected(reason)
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read(max_file_bytes + 1)
        body.close()
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ImageRejected("not found") from None
        raise ImageRejected(f"could not be read: {code or error}") from None
    except BotoCoreError as error:
        raise ImageRejected(f"could not be read: {error}") from None
    return _checked(data, max_file_bytes)


@dataclass(frozen=True)
class Similar:
    """A known image near a photo."""

    path: str
    label: str
    distance: float


@dataclass(frozen=True)
class Answer:
    """One photo's answer: the classes best first (the predicted one, then the runners-up) with their
    probabilities, and its nearest known images; or only why it has none (``reason``, the job's wording)."""

    path: str
    classes: list[tuple[str, float]] = field(default_factory=list)
    similar: list[Similar] = field(default_factory=list)
    reason: str | None = None

    @property
    def predicted(self) -> str | None:
        """The predicted class, or None (a photo not decoded, or a run without a classifier)."""
        return self.classes[0][0] if self.classes else None

    def as_json(self) -> dict[str, Any]:
        """The answer as ``--json`` prints it: ``path`` and ``class`` always (``class`` null when none)."""
        document: dict[str, Any] = {"path": self.path, "class": self.predicted}
        if self.reason is not None:
            return {**document, "reason": self.reason}
        if self.classes:
            document["probability"] = self.classes[0][1]
            document["runners_up"] = [{"class": c, "probability": p} for c, p in self.classes[1:]]
        document["similar"] = [
            {"path": s.path, "label": s.label, "distance": s.distance} for s in self.similar
        ]
        return document


# --- a run, ready to answer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identifier:
    """A committed run loaded for answers: :meth:`answer` photos with it."""

    run_id: str
    mean: np.ndarray
    components: np.ndarray
    classifiers: dict[str, LinearClassifier] | None
    no_classifier: str | None  # why there is no classifier
    known: Known
    predictor: engines.Predictor
    decode_size: int
    max_file_bytes: int
    max_pixels: int
    description: dict[str, Any]  # the manifest's identify section
    s3_client: Any | None = None  # reads s3:// photos (default: the job's own client, made when needed)

    def answer(
        self, photos: Sequence[str], top: int = 5, space: str = "full", runners_up: int = RUNNERS_UP
    ) -> Iterator[Answer]:
        """One :class:`Answer` per photo, in order, :data:`CHUNK` photos decoded and featurized at a time. A photo
        that cannot be used gets its reason; the others are answered. ``space``: the classifier on all features
        (``full``) or on the k components (``pca``)."""
        if space not in SPACES:
            raise ValueError(f"unknown classifier space {space!r}; choose one of {', '.join(SPACES)}")
        classifier = self.classifiers[space] if self.classifiers else None
        for start in range(0, len(photos), CHUNK):
            chunk = photos[start : start + CHUNK]
            batch, good, reasons = self._decoded(chunk)
            answered: dict[int, Answer] = {}
            if good:
                features = self.predictor(batch).astype(np.float64)
                pcs = (features - self.mean) @ self.components
                ranked = (
                    classifier.ranked(features if space == "full" else pcs, 1 + runners_up)
                    if classifier
                    else [[] for _ in good]
                )
                nearest = self.known.nearest(pcs, top)
                for position, classes, near in zip(good, ranked, nearest, strict=True):
                    similar = [Similar(self.known.paths[i], self.known.labels[i], d) for i, d in near]
                    answered[position] = Answer(chunk[position], classes, similar)
            for position, path in enumerate(chunk):
                yield answered.get(position) or Answer(path, reason=reasons[position])

    def _decoded(self, photos: Sequence[str]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """(the decoded photos as one batch, their positions in ``photos``, the others' reasons): read, judged
        and decoded as the job does, into one array as :func:`fruits.featurize.featurize_frames` does."""
        batch = np.empty((len(photos), self.decode_size, self.decode_size, 3), dtype=np.uint8)
        good: list[int] = []
        reasons: dict[int, str] = {}
        for position, path in enumerate(photos):
            try:
                data = read_photo(path, self.max_file_bytes, self.s3_client)
                batch[len(good)] = decode_image(data, self.decode_size, self.max_pixels)
                good.append(position)
            except ImageRejected as rejected:
                reasons[position] = rejected.reason
        return batch[: len(good)], good, reasons


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block: LiteRT's C++ prints an INFO line ("Created TensorFlow Lite
    XNNPACK delegate") when a model loads, which is not the command's to show. Python errors still raise."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _run_files(store: Store, prefix: str) -> str:
    """Where a run's identify files are read from: the run's own folder, or (S3) a local copy of it kept in the
    cache. A committed run's files never change, so a copy made once is right for good."""
    if isinstance(store, LocalStore):
        return store.uri_for(prefix)
    tag = hashlib.sha256(store.uri_for(prefix).encode("utf-8")).hexdigest()[:16]
    folder = local_cache_dir("identify") or os.path.join(tempfile.gettempdir(), "fruits-identify")
    return os.path.join(folder, tag)


def _local(store: Store, key: str, copies: str, prefix: str) -> str:
    """A local path holding ``key`` (under ``prefix``): the file itself, or its copy under ``copies``."""
    if isinstance(store, LocalStore):
        return store.uri_for(key)
    path = os.path.join(copies, *key[len(prefix) :].split("/"))
    if not os.path.isfile(path):
        store.download_file(key, path)
    return path


def feature_store_of(output: Store, manifest: dict[str, Any], s3_client: Any | None = None) -> Store:
    """The run's feature store: the one it named, or, when that was its output's default one, the default
    beside the output as given now (an output folder that moved, or named by a relative path)."""
    named = manifest[layout.MANIFEST_IDENTIFY_FIELD]["feature_store"]
    if named == layout.default_feature_store(str(manifest.get("output", ""))):
        named = layout.default_feature_store(output.uri_for())
    return open_store(named, s3_client=s3_client)


def open_run(
    store: Store, commit: dict[str, Any], *, feature_store: Store | None = None, s3_client: Any | None = None
) -> Identifier:
    """Load committed run ``commit`` of the output ``store`` to answer photos; raises :class:`IdentifyError`.

    ``feature_store``: where its exported model is kept (default :func:`feature_store_of`); the model file is
    taken from the local cache when it is there, else from the feature store's ``<model key>/engines/``.
    """
    run_id, prefix = str(commit["run_id"]), str(commit["run_prefix"])
    manifest = store.read_json(commit.get(layout.COMMIT_MANIFEST_FIELD) or layout.manifest_key(run_id))
    description = manifest.get(layout.MANIFEST_IDENTIFY_FIELD)
    if not description:
        raise IdentifyError(
            f"run {run_id} keeps nothing to identify photos with: an older job made it (run the job again)"
        )
    pointer = description.get("model_file")
    if not pointer:
        raise IdentifyError(
            f"run {run_id} names no exported model file for its model {description['model_key']}: its features "
            "cannot be reproduced for a photo"
        )
    copies = _run_files(store, prefix)
    try:
        with open(_local(store, prefix + layout.IDENTIFY_MODEL, copies, prefix), "rb") as handle:
            mean, components, classifiers = read_model_npz(handle.read())
        known_prefix = prefix + layout.IDENTIFY_KNOWN + "/"
        parts = [
            key
            for key in store.list_keys(known_prefix)
            if key.rsplit("/", 1)[-1].startswith("part-") and key.endswith(".parquet")
        ]
        known = read_known([_local(store, key, copies, prefix) for key in parts])
    except NotFound as missing:
        raise IdentifyError(
            f"run {run_id} is committed but its identify files are incomplete: {missing}"
        ) from None
    if len(known.paths) != description["known_images"]:
        raise IdentifyError(
            f"run {run_id}: {len(known.paths)} known images under {store.uri_for(known_prefix)}, "
            f"its manifest says {description['known_images']}"
        )
    if int(pointer["feature_dim"]) != len(mean):
        raise IdentifyError(
            f"run {run_id}: its model file {pointer['file_name']} gives {pointer['feature_dim']} features, its "
            f"projection expects {len(mean)}: another model's"
        )
    features_store = feature_store or feature_store_of(store, manifest, s3_client)
    try:
        model = model_export.kept_model(
            features_store, description["model_key"], pointer, tempfile.mkdtemp(prefix="fruits-identify-")
        )
    except NotFound as missing:
        raise IdentifyError(f"run {run_id}: {missing}") from None
    except model_export.ModelMismatch as mismatch:
        raise IdentifyError(f"run {run_id}: {mismatch}") from None
    with _native_stderr_silenced():
        # One thread, one image per invoke: as each Spark task featurizes (fruits.featurize), the same numbers.
        predictor = engines.load_predictor(model, pointer["engine"], 1)
    return Identifier(
        run_id=run_id,
        mean=mean,
        components=components,
        classifiers=classifiers,
        no_classifier=description.get("no_classifier"),
        known=known,
        predictor=predictor,
        decode_size=int(description["decode_size"]),
        max_file_bytes=int(description["max_file_mb"]) * 1024 * 1024,
        max_pixels=int(description["max_pixels"]),
        description=description,
        s3_client=s3_client,
    )
