"""costxent.ops and costxent.reference against the float64 NumPy oracle (tests/oracle.py).

Values and gradients (through tf.GradientTape with a random upstream gradient, so the
registered gradient's ``backprop * grad_loss`` is checked too) across weighting modes, focal
modulation, label smoothing, ignore_class, label kinds, leading shapes and dtypes; a few
``tf.test.compute_gradient`` checks; TF's own ops where the maths coincides; XLA; and
hypothesis property tests over random shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import costxent as cx
import oracle

C = 5
CLASS_WEIGHT = [0.5, 2.0, 1.0, 3.0, 0.25]
CLASS_WEIGHT_DICT = {0: 2.0, 3: 0.5}
COST = np.array(
    [
        [0.0, 1.0, 2.0, 1.0, 4.0],
        [3.0, 0.0, 7.0, 1.0, 1.0],
        [1.0, 1.0, 0.0, 2.0, 0.5],
        [2.0, 5.0, 1.0, 0.0, 1.0],
        [1.0, 1.0, 3.0, 2.0, 0.0],
    ]
)
SIGNED_COST = COST - 1.5  # negative entries are rewards, allowed in expected_cost
IMPLS = ["ops", "reference"]
WEIGHT_MODES = {
    "none": {},
    "class": {"class_weight": CLASS_WEIGHT},
    "class_dict": {"class_weight": CLASS_WEIGHT_DICT},
    "cost": {"cost_matrix": COST},
}
LABEL_KINDS = ["int32", "int64", "int_col", "onehot", "soft", "ignore"]
IGNORE = -1

# (loss rtol, grad rtol, grad atol) per logits dtype; the loss is float32 for the half types.
TOLERANCE = {
    tf.float16: (1e-4, 4e-3, 2e-3),
    tf.bfloat16: (1e-4, 1.6e-2, 1e-2),
    tf.float32: (2e-5, 2e-5, 2e-6),
    tf.float64: (1e-9, 1e-9, 1e-12),
}


def _impl(name: str) -> ModuleType:
    return getattr(cx, name)


def _labels(kind: str, lead: tuple[int, ...], num_classes: int, rng: np.random.Generator) -> Any:
    """Labels of one kind: sparse int32/int64, sparse ``[..., 1]``, one-hot, soft, or sparse
    with some entries equal to ``IGNORE``."""
    ids = np.asarray(rng.integers(0, num_classes, size=lead))
    if kind == "int32":
        return ids.astype(np.int32)
    if kind == "int64":
        return ids.astype(np.int64)
    if kind == "int_col":
        return ids[..., None].astype(np.int32)
    if kind == "onehot":
        return np.eye(num_classes)[ids]
    if kind == "soft":
        raw = rng.random(lead + (num_classes,))
        return raw / raw.sum(axis=-1, keepdims=True)
    ids = ids.astype(np.int32)
    ids.reshape(-1)[::3] = IGNORE
    return ids


def _quantized(x: np.ndarray, dtype: tf.DType) -> np.ndarray:
    """The float64 values that ``x`` takes once stored in ``dtype``."""
    return tf.cast(tf.constant(x, dtype), tf.float64).numpy()


def _loss_and_grad(
    fn: Callable[..., tf.Tensor], labels: Any, logits: np.ndarray, dtype: tf.DType, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tf.DType, tf.DType]:
    """Loss, gradient of ``sum(r * loss)`` for a random upstream ``r``, ``r``, and dtypes."""
    z = tf.constant(logits, dtype)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = fn(labels, z, **kwargs)
        r = tf.constant(np.random.default_rng(7).uniform(0.5, 2.0, loss.shape), loss.dtype)
        total = tf.reduce_sum(loss * r)
    grad = tape.gradient(total, z)
    return (
        loss.numpy().astype(np.float64),
        tf.cast(grad, tf.float64).numpy(),
        r.numpy().astype(np.float64),
        loss.dtype,
        grad.dtype,
    )


def _check(
    got: tuple[np.ndarray, np.ndarray, np.ndarray, tf.DType, tf.DType],
    expected: tuple[np.ndarray, np.ndarray],
    dtype: tf.DType,
    per_row: bool,
) -> None:
    """Compare with the oracle: values, upstream-scaled gradient, output dtypes."""
    loss, grad, r, loss_dtype, grad_dtype = got
    want_loss, want_grad = expected
    loss_rtol, grad_rtol, grad_atol = TOLERANCE[dtype]
    assert loss_dtype == (tf.float64 if dtype == tf.float64 else tf.float32)
    assert grad_dtype == dtype
    assert loss.shape == want_loss.shape
    np.testing.assert_allclose(loss, want_loss, rtol=loss_rtol, atol=loss_rtol)
    scale = r[..., None] if per_row else r
    np.testing.assert_allclose(grad, scale * want_grad, rtol=grad_rtol, atol=grad_atol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", list(WEIGHT_MODES))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_softmax_cross_entropy_matches_oracle(
    impl: str, mode: str, gamma: float, eps: float, kind: str
) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(9, C)) * 2
    labels = _labels(kind, (9,), C, rng)
    kwargs = dict(WEIGHT_MODES[mode], focal_gamma=gamma, label_smoothing=eps)
    if kind == "ignore":
        kwargs["ignore_class"] = IGNORE
    got = _loss_and_grad(_impl(impl).softmax_cross_entropy, labels, logits, tf.float32, **kwargs)
    _check(got, oracle.softmax_cross_entropy(labels, logits, **kwargs), tf.float32, per_row=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_expected_cost_matches_oracle(impl: str, ce_weight: float, eps: float, kind: str) -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(9, C)) * 2
    labels = _labels(kind, (9,), C, rng)
    kwargs: dict[str, Any] = {"ce_weight": ce_weight, "label_smoothing": eps}
    if kind == "ignore":
        kwargs["ignore_class"] = IGNORE
    fn = _impl(impl).expected_cost
    got = _loss_and_grad(
        lambda y, z, **kw: fn(y, z, SIGNED_COST, **kw), labels, logits, tf.float32, **kwargs
    )
    _check(
        got, oracle.expected_cost(labels, logits, SIGNED_COST, **kwargs), tf.float32, per_row=True
    )


SIGMOID_WEIGHTS = {
    "none": {},
    "pos": {"pos_weight": 3.0},
    "pos_neg": {"pos_weight": 0.25, "neg_weight": 0.75},
    "vectors": {"pos_weight": [1.0, 27.0, 2.0, 0.5], "neg_weight": [1.0, 0.5, 2.0, 1.5]},
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", list(SIGMOID_WEIGHTS))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_cross_entropy_matches_oracle(
    impl: str, mode: str, gamma: float, eps: float, soft: bool
) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 4)) * 3
    labels = rng.random((6, 4)) if soft else (rng.random((6, 4)) < 0.3).astype(np.float32)
    kwargs = dict(SIGMOID_WEIGHTS[mode], focal_gamma=gamma, label_smoothing=eps)
    got = _loss_and_grad(_impl(impl).sigmoid_cross_entropy, labels, logits, tf.float32, **kwargs)
    _check(got, oracle.sigmoid_cross_entropy(labels, logits, **kwargs), tf.float32, per_row=False)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lead", [(), (0,), (2, 3), (2, 1, 4)])
@pytest.mark.parametrize("kind", ["int32", "int_col", "soft", "ignore"])
def test_leading_shapes(impl: str, lead: tuple[int, ...], kind: str) -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=lead + (C,))
    labels = _labels(kind, lead, C, rng)
    kwargs: dict[str, Any] = {"cost_matrix": COST, "focal_gamma": 0.5}
    if kind == "ignore":
        kwargs["ignore_class"] = IGNORE
    got = _loss_and_grad(_impl(impl).softmax_cross_entropy, labels, logits, tf.float32, **kwargs)
    _check(got, oracle.softmax_cross_entropy(labels, logits, **kwargs), tf.float32, per_row=True)
    sig_labels = rng.random(lead + (C,))
    got = _loss_and_grad(
        _impl(impl).sigmoid_cross_entropy, sig_labels, logits, tf.float32, pos_weight=2.0
    )
    _check(
        got,
        oracle.sigmoid_cross_entropy(sig_labels, logits, pos_weight=2.0),
        tf.float32,
        per_row=False,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64], ids=lambda d: d.name
)
def test_dtypes(impl: str, dtype: tf.DType) -> None:
    rng = np.random.default_rng(5)
    logits = _quantized(rng.normal(size=(2, 3, 7)) * 2, dtype)
    ids = _labels("int64", (2, 3), 7, rng)
    cost = rng.random((7, 7))
    cw = rng.random(7) + 0.5
    module = _impl(impl)

    kwargs = {"cost_matrix": cost, "focal_gamma": 0.5, "label_smoothing": 0.1}
    got = _loss_and_grad(module.softmax_cross_entropy, ids, logits, dtype, **kwargs)
    _check(got, oracle.softmax_cross_entropy(ids, logits, **kwargs), dtype, per_row=True)

    kwargs = {"class_weight": cw, "focal_gamma": 2.0}
    got = _loss_and_grad(module.softmax_cross_entropy, ids, logits, dtype, **kwargs)
    _check(got, oracle.softmax_cross_entropy(ids, logits, **kwargs), dtype, per_row=True)

    got = _loss_and_grad(
        lambda y, z, **kw: module.expected_cost(y, z, cost, **kw), ids, logits, dtype, ce_weight=0.5
    )
    _check(got, oracle.expected_cost(ids, logits, cost, ce_weight=0.5), dtype, per_row=True)

    # Dense labels travel in the logits' dtype (as in tf.nn.softmax_cross_entropy_with_logits),
    # so the oracle sees them quantized the same way.
    soft = _quantized(_labels("soft", (2, 3), 7, rng), dtype)
    kwargs = {"class_weight": cw, "label_smoothing": 0.1}
    got = _loss_and_grad(module.softmax_cross_entropy, soft, logits, dtype, **kwargs)
    _check(got, oracle.softmax_cross_entropy(soft, logits, **kwargs), dtype, per_row=True)

    y = _quantized(rng.random(logits.shape), dtype)
    kwargs = {"pos_weight": cw, "neg_weight": 0.5, "focal_gamma": 2.0, "label_smoothing": 0.1}
    got = _loss_and_grad(module.sigmoid_cross_entropy, y, logits, dtype, **kwargs)
    _check(got, oracle.sigmoid_cross_entropy(y, logits, **kwargs), dtype, per_row=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits_stay_finite(impl: str) -> None:
    module = _impl(impl)
    for dtype, big in [(tf.float32, 1e4), (tf.float16, 6e4)]:
        logits = _quantized(np.array([[big, 0.0, -big], [-big, big, 0.0], [0.0, -big, big]]), dtype)
        labels = np.array([0, 2, 2], dtype=np.int32)
        for gamma in (0.0, 0.5):
            got = _loss_and_grad(
                module.softmax_cross_entropy, labels, logits, dtype, focal_gamma=gamma
            )
            assert np.all(np.isfinite(got[0])) and np.all(np.isfinite(got[1]))
            want = oracle.softmax_cross_entropy(labels, logits, focal_gamma=gamma)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        y = np.array([[1.0, 0.0, 1.0]] * 3)
        got = _loss_and_grad(module.sigmoid_cross_entropy, y, logits, dtype, focal_gamma=0.5)
        assert np.all(np.isfinite(got[0])) and np.all(np.isfinite(got[1]))
        np.testing.assert_allclose(
            got[0], oracle.sigmoid_cross_entropy(y, logits, focal_gamma=0.5)[0], rtol=1e-5
        )


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_logits_give_nan_loss_for_that_row(impl: str) -> None:
    logits = np.array([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0], [np.inf, 0.0, 0.0]], dtype=np.float32)
    loss = (
        _impl(impl)
        .softmax_cross_entropy(np.array([0, 1, 0]), logits, cost_matrix=np.ones((3, 3)))
        .numpy()
    )
    assert np.isnan(loss[0]) and np.isnan(loss[2])
    np.testing.assert_allclose(
        loss[1], oracle.softmax_cross_entropy(np.array([1]), logits[1:2])[0][0], rtol=1e-6
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_compute_gradient_agrees_with_numerical_jacobian(impl: str) -> None:
    module = _impl(impl)
    rng = np.random.default_rng(6)
    z = tf.constant(rng.normal(size=(3, 4)), tf.float64)
    ids = np.array([0, 3, 1])
    y = rng.random((3, 4))
    cost = rng.random((4, 4))
    functions = [
        lambda x: module.softmax_cross_entropy(
            ids, x, class_weight=[1.0, 2.0, 0.5, 3.0], focal_gamma=0.5
        ),
        lambda x: module.softmax_cross_entropy(
            y / y.sum(-1, keepdims=True), x, label_smoothing=0.2
        ),
        lambda x: module.expected_cost(ids, x, cost, ce_weight=0.3),
        lambda x: module.sigmoid_cross_entropy(
            y, x, pos_weight=[1.0, 2.0, 3.0, 4.0], focal_gamma=2.0
        ),
    ]
    for fn in functions:
        theoretical, numerical = tf.test.compute_gradient(fn, [z], delta=1e-6)
        np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-6)


def test_unweighted_matches_tf_nn() -> None:
    rng = np.random.default_rng(8)
    z = tf.constant(rng.normal(size=(16, 10)), tf.float32)
    ids = tf.constant(rng.integers(0, 10, size=16), tf.int32)
    soft = tf.nn.softmax(tf.constant(rng.normal(size=(16, 10)), tf.float32))
    cases = [
        (ids, tf.nn.sparse_softmax_cross_entropy_with_logits),
        (soft, tf.nn.softmax_cross_entropy_with_logits),
    ]
    for labels, tf_fn in cases:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z)
            ours = cx.ops.softmax_cross_entropy(labels, z)
            theirs = tf_fn(labels=labels, logits=z)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            tape.gradient(ours, z), tape.gradient(theirs, z), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("pos_weight", [1.0, 27.0, [0.5, 1.0, 3.0, 9.0]])
def test_pos_weight_matches_weighted_cross_entropy_with_logits(pos_weight: Any) -> None:
    rng = np.random.default_rng(9)
    z = tf.constant(rng.normal(size=(8, 4)) * 3, tf.float32)
    y = tf.constant(rng.random((8, 4)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        ours = cx.ops.sigmoid_cross_entropy(y, z, pos_weight=pos_weight)
        theirs = tf.nn.weighted_cross_entropy_with_logits(y, z, tf.constant(pos_weight, tf.float32))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(ours, z), tape.gradient(theirs, z), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_under_xla(impl: str) -> None:
    module = _impl(impl)
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(12, C)).astype(np.float32)
    ids = _labels("ignore", (12,), C, rng)
    y = rng.random((12, C)).astype(np.float32)

    @tf.function(jit_compile=True)
    def run(z: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            a = module.softmax_cross_entropy(
                ids, z, cost_matrix=COST, focal_gamma=0.5, ignore_class=IGNORE
            )
            b = module.expected_cost(ids, z, SIGNED_COST, ce_weight=0.5, ignore_class=IGNORE)
            c = module.sigmoid_cross_entropy(y, z, pos_weight=2.0, focal_gamma=2.0)
            total = tf.reduce_sum(a) + tf.reduce_sum(b) + tf.reduce_sum(c)
        return a, b, c, tape.gradient(total, z)

    a, b, c, grad = run(tf.constant(logits))
    wa, ga = oracle.softmax_cross_entropy(
        ids, logits, cost_matrix=COST, focal_gamma=0.5, ignore_class=IGNORE
    )
    wb, gb = oracle.expected_cost(ids, logits, SIGNED_COST, ce_weight=0.5, ignore_class=IGNORE)
    wc, gc = oracle.sigmoid_cross_entropy(y, logits, pos_weight=2.0, focal_gamma=2.0)
    for got, want in [(a, wa), (b, wb), (c, wc), (grad, ga + gb + gc)]:
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def _random_logits(data: st.DataObject, n: int, c: int) -> tuple[np.ndarray, np.random.Generator]:
    """float32-representable [n, c] logits at a drawn scale, and a seeded generator."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    scale = data.draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]), label="scale")
    return (rng.normal(size=(n, c)) * scale).astype(np.float32).astype(np.float64), rng


