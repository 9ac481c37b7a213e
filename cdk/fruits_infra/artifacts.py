"""The job bundle and its deployment to the artifacts bucket.

:func:`build_bundle` lays out, at synth time, exactly the tree the artifacts bucket receives::

    job/featurize_pca.py                    the entry script (jobs/featurize_pca.py, unchanged)
    job/fruits.zip                          the ``fruits`` package at the zip root, for --py-files
    bootstrap/<digest>/install-runtime.sh   the cluster bootstrap action
    bootstrap/<digest>/requirements.txt     bootstrap/cluster-requirements.txt: the pins with their wheels' SHA-256

and :class:`JobArtifacts` adds ``config/job-defaults.json`` (the job's defaults, with the bucket names resolved
at deploy time).

With context ``wheelhouse`` the bootstrap installs the wheels from ``wheelhouse/<lock digest>/`` in the same
bucket instead of PyPI (a cluster without internet egress); the operator uploads them (``make wheelhouse``), and
the digest of the lock names the folder, so a pin change asks for a new upload instead of mixing two sets.

The bootstrap files are content-addressed (``<digest>`` hashes both files): a node that managed scaling adds
later runs the same script and pins as the nodes already running, and a pin change gives the cluster a new
bootstrap path, which replaces it on purpose. The job's own files keep stable keys: a job change updates the
objects, never the cluster. Old bootstrap versions stay (``prune=False``) for the clusters still using them.

The zip is deterministic (sorted entries, fixed timestamps and modes, no ``__pycache__``), so an unchanged
job gives an unchanged asset hash and no redeployment. :class:`JobArtifacts` deploys the tree with
``BucketDeployment`` and hands out S3 URIs only for keys it deployed, so no step or bootstrap action can point
at an object that was never written.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = "featurize_pca.py"
PACKAGE = "fruits"
BOOTSTRAP_SCRIPT = "install-runtime.sh"

REQUIREMENTS = "requirements.txt"
#: What the bootstrap installs (uploaded as bootstrap/<digest>/requirements.txt): requirements.txt's pins with
#: the SHA-256 of each wheel (scripts/cluster_requirements.py writes it; a test keeps the versions equal).
CLUSTER_REQUIREMENTS = REPO_ROOT / "bootstrap" / "cluster-requirements.txt"
WHEELHOUSE_PREFIX = "wheelhouse/"

SCRIPT_KEY = f"job/{ENTRY_SCRIPT}"
PYFILES_KEY = f"job/{PACKAGE}.zip"
#: The job's defaults file (JSON, keys = the job's option names), read through spark.fruits.defaults.
JOB_DEFAULTS_KEY = "config/job-defaults.json"
_BOOTSTRAP_KEY = re.compile(r"^bootstrap/[0-9a-f]{16}/" + re.escape(BOOTSTRAP_SCRIPT) + "$")
#: How long the deployment handler's logs are kept (they only matter while a deployment is investigated).
DEPLOYMENT_LOG_RETENTION = logs.RetentionDays.ONE_MONTH

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def write_deterministic_zip(package_dir: Path, zip_path: Path) -> list[str]:
    """Zip ``package_dir`` so that it sits at the zip root under its own name; return the entry names."""
    if not (package_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"{package_dir} is not a Python package (no __init__.py)")
    files = sorted(
        p
        for p in package_dir.rglob("*")
        if p.is_file()
        and not _SKIP_DIRS.intersection(p.relative_to(package_dir).parts)
        and p.suffix not in _SKIP_SUFFIXES
    )
    names = []
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in files:
            name = f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}"
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, so the mode above is honoured everywhere
            zf.writestr(info, path.read_bytes(), compresslevel=9)
            names.append(name)
    return names


def bootstrap_digest(bootstrap_script: Path, requirements: Path) -> str:
    """16 hex digits of sha256 over both bootstrap inputs (names and contents): the bootstrap folder's name."""
    digest = hashlib.sha256()
    for name, path in ((BOOTSTRAP_SCRIPT, bootstrap_script), (REQUIREMENTS, requirements)):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def bootstrap_keys(digest: str) -> tuple[str, str]:
    """(script key, requirements key) of one bootstrap version."""
    return f"bootstrap/{digest}/{BOOTSTRAP_SCRIPT}", f"bootstrap/{digest}/{REQUIREMENTS}"


