"""Mixed precision: half-precision logits reach the fused op as they are, class ids stay
integers, the loss is float32, and training under ``mixed_bfloat16`` / ``mixed_float16``
ends close to float32 training.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import costxent as cx
import oracle

FUSED = not cx.ops.implementation().startswith("reference")
C = 2100  # above 2048 and 256, where float16 and bfloat16 stop holding every integer
LABELS = np.array([257, 2049, 5, 1999, 2099, 0])
LOGITS = np.random.default_rng(11).normal(size=(len(LABELS), C)).astype(np.float32)
HALF = {"bfloat16": tf.bfloat16, "float16": tf.float16}


def _as(dtype: str, x: np.ndarray) -> np.ndarray:
    """x rounded to ``dtype``, back in float64 (the logits the op actually reads)."""
    return tf.cast(tf.cast(x, HALF[dtype]), tf.float64).numpy()


@pytest.mark.parametrize("dtype", list(HALF))
def test_a_half_dtype_loss_keeps_class_ids(dtype: str) -> None:
    # Keras' Loss.__call__ would cast the ids to the loss' dtype: 257 -> 256, 2049 -> 2048.
    loss = cx.WeightedCategoricalCrossentropy(from_logits=True, dtype=dtype, reduction="none")
    value = loss(LABELS, LOGITS)
    want, _ = oracle.softmax_cross_entropy(LABELS, _as(dtype, LOGITS))
    assert value.dtype == HALF[dtype]  # the loss' dtype, as Keras returns it
    np.testing.assert_allclose(tf.cast(value, tf.float64).numpy(), _as(dtype, want), rtol=1e-6)


@pytest.mark.parametrize("dtype", list(HALF))
def test_half_logits_give_a_float32_loss_and_a_half_gradient(dtype: str) -> None:
    logits = tf.Variable(tf.cast(LOGITS, HALF[dtype]))
    sparse = cx.WeightedCategoricalCrossentropy(from_logits=True)
    dense = cx.ExpectedCostLoss(np.ones((C, C)) - np.eye(C), ce_weight=0.5, from_logits=True)
    z = _as(dtype, LOGITS)
    for loss, (want, want_grad) in [
        (sparse, oracle.softmax_cross_entropy(LABELS, z)),
        (dense, oracle.expected_cost(np.eye(C)[LABELS], z, np.ones((C, C)) - np.eye(C),
                                     ce_weight=0.5)),
    ]:
        labels = LABELS if loss is sparse else np.eye(C, dtype=np.float32)[LABELS]
        with tf.GradientTape() as tape:
            value = loss(labels, logits)
        grad = tape.gradient(value, logits)
        assert value.dtype == tf.float32 and grad.dtype == HALF[dtype]
        np.testing.assert_allclose(value.numpy(), want.mean(), rtol=1e-5)
        # the exact gradient rounded once to the half dtype
        want_grad = tf.cast(tf.cast(want_grad / len(LABELS), HALF[dtype]), tf.float64).numpy()
        np.testing.assert_allclose(tf.cast(grad, tf.float64).numpy(), want_grad,
                                   rtol=1e-2, atol=1e-8)


def _model(policy: str) -> keras.Model:
    """An MLP whose layers compute under ``policy`` (the logits in its compute dtype)."""
    with _policy(policy):
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(5)(hidden))


class _policy:
    """Sets Keras' global dtype policy for a block."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.saved = keras.mixed_precision.dtype_policy()
        keras.mixed_precision.set_dtype_policy(self.name)

    def __exit__(self, *exc) -> None:
        keras.mixed_precision.set_dtype_policy(self.saved)


@pytest.mark.skipif(not FUSED, reason="the op library is not loaded")
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_no_cast_of_the_logits_in_front_of_the_op(policy: str) -> None:
    model = _model(policy)
    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=np.ones((5, 5)) - np.eye(5),
                                              from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x))
        return value, tape.gradient(value, model.trainable_variables)

    graph = step.get_concrete_function(
        tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None], tf.int64)).graph
    fused = [op for op in graph.get_operations() if op.type == "CostxentSoftmaxLossReduced"]
    assert len(fused) == 1
    logits, labels = fused[0].inputs[0], fused[0].inputs[1]
    half = keras.mixed_precision.Policy(policy).compute_dtype
    assert logits.dtype.name == half and logits.op.type != "Cast"
    assert labels.dtype == tf.int64
    assert fused[0].outputs[0].dtype == tf.float32


def _train(policy: str) -> tuple[float, list[np.ndarray]]:
    """Five epochs of a small MLP under ``policy`` from fixed weights: the last epoch's loss
    and the weights (float32)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 5)) + 0.3 * rng.normal(size=(512, 5)), axis=-1)
    init = [rng.normal(scale=0.4, size=(8, 16)), np.zeros(16), rng.normal(scale=0.4, size=(16, 5)),
            np.zeros(5)]
    cost = np.array([[0, 1, 1, 1, 1], [4, 0, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 0, 8],
                     [1, 1, 1, 1, 0]], np.float64)
    model = _model(policy)
    model.set_weights([w.astype(np.float32) for w in init])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=cx.WeightedCategoricalCrossentropy(cost_matrix=cost, from_logits=True),
                  jit_compile=False)
    history = model.fit(x, y, batch_size=64, epochs=5, shuffle=False, verbose=0)
    return history.history["loss"][-1], [np.asarray(w, np.float32) for w in model.get_weights()]


# bfloat16 keeps 8 bits of mantissa, float16 11: after 40 steps the rounding of the
# activations and gradients moves the loss by well under these relative amounts.
TOLERANCE = {"mixed_bfloat16": 3e-2, "mixed_float16": 5e-3}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_fit_under_a_mixed_policy_matches_float32(policy: str) -> None:
    want_loss, want_weights = _train("float32")
    loss, weights = _train(policy)
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, want_loss, rtol=TOLERANCE[policy])
    for w, want in zip(weights, want_weights):
        scale = np.abs(want).max()
        np.testing.assert_allclose(w, want, atol=TOLERANCE[policy] * 4 * scale)