def _random_softmax_problem(
    data: st.DataObject, n: int, c: int
) -> tuple[np.ndarray, Any, np.random.Generator, dict[str, Any]]:
    """Logits, labels of a drawn kind, the generator, and the smoothing/ignore_class kwargs."""
    logits, rng = _random_logits(data, n, c)
    kind = data.draw(st.sampled_from(LABEL_KINDS), label="labels")
    kwargs: dict[str, Any] = {
        "label_smoothing": data.draw(st.sampled_from([0.0, 0.1]), label="eps"),
        "ignore_class": IGNORE if kind == "ignore" else None,
    }
    return logits, _labels(kind, (n,), c, rng), rng, kwargs


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 500), c=st.integers(2, 500), data=st.data())
def test_property_softmax_cross_entropy(n: int, c: int, data: st.DataObject) -> None:
    logits, labels, rng, kwargs = _random_softmax_problem(data, n, c)
    kwargs["focal_gamma"] = data.draw(st.sampled_from([0.0, 0.5, 2.0]), label="gamma")
    weighting = data.draw(st.sampled_from(["none", "class", "cost"]), label="weighting")
    if weighting == "class":
        kwargs["class_weight"] = rng.random(c) + 0.1
    elif weighting == "cost":
        kwargs["cost_matrix"] = rng.random((c, c)) * 2
    got = _loss_and_grad(cx.ops.softmax_cross_entropy, labels, logits, tf.float32, **kwargs)
    _check_property(got, oracle.softmax_cross_entropy(labels, logits, **kwargs), per_row=True)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 500), c=st.integers(2, 500), data=st.data())
