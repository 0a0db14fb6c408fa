"""Inputs that used to be mis-read silently: leading shapes under dynamic shapes, negative
weights, ragged tensors, fractional class-weight keys, NaN float class ids (DESIGN 2.4)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import costxent as cx

IMPLS = ["ops", "reference"]
C = 5


def _impl(name: str):
    return getattr(cx, name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fn", ["softmax_cross_entropy", "expected_cost"])
def test_leading_shapes_are_checked_at_run_time_under_dynamic_shapes(impl: str, fn: str) -> None:
    # Both flatten to 6 rows; pairing them would silently re-pair labels and logits.
    labels = np.zeros((3, 2), np.int32)
    logits = np.zeros((2, 3, C), np.float32)
    extra = {"cost_matrix": np.ones((C, C))} if fn == "expected_cost" else {}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None, C], tf.float32),
        ]
    )
    def loss(y, z):
        return getattr(_impl(impl), fn)(y, z, **extra)

    with pytest.raises(tf.errors.InvalidArgumentError, match="leading shape|labels"):
        loss(labels, logits)


@pytest.mark.parametrize("impl", IMPLS)
def test_matching_dynamic_leading_shapes_still_work(impl: str) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, (2, 3)).astype(np.int32)
    logits = rng.normal(size=(2, 3, C)).astype(np.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None, C], tf.float32),
        ]
    )
    def loss(y, z):
        return _impl(impl).softmax_cross_entropy(y, z)

    want = -np.take_along_axis(
        logits - np.log(np.exp(logits).sum(-1, keepdims=True)), labels[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(loss(labels, logits).numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"class_weight": [1.0, -2.0, 1.0, 1.0, 1.0]}, "class_weight"),
        ({"class_weight": {1: -0.5}}, "class_weight"),
        ({"cost_matrix": np.eye(C) - 2.0}, "cost_matrix"),
    ],
)
def test_negative_weights_of_a_cross_entropy_are_an_error(impl: str, kwargs: dict, name: str) -> None:
    z = np.zeros((2, C), np.float32)
    with pytest.raises(ValueError, match=rf"{name} must be >= 0.*got -"):
        _impl(impl).softmax_cross_entropy([0, 1], z, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["pos_weight", "neg_weight"])
def test_negative_sigmoid_weights_are_an_error(impl: str, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be >= 0"):
        _impl(impl).sigmoid_cross_entropy([[1.0, 0.0]], [[0.0, 0.0]], **{name: [1.0, -1.0]})


def test_negative_weight_tensor_is_an_error_at_run_time_on_the_cpu() -> None:
    weight = tf.Variable([1.0, -2.0, 1.0, 1.0, 1.0])

    @tf.function
    def loss(z):
        return cx.ops.softmax_cross_entropy([0, 1], z, class_weight=weight)

    with pytest.raises(tf.errors.InvalidArgumentError, match="class_weight must be >= 0"):
        loss(tf.zeros((2, C)))


@pytest.mark.parametrize("impl", IMPLS)
def test_negative_costs_are_rewards_in_expected_cost(impl: str) -> None:
    m = -np.eye(C)  # correct predictions are rewarded
    z = np.zeros((1, C), np.float32)
    got = _impl(impl).expected_cost([2], z, m).numpy()
    np.testing.assert_allclose(got, [-1.0 / C], rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_ragged_inputs_get_a_clear_type_error(impl: str) -> None:
    logits = tf.RaggedTensor.from_row_lengths(tf.zeros((3, C)), [2, 1])
    labels = tf.RaggedTensor.from_row_lengths([0, 1, 2], [2, 1])
    with pytest.raises(TypeError, match="RaggedTensor.*flat_values"):
        _impl(impl).softmax_cross_entropy(labels, logits)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("key", [1.5, True, "one"])
def test_class_weight_keys_must_be_integer_class_ids(impl: str, key: object) -> None:
    with pytest.raises(ValueError, match="class_weight keys must be integer class ids"):
        _impl(impl).softmax_cross_entropy([0], np.zeros((1, C), np.float32), class_weight={key: 2.0})


def test_class_weight_key_as_a_json_string_is_its_class() -> None:
    z = np.random.default_rng(2).normal(size=(3, C)).astype(np.float32)
    by_string = cx.ops.softmax_cross_entropy([0, 1, 3], z, class_weight={"3": 2.0})
    by_int = cx.ops.softmax_cross_entropy([0, 1, 3], z, class_weight={3: 2.0})
    np.testing.assert_array_equal(by_string.numpy(), by_int.numpy())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1.5])
def test_float_class_ids_that_are_not_whole_numbers_are_named(impl: str, bad: float) -> None:
    labels = np.array([0.0, bad, 2.0], np.float32)
    with pytest.raises(ValueError, match=rf"labels must be whole class ids, got {bad}"):
        _impl(impl).softmax_cross_entropy(labels, np.zeros((3, C), np.float32))


def test_nan_float_class_id_inside_tf_function_is_an_error_not_a_huge_integer() -> None:
    @tf.function
    def loss(y):
        return cx.ops.softmax_cross_entropy(y, tf.zeros((3, C)))

    with pytest.raises(tf.errors.InvalidArgumentError, match="whole class ids") as err:
        loss(tf.constant([0.0, np.nan, 2.0]))
    assert "9223372036854775808" not in str(err.value)
