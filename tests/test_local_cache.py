"""Where a run keeps what it can reuse: one rule for the models, the JVM's class archive and downloaded weights."""

from __future__ import annotations

import os
import tempfile

import pytest

from fruits import local_cache, models


def test_the_cache_lives_under_fruits_cache_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "c"))
    assert local_cache.local_cache_dir("models") == str(tmp_path / "c" / "models")
    assert os.path.isdir(tmp_path / "c" / "models")


def test_the_default_cache_is_under_the_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FRUITS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert local_cache.cache_root() == str(tmp_path / ".cache" / "fruits")


def test_a_cache_root_that_is_a_file_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FRUITS_CACHE", str(blocker))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert local_cache.local_cache_dir("models") is None
    assert local_cache.local_cache_dir("weights", temp_fallback=True) == str(
        tmp_path / "tmp" / "fruits-weights"
    )
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))  # no writable place at all: one clear error
    with pytest.raises(models.WeightsError, match="no writable folder"):
        models._writable_cache("weights")