def wheelhouse_key(requirements: Path = CLUSTER_REQUIREMENTS) -> str:
    """``wheelhouse/<16 hex digits>/``: where the wheels of ``requirements`` go in the artifacts bucket."""
    return f"{WHEELHOUSE_PREFIX}{hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]}/"


def build_bundle(
    out_dir: Path,
    *,
    jobs_dir: Path = REPO_ROOT / "jobs",
    requirements: Path = CLUSTER_REQUIREMENTS,
    bootstrap_dir: Path = REPO_ROOT / "bootstrap",
) -> list[str]:
    """Rebuild ``out_dir`` with the deployable tree; return its keys (sorted, POSIX)."""
    script = bootstrap_dir / BOOTSTRAP_SCRIPT
    missing = [str(path) for path in (jobs_dir / ENTRY_SCRIPT, requirements, script) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot build the job bundle, missing: {', '.join(missing)}")
    bootstrap_key, requirements_key = bootstrap_keys(bootstrap_digest(script, requirements))
    sources = {SCRIPT_KEY: jobs_dir / ENTRY_SCRIPT, requirements_key: requirements, bootstrap_key: script}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for key, path in sources.items():
        target = out_dir / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    write_deterministic_zip(jobs_dir / PACKAGE, out_dir / PYFILES_KEY)
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())


class JobArtifacts(Construct):
    """Deploys the bundle in ``bundle_dir`` (and the job defaults) to ``bucket``; names the S3 URIs it wrote.

    ``job_defaults``: the job's defaults file content (keys = option names; bucket-name tokens are resolved by
    the deployment at deploy time), written to :data:`JOB_DEFAULTS_KEY`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket: s3.IBucket,
        bundle_dir: Path,
        job_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket = bucket
        keys = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
        sources = [s3deploy.Source.asset(str(bundle_dir))]
        if job_defaults is not None:
            sources.append(s3deploy.Source.json_data(JOB_DEFAULTS_KEY, dict(job_defaults)))
            keys.add(JOB_DEFAULTS_KEY)
        self.deployed_keys = frozenset(keys)
        self.log_group = logs.LogGroup(
            self, "DeploymentLogs", retention=DEPLOYMENT_LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
        )
        self.deployment = s3deploy.BucketDeployment(
            self,
            "Deployment",
            sources=sources,
            destination_bucket=bucket,
            # Keep objects this deployment did not write: operators' weights under models/, and the bootstrap
            # versions of clusters still running.
            prune=False,
            retain_on_delete=False,
            memory_limit=512,
            # Without a log group the handler logs to Lambda's default group, kept forever and left behind.
            log_group=self.log_group,
        )

    def uri(self, key: str, *, via: s3.IBucket | None = None) -> str:
        """``s3://<artifacts>/<key>``, for a key this deployment wrote (else ``KeyError``).

        ``via``: the same bucket as imported into another stack, so the URI uses that stack's import.
        """
        if key not in self.deployed_keys:
            raise KeyError(
                f"{key!r} is not deployed by {self.node.path} (deployed: {sorted(self.deployed_keys)})"
            )
        return f"s3://{(via or self.bucket).bucket_name}/{key}"

    def wheelhouse_uri(self, *, via: s3.IBucket | None = None) -> str:
        """``s3://<artifacts>/wheelhouse/<digest>/``: where the operator uploads the cluster's wheels."""
        return f"s3://{(via or self.bucket).bucket_name}/{wheelhouse_key()}"

    @property
    def script_uri(self) -> str:
        return self.uri(SCRIPT_KEY)

    @property
    def py_files_uri(self) -> str:
        return self.uri(PYFILES_KEY)

    @property
    def bootstrap_key(self) -> str:
        """The one content-addressed bootstrap script this deployment wrote."""
        (key,) = [k for k in self.deployed_keys if _BOOTSTRAP_KEY.match(k)]
        return key

    @property
    def requirements_key(self) -> str:
        """The requirements file beside :attr:`bootstrap_key`."""
        return self.bootstrap_key.rsplit("/", 1)[0] + "/" + REQUIREMENTS
