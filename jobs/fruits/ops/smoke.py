"""`fruits smoke`: prove a deployed stack works end to end on a few synthetic images, then clean up.

The run: make a handful of small fruit-like JPEGs in two labels plus one file that is not an image, upload
them to a scratch prefix, submit the job step exactly as the stack describes it (only the job options
differ), wait for it, and check what it published: results.csv (header, one row per featurized image), the
manifest (found = featurized + rejected, and the counts we planted) and the logs.

Scratch prefixes sit under the stack's own `InputUri`, `ResultsUri` and `FeatureStoreUri`, because the
cluster's role may only read and write there; their folder `_smoke/` starts with "_", which the job's input
listing (like Spark's) skips, so a production run over `InputUri` never reads the smoke images.
"""

from __future__ import annotations

import csv
import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from fruits import commits, layout
from fruits.storage import NotFound, Store, StoreError, open_store

from . import aws, logs, runs

SMOKE_DIR = "_smoke"
# Two labels (one with a space, as Fruits-360 has), fruit-coloured discs on white.
LABELS = {"Red Apple": (200, 30, 30), "Lemon": (230, 220, 40)}
IMAGES_PER_LABEL = 3
BAD_FILE = "Lemon/not_an_image.jpg"
LIMIT = 20
DEFAULT_TIMEOUT_MINUTES = 15.0
DEFAULT_POLL_SECONDS = 15.0
LOG_LINES = 20  # of the driver's (else the step's) log, printed when the smoke fails


def new_smoke_id(now: datetime | None = None) -> str:
    """A sortable, unique id for one smoke run's scratch prefixes."""
    return f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _jpeg(colour: tuple[int, int, int], seed: int, size: int = 100) -> bytes:
    # Imported here: the other commands of the CLI do not need numpy and Pillow.
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    pixels = np.full((size, size, 3), 255, dtype=np.uint8)
    noise = rng.normal(0, 12, (int(disc.sum()), 3))
    pixels[disc] = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def synthetic_images() -> dict[str, bytes]:
    """`<Label>/<name>` -> bytes: IMAGES_PER_LABEL JPEGs per label and BAD_FILE, which no decoder accepts."""
    files = {
        f"{label}/{label.split()[-1].lower()}_{i}.jpg": _jpeg(colour, seed=100 * n + i)
        for n, (label, colour) in enumerate(LABELS.items())
        for i in range(IMAGES_PER_LABEL)
    }
    files[BAD_FILE] = b"this is text, not a JPEG"
    return files


@dataclass(frozen=True)
class Expected:
    """The counts and labels a correct run reports for the planted files."""

    found: int
    featurized: int
    rejected: int
    labels: frozenset[str]


def expected_for(files: dict[str, bytes]) -> Expected:
    """What the job must report for `files` (all of them within --limit)."""
    good = [key for key in files if key != BAD_FILE]
    return Expected(len(files), len(good), len(files) - len(good), frozenset(k.split("/")[0] for k in good))


@dataclass(frozen=True)
class Scratch:
    """One smoke run's prefixes: its images, its output root and its feature store."""

    smoke_id: str
    input_uri: str
    output_uri: str
    feature_store_uri: str

    @classmethod
    def under(cls, outputs: aws.StackOutputs, smoke_id: str) -> Scratch:
        """The scratch prefixes below the stack's input, results and feature-store URIs."""

        def below(key: str) -> str:
            return f"{outputs[key].rstrip('/')}/{SMOKE_DIR}/{smoke_id}/"

        return cls(smoke_id, below("InputUri"), below("ResultsUri"), below("FeatureStoreUri"))

    def job_args(self) -> list[str]:
        """The job options of the smoke step; everything else is the stack's step."""
        return [
            "--input",
            self.input_uri,
            "--output",
            self.output_uri,
            "--feature-store",
            self.feature_store_uri,
            "--limit",
            str(LIMIT),
            "--overwrite",
        ]

    def uris(self) -> tuple[str, str, str]:
        """Every scratch prefix, for cleaning up."""
        return self.input_uri, self.output_uri, self.feature_store_uri


@dataclass(frozen=True)
class Check:
    """One verdict: ok True (passed), False (failed) or None (could not tell yet: a warning, not a failure)."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class SmokeResult:
    """Everything `fruits smoke` prints."""

    scratch: Scratch
    step_id: str | None = None
    state: str | None = None
    checks: list[Check] = field(default_factory=list)
    log_uri: str | None = None
    log_tail: list[str] = field(default_factory=list)
    cleaned: bool = False
    cleanup_error: str | None = None

    @property
    def passed(self) -> bool:
        """No check failed and the step completed."""
        return self.state == "COMPLETED" and all(check.ok is not False for check in self.checks)


def check_outputs(store: Store, expected: Expected) -> list[Check]:
    """The committed run under `store`: the manifest's counts and results.csv, against what was planted."""
    try:
        commit = commits.latest_commit(store)
    except commits.DamagedCommit as err:  # the job never writes one: a failed check, not a traceback
        return [Check("commit", False, str(err))]
    if commit is None:
        return [Check("commit", False, f"no commit under {store.uri_for()}/: the step published no run")]
    checks = [Check("commit", True, f"run {commit['run_id']} committed as #{commit['number']}")]
    try:
        manifest = commits.read_run_manifest(store)
    except (NotFound, ValueError) as err:  # ValueError: a manifest that is not JSON
        return [*checks, Check("manifest", False, str(err))]
    counts = manifest.get("counts", {})
    found, featurized, rejected = (counts.get(name) for name in ("found", "featurized", "rejected"))
    got = f"found {found} = featurized {featurized} + rejected {rejected}"
    planted = (expected.found, expected.featurized, expected.rejected)
    if None in (found, featurized, rejected) or found != featurized + rejected:
        checks.append(Check("manifest", False, f"counts do not reconcile: {counts}"))
    elif (found, featurized, rejected) != planted:
        checks.append(
            Check("manifest", False, f"{got}, but {planted[0]} = {planted[1]} + {planted[2]} planted")
        )
    else:
        checks.append(Check("manifest", True, got))
    checks.append(_check_results_csv(store, commit["run_prefix"] + layout.RESULTS_CSV, featurized, expected))
    return checks


