"""The output layout: every name the job writes under an output root, in one place.

::

    <output>/
      _lease.json                   the single writer's lease (fruits.lease)
      _commits/00000001.json        one commit object per published run; the highest number is current
      _outcomes/<run_id>.json       how each run ended, committed or not (fruits.outcomes)
      _triggered/<trigger>.json     the same record, named by what started the run (--trigger): where an
                                    orchestrator that knows only its own name (a Step Functions execution) reads it
      runs/<run_id>/                everything one run writes; PUBLISHED_NAMES among it
        identify/                   what `fruits identify` answers new photos with (fruits.identify)
      results.csv, manifest.json... copies of the current run's PUBLISHED_NAMES (fruits.commits.publish_latest)
      feature_store/                the default feature store (``--feature-store`` moves it)

    <feature store>/
      <model key>/                  one folder per model setting (fruits.feature_store): batches and engines

The job (fruits.job, fruits.commits, fruits.lease) writes this layout and the operator CLI (fruits.ops) reads
it, both through these names, so the two cannot drift apart; the listing (fruits.listing) never lists them when
an output or a feature store lies inside the input (:func:`output_owned`, :func:`store_owned`). Nothing here
touches storage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LEASE_KEY = "_lease.json"
COMMITS_PREFIX = "_commits/"
OUTCOMES_PREFIX = "_outcomes/"
TRIGGERED_PREFIX = "_triggered/"
#: Scratch objects of ``--check`` (fruits.cluster_check): written and deleted at once.
CHECKS_PREFIX = "_checks/"
RUNS_PREFIX = "runs/"
FEATURE_STORE_DIR = "feature_store"

RESULTS_CSV = "results.csv"
MANIFEST_JSON = "manifest.json"
REJECTED_CSV = "rejected.csv"
EXPLAINED_VARIANCE_PNG = "explained_variance.png"
PCA_SCATTER_PNG = "pca_scatter.png"
#: The small files of a run that people open; publish_latest copies them to the output root.
PUBLISHED_NAMES = (RESULTS_CSV, MANIFEST_JSON, REJECTED_CSV, EXPLAINED_VARIANCE_PNG, PCA_SCATTER_PNG)
#: Without these a committed run is broken; the others may be missing from runs of an older job.
REQUIRED_NAMES = frozenset({RESULTS_CSV, MANIFEST_JSON})

#: What `fruits identify` reads, inside a run's prefix (written by the job, read by fruits.identify): the PCA's
#: projection and the report's classifiers as plain arrays, and the k components of every known image.
IDENTIFY_MODEL = "identify/model.npz"
IDENTIFY_KNOWN = "identify/known.parquet"
#: The manifest's section naming them, with the model key and the exported model file they were made with.
MANIFEST_IDENTIFY_FIELD = "identify"

#: The commit object's field holding the key (relative to the output root) of the run's manifest.
COMMIT_MANIFEST_FIELD = "manifest"

# Eight digits, zero-padded; more only once the number needs them (no leading zero then): one name per number.
_COMMIT_NAME = re.compile(r"^(\d{8,})\.json$")
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6,}$")
#: A trigger's name (fruits.options checks --trigger against the same shape): safe as one key segment.
TRIGGER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"


def commit_key(number: int) -> str:
    """``_commits/00000042.json``: the key of commit ``number``."""
    if number < 1:
        raise ValueError(f"commit numbers start at 1, got {number}")
    return f"{COMMITS_PREFIX}{number:08d}.json"


def commit_number(key: str) -> int | None:
    """The number of a commit key (``_commits/00000042.json`` -> 42); None for any other key.

    Only the exact name :func:`commit_key` gives counts: ``_commits/1.json`` or ``_commits/000000042.json``
    are not commits, so every reader finds the same commits whatever else lies in the folder.
    """
    if not key.startswith(COMMITS_PREFIX):
        return None
    match = _COMMIT_NAME.match(key[len(COMMITS_PREFIX) :])
    if not match:
        return None
    number = int(match.group(1))
    return number if number >= 1 and commit_key(number) == key else None


def is_run_id(text: str) -> bool:
    """Whether ``text`` has the shape of a run id (``20261125T134501Z-3f9a1c``, see commits.new_run_id)."""
    return bool(_RUN_ID.match(text))


def run_prefix(run_id: str) -> str:
    """``runs/<run_id>/``: the only place a run writes before it is committed."""
    if not is_run_id(run_id):
        raise ValueError(f"not a run id: {run_id!r} (expected e.g. 20261125T134501Z-3f9a1c)")
    return f"{RUNS_PREFIX}{run_id}/"


def outcome_key(run_id: str) -> str:
    """``_outcomes/<run_id>.json``: how run ``run_id`` ended (fruits.outcomes)."""
    if not is_run_id(run_id):
        raise ValueError(f"not a run id: {run_id!r} (expected e.g. 20261125T134501Z-3f9a1c)")
    return f"{OUTCOMES_PREFIX}{run_id}.json"


def triggered_outcome_key(trigger: str) -> str:
    """``_triggered/<trigger>.json``: the outcome record of the run started by ``trigger`` (``--trigger``)."""
    if not re.fullmatch(TRIGGER_PATTERN, trigger):
        raise ValueError(
            f"not a trigger name: {trigger!r} (1-80 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
        )
    return f"{TRIGGERED_PREFIX}{trigger}.json"


def manifest_key(run_id: str) -> str:
    """``runs/<run_id>/manifest.json``: where a run writes its manifest."""
    return run_prefix(run_id) + MANIFEST_JSON


def split_run_uri(uri: str) -> tuple[str, str | None]:
    """(output root, run id) of a run's own folder (``<output>/runs/<run_id>``, a trailing ``/`` or not); (uri,
    None) for anything else, an output root."""
    head, _, run_id = uri.rstrip("/").rpartition("/")
    if not is_run_id(run_id) or head.rpartition("/")[2] + "/" != RUNS_PREFIX:
        return uri, None
    root = head[: len(head) - len(RUNS_PREFIX) + 1]  # without "runs"
    return root.rstrip("/") or ("/" if root else "."), run_id


def output_owned(parts: Sequence[str]) -> int:
    """How many leading ``parts`` of a path below an output root name something the job writes there: 1 for a
    published file, the lease or ``_commits``, 2 for ``runs/<run_id>`` and the default feature store's
    ``feature_store/<model key>``; 0 when the job writes nothing by that name (a ``runs`` folder of images)."""
    if not parts:
        return 0
    head = parts[0]
    if (len(parts) == 1 and head in PUBLISHED_NAMES) or head == LEASE_KEY or head + "/" == COMMITS_PREFIX:
        return 1
    if head + "/" == RUNS_PREFIX and len(parts) > 1 and is_run_id(parts[1]):
        return 2
    if head == FEATURE_STORE_DIR and store_owned(parts[1:]):
        return 2
    return 0


#: Part of every model key: a store written in another format is another store, never misread. ``f32``: float32
#: vectors; ``upright``: images decoded with their EXIF orientation applied (fruits.decoding), which earlier
#: stores did not do, so their features of sideways photos are never reused.
STORE_FORMAT = "f32-upright"
_MODEL_KEY = re.compile(r"^[A-Za-z0-9._=-]+-a[0-9.]+-s\d+-d\d+-w[A-Za-z0-9._=-]+-" + STORE_FORMAT + "$")


def model_key(
    model: str,
    alpha: float,
    image_size: int,
    decode_size: int,
    weights_id: str,
    quantized: str | None = None,
) -> str:
    """The feature store's folder for the settings that decide a feature vector.

    The float engines (``litert``, ``keras``) agree, so they share one key. A quantized engine's features are its
    own: ``quantized`` (e.g. ``int8-c<source>-n<count>``) goes into its key.
    """
    variant = f"-{quantized}" if quantized else ""
    raw = f"{model}-a{alpha:g}-s{image_size}-d{decode_size}-w{weights_id}{variant}-{STORE_FORMAT}"
    return re.sub(r"[^A-Za-z0-9._=-]", "_", raw)


def store_owned(parts: Sequence[str]) -> int:
    """1 when ``parts`` (a path below a feature store's root) start with a model key's folder, else 0."""
    return 1 if parts and _MODEL_KEY.match(parts[0]) else 0


def default_feature_store(output: str) -> str:
    """``<output>/feature_store``: the feature store when ``--feature-store`` is not given."""
    return f"{output.rstrip('/')}/{FEATURE_STORE_DIR}"
