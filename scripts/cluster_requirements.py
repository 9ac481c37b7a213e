"""The cluster's pins with the SHA-256 of the wheels it installs, and a wheelhouse of those wheels.

    python scripts/cluster_requirements.py lock                 # bootstrap/cluster-requirements.txt from requirements.txt
    python scripts/cluster_requirements.py check                # the lock pins exactly requirements.txt's versions
    python scripts/cluster_requirements.py wheelhouse DEST      # the lock's wheels in DEST (pip --find-links / S3 sync)

``requirements.txt`` owns the versions (the local venv and the tests install it too); the lock adds, for each pin,
the hash of the one wheel pip picks for the cluster: CPython 3.11 on x86_64 Amazon Linux 2023 (glibc 2.34). The
bootstrap installs the lock with ``--require-hashes --only-binary=:all:``, so a node installs exactly the bytes
pinned here, from PyPI, a private index or an S3 wheelhouse alike.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements.txt"
LOCK = REPO / "bootstrap" / "cluster-requirements.txt"

PYTHON_VERSION = "3.11"
#: Amazon Linux 2023's glibc is 2.34: every manylinux tag up to it, oldest last.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(34, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)")
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.*\.whl$")

HEADER = """\
# The cluster's runtime pins (requirements.txt's versions) with the SHA-256 of the wheel each node installs:
# CPython 3.11, x86_64, glibc 2.34 (Amazon Linux 2023). Generated: python scripts/cluster_requirements.py lock
# The bootstrap installs this file with --require-hashes --only-binary=:all: --no-deps; do not edit by hand.
"""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of a requirements file."""
    found = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def lock_text(wheels: list[Path]) -> str:
    """The lock file for ``wheels`` (one per distribution), sorted by name."""
    lines = [HEADER]
    for wheel in sorted(wheels, key=lambda p: canonical(p.name.split("-", 1)[0])):
        match = _WHEEL.match(wheel.name)
        if not match:
            raise ValueError(f"not a wheel file name: {wheel.name}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        name = canonical(match.group("name"))
        lines.append(f"{name}=={match.group('version')} \\\n    --hash=sha256:{digest}\n")
    return "".join(lines)


def download(requirements: Path, dest: Path) -> list[Path]:
    """The cluster's wheels of ``requirements`` into ``dest`` (pip download for the cluster's platform)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", *platforms, "--python-version", PYTHON_VERSION, "--implementation", "cp",
         "--dest", str(dest), "-r", str(requirements)],
        check=True,
    )  # fmt: skip
    return sorted(dest.glob("*.whl"))


def check() -> list[str]:
    """What differs between the lock and requirements.txt (empty when they agree)."""
    wanted, locked = pins(REQUIREMENTS.read_text()), pins(LOCK.read_text())
    problems = [f"{name}: requirements.txt {version}, lock {locked.get(name)}" for name, version in
                sorted(wanted.items()) if locked.get(name) != version]  # fmt: skip
    problems += [f"{name}: in the lock only" for name in sorted(set(locked) - set(wanted))]
    return problems


def main(argv: list[str] | None = None) -> int:
    """lock | check | wheelhouse DEST."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("lock", help="write bootstrap/cluster-requirements.txt")
    commands.add_parser("check", help="the lock pins exactly requirements.txt's versions")
    house = commands.add_parser("wheelhouse", help="download the lock's wheels into DEST, hashes checked")
    house.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "lock":
        with tempfile.TemporaryDirectory() as folder:
            LOCK.write_text(lock_text(download(REQUIREMENTS, Path(folder))))
        print(LOCK)
        return 0
    if args.command == "check":
        problems = check()
        for problem in problems:
            print(f"cluster-requirements: {problem}", file=sys.stderr)
        return 1 if problems else 0
    args.dest.mkdir(parents=True, exist_ok=True)
    wheels = download(LOCK, args.dest)  # pip checks every wheel against the lock's hashes
    print(f"{args.dest} ({len(wheels)} wheels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
