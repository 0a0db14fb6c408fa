"""The XLA lowering (DESIGN 3, 4): inside ``jit_compile=True`` the fused ops are typed-FFI
custom calls (``costxent_*``) running the same kernels as the TF ops.

Values and gradients are checked against the float64 NumPy oracle and, to the bit, against
the eager fused op (the same kernel: under XLA nothing may change but who calls it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import costxent as cx
import oracle

pytestmark = pytest.mark.skipif(
    cx.ops.implementation() != "fused-cpu", reason="needs the fused op library on the CPU"
)

TESTS = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(cx.__file__).absolute().parent.parent
C = 5
COST = np.array(
    [[0, 1, 2, 3, 1], [2, 0, 5, 1, 1], [1, 1, 0, 2, 2], [4, 1, 1, 0, 3], [1, 2, 3, 1, 0]],
    dtype=np.float64,
)
SIGNED = COST - 1.0
CLASS_WEIGHT = np.array([0.5, 1.0, 2.0, 3.0, 1.5])
POS, NEG = np.linspace(0.5, 3.0, C), np.linspace(1.5, 0.5, C)
TARGETS = [
    "costxent_softmax_loss",
    "costxent_softmax_loss_grad",
    "costxent_softmax_loss_reduced",
    "costxent_sigmoid_loss",
    "costxent_sigmoid_loss_grad",
    "costxent_sigmoid_loss_reduced",
]

# (name, module-level call, oracle call); labels: "ids" sparse with an ignored class
# possible, "soft" dense rows, "multi" multi-label targets.
CASES: list[tuple[str, Any, Any]] = [
    ("plain", lambda m, d, z: m.softmax_cross_entropy(d["ids"], z),
     lambda d, z: oracle.softmax_cross_entropy(d["ids"], z)),
    ("class_weight_dense", lambda m, d, z: m.softmax_cross_entropy(d["soft"], z, class_weight=CLASS_WEIGHT),
     lambda d, z: oracle.softmax_cross_entropy(d["soft"], z, class_weight=CLASS_WEIGHT)),
    ("cost_focal_smooth", lambda m, d, z: m.softmax_cross_entropy(
        d["ids"], z, cost_matrix=COST, focal_gamma=2.0, label_smoothing=0.1),
     lambda d, z: oracle.softmax_cross_entropy(
        d["ids"], z, cost_matrix=COST, focal_gamma=2.0, label_smoothing=0.1)),
    ("ignore_class", lambda m, d, z: m.softmax_cross_entropy(
        d["ids_ignored"], z, class_weight=CLASS_WEIGHT, ignore_class=-1),
     lambda d, z: oracle.softmax_cross_entropy(
        d["ids_ignored"], z, class_weight=CLASS_WEIGHT, ignore_class=-1)),
    ("expected_cost", lambda m, d, z: m.expected_cost(d["ids"], z, SIGNED, ce_weight=0.3,
                                                      label_smoothing=0.05),
     lambda d, z: oracle.expected_cost(d["ids"], z, SIGNED, ce_weight=0.3, label_smoothing=0.05)),
    ("expected_cost_dense", lambda m, d, z: m.expected_cost(d["soft"], z, COST),
     lambda d, z: oracle.expected_cost(d["soft"], z, COST)),
    ("sigmoid", lambda m, d, z: m.sigmoid_cross_entropy(
        d["multi"], z, pos_weight=POS, neg_weight=NEG, focal_gamma=0.5, label_smoothing=0.1),
     lambda d, z: oracle.sigmoid_cross_entropy(
        d["multi"], z, pos_weight=POS, neg_weight=NEG, focal_gamma=0.5, label_smoothing=0.1)),
]

# Loss / gradient tolerance per logits dtype, against the float64 oracle on the same
# (rounded) logits: the loss is float32 arithmetic, a half gradient is rounded once.
TOLERANCE = {
    np.float64: (1e-12, 1e-12),
    np.float32: (2e-5, 2e-5),
    np.float16: (2e-5, 2e-3),
    tf.bfloat16.as_numpy_dtype: (2e-5, 1.6e-2),
}


def _data(n: int, dtype: Any, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, C, size=n).astype(np.int64)
    ignored = ids.astype(np.int32).copy()
    ignored[::3] = -1
    logits = (rng.normal(size=(n, C)) * 3).astype(dtype)
    return {
        "logits": logits,
        "ids": ids,
        "ids_ignored": ignored,
        "soft": rng.dirichlet(np.ones(C), size=n).astype(dtype),
        "multi": (rng.random((n, C)) < 0.3).astype(dtype),
        "upstream_rows": rng.uniform(0.5, 2.0, size=n).astype(np.float64),
        "upstream_elems": rng.uniform(0.5, 2.0, size=(n, C)).astype(np.float64),
    }


def _run(fn: Any, jit: bool, data: dict[str, np.ndarray], z: tf.Tensor) -> tuple[Any, Any]:
    """Loss and the gradient of sum(upstream * loss), through cx.ops, in or out of XLA."""

    def step(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = fn(cx.ops, data, z)
            up = data["upstream_elems" if loss.shape.rank == 2 else "upstream_rows"]
            total = tf.reduce_sum(loss * tf.constant(up, loss.dtype))
        return loss, tape.gradient(total, z)

    if jit:
        step = tf.function(step, jit_compile=True)
    loss, grad = step(z)
    return loss.numpy(), grad.numpy()


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_oracle_and_eager(case: Any, dtype: Any) -> None:
    _, fn, ref = case
    data = _data(37, dtype)
    z = tf.constant(data["logits"])
    loss, grad = _run(fn, True, data, z)
    eager_loss, eager_grad = _run(fn, False, data, z)
    np.testing.assert_array_equal(loss, eager_loss)
    np.testing.assert_array_equal(grad, eager_grad)

    logits64 = data["logits"].astype(np.float64)
    ref_data = {k: (v.astype(np.float64) if v.dtype == dtype else v) for k, v in data.items()}
    want_loss, want_grad = ref(ref_data, logits64)
    up = data["upstream_elems" if want_loss.ndim == 2 else "upstream_rows"]
    want_grad = want_grad * (up if want_loss.ndim == 2 else up[:, None])
    loss_tol, grad_tol = TOLERANCE[dtype]
    assert grad.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=loss_tol, atol=loss_tol)
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=grad_tol, atol=grad_tol)


def _keras_losses() -> list[tuple[Any, str]]:
    return [
        (cx.WeightedCategoricalCrossentropy(cost_matrix=COST, from_logits=True), "ids"),
        (cx.ExpectedCostLoss(SIGNED, ce_weight=0.2, from_logits=True), "ids"),
        (cx.WeightedBinaryCrossentropy(pos_weight=POS, from_logits=True), "multi"),
    ]


def test_hlo_holds_a_custom_call_for_every_op_and_reports_xla() -> None:
    data = _data(29, np.float32)
    z = tf.constant(data["logits"])
    seen = []

    @tf.function(jit_compile=True)
    def step(z: tf.Tensor) -> tuple[tf.Tensor, ...]:
        seen.append(cx.ops.implementation())
        with tf.GradientTape() as tape:
            tape.watch(z)
            per_example = [fn(cx.ops, data, z) for _, fn, _ in CASES]
            reduced = [loss(data[key], z) for loss, key in _keras_losses()]
            total = sum(tf.reduce_sum(x) for x in per_example) + 2.5 * sum(reduced)
        return (*per_example, *reduced, tape.gradient(total, z))

    got = step(z)
    assert set(seen) == {"fused-xla-cpu"}
    hlo = step.experimental_get_compiler_ir(z)(stage="hlo")
    for target in TARGETS:
        assert f'custom_call_target="{target}"' in hlo, target

    # The reduced losses (upstream 2.5: the HLO multiply) against Keras' own math on the oracle.
    want_total_grad = np.zeros((29, C))
    for (_, _, ref), value in zip(CASES, got):
        loss, grad = ref(data, data["logits"].astype(np.float64))
        np.testing.assert_allclose(value, loss, rtol=2e-5, atol=2e-6)
        want_total_grad += grad
    n = 29
    ce, ce_grad = oracle.softmax_cross_entropy(data["ids"], data["logits"].astype(np.float64),
                                               cost_matrix=COST)
    ec, ec_grad = oracle.expected_cost(data["ids"], data["logits"].astype(np.float64), SIGNED,
                                       ce_weight=0.2)
    sg, sg_grad = oracle.sigmoid_cross_entropy(data["multi"], data["logits"].astype(np.float64),
                                               pos_weight=POS)
    wants = [(ce.mean(), ce_grad / n), (ec.mean(), ec_grad / n), (sg.mean(), sg_grad / (n * C))]
    for value, (want, want_grad) in zip(got[len(CASES):-1], wants):
        np.testing.assert_allclose(value, want, rtol=2e-6)
        want_total_grad += 2.5 * want_grad
    np.testing.assert_allclose(got[-1], want_total_grad, rtol=2e-5, atol=2e-6)


def test_function_traced_outside_xla_runs_inside() -> None:
    data = _data(11, np.float32)
    z = tf.constant(data["logits"])
    inner = tf.function(lambda z: cx.ops.softmax_cross_entropy(data["ids"], z, cost_matrix=COST))
    outside = inner(z).numpy()

    @tf.function(jit_compile=True)
    def outer(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = inner(z)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, z)

    loss, grad = outer(z)
    assert "costxent_softmax_loss" in outer.experimental_get_compiler_ir(z)(stage="hlo")
    np.testing.assert_array_equal(loss, outside)
    want, want_grad = oracle.softmax_cross_entropy(data["ids"], data["logits"], cost_matrix=COST)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=2e-6)


def test_empty_batch() -> None:
    z = tf.zeros([0, C])

    @tf.function(jit_compile=True)
    def step(z: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            a = cx.ops.softmax_cross_entropy(tf.zeros([0], tf.int32), z, class_weight=CLASS_WEIGHT)
            b = cx.ops.sigmoid_cross_entropy(tf.zeros([0, C]), z)
            total = tf.reduce_sum(a) + tf.reduce_sum(b)
        return a, b, tape.gradient(total, z)

    a, b, grad = step(z)
    assert a.shape == (0,) and b.shape == (0, C) and grad.shape == (0, C)


def test_bad_labels_are_errors_naming_row_and_value() -> None:
    z = tf.constant(_data(6, np.float32)["logits"])
    ids = tf.constant([0, 1, 2, 9, 1, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels\[3\] = 9"):
        tf.function(lambda z: cx.ops.softmax_cross_entropy(ids, z), jit_compile=True)(z)
    multi = np.zeros((6, C), np.float32)
    multi[4, 2] = 1.5
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"1\.5"):
        tf.function(lambda z: cx.ops.sigmoid_cross_entropy(multi, z), jit_compile=True)(z)


def _tiny_model(c: int) -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(c)])


def test_model_fit_under_jit_compile_runs_the_custom_call() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, C, size=64)
    weights = {}
    for jit in (True, False):
        model = _tiny_model(C)
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit,
                      loss=cx.WeightedCategoricalCrossentropy(cost_matrix=COST, from_logits=True))
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights[jit] = model.get_weights()
        if jit:
            step = tf.function(model.train_step, jit_compile=True)
            data = (tf.constant(x[:16]), tf.constant(y[:16]))
            assert "costxent_softmax_loss_reduced" in step.experimental_get_compiler_ir(data)(
                stage="hlo"
            )
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


LATE = """
import logging, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
tf.constant([1.0]) + 1.0  # TensorFlow sets up its devices: XLA registers its ops now
import costxent as cx
records = []
logging.getLogger("costxent").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r.getMessage())})())
z = tf.constant(np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32))
ids = tf.constant([0, 1, 2, 3, 0, 1, 2])
seen = []
@tf.function(jit_compile=True)
def f(z):
    seen.append(cx.ops.implementation())
    a = cx.ops.softmax_cross_entropy(ids, z, label_smoothing=0.1)
    b = cx.ops.softmax_cross_entropy(ids, z, focal_gamma=1.0)
    return a, b
