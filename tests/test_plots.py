"""The run's pictures: valid PNGs, and drawn quietly by a service user whose home cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DRAW = """
import os
from fruits import plots
png = plots.explained_variance_png([0.5, 0.3, 0.2], 2, 0.95)
assert png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
print(os.environ.get("MPLCONFIGDIR", ""))
"""


def test_plots_draw_with_an_unwritable_home_without_warnings(tmp_path: Path) -> None:
    # /proc refuses new folders even to root: as a YARN container's home that the user cannot write.
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update(HOME="/proc/fruits-no-home", TMPDIR=str(tmp_path), PYTHONPATH=str(Path("jobs").resolve()))
    runs = [
        subprocess.run([sys.executable, "-c", DRAW], env=env, capture_output=True, text=True) for _ in (1, 2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "matplotlib" not in run.stderr, run.stderr  # no "mkdir -p failed", no temporary cache
    folders = {run.stdout.strip() for run in runs}
    assert folders == {str(tmp_path / f"fruits-matplotlib-{os.getuid()}")}  # one stable folder, reused


PRELOAD = """
import sys
from fruits import plots
assert "matplotlib.pyplot" not in sys.modules
plots.preload().join(60)
assert "matplotlib.pyplot" in sys.modules and sys.modules["matplotlib"].get_backend().lower() == "agg"
print("ok")
"""


def test_preload_imports_pyplot_in_a_thread_on_the_agg_backend() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path("jobs").resolve())}
    run = subprocess.run([sys.executable, "-c", PRELOAD], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
