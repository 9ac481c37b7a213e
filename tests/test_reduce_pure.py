"""Choosing k from an explained-variance curve, the CSV header, and a fit that refuses non-finite sums."""

from __future__ import annotations

import numpy as np
import pytest

from fruits.linalg import NonFiniteStatistics, moments, principal_components
from fruits.reduce import choose_k
from fruits.writing import result_columns


@pytest.mark.parametrize(
    ("curve", "variance", "k"),
    [
        ([0.5, 0.3, 0.1, 0.1], 0.5, 1),
        ([0.5, 0.3, 0.1, 0.1], 0.8, 2),
        ([0.5, 0.3, 0.1, 0.1], 0.81, 3),
        ([0.5, 0.3, 0.1, 0.1], 1.0, 4),
        ([0.25, 0.25, 0.25, 0.2499999999], 1.0, 4),  # rounding must not lose the last component
        ([0.4, 0.2], 0.95, 2),  # a curve over fewer components than the data: all of them
    ],
)
def test_choose_k_is_the_smallest_k_reaching_the_target(curve, variance, k):
    assert choose_k(curve, variance) == k


@pytest.mark.parametrize("variance", [0, -0.1, 1.01])
def test_choose_k_refuses_a_target_outside_0_1(variance):
    with pytest.raises(ValueError, match="variance must be in"):
        choose_k([1.0], variance)


def test_choose_k_refuses_an_empty_curve():
    with pytest.raises(ValueError, match="empty"):
        choose_k([], 0.9)


def test_results_header():
    assert result_columns(3) == ["path", "label", "pc_1", "pc_2", "pc_3"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_fit_from_non_finite_sums_fails_with_one_line_instead_of_committing_nulls(bad):
    rows = np.arange(12, dtype=np.float64).reshape(4, 3)
    rows[2, 1] = bad
    with pytest.raises(NonFiniteStatistics, match=r"^the PCA's sum of the features .* is not finite"):
        principal_components(moments([rows], 3))


def test_projecting_adds_every_component_and_the_beside_columns_in_one_frame():
    import warnings

    import pandas as pd

    from fruits.linalg import pack, projecting

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    mean, components = x.mean(axis=0).astype(np.float64), rng.normal(size=(8, 300))
    names = [f"pc_{i + 1}" for i in range(300)]
    frame = pd.DataFrame({"path": [f"p{i}" for i in range(30)], "features": [pack(v) for v in x]})

    def beside(frame, full, pcs):
        return {"norm": np.linalg.norm(full, axis=1), "role": np.where(pcs[:, 0] > 0, "test", None)}

    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # 300 columns inserted one by one made pandas warn of a fragmented frame
        (out,) = list(projecting(names, mean, components, keep_features=False, beside=beside)([frame]))
    assert list(out.columns) == ["path", *names, "norm", "role"]
    expected = (x.astype(np.float64) - mean) @ components
    np.testing.assert_allclose(out[names].to_numpy(), expected)
    np.testing.assert_allclose(out["norm"], np.linalg.norm(x.astype(np.float64), axis=1))
    assert list(out["role"].isna()) == list(
        expected[:, 0] <= 0
    )  # a missing role stays missing (null in Arrow)