def _check_results_csv(store: Store, key: str, featurized: Any, expected: Expected) -> Check:
    try:
        text = store.read_bytes(key).decode("utf-8")
    except NotFound as err:
        return Check("results.csv", False, str(err))
    rows = list(csv.reader(io.StringIO(text)))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    if header[:3] != ["path", "label", "pc_1"]:
        return Check("results.csv", False, f"header {header[:3]} is not path,label,pc_1..pc_k")
    if len(body) != featurized:
        return Check("results.csv", False, f"{len(body)} rows, but the manifest says {featurized} featurized")
    labels = {row[1] for row in body if len(row) > 1}
    if labels != expected.labels:
        return Check("results.csv", False, f"labels {sorted(labels)}, expected {sorted(expected.labels)}")
    return Check(
        "results.csv", True, f"{len(body)} rows, {len(header) - 2} components, labels {sorted(labels)}"
    )


def check_logs(found: logs.StepLogs) -> Check:
    """The driver's log is where status will look for it; not uploaded yet is a warning (EMR copies late)."""
    if found.driver_log is not None:
        return Check("logs", True, f"driver log {found.driver_log_uri}")
    if found.application_id is None:
        where = found.step_stderr_uri
        return Check("logs", None, f"step log not uploaded yet (EMR copies logs periodically): {where}")
    return Check("logs", None, f"driver log not uploaded yet; it will be under {found.containers_uri}")


def _delete_scratch(s3: aws.S3Client, scratch: Scratch) -> str | None:
    """Delete every scratch prefix; the first error, if any (reported, so it never hides the verdict)."""
    error = None
    for uri in scratch.uris():
        parent, _, name = uri.rstrip("/").rpartition("/")
        try:
            # From the parent, because a Store refuses to delete its whole root.
            open_store(parent, s3_client=s3).delete_prefix(name + "/")
        except (ClientError, BotoCoreError, StoreError) as err:
            error = error or f"{uri}: {err}"
    return error


def run_smoke(
    emr: aws.EmrClient,
    s3: aws.S3Client,
    outputs: aws.StackOutputs,
    *,
    name: str = "fruits-smoke",
    timeout: float = DEFAULT_TIMEOUT_MINUTES * 60,
    poll: float = DEFAULT_POLL_SECONDS,
    keep: bool = False,
    progress: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    smoke_id: str | None = None,
) -> SmokeResult:
    """Upload, submit, wait, check, clean up; the verdict. Stack and cluster problems raise `OpsError`."""

    def say(text: str) -> None:
        if progress is not None:
            print(text, file=progress, flush=True)

    aws.ensure_cluster_usable(emr, outputs)
    scratch = Scratch.under(outputs, smoke_id or new_smoke_id())
    step = aws.job_step(outputs, name, scratch.job_args())  # before uploading: a bad stack leaves nothing
    result = SmokeResult(scratch)
    files = synthetic_images()
    try:
        images = open_store(scratch.input_uri, s3_client=s3)
        for key, data in files.items():
            images.write_bytes(key, data)
        say(f"uploaded {len(files)} files ({len(LABELS)} labels and one bad file) to {scratch.input_uri}")
        cluster_id = outputs["ClusterId"]
        result.step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]
        say(f"submitted step {result.step_id}; waiting up to {timeout / 60:g} min")
        final = aws.wait_for_step(emr, cluster_id, result.step_id, poll, sleep, timeout=timeout)
        result.state = final["Status"]["State"]
        found = logs.step_logs(s3, outputs["LogUri"], cluster_id, result.step_id)
        result.log_uri = found.driver_log_uri or found.containers_uri or found.step_stderr_uri
        text = found.driver_log if found.driver_log is not None else found.step_stderr
        result.log_tail = logs.tail(text or "", LOG_LINES)
        if result.state not in aws.FINAL_STEP_STATES:
            cancelled = aws.cancel_step(emr, cluster_id, result.step_id)
            detail = f"still {result.state} after {timeout / 60:g} min" + ("; cancelled" if cancelled else "")
            result.checks.append(Check("step", False, detail))
        elif result.state != "COMPLETED":
            reason = final["Status"].get("StateChangeReason", {}).get("Message") or "no reason given"
            result.checks.append(Check("step", False, f"{result.state}: {reason}"))
        else:
            result.checks.append(Check("step", True, "COMPLETED"))
            store = runs.results_store(s3, scratch.output_uri)
            result.checks.extend(check_outputs(store, expected_for(files)))
        result.checks.append(check_logs(found))
    finally:
        if not keep:
            result.cleanup_error = _delete_scratch(s3, scratch)
            result.cleaned = result.cleanup_error is None
    return result
