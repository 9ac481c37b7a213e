"""The job bundle and its deployment to the artifacts bucket.

:func:`build_bundle` lays out, at synth time, exactly the tree the artifacts bucket receives::

    job/featurize_pca.py          the entry script (jobs/featurize_pca.py, unchanged)
    job/fruits.zip                the ``fruits`` package at the zip root, for --py-files
    bootstrap/install-runtime.sh  the cluster bootstrap action
    bootstrap/requirements.txt    the repository's requirements.txt, unchanged

The zip is deterministic (sorted entries, fixed timestamps and modes, no ``__pycache__``), so an unchanged
job gives an unchanged asset hash and no redeployment. :class:`JobArtifacts` deploys the tree with
``BucketDeployment`` and hands out S3 URIs only for keys it deployed, so no step or bootstrap action can point
at an object that was never written.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = "featurize_pca.py"
PACKAGE = "fruits"
BOOTSTRAP_SCRIPT = "install-runtime.sh"

SCRIPT_KEY = f"job/{ENTRY_SCRIPT}"
PYFILES_KEY = f"job/{PACKAGE}.zip"
BOOTSTRAP_KEY = f"bootstrap/{BOOTSTRAP_SCRIPT}"
REQUIREMENTS_KEY = "bootstrap/requirements.txt"
#: Prefixes the instance role may read (operators put custom weights under models/).
READ_PREFIXES = ("job/", "bootstrap/", "models/")

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


def build_bundle(
    out_dir: Path,
    *,
    jobs_dir: Path = REPO_ROOT / "jobs",
    requirements: Path = REPO_ROOT / "requirements.txt",
    bootstrap_dir: Path = REPO_ROOT / "bootstrap",
) -> list[str]:
    """Rebuild ``out_dir`` with the deployable tree; return its keys (sorted, POSIX)."""
    sources = {
        SCRIPT_KEY: jobs_dir / ENTRY_SCRIPT,
        REQUIREMENTS_KEY: requirements,
        BOOTSTRAP_KEY: bootstrap_dir / BOOTSTRAP_SCRIPT,
    }
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot build the job bundle, missing: {', '.join(missing)}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for key, path in sources.items():
        target = out_dir / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    write_deterministic_zip(jobs_dir / PACKAGE, out_dir / PYFILES_KEY)
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())


class JobArtifacts(Construct):
    """Deploys the bundle in ``bundle_dir`` to ``bucket`` and names the S3 URIs of what it deployed."""

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, bundle_dir: Path) -> None:
        super().__init__(scope, construct_id)
        self.bucket = bucket
        self.deployed_keys = frozenset(
            p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()
        )
        self.deployment = s3deploy.BucketDeployment(
            self,
            "Deployment",
            sources=[s3deploy.Source.asset(str(bundle_dir))],
            destination_bucket=bucket,
            # Keep objects this deployment did not write (operators' weights under models/).
            prune=False,
            retain_on_delete=False,
            memory_limit=512,
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

    @property
    def script_uri(self) -> str:
        return self.uri(SCRIPT_KEY)

    @property
    def py_files_uri(self) -> str:
        return self.uri(PYFILES_KEY)

    @property
    def bootstrap_uri(self) -> str:
        return self.uri(BOOTSTRAP_KEY)

    @property
    def requirements_uri(self) -> str:
        return self.uri(REQUIREMENTS_KEY)
