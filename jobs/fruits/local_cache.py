"""The machine's cache folder for what a local run can keep between runs (exported models, the JVM's classes)."""

from __future__ import annotations

import os


def local_cache_dir(name: str) -> str | None:
    """``$FRUITS_CACHE/<name>`` (default ``~/.cache/fruits/<name>``), created; None when it is not writable."""
    root = os.environ.get("FRUITS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fruits")
    folder = os.path.join(root, name)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None
