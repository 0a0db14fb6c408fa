"""costxent.decision against brute-force NumPy and the closed-form Elkan threshold."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from costxent import decision


def _random_probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    z = rng.normal(size=(n, c)) * 2.0
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _brute_force(probs: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """argmin_j sum_k p_k M[k, j] by explicit loops over rows and candidate decisions."""
    out = []
    for p in probs:
        expected = [sum(p[k] * cost[k, j] for k in range(len(p))) for j in range(len(p))]
        out.append(int(np.argmin(expected)))
    return np.array(out)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_min_expected_cost_matches_brute_force(c: int) -> None:
    rng = np.random.default_rng(c)
    probs = _random_probs(rng, 200, c)
    cost = rng.uniform(-1.0, 5.0, size=(c, c))
    expected = _brute_force(probs, cost)

    got_np = decision.min_expected_cost(probs, cost)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.int64
    np.testing.assert_array_equal(got_np, expected)

    got_tf = decision.min_expected_cost(tf.constant(probs), cost)
    assert tf.is_tensor(got_tf) and got_tf.dtype == tf.int64
    np.testing.assert_array_equal(got_tf.numpy(), expected)


def test_min_expected_cost_zero_one_cost_is_argmax() -> None:
    probs = _random_probs(np.random.default_rng(0), 100, 5)
    got = decision.min_expected_cost(probs.reshape(4, 25, 5), 1.0 - np.eye(5))
    np.testing.assert_array_equal(got, probs.argmax(axis=-1).reshape(4, 25))


def test_min_expected_cost_worked_example() -> None:
    # M[true, predicted]: a true 1 predicted as 2 costs 5. With p = (0.1, 0.5, 0.4) argmax says
    # 1, and expected costs are (0.5*1 + 0.4*1, 0.1*1 + 0.4*1, 0.1*1 + 0.5*5) = (0.9, 0.5, 2.6).
    cost = [[0, 1, 1], [1, 0, 5], [1, 1, 0]]
    assert decision.min_expected_cost([[0.1, 0.5, 0.4]], cost).tolist() == [1]
    # p = (0.45, 0.1, 0.45): costs (0.55, 0.9, 0.95) -> predict 0 although 2 ties on p.
    assert decision.min_expected_cost([[0.45, 0.1, 0.45]], cost).tolist() == [0]


def test_min_expected_cost_ties_lowest_index() -> None:
    probs = np.full((3, 4), 0.25)
    np.testing.assert_array_equal(decision.min_expected_cost(probs, 1 - np.eye(4)), [0, 0, 0])
    np.testing.assert_array_equal(
        decision.min_expected_cost(tf.constant(probs, tf.float32), 1 - np.eye(4)), [0, 0, 0]
    )


def test_min_expected_cost_binary_is_threshold_rule() -> None:
    p1 = np.linspace(0.0, 1.0, 101)
    p1 = p1[np.abs(p1 - 0.85) > 1e-9]  # the tie at the threshold itself goes either way
    probs = np.stack([1 - p1, p1], axis=1)
    cost = [[0.0, 17.0], [3.0, 0.0]]  # FP costs 17, FN costs 3
    threshold = decision.binary_threshold(cost_fp=17.0, cost_fn=3.0)
    np.testing.assert_array_equal(decision.min_expected_cost(probs, cost), p1 >= threshold)


def test_min_expected_cost_in_tf_function() -> None:
    cost = [[0, 1, 1], [1, 0, 5], [1, 1, 0]]
    fn = tf.function(lambda p: decision.min_expected_cost(p, cost))
    probs = tf.constant([[0.1, 0.5, 0.4], [0.45, 0.1, 0.45]])
    assert fn(probs).numpy().tolist() == [1, 0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="probs must be finite"):
        fn(tf.constant([[0.1, float("nan"), 0.4], [0.45, 0.1, 0.45]]))


@pytest.mark.parametrize(
    "probs, cost, match",
    [
        ([[0.5, 0.5]], [[0, 1, 1], [1, 0, 1], [1, 1, 0]], r"must be 2 x 2 .* got shape \(3, 3\)"),
        ([[0.5, 0.5]], [[0, 1]], r"square C x C matrix; got shape \(1, 2\)"),
        ([[1.0]], [[0.0]], r"at least 2 classes; got shape \(1, 1\)"),
        (
            [[0.5, 0.5]],
            [[0, np.nan], [1, 0]],
            r"cost_matrix must be finite, got nan at index \(0, 1\)",
        ),
        (
            [[0.5, np.nan]],
            [[0, 1], [1, 0]],
            r"probs must be finite; rows with NaN or Inf: \[\[0\]\]",
        ),
        (
            [[2.0, -1.0]],
            [[0, 1], [1, 0]],
            r"apply softmax to logits first\); got values in \[-1, 2\]",
        ),
    ],
)
def test_min_expected_cost_errors(probs, cost, match) -> None:
    with pytest.raises(ValueError, match=match):
        decision.min_expected_cost(np.array(probs), cost)
    with pytest.raises(ValueError, match=match):
        decision.min_expected_cost(tf.constant(probs, tf.float64), cost)


def test_binary_threshold_formula_and_kinds() -> None:
    assert decision.binary_threshold(17.0, 3.0) == pytest.approx(0.85)
    assert isinstance(decision.binary_threshold(17, 3), float)
    # Elkan (2001): t = (c10 - c00) / (c10 - c00 + c01 - c11), here with rewards.
    assert decision.binary_threshold(1.0, 0.0, cost_tp=-3.0, cost_tn=0.0) == pytest.approx(0.25)
    assert decision.binary_threshold(5.0, 4.0, cost_tp=2.0, cost_tn=1.0) == pytest.approx(4 / 6)

    per_label = decision.binary_threshold(np.array([17.0, 1.0]), 3.0)
    assert isinstance(per_label, np.ndarray)
    np.testing.assert_allclose(per_label, [0.85, 0.25])

    as_tensor = decision.binary_threshold(tf.constant(17.0, tf.float64), 3.0)
    assert tf.is_tensor(as_tensor) and as_tensor.dtype == tf.float64
    assert float(as_tensor) == pytest.approx(0.85)


def test_binary_threshold_symbolic() -> None:
    fn = tf.function(lambda fp, fn_: decision.binary_threshold(fp, fn_))
    assert float(fn(tf.constant(17.0), tf.constant(3.0))) == pytest.approx(0.85)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="cost_fn must be greater than cost_tp"
    ):
        fn(tf.constant(17.0), tf.constant(0.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(cost_fp=0.0, cost_fn=3.0),
            r"cost_fp must be greater than cost_tn .* cost_fp=0.0, cost_tn=0.0",
        ),
        (dict(cost_fp=1.0, cost_fn=3.0, cost_tn=2.0), r"got cost_fp=1.0, cost_tn=2.0"),
        (
            dict(cost_fp=1.0, cost_fn=-1.0),
            r"cost_fn must be greater than cost_tp .* cost_fn=-1.0, cost_tp=0.0",
        ),
        (dict(cost_fp=1.0, cost_fn=1.0, cost_tp=1.0), r"cost_fn=1.0, cost_tp=1.0"),
        (dict(cost_fp=float("nan"), cost_fn=1.0), r"cost_fp must be finite; got nan"),
        (dict(cost_fp=1.0, cost_fn=float("inf")), r"cost_fn must be finite; got inf"),
    ],
)
def test_binary_threshold_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        decision.binary_threshold(**kwargs)


def test_binary_threshold_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="cost_fp must be a real number; got '17'"):
        decision.binary_threshold("17", 3.0)
