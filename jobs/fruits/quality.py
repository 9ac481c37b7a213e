"""Quality report: how well a linear classifier separates the classes, on the k components and on all features.

Runs only when the input has Fruits-360's ``Training/`` and ``Test/`` splits. The classifier is regularized
linear discriminant analysis (LDA): each class a Gaussian with its own mean and one shared covariance, shrunk
towards a multiple of the identity. It is fitted from sums alone — per class the count and the sum of the
vectors, and one Gram matrix — which the PCA's own pass over the rows gathers at the same time
(:mod:`fruits.summaries`), over EVERY Training row; the k-component version follows from the same sums and the
projection, without another pass. Every holdout and Test row is then scored (:func:`marks`) in the pass that
projects the rows for the results, from the same vectors, and the report is the tally. (Multinomial logistic
regression in MLlib needed dozens of passes and grew with the number of classes: 66 s at 20,000 images and 103
classes.)

The shrinkage is chosen on the Training rows themselves: one in five (by a hash of the path) is held out, each
candidate fitted on the others is scored on it (ties go to the larger shrinkage), and the chosen one, refitted on
all Training rows, is scored on Test — all candidates in that same pass. Test rows whose class never appears in
Training count as errors. The manifest gets the overall and per-class test accuracy with the k components and
with all features, the classifier's name and the shrinkages chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField

from fruits.lda import SPACES, Candidates, LinearClassifier
from fruits.linalg import Beside
from fruits.summaries import ClassSums, holdout_roles

CLASSIFIER = "shrinkage LDA: one shared covariance, fitted on every Training row, scored on every Test row"
SHRINKAGES = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)


@dataclass(frozen=True)
class Classifiers:
    """Every LDA candidate the report scores, fitted on the driver from the class sums: the report's arithmetic
    before its one pass over the rows."""

    models: dict[tuple[str, str], Candidates]  # (space, fitted on) -> every shrinkage at once
    shrinkages: tuple[float, ...]
    can_choose: bool  # a holdout and two classes to fit on: the shrinkage is chosen, else the middle one
    everything: ClassSums  # every Training row's sums
    mean: np.ndarray
    components: np.ndarray

    def chosen(self, choice: dict[str, int]) -> dict[str, LinearClassifier]:
        """Per space, the candidate fitted on every Training row with the shrinkage ``choice`` names (an index
        into :attr:`shrinkages`, as :func:`tallied` chose it): the classifier the report scores on Test."""
        return {space: self.models[(space, "all")].pick(choice[space]) for space in SPACES}


def fit_classifiers(
    training: dict[str, ClassSums], mean: np.ndarray, components: np.ndarray
) -> Classifiers | None:
    """The candidates of :func:`report`, or None without two classes in Training (no report then)."""
    everything = training["fit"] + training["holdout"]
    if len(everything.counts) < 2:
        return None
    sums = {("full", "fit"): training["fit"], ("full", "all"): everything}
    sums[("pca", "fit")] = training["fit"].projected(mean, components)
    sums[("pca", "all")] = everything.projected(mean, components)
    can_choose = len(training["fit"].counts) >= 2 and bool(training["holdout"].counts)
    shrinkages = SHRINKAGES if can_choose else (SHRINKAGES[2],)
    models = {
        (space, fitted): Candidates.of(sums[(space, fitted)], shrinkages)
        for space in SPACES
        for fitted in (("fit", "all") if can_choose else ("all",))
    }
    return Classifiers(models, shrinkages, can_choose, everything, mean, components)


ROLE = "role"  # "holdout" or "test" on the rows the report scores, null on the others


def mark_columns(classifiers: Classifiers) -> list[str]:
    """The 0/1 columns :func:`marks` adds: per (space, fit) and shrinkage, whether the candidate was right."""
    return _columns(classifiers.models)


def _columns(models: dict[tuple[str, str], Candidates]) -> list[str]:
    return [f"{space}_{fitted}_{i}" for (space, fitted), c in models.items() for i in range(c.count)]


def mark_fields(classifiers: Classifiers) -> list[StructField]:
    """The schema of :func:`marks`' columns."""
    return [
        StructField(ROLE, StringType()),
        *(StructField(name, LongType()) for name in mark_columns(classifiers)),
    ]


def marks(
    frame: pd.DataFrame, full: np.ndarray, pcs: np.ndarray, models: dict[tuple[str, str], Candidates]
) -> dict[str, Any]:
    """Per row of ``frame`` (``path, label, split``): its role in the report and, per candidate of ``models``
    (:attr:`Classifiers.models`), whether it got the row right; ``full`` and ``pcs`` are the rows' vectors in both
    spaces (float64).

    Holdout rows are scored by the candidates fitted without them, test rows by those fitted on every Training
    row; Training rows used to fit and rows of neither split get no role and zeros.
    """
    split = frame["split"].to_numpy(dtype=object)
    training = split == "Training"
    role = np.full(len(frame), None, dtype=object)
    if training.any():
        role[training] = holdout_roles(frame["path"][training])
    role[split == "Test"] = "test"
    scored = (role == "holdout") | (role == "test")
    out: dict[str, Any] = {ROLE: np.where(scored, role, None)}
    if not scored.any():
        return {**out, **{name: np.zeros(len(frame), dtype=np.int64) for name in _columns(models)}}
    labels = frame["label"].to_numpy(dtype=object)[scored]
    vectors = {"full": full[scored], "pca": pcs[scored]}
    for (space, fitted), candidates in models.items():
        scored_role = "holdout" if fitted == "fit" else "test"
        right = candidates.correct(vectors[space], labels) & (role[scored] == scored_role)[:, None]
        for i in range(right.shape[1]):
            column = np.zeros(len(frame), dtype=np.int64)
            column[scored] = right[:, i]
            out[f"{space}_{fitted}_{i}"] = column
    return out