def test_property_expected_cost(n: int, c: int, data: st.DataObject) -> None:
    logits, labels, rng, kwargs = _random_softmax_problem(data, n, c)
    kwargs["ce_weight"] = data.draw(st.sampled_from([0.0, 0.3]), label="ce_weight")
    cost = rng.normal(size=(c, c))
    got = _loss_and_grad(
        lambda y, z, **kw: cx.ops.expected_cost(y, z, cost, **kw),
        labels,
        logits,
        tf.float32,
        **kwargs,
    )
    _check_property(got, oracle.expected_cost(labels, logits, cost, **kwargs), per_row=True)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 500), c=st.integers(1, 500), data=st.data())
def test_property_sigmoid_cross_entropy(n: int, c: int, data: st.DataObject) -> None:
    logits, rng = _random_logits(data, n, c)
    labels = (
        rng.random((n, c))
        if data.draw(st.booleans(), label="soft")
        else (rng.random((n, c)) < 0.1) * 1.0
    )
    kwargs: dict[str, Any] = {
        "focal_gamma": data.draw(st.sampled_from([0.0, 0.5, 2.0]), label="gamma"),
        "label_smoothing": data.draw(st.sampled_from([0.0, 0.1]), label="eps"),
    }
    weights = data.draw(st.sampled_from(["none", "scalar", "vector"]), label="weights")
    if weights == "scalar":
        kwargs.update(pos_weight=27.0, neg_weight=0.5)
    elif weights == "vector":
        kwargs.update(pos_weight=rng.random(c) * 10, neg_weight=rng.random(c) + 0.5)
    got = _loss_and_grad(cx.ops.sigmoid_cross_entropy, labels, logits, tf.float32, **kwargs)
    _check_property(got, oracle.sigmoid_cross_entropy(labels, logits, **kwargs), per_row=False)


def _check_property(
    got: tuple[np.ndarray, np.ndarray, np.ndarray, tf.DType, tf.DType],
    expected: tuple[np.ndarray, np.ndarray],
    per_row: bool,
) -> None:
    """float32 comparison whose absolute tolerance scales with the loss magnitude (large
    logits make ``lse`` large, so float32 rounding of ``z - lse`` grows with it)."""
    loss, grad, r, _, _ = got
    want_loss, want_grad = expected
    assert loss.shape == want_loss.shape and grad.shape == want_grad.shape
    scale = float(np.max(np.abs(want_loss), initial=1.0))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-4, atol=1e-5 * scale)
    upstream = r[..., None] if per_row else r
    np.testing.assert_allclose(grad, upstream * want_grad, rtol=1e-4, atol=1e-5 * scale)