a, b = f(z)
want = cx.reference.softmax_cross_entropy(ids, z, label_smoothing=0.1)
np.testing.assert_allclose(a, want, rtol=1e-6)
assert "custom_call" not in f.experimental_get_compiler_ir(z)(stage="hlo")
print(seen[0])
print(len(records), records[0] if records else "")
"""


def test_library_loaded_after_xla_registered_falls_back_and_says_so() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), str(TESTS)]))
    out = subprocess.run([sys.executable, "-c", LATE], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    impl, logged = out.stdout.strip().splitlines()[-2:]
    assert impl.startswith("reference: ") and "import costxent" in impl, impl
    assert logged.startswith("1 ") and "import costxent" in logged, logged


@pytest.mark.parametrize("upstream", [1.0, 3.0])
def test_reduced_gradient_scaling_is_folded_when_one(upstream: float) -> None:
    data = _data(64, np.float32)
    z = tf.constant(data["logits"])
    loss = cx.WeightedCategoricalCrossentropy(class_weight=CLASS_WEIGHT, from_logits=True)

    @tf.function(jit_compile=True)
    def grad(z: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = upstream * loss(data["ids"], z)
        return tape.gradient(total, z)

    got = grad(z)
    hlo = grad.experimental_get_compiler_ir(z)(stage="optimized_hlo")
    assert 'custom_call_target="costxent_softmax_loss_reduced"' in hlo
    assert ("multiply" in hlo) == (upstream != 1.0)  # XLA folds a constant 1 away
    _, want = oracle.softmax_cross_entropy(data["ids"], data["logits"], class_weight=CLASS_WEIGHT)
    np.testing.assert_allclose(got, upstream * want / 64, rtol=2e-5, atol=2e-7)
