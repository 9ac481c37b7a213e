"""The quality report's classifier: LDA fitted from additive class sums, scored on every Test row."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from fruits.lda import fit_lda
from fruits.linalg import pack
from fruits.quality import SHRINKAGES, report
from fruits.summaries import ClassSums, holdout_roles, pickled, summarize, summarize_frames


def blobs(rows: int, classes: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * spread
    labels = rng.integers(0, classes, rows)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)  # correlated features, as a CNN's are
    x = (centers[labels] + rng.normal(size=(rows, dim))) @ mixing
    return x, np.array([f"class {i}" for i in labels], dtype=object)


def sums_of(x: np.ndarray, y: np.ndarray, batches: int = 1) -> ClassSums:
    total = ClassSums(x.shape[1])
    for part in np.array_split(np.arange(len(x)), batches):
        piece = ClassSums(x.shape[1])
        piece.add(y[part], x[part])
        total = total + piece
    return total


def test_class_sums_are_additive():
    x, y = blobs(300, 4, 6, 2.0)
    one, many = sums_of(x, y), sums_of(x, y, batches=7)
    assert one.counts == many.counts and np.allclose(one.gram, many.gram)
    assert all(np.allclose(one.sums[c], many.sums[c]) for c in one.counts)


def test_lda_from_sums_predicts_like_scikit_learns_shrinkage_lda():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x, y = blobs(3000, 8, 20, 0.8)
    xt, yt = blobs(2000, 8, 20, 0.8, seed=1)
    ours = fit_lda(sums_of(x, y), shrinkage=0.01).predict(xt)
    theirs = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.01).fit(x, y).predict(xt)
    assert (ours == theirs).mean() > 0.98
    assert abs((ours == yt).mean() - (theirs == yt).mean()) < 0.01


def test_lda_probabilities_are_the_posterior_of_its_gaussians():
    # Two classes in one dimension, means -1 and +1, pooled variance exactly 1 (scatter 4 s^2 over n - 2 = 2),
    # equal priors: the posterior of the second is sigmoid(2 x), whatever the shrinkage (one dimension: the
    # target is the variance itself).
    s = 1 / np.sqrt(2)
    x = np.array([[-1 - s], [-1 + s], [1 - s], [1 + s]])
    classifier = fit_lda(sums_of(x, np.array(["a", "a", "b", "b"], dtype=object)), shrinkage=0.2)
    points = np.array([[-2.0], [-0.3], [0.0], [0.7], [3.0]])
    probabilities = classifier.probabilities(points)
    assert np.allclose(probabilities[:, 1], 1 / (1 + np.exp(-2 * points[:, 0])))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert list(classifier.predict(points[[0, 3]])) == ["a", "b"]
    ((first, p_first), (second, p_second)), *_ = classifier.ranked(points[[0, 4]], 2)
    assert (first, second) == ("a", "b") and p_first == pytest.approx(1 - p_second) and p_first > 0.98
    assert [[name for name, _ in row] for row in classifier.ranked(points, 1)] == [
        ["a"],
        ["a"],
        ["a"],
        ["b"],
        ["b"],
    ]
    far = classifier.probabilities(np.array([[1e6]]))  # scores of millions: no overflow, no NaN
    assert far[0, 1] == 1.0 and not np.isnan(far).any()


def test_lda_needs_two_classes():
    x, y = blobs(50, 1, 3, 1.0)
    with pytest.raises(ValueError, match="two classes"):
        fit_lda(sums_of(x, y), 0.01)


def test_sums_in_the_pca_space_follow_from_the_full_sums():
    x, y = blobs(400, 3, 6, 2.0)
    mean = x.mean(axis=0) + 0.1
    components = np.linalg.qr(np.random.default_rng(5).normal(size=(6, 2)))[0]
    derived = sums_of(x, y).projected(mean, components)
    direct = sums_of((x - mean) @ components, y)
    assert derived.counts == direct.counts and np.allclose(derived.gram, direct.gram)
    assert all(np.allclose(derived.sums[c], direct.sums[c]) for c in direct.counts)


def test_one_pass_summaries_split_training_into_fit_and_holdout():
    x, y = blobs(500, 3, 4, 2.0)
    splits = np.where(np.arange(500) < 400, "Training", "Test")
    frame = pd.DataFrame(
        {
            "path": [f"/d/{i}.jpg" for i in range(500)],
            "label": y,
            "split": splits,
            "features": [pack(v) for v in x],
        }
    )
    result = summarize_frames([frame.iloc[:170], frame.iloc[170:]], 4)
    assert result.total.n == 500 and np.allclose(
        result.total.gram, x.astype(np.float32).astype(float).T @ x.astype(np.float32).astype(float)
    )
    fit, holdout = result.training["fit"], result.training["holdout"]
    assert sum(fit.counts.values()) + sum(holdout.counts.values()) == 400
    assert 40 < sum(holdout.counts.values()) < 120  # about one in five, by a hash of the path


def test_a_partial_travels_with_each_gram_matrix_as_its_upper_triangle_and_arrives_whole():
    x, y = blobs(600, 3, 64, 2.0)
    frame = pd.DataFrame(
        {
            "path": [f"/d/{i}.jpg" for i in range(600)],
            "label": y,
            "split": np.where(np.arange(600) < 500, "Training", "Test"),
            "features": [pack(v) for v in x],
        }
    )
    partial = summarize_frames([frame], 64)
    (blob,) = pickled(partial)["summary"]
    arrived = pickle.loads(blob)
    # Exactly the same matrices (each is symmetric: its triangle holds all of it), counts and sums.
    assert np.array_equal(arrived.total.gram, partial.total.gram) and arrived.total.n == 600
    for role in ("fit", "holdout"):
        sent, got = partial.training[role], arrived.training[role]
        assert np.array_equal(got.gram, sent.gram) and got.counts == sent.counts
        assert all(np.array_equal(got.sums[c], sent.sums[c]) for c in sent.counts)
    # Three 64 x 64 float64 matrices are 98 KB whole; their triangles 50 KB.
    whole = 3 * 64 * 64 * 8
    assert len(blob) < 0.6 * whole
    assert pickle.loads(pickle.dumps(ClassSums(64))).gram is None  # an empty role travels too


def test_rows_without_features_are_counted_by_the_pass_of_sums_and_summed_nowhere():
    x, y = blobs(300, 3, 4, 2.0)
    features = [pack(v) for v in x]
    rejected = [7, 8, 150, 299]  # read but not decodable: a reason, no features
    for i in rejected:
        features[i] = None
    frame = pd.DataFrame(
        {"path": [f"/d/{i}.jpg" for i in range(300)], "label": y, "split": "Training", "features": features}
    )
    kept = np.setdiff1d(np.arange(300), rejected)
    whole = summarize_frames([frame.iloc[:100], frame.iloc[100:]], 4)
    clean = summarize_frames([frame.iloc[kept]], 4)
    assert whole.unfeaturized == len(rejected) and clean.unfeaturized == 0
    assert whole.total.n == clean.total.n == len(kept)
    assert np.allclose(whole.total.gram, clean.total.gram) and np.allclose(
        whole.total.total, clean.total.total
    )
    assert whole.training["fit"].counts == clean.training["fit"].counts
    assert (whole + clean).unfeaturized == len(rejected)  # partials add their counts too
    assert summarize_frames([frame.iloc[[7, 8]]], 4).total.n == 0  # a chunk of rejected rows only


def frame_of(spark, x, y, splits):  # type: ignore[no-untyped-def]
    rows = [
        (f"/data/{s}/{label}/{i}.jpg", str(label), s, pack(v))
        for i, (label, s, v) in enumerate(zip(y, splits, x, strict=True))
    ]
    return spark.createDataFrame(rows, "path string, label string, split string, features binary")


@pytest.mark.spark
def test_report_scores_every_test_row_and_each_class(spark):
    x, y = blobs(600, 3, 8, 3.0)
    splits = ["Training"] * 450 + ["Test"] * 150
    y[-5:] = "only in test"  # a class Training never saw: counted, and always wrong
    frame = frame_of(spark, x, y, splits)
    sums = summarize(frame, 8)
    mean = sums.total.total / sums.total.n
    result = report(frame, sums.training, mean, np.eye(8)[:, :2])
    assert result["train_images"] == 450 and result["test_images"] == 150 and result["classes"] == 3
    assert result["test_labels_unseen_in_training"] == ["only in test"]
    assert result["per_class"]["only in test"]["accuracy_full_features"] == 0.0
    assert sum(c["test_images"] for c in result["per_class"].values()) == 150
    assert result["test_accuracy_full_features"] > 0.9
    assert 0 <= result["test_accuracy_pca"] <= 1
    assert set(result["shrinkage"]) == {"full", "pca"} and result["k"] == 2


@pytest.mark.spark
def test_no_report_without_both_splits(spark):
    x, y = blobs(40, 2, 3, 3.0)
    frame = frame_of(spark, x, y, [None] * 40)
    sums = summarize(frame, 3)
    assert report(frame, sums.training, np.zeros(3), np.eye(3)[:, :1]) is None


@pytest.mark.spark
def test_marks_made_in_the_projection_pass_give_the_same_report_as_a_pass_of_their_own(spark):
    from fruits.quality import fit_classifiers, marking, score, tallied, tally
    from fruits.reduce import Projection, project

    x, y = blobs(700, 4, 8, 2.0)
    splits = ["Training"] * 450 + ["Test"] * 200 + ["Validation"] * 50  # the last: no role, no marks
    frame = frame_of(spark, x, y, splits)
    sums = summarize(frame, 8)
    mean = sums.total.total / sums.total.n
    components = np.linalg.qr(np.random.default_rng(3).normal(size=(8, 3)))[0]
    classifiers = fit_classifiers(sums.training, mean, components)
    projected = project(Projection(mean, components), frame, False, marking(classifiers))
    roles = {r.role for r in projected.select("role").collect()}
    assert roles == {"holdout", "test", None}
    assert projected.where("split = 'Validation' and role is not null").count() == 0
    result = tally(projected, classifiers)
    assert result == score(frame, classifiers)
    # The same numbers from the rule itself, in NumPy: each shrinkage fitted on the 'fit' rows and scored on the
    # holdout rows, the best (ties: the larger) refitted on every Training row and scored on Test.
    paths = pd.Series([r.path for r in frame.select("path").collect()])
    roles = np.where(np.array(splits) == "Training", holdout_roles(paths), "test")
    x32 = x.astype(np.float32).astype(np.float64)  # the features travel as float32
    for space, vectors in (("full", x32), ("pca", (x32 - mean) @ components)):
        fit_rows, holdout, test = roles == "fit", roles == "holdout", np.array(splits) == "Test"
        fit_sums, all_sums = (
            sums_of(vectors[fit_rows], y[fit_rows]),
            sums_of(vectors[fit_rows | holdout], y[fit_rows | holdout]),
        )
        right = [(fit_lda(fit_sums, a).predict(vectors[holdout]) == y[holdout]).sum() for a in SHRINKAGES]
        best = max(range(len(SHRINKAGES)), key=lambda i: (right[i], i))
        accuracy = (fit_lda(all_sums, SHRINKAGES[best]).predict(vectors[test]) == y[test]).mean()
        key = "test_accuracy_full_features" if space == "full" else "test_accuracy_pca"
        assert result["shrinkage"][space] == SHRINKAGES[best]
        assert result[key] == pytest.approx(accuracy, abs=1e-12)
        # The classifier a run keeps for `fruits identify` is that very one: the same predictions on Test.
        kept = classifiers.chosen(tallied(projected, classifiers).chosen)[space]
        assert (kept.predict(vectors[test]) == y[test]).mean() == pytest.approx(accuracy, abs=1e-12)


@pytest.mark.spark
def test_a_run_over_training_alone_still_chooses_its_classifier(spark):
    from fruits.quality import fit_classifiers, marking, tallied
    from fruits.reduce import Projection, project

    x, y = blobs(400, 3, 6, 2.0)
    frame = frame_of(spark, x, y, ["Training"] * 400)
    sums = summarize(frame, 6)
    mean = sums.total.total / sums.total.n
    classifiers = fit_classifiers(sums.training, mean, np.eye(6)[:, :2])
    result = tallied(
        project(Projection(mean, np.eye(6)[:, :2]), frame, False, marking(classifiers)), classifiers
    )
    assert result.report is None  # nothing to score it on
    assert set(result.chosen) == {"full", "pca"}
    assert all(0 <= i < len(SHRINKAGES) for i in result.chosen.values())
    chosen = classifiers.chosen(result.chosen)["full"]
    assert (chosen.predict(x.astype(np.float32)) == y).mean() > 0.9


def test_marks_of_a_batch_without_holdout_or_test_rows_are_zeros():
    from fruits.quality import fit_classifiers, mark_columns, marks

    x, y = blobs(300, 3, 4, 3.0)
    rows = pd.DataFrame(
        {"path": [f"/d/{i}.jpg" for i in range(300)], "label": y, "split": ["Training"] * 300}
    )
    training = summarize_frames([rows.assign(features=[pack(v) for v in x])], 4).training
    classifiers = fit_classifiers(training, x.mean(axis=0), np.eye(4)[:, :2])
    fit_only = rows[holdout_roles(rows["path"]) == "fit"].head(20)
    columns = marks(fit_only, x[fit_only.index], x[fit_only.index][:, :2], classifiers.models)
    assert list(columns["role"]) == [None] * 20
    assert all(not columns[name].any() for name in mark_columns(classifiers))