def marking(classifiers: Classifiers) -> tuple[Beside, list[StructField]]:
    """:func:`marks` as columns of the projection's own pass (:func:`fruits.reduce.project`), and their fields."""

    models = classifiers.models  # what the workers need: not the class sums' d x d Gram matrix

    def mark(frame: pd.DataFrame, full: np.ndarray, pcs: np.ndarray) -> dict[str, Any]:
        return marks(frame, full, pcs, models)

    return mark, mark_fields(classifiers)


def score(rows: DataFrame, classifiers: Classifiers) -> dict[str, Any] | None:
    """Score every holdout and Test row in a pass of its own; the report, or None without any Test row.

    ``rows``: the featurized rows (``path``, ``label``, ``split``, ``features``). The same pass as a run's: the
    projection with :func:`marking` beside it, then :func:`tally` (a run keeps the projection for its writers).
    """
    # Here, not at the top: workers unpickle marks() from this module and must not load pyspark.ml with it.
    from fruits.reduce import Projection, project

    projection = Projection(classifiers.mean, classifiers.components)
    marked = project(
        projection, rows.select("path", "label", "split", "features"), False, marking(classifiers)
    )
    return tally(marked, classifiers)


@dataclass(frozen=True)
class Tally:
    """What the marks tell: per space the shrinkage the holdout chose (an index into the candidates), and the
    report, or None without any Test row."""

    chosen: dict[str, int]
    report: dict[str, Any] | None


def tally(marked: DataFrame, classifiers: Classifiers) -> dict[str, Any] | None:
    """The report from rows carrying ``label`` and :func:`marks`' columns: one small aggregation."""
    return tallied(marked, classifiers).report


def tallied(marked: DataFrame, classifiers: Classifiers) -> Tally:
    """:func:`tally`, with the shrinkages it chose (chosen without Test rows too: a run over Training alone still
    has its classifier, :meth:`Classifiers.chosen`)."""
    shrinkages, can_choose = classifiers.shrinkages, classifiers.can_choose
    names = mark_columns(classifiers)
    table = (
        marked.where(F.col(ROLE).isNotNull())
        .groupBy(ROLE, "label")
        .agg(F.count("*").alias("rows"), *[F.sum(name).alias(name) for name in names])
        .toPandas()  # one row per (role, class)
    )
    chosen: dict[str, int] = {}
    holdout = table[table[ROLE] == "holdout"]
    for space in SPACES:
        if can_choose and len(holdout):
            right = [int(holdout[f"{space}_fit_{i}"].sum()) for i in range(len(shrinkages))]
            chosen[space] = max(range(len(shrinkages)), key=lambda i, right=right: (right[i], i))
        else:
            chosen[space] = 0
    test = table[table[ROLE] == "test"].set_index("label")
    test_rows = int(test["rows"].sum()) if len(test) else 0
    if not test_rows:
        return Tally(chosen, None)
    correct = {space: test[f"{space}_all_{chosen[space]}"] for space in SPACES}
    per_class = {
        str(label): {
            "test_images": int(test.loc[label, "rows"]),
            "accuracy_pca": int(correct["pca"][label]) / int(test.loc[label, "rows"]),
            "accuracy_full_features": int(correct["full"][label]) / int(test.loc[label, "rows"]),
        }
        for label in test.index
    }
    everything = classifiers.everything
    return Tally(
        chosen,
        {
            "classifier": CLASSIFIER,
            "shrinkage": {space: shrinkages[chosen[space]] for space in SPACES},
            "train_images": int(sum(everything.counts.values())),
            "test_images": test_rows,
            "classes": len(everything.counts),
            "test_labels_unseen_in_training": sorted(set(per_class) - set(everything.counts)),
            "test_accuracy_pca": int(correct["pca"].sum()) / test_rows,
            "test_accuracy_full_features": int(correct["full"].sum()) / test_rows,
            "per_class": per_class,
            "k": int(classifiers.components.shape[1]),
        },
    )


def report(
    rows: DataFrame, training: dict[str, ClassSums], mean: np.ndarray, components: np.ndarray
) -> dict[str, Any] | None:
    """Test accuracy with the k components and with all features, or None without two classes in Training or
    any Test row: :func:`fit_classifiers` then :func:`score`.

    ``rows``: the featurized rows (``path``, ``label``, ``split``, ``features``); ``training``: their Training
    class sums by role (:func:`fruits.summaries.summarize`); ``mean``, ``components``: the PCA projection.
    """
    classifiers = fit_classifiers(training, mean, components)
    return score(rows, classifiers) if classifiers else None
