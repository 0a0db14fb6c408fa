"""Checks of the float64 NumPy oracle itself: hand-computed values and finite differences."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

import oracle

RNG = np.random.default_rng(20240611)


def _finite_difference(fn: Callable[[np.ndarray], np.ndarray], z: np.ndarray) -> np.ndarray:
    """Central differences of ``sum(fn(z))`` w.r.t. every element of ``z`` (step 1e-6)."""
    h = 1e-6
    grad = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        grad[idx] = (np.sum(fn(zp)) - np.sum(fn(zm))) / (2 * h)
    return grad


def _soft_labels(shape: tuple[int, ...]) -> np.ndarray:
    raw = RNG.random(shape)
    return raw / raw.sum(axis=-1, keepdims=True)


SOFTMAX_CASES = [
    {},
    {"label_smoothing": 0.1},
    {"focal_gamma": 2.0},
    {"focal_gamma": 0.5, "label_smoothing": 0.1},
    {"class_weight": [0.5, 2.0, 1.0, 3.0]},
    {"class_weight": {1: 4.0}},
    {"cost_matrix": RNG.random((4, 4)) * 3},
    {"cost_matrix": RNG.random((4, 4)) * 3, "focal_gamma": 0.5, "label_smoothing": 0.2},
]


@pytest.mark.parametrize("kwargs", SOFTMAX_CASES)
@pytest.mark.parametrize("label_kind", ["sparse", "sparse_col", "onehot", "soft"])
def test_softmax_gradient_matches_finite_differences(kwargs: dict, label_kind: str) -> None:
    z = RNG.normal(size=(2, 3, 4)) * 2
    ids = RNG.integers(0, 4, size=(2, 3))
    labels = {
        "sparse": ids,
        "sparse_col": ids[..., None],
        "onehot": np.eye(4)[ids],
        "soft": _soft_labels((2, 3, 4)),
    }[label_kind]
    _, grad = oracle.softmax_cross_entropy(labels, z, **kwargs)
    numeric = _finite_difference(lambda x: oracle.softmax_cross_entropy(labels, x, **kwargs)[0], z)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs", [{}, {"ce_weight": 0.3}, {"ce_weight": 1.0, "label_smoothing": 0.1}]
)
@pytest.mark.parametrize("label_kind", ["sparse", "soft"])
def test_expected_cost_gradient_matches_finite_differences(kwargs: dict, label_kind: str) -> None:
    z = RNG.normal(size=(5, 3)) * 2
    m = RNG.normal(size=(3, 3))  # negative costs (rewards) are allowed
    labels = RNG.integers(0, 3, size=5) if label_kind == "sparse" else _soft_labels((5, 3))
    _, grad = oracle.expected_cost(labels, z, m, **kwargs)
    numeric = _finite_difference(lambda x: oracle.expected_cost(labels, x, m, **kwargs)[0], z)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"pos_weight": 3.0},
        {"pos_weight": [1.0, 2.0, 5.0], "neg_weight": [0.5, 1.0, 0.25]},
        {"focal_gamma": 2.0, "label_smoothing": 0.1},
        {"focal_gamma": 0.5, "pos_weight": 0.25, "neg_weight": 0.75},
    ],
)
def test_sigmoid_gradient_matches_finite_differences(kwargs: dict) -> None:
    z = RNG.normal(size=(4, 3)) * 3
    y = RNG.random((4, 3))
    y[0] = [0.0, 1.0, 1.0]
    _, grad = oracle.sigmoid_cross_entropy(y, z, **kwargs)
    numeric = _finite_difference(lambda x: oracle.sigmoid_cross_entropy(y, x, **kwargs)[0], z)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_softmax_hand_computed_values() -> None:
    z = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    y = np.array([1, 2])
    p0 = np.exp(z[0]) / np.exp(z[0]).sum()
    loss, grad = oracle.softmax_cross_entropy(y, z)
    np.testing.assert_allclose(loss, [-math.log(p0[1]), math.log(3.0)], rtol=1e-12)
    np.testing.assert_allclose(grad[1], [1 / 3, 1 / 3, -2 / 3], rtol=1e-12)

    loss, _ = oracle.softmax_cross_entropy(y, z, class_weight={2: 5.0})
    np.testing.assert_allclose(loss, [-math.log(p0[1]), 5 * math.log(3.0)], rtol=1e-12)

    gamma = 2.0
    loss, _ = oracle.softmax_cross_entropy(y, z, focal_gamma=gamma, label_smoothing=0.3)
    ts0 = 0.7 * np.eye(3)[1] + 0.1
    np.testing.assert_allclose(loss[0], np.sum(ts0 * -((1 - p0) ** gamma) * np.log(p0)), rtol=1e-12)


def test_cost_matrix_is_indexed_true_then_predicted() -> None:
    # true class 1 predicted as 2 costs 7; true 1 predicted as 0 costs 3; ties pick index 0.
    m = np.array([[0.0, 1.0, 1.0], [3.0, 0.0, 7.0], [1.0, 1.0, 0.0]])
    z = np.array([[0.0, 1.0, 4.0], [4.0, 1.0, 0.0], [2.0, 0.0, 2.0]])
    y = np.array([1, 1, 1])
    loss, _ = oracle.softmax_cross_entropy(y, z, cost_matrix=m)
    ce, _ = oracle.softmax_cross_entropy(y, z)
    np.testing.assert_allclose(loss, [7 * ce[0], 3 * ce[1], 3 * ce[2]], rtol=1e-12)


def test_ignore_class_zeroes_loss_and_gradient_row() -> None:
    z = RNG.normal(size=(4, 3))
    y = np.array([0, -1, 2, -1])
    loss, grad = oracle.softmax_cross_entropy(y, z, ignore_class=-1, cost_matrix=np.ones((3, 3)))
    full, full_grad = oracle.softmax_cross_entropy(np.array([0, 0, 2, 0]), z)
    np.testing.assert_array_equal(loss[[1, 3]], 0.0)
    np.testing.assert_array_equal(grad[[1, 3]], 0.0)
    np.testing.assert_allclose(loss[[0, 2]], full[[0, 2]], rtol=1e-12)
    np.testing.assert_allclose(grad[[0, 2]], full_grad[[0, 2]], rtol=1e-12)
    loss, grad = oracle.expected_cost(y, z, np.ones((3, 3)), ce_weight=1.0, ignore_class=-1)
    np.testing.assert_array_equal(loss[[1, 3]], 0.0)
    np.testing.assert_array_equal(grad[[1, 3]], 0.0)


def test_expected_cost_hand_computed() -> None:
    z = np.log(np.array([[0.2, 0.5, 0.3]]))
    m = np.array([[0.0, 2.0, 4.0], [1.0, 0.0, -1.0], [5.0, 5.0, 0.0]])
    loss, _ = oracle.expected_cost(np.array([1]), z, m, ce_weight=0.5)
    np.testing.assert_allclose(loss, [0.2 * 1.0 + 0.3 * -1.0 - 0.5 * math.log(0.5)], rtol=1e-12)


def test_sigmoid_reduces_to_textbook_formula() -> None:
    z = np.array([[-2.0, 0.5, 3.0]])
    y = np.array([[0.0, 1.0, 0.3]])
    s = 1 / (1 + np.exp(-z))
    loss, _ = oracle.sigmoid_cross_entropy(y, z, pos_weight=2.0, neg_weight=[1.0, 0.5, 3.0])
    b = np.array([1.0, 0.5, 3.0])
    np.testing.assert_allclose(loss, -(2 * y * np.log(s) + b * (1 - y) * np.log(1 - s)), rtol=1e-12)
    loss, _ = oracle.sigmoid_cross_entropy(y, z, focal_gamma=2.0, label_smoothing=0.2)
    ys = y * 0.8 + 0.1
    pt = ys * s + (1 - ys) * (1 - s)
    expected = (1 - pt) ** 2 * -(ys * np.log(s) + (1 - ys) * np.log(1 - s))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_focal_stays_finite_for_confident_rows(gamma: float) -> None:
    z = np.array([[1e4, 0.0, -1e4], [60.0, 0.0, 0.0]])
    loss, grad = oracle.softmax_cross_entropy(np.array([0, 0]), z, focal_gamma=gamma)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, 0.0, atol=1e-20)
    loss, grad = oracle.sigmoid_cross_entropy(
        np.array([1.0, 0.0]), np.array([800.0, -800.0]), focal_gamma=gamma
    )
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


def test_nan_logits_give_nan_loss() -> None:
    z = np.array([[np.nan, 0.0], [1.0, 0.0], [np.inf, 0.0]])
    with np.errstate(invalid="ignore"):
        loss, _ = oracle.softmax_cross_entropy(np.array([0, 0, 0]), z)
    assert np.isnan(loss[0]) and np.isfinite(loss[1]) and np.isnan(loss[2])
