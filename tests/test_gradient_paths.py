"""Gradients the fused op does and does not provide (DESIGN 3).

First-order gradients of the logits come from the fused kernels: exact for any upstream
gradient, and rounded once to half precision. Gradients with respect to soft labels or
weights, forward-mode and second-order gradients come from the reference (eagerly, where
costxent sees the tapes) or fail with a clear error (inside a traced function) - never an
internal AttributeError or LookupError.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import costxent as cx

C = 4
RNG = np.random.default_rng(3)
Z = RNG.normal(size=(6, C)).astype(np.float32)
Y = np.array([0, 1, 2, 3, 1, 0], np.int32)
SOFT = RNG.dirichlet(np.ones(C), size=6).astype(np.float32)


def _grad(fn, logits, upstream=None):
    z = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = fn(z)
    return tape.gradient(loss, z, output_gradients=upstream)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"class_weight": [1.0, 2.0, 0.5, 3.0]}, {"cost_matrix": 1.0 - np.eye(C)},
     {"label_smoothing": 0.1, "focal_gamma": 2.0}],
)
def test_per_example_gradient_is_exact_for_any_upstream(kwargs: dict) -> None:
    upstream = tf.constant(RNG.normal(size=6).astype(np.float32))
    got = _grad(lambda z: cx.ops.softmax_cross_entropy(Y, z, **kwargs), Z, upstream)
    want = _grad(lambda z: cx.reference.softmax_cross_entropy(Y, z, **kwargs), Z, upstream)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=1e-6)


# Past 32 classes the CPU forward saves each row's state and the gradient op reads it, so the
# backward reads the logits once in one pass (tests/test_core_numerics.py checks its bits).
WIDE = 100
WIDE_Z = (RNG.normal(size=(7, WIDE)) * 3).astype(np.float32)
WIDE_Y = RNG.integers(0, WIDE, size=7).astype(np.int32)


@pytest.mark.parametrize(
    "fn, kwargs",
    [("ce", {}), ("ce", {"class_weight": RNG.random(WIDE) + 0.5}),
     ("ce", {"cost_matrix": RNG.random((WIDE, WIDE)) * 3}), ("ce", {"label_smoothing": 0.1}),
     ("ce", {"focal_gamma": 2.0}), ("ec", {"cost_matrix": RNG.random((WIDE, WIDE)), "ce_weight": 0.3})],
)
def test_per_example_gradient_from_the_saved_row_state_is_exact(fn: str, kwargs: dict) -> None:
    name = "softmax_cross_entropy" if fn == "ce" else "expected_cost"
    upstream = tf.constant(RNG.normal(size=7).astype(np.float32))

    @tf.function
    def fused(z: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = getattr(cx.ops, name)(WIDE_Y, z, **kwargs)
        return tape.gradient(loss, z, output_gradients=upstream)

    z = tf.constant(WIDE_Z)
    graph = fused.get_concrete_function(z).graph
    (grad_op,) = [op for op in graph.get_operations() if op.type == "CostxentSoftmaxLossGrad"]
    assert grad_op.inputs[7].op.type == "CostxentSoftmaxLoss"
    want = _grad(lambda z: getattr(cx.reference, name)(WIDE_Y, z, **kwargs), WIDE_Z, upstream)
    np.testing.assert_allclose(fused(z).numpy(), want.numpy(), rtol=2e-5, atol=1e-6)


def test_sigmoid_per_element_gradient_is_exact_for_any_upstream() -> None:
    labels = (RNG.random((6, C)) < 0.3).astype(np.float32)
    upstream = tf.constant(RNG.normal(size=(6, C)).astype(np.float32))
    kw = {"pos_weight": [1.0, 3.0, 0.5, 2.0], "focal_gamma": 1.5}
    got = _grad(lambda z: cx.ops.sigmoid_cross_entropy(labels, z, **kw), Z, upstream)
    want = _grad(lambda z: cx.reference.sigmoid_cross_entropy(labels, z, **kw), Z, upstream)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=1e-6)


def _half_ulp(values: np.ndarray, dtype: tf.DType) -> np.ndarray:
    """Half the spacing of ``dtype`` around each (float64) value."""
    mant = {tf.bfloat16: 8, tf.float16: 11}[dtype]
    min_exp = {tf.bfloat16: -126, tf.float16: -14}[dtype]
    exp = np.floor(np.log2(np.maximum(np.abs(values), 1e-300)))
    return 0.5 * np.exp2(np.maximum(exp, min_exp) - (mant - 1))


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
@pytest.mark.parametrize(
    "api, loss_scale",
    [("per-example", 1.0), ("keras", 1.0), ("keras", 2.0**15), ("keras", 3.0)],
    ids=["per-example", "keras", "keras_loss_scaled", "keras_times_3"],
)
def test_half_precision_gradient_is_the_exact_gradient_rounded_once(
    dtype: tf.DType, api: str, loss_scale: float
) -> None:
    # A loss scale (mixed_float16's LossScaleOptimizer multiplies the loss by 2^15) reaches
    # the reduced op as its upstream gradient: the gradient must be rounded after it.
    rng = np.random.default_rng(4)
    n, c = 512, 10
    z_half = tf.cast(rng.normal(size=(n, c)) * 3, dtype)
    labels = rng.integers(0, c, n).astype(np.int32)
    upstream = rng.uniform(0.3, 3.0, n).astype(np.float32)
    weights = rng.uniform(0.1, 4.0, c)
    if api == "per-example":
        def fused(z):
            return cx.ops.softmax_cross_entropy(labels, z, class_weight=weights)
        got = _grad(fused, z_half, tf.constant(upstream))
        exact_up = upstream.astype(np.float64)
    else:
        loss = cx.WeightedCategoricalCrossentropy(class_weight=weights, from_logits=True, dtype=dtype.name)
        got = _grad(lambda z: loss(labels, z) * loss_scale, z_half)
        exact_up = np.full(n, loss_scale / n)
    # Exact: the float64 reference on the same (half-precision) logits.
    z64 = tf.cast(z_half, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(z64)
        ref = cx.reference.softmax_cross_entropy(labels, z64, class_weight=weights)
    exact = tape.gradient(ref, z64, output_gradients=tf.constant(exact_up)).numpy()
    err = np.abs(tf.cast(got, tf.float64).numpy() - exact)
    # Rounding once is within half a unit in the last place (plus float32 arithmetic);
    # rounding twice reaches up to a whole unit.
    assert np.all(err <= _half_ulp(exact, dtype) * (1 + 1e-3) + 1e-30), err.max()


def test_tape_watching_soft_labels_gets_their_gradient_from_the_reference() -> None:
    z = tf.constant(Z)
    t = tf.constant(SOFT)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z, t])
        loss = cx.ops.softmax_cross_entropy(t, z)
    got_t, got_z = tape.gradient(loss, [t, z])
    log_p = tf.nn.log_softmax(z).numpy()
    np.testing.assert_allclose(got_t.numpy(), -log_p, rtol=1e-5)  # d/dt of -sum t log p
    np.testing.assert_allclose(got_z.numpy(), tf.nn.softmax(z).numpy() - SOFT, atol=1e-6)


def test_trainable_class_weight_gets_its_gradient_from_the_reference() -> None:
    w = tf.Variable([1.0, 2.0, 0.5, 3.0])
    z = tf.constant(Z)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(cx.ops.softmax_cross_entropy(Y, z, class_weight=w))
    got = tape.gradient(loss, w).numpy()
    ce = -np.take_along_axis(tf.nn.log_softmax(z).numpy(), Y[:, None], 1)[:, 0]
    want = np.bincount(Y, weights=ce, minlength=C)  # d/dw_k of sum_i w[y_i] ce_i
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("shape", [(6,), (6, 1)], ids=["N", "N_1"])
@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_watched_sample_weight_gets_the_gradient_keras_gives(
    reduction: str, shape: tuple, graph: bool
) -> None:
    # Keras' own loss is the oracle: the same reduction of the same per-example values.
    sw = tf.constant(RNG.uniform(0.5, 2.0, size=shape).astype(np.float32))
    z = tf.constant(Z)

    def grads(loss: tf.keras.losses.Loss) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch([z, sw])
            value = loss(Y, z, sample_weight=sw)
        return tuple(tape.gradient(value, [z, sw]))

    run = tf.function(grads) if graph else grads
    got_z, got_sw = run(cx.WeightedCategoricalCrossentropy(from_logits=True, reduction=reduction))
    want_z, want_sw = run(
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    )
    assert got_sw is not None
    np.testing.assert_allclose(got_sw.numpy(), want_sw.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_z.numpy(), want_z.numpy(), rtol=1e-5, atol=1e-7)


def test_forward_mode_gradient_matches_the_reverse_mode_one() -> None:
    z = tf.constant(Z)
    tangent = tf.constant(RNG.normal(size=Z.shape).astype(np.float32))
    with tf.autodiff.ForwardAccumulator(z, tangent) as acc:
        loss = cx.ops.softmax_cross_entropy(Y, z, class_weight=[1.0, 2.0, 0.5, 3.0])
    jvp = acc.jvp(loss).numpy()
    grad_rows = _grad(
        lambda v: cx.reference.softmax_cross_entropy(Y, v, class_weight=[1.0, 2.0, 0.5, 3.0]), Z
    ).numpy()
    np.testing.assert_allclose(jvp, (grad_rows * tangent.numpy()).sum(-1), rtol=1e-5, atol=1e-6)


def test_second_order_gradient_eagerly_matches_the_reference_hessian() -> None:
    z = tf.constant(Z)
    with tf.GradientTape() as outer:
        outer.watch(z)
        with tf.GradientTape() as inner:
            inner.watch(z)
            loss = tf.reduce_sum(cx.ops.softmax_cross_entropy(Y, z))
        g = inner.gradient(loss, z)
        s = tf.reduce_sum(g * g)
    got = outer.gradient(s, z).numpy()
    p = tf.nn.softmax(z).numpy()
    g_np = p - np.eye(C)[Y]
    # d/dz of sum_j g_j^2 with dg_j/dz_k = p_j (delta_jk - p_k): 2 (p * g - p * sum(p g))
    want = 2 * (p * g_np - p * (p * g_np).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_second_order_gradient_inside_tf_function_is_a_clear_error() -> None:
    @tf.function
    def first_order(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(cx.ops.softmax_cross_entropy(Y, z))
        return tape.gradient(loss, z)

    z = tf.constant(Z)
    # TensorFlow may build the function's second-order gradient as soon as it is called
    # under the outer tape, or when that tape is asked; either way the error is clear.
    with pytest.raises(NotImplementedError, match="second-order or forward-mode"):
        with tf.GradientTape() as outer:
            outer.watch(z)
            g = first_order(z)
        outer.gradient(g, z)


def test_keras_loss_gradient_of_the_reduced_op_equals_the_reference() -> None:
    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=1.0 - np.eye(C), from_logits=True)
    sw = RNG.uniform(0.5, 2.0, 6).astype(np.float32)
    got = _grad(lambda z: 3.0 * loss(Y, z, sample_weight=sw), Z).numpy()

    def reference(z):
        per = cx.reference.softmax_cross_entropy(Y, z, cost_matrix=1.0 - np.eye(C))
        return 3.0 * tf.reduce_sum(per * sw) / 6

    np.testing.assert_allclose(got, _grad(reference, Z).numpy(), rtol=1e-5, atol=1e-7)
