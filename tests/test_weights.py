"""costxent.weights against scikit-learn, the Cui et al. formula and Keras' class_weight."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from costxent import weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_equals_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 12))
    y = np.concatenate([np.arange(c), rng.choice(c, size=300, p=rng.dirichlet(np.ones(c)))])
    expected = compute_class_weight("balanced", classes=np.arange(c), y=y)

    np.testing.assert_allclose(weights.balanced(y), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.balanced(y[:, None]), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.balanced(y.astype(np.float32)), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.balanced(np.eye(c)[y]), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.balanced(tf.constant(y)), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.balanced(list(y), num_classes=c), expected, rtol=1e-12)


def test_balanced_by_hand() -> None:
    # n = 6, C = 3, counts (2, 1, 3): 6 / (3 * count).
    np.testing.assert_allclose(weights.balanced([0, 0, 1, 2, 2, 2]), [1.0, 2.0, 2.0 / 3.0])


@pytest.mark.parametrize(
    "y, kwargs, match",
    [
        ([0, 0, 2, 2], {}, r"classes \[1\] have no examples in y \(n=4, C=3\)"),
        ([0, 1, 1], dict(num_classes=4), r"classes \[2, 3\] have no examples"),
        ([0, 1, 5], dict(num_classes=3), r"class ids \[5\] outside \[0, 3\) \(num_classes=3\)"),
        ([0, -1, 1], {}, r"non-negative integer class ids; got \[-1.0\]"),
        ([0, 1.5, 1], {}, r"non-negative integer class ids; got \[1.5\]"),
        ([0, np.nan, 1], {}, r"non-negative integer class ids; got \[nan\]"),
        ([], {}, r"at least one label; got an empty array"),
        ([[0.9, 0.1], [0.0, 1.0]], {}, r"one-hot rows .* rows \[0\] are not"),
        ([[1, 0], [0, 1]], dict(num_classes=3), r"num_classes=3 does not match the 2 columns"),
        (np.zeros((2, 2, 2)), {}, r"got shape \(2, 2, 2\)"),
        ([0, 1], dict(num_classes=0), r"num_classes must be >= 1; got 0"),
        (["a", "b"], {}, r"integer class ids; got dtype <U1"),
    ],
)
def test_balanced_errors(y, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        weights.balanced(y, **kwargs)


def test_balanced_num_classes_type() -> None:
    with pytest.raises(TypeError, match=r"num_classes must be an int; got 2.0"):
        weights.balanced([0, 1], num_classes=2.0)


def test_effective_number_formula() -> None:
    counts = np.array([5000.0, 500.0, 50.0, 5.0])
    for beta in (0.9, 0.99, 0.999, 0.9999):
        raw = (1 - beta) / (1 - beta**counts)
        expected = raw / raw.sum() * len(counts)
        got = weights.effective_number(counts, beta=beta)
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        assert got.sum() == pytest.approx(len(counts))
        assert np.all(np.diff(got) >= 0) and got[-1] > got[0]  # rarer classes weigh more


def test_effective_number_limits() -> None:
    counts = [1000, 10, 1]
    np.testing.assert_allclose(weights.effective_number(counts, beta=0.0), [1.0, 1.0, 1.0])
    inverse_frequency = 1.0 / np.array(counts)
    np.testing.assert_allclose(
        weights.effective_number(counts, beta=1 - 1e-12),
        inverse_frequency / inverse_frequency.sum() * 3,
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "counts, beta, match",
    [
        ([10, 5], 1.0, r"beta must be in \[0, 1\); got 1.0"),
        ([10, 5], -0.1, r"beta must be in \[0, 1\); got -0.1"),
        ([10, 5], float("nan"), r"beta must be in \[0, 1\); got nan"),
        ([10, 0], 0.9, r"counts must be finite and > 0; classes \[1\] have \[0.0\]"),
        ([-1, 5, np.nan], 0.9, r"classes \[0, 2\] have \[-1.0, nan\]"),
        ([], 0.9, r"non-empty 1-D array; got shape \(0,\)"),
        ([[1, 2]], 0.9, r"non-empty 1-D array; got shape \(1, 2\)"),
    ],
)
def test_effective_number_errors(counts, beta, match) -> None:
    with pytest.raises(ValueError, match=match):
        weights.effective_number(counts, beta=beta)


def test_to_keras_class_weight() -> None:
    w = weights.to_keras_class_weight(np.array([1.0, 2.5, 0.5], dtype=np.float32))
    assert w == {0: 1.0, 1: 2.5, 2: 0.5}
    assert all(type(k) is int and type(v) is float for k, v in w.items())
    assert weights.to_keras_class_weight({np.int64(1): np.float32(3)}) == {1: 3.0}
    assert weights.to_keras_class_weight(tf.constant([1.0, 2.0])) == {0: 1.0, 1: 2.0}


@pytest.mark.parametrize(
    "w, match",
    [
        ([1.0, -2.0], r"finite and >= 0; got class 1: -2.0"),
        ([np.nan, 1.0], r"got class 0: nan"),
        ({0: 1.0, 3: np.inf}, r"got class 3: inf"),
        ({"a": 1.0}, r"keys must be non-negative ints; got 'a'"),
        ({-1: 1.0}, r"keys must be non-negative ints; got -1"),
        ([], r"non-empty 1-D array of weights; got shape \(0,\)"),
        ([[1.0]], r"got shape \(1, 1\)"),
    ],
)
def test_to_keras_class_weight_errors(w, match) -> None:
    with pytest.raises(ValueError, match=match):
        weights.to_keras_class_weight(w)


def test_to_keras_class_weight_is_what_keras_applies_to_one_hot_labels() -> None:
    """Keras turns ``class_weight`` into per-example weights by argmax of one-hot labels."""
    # Private, but it is the very function model.fit applies to class_weight.
    from keras.src.trainers.data_adapters.data_adapter_utils import (
        class_weight_to_sample_weights,
    )

    y = np.array([0, 2, 1, 2, 2, 0])
    w = weights.balanced(y)
    sample_weight = class_weight_to_sample_weights(np.eye(3)[y], weights.to_keras_class_weight(w))
    np.testing.assert_allclose(sample_weight, w[y], rtol=1e-6)
