"""bootstrap/cluster-requirements.txt: the cluster installs requirements.txt's versions, each with its wheel's hash."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import cluster_requirements  # noqa: E402


def test_the_lock_pins_exactly_the_versions_of_requirements_txt():
    assert cluster_requirements.check() == []
    locked = cluster_requirements.pins(cluster_requirements.LOCK.read_text())
    assert locked == cluster_requirements.pins(cluster_requirements.REQUIREMENTS.read_text())


def test_every_pin_of_the_lock_carries_a_sha256():
    text = cluster_requirements.LOCK.read_text()
    blocks = re.split(r"\n(?=[a-z0-9])", text.split("\n", 3)[3].strip())
    assert len(blocks) == len(cluster_requirements.pins(text))
    for block in blocks:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block


def test_check_names_a_version_that_drifted(tmp_path, monkeypatch):
    lock = tmp_path / "lock.txt"
    lock.write_text(cluster_requirements.LOCK.read_text().replace("numpy==2.4.6", "numpy==2.4.5"))
    monkeypatch.setattr(cluster_requirements, "LOCK", lock)
    assert cluster_requirements.check() == ["numpy: requirements.txt 2.4.6, lock 2.4.5"]


def test_pins_normalise_names_as_pip_does():
    assert cluster_requirements.pins("Typing_Extensions==4.16.0 \\\n    --hash=sha256:ab\n# x==1\n") == {
        "typing-extensions": "4.16.0"
    }
