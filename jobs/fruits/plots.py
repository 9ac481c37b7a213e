"""The two pictures of a run: how much variance each component explains, and the images on PC1/PC2."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from types import ModuleType

import numpy as np
import pandas as pd

MAX_BARS = 60
MAX_LEGEND = 20


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend, with a config folder it can write.

    A service user's home is often read-only (YARN containers on EMR): matplotlib would then warn and build its
    font cache in a new temporary folder on every run. A stable per-user folder under the temp dir is built once.
    """
    if "MPLCONFIGDIR" not in os.environ:
        home_config = os.path.join(os.path.expanduser("~"), ".config")
        if not os.access(home_config if os.path.isdir(home_config) else os.path.expanduser("~"), os.W_OK):
            folder = os.path.join(tempfile.gettempdir(), f"fruits-matplotlib-{os.getuid()}")
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.environ["MPLCONFIGDIR"] = folder
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def preload() -> threading.Thread:
    """Import matplotlib in a daemon thread, now: half a second a run would otherwise spend when it draws.

    For a moment when this process only waits, such as its JVM starting; an import error surfaces when the
    plots are drawn.
    """

    def load() -> None:
        with contextlib.suppress(Exception):
            _pyplot()

    thread = threading.Thread(target=load, name="fruits-import-matplotlib", daemon=True)
    thread.start()
    return thread


def _figure_bytes(figure: object) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return buffer.getvalue()


def explained_variance_png(
    explained: list[float], k: int, variance: float | None, title_note: str = ""
) -> bytes:
    """Bars per component, the cumulative curve, the target and the chosen k, as PNG bytes."""
    plt = _pyplot()

    shown = min(len(explained), max(MAX_BARS, k + 5))
    values = np.asarray(explained[:shown]) * 100
    cumulative = np.cumsum(explained)[:shown] * 100
    figure, axis = plt.subplots(figsize=(9, 4.5))
    positions = np.arange(1, shown + 1)
    axis.bar(positions, values, color=np.where(positions <= k, "#2a9d8f", "#b8c4c2"), label="per component")
    axis.plot(positions, cumulative, color="#e76f51", marker=".", label="cumulative")
    if variance:
        axis.axhline(
            variance * 100, color="#264653", linestyle="--", linewidth=1, label=f"target {variance:.0%}"
        )
    axis.axvline(k + 0.5, color="#264653", linestyle=":", linewidth=1)
    axis.annotate(
        f"k = {k}: {cumulative[min(k, shown) - 1]:.1f}%",
        (k + 0.5, 40),
        xytext=(6, 0),
        textcoords="offset points",
        color="#264653",
    )
    axis.set_xlabel("principal component")
    axis.set_ylabel("explained variance (%)")
    axis.set_ylim(0, 102)
    axis.set_title(f"Explained variance of the image features{title_note}")
    axis.legend(loc="lower right")
    data = _figure_bytes(figure)
    plt.close(figure)
    return data


def scatter_png(points: pd.DataFrame, title_note: str = "") -> bytes:
    """``pc_1`` against ``pc_2`` coloured by ``label`` (a bounded sample of rows), as PNG bytes."""
    plt = _pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 6))
    labels = sorted(points["label"].unique())
    colours = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for index, label in enumerate(labels):
        subset = points[points["label"] == label]
        y = subset["pc_2"] if "pc_2" in subset else np.zeros(len(subset))
        axis.scatter(subset["pc_1"], y, s=14, alpha=0.75, color=colours(index % colours.N), label=label)
    if len(labels) <= MAX_LEGEND:
        axis.legend(fontsize=8, markerscale=1.5, loc="best")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title(f"{len(points)} images on the first two components, by label{title_note}")
    axis.axhline(0, color="#cccccc", linewidth=0.8, zorder=0)
    axis.axvline(0, color="#cccccc", linewidth=0.8, zorder=0)
    data = _figure_bytes(figure)
    plt.close(figure)
    return data
