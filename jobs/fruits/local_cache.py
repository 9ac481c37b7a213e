"""The machine's cache folder for what a run can keep between runs (exported models, the JVM's classes, weights).

The one owner of where it is: ``$FRUITS_CACHE``, else ``~/.cache/fruits``.
"""

from __future__ import annotations

import os
import tempfile


def cache_root() -> str:
    """``$FRUITS_CACHE``, else ``~/.cache/fruits`` (not created here)."""
    return os.environ.get("FRUITS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fruits")


def local_cache_dir(name: str, *, temp_fallback: bool = False) -> str | None:
    """``<cache_root>/<name>``, created; None when it is not writable.

    ``temp_fallback``: then a ``fruits-<name>`` folder in the temp dir before giving up, for what a run must keep
    somewhere even as a user whose home is not writable (YARN's containers): downloaded weights.
    """
    folders = [os.path.join(cache_root(), name)]
    if temp_fallback:
        folders.append(os.path.join(tempfile.gettempdir(), f"fruits-{name}"))
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None
