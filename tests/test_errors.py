"""Bad input and edge cases (DESIGN 2.4, 2.5) for costxent.ops and costxent.reference.

Every bad argument raises the right exception type with a message that names the argument
and the expected and actual value or shape; out-of-range labels follow the per-path rules
(fused CPU op: InvalidArgumentError naming row and value; reference: NaN for that row or
element; ``validate=True``: an error on both). Edge cases: empty batches (values and
gradients, any leading shape), NaN/Inf logits (NaN for exactly that row), extreme logits in
float32/float16 against the float64 oracle, and Keras-style float class ids.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

import costxent as cx
import oracle

IMPLS = ["ops", "reference"]
N, C = 5, 4
Z = np.random.default_rng(0).normal(size=(N, C)).astype(np.float32)
Y = np.array([0, 1, 2, 3, 1])
MULTI_HOT = np.eye(C)[Y]
COST = np.arange(C * C, dtype=np.float64).reshape(C, C) % 5
BIG_ID = 1234567  # an out-of-range class id that cannot appear in a message by accident


def _impl(name: str) -> ModuleType:
    return getattr(cx, name)


def _shape(*dims: int) -> str:
    """A regex for a shape printed as a list ``[3, 4]`` or as a TensorShape ``(3, 4)``."""
    inner = ", ".join(str(d) for d in dims)
    return rf"[\[(]{inner},?[\])]"


def _softmax(m: ModuleType, labels: Any = Y, logits: Any = Z, **kw: Any) -> tf.Tensor:
    return m.softmax_cross_entropy(labels, logits, **kw)


def _expected(m: ModuleType, labels: Any = Y, logits: Any = Z, cost: Any = COST, **kw: Any):
    return m.expected_cost(labels, logits, cost, **kw)


def _sigmoid(m: ModuleType, labels: Any = MULTI_HOT, logits: Any = Z, **kw: Any) -> tf.Tensor:
    return m.sigmoid_cross_entropy(labels, logits, **kw)


# (call of the module, exception type, message regex, test id)
# fmt: off
BAD_ARGUMENTS = [
    # cost matrix that is not C x C
    (lambda m: _softmax(m, cost_matrix=np.ones((3, 4))), ValueError,
     rf"cost_matrix must have shape \[4, 4\], got shape {_shape(3, 4)}", "cost_3x4"),
    (lambda m: _softmax(m, cost_matrix=np.ones(4)), ValueError,
     rf"cost_matrix must have shape \[4, 4\], got shape {_shape(4)}", "cost_vector"),
    (lambda m: _softmax(m, cost_matrix=tf.ones((5, 5))), ValueError,
     rf"cost_matrix must have shape \[4, 4\], got shape {_shape(5, 5)}", "cost_tensor_5x5"),
    (lambda m: _expected(m, cost=np.ones((3, 3))), ValueError,
     rf"cost_matrix must have shape \[4, 4\], got shape {_shape(3, 3)}", "expected_cost_3x3"),
    # class weights of the wrong length, or a dict key outside [0, C)
    (lambda m: _softmax(m, class_weight=[1.0, 2.0, 3.0]), ValueError,
     rf"class_weight must have shape \[4\], got shape {_shape(3)}", "class_weight_len3"),
    (lambda m: _softmax(m, class_weight=tf.ones(5)), ValueError,
     rf"class_weight must have shape \[4\], got shape {_shape(5)}", "class_weight_tensor_len5"),
    (lambda m: _softmax(m, class_weight={4: 2.0}), ValueError,
     r"class_weight has key 4, outside the valid class range \[0, 4\)", "class_weight_key_C"),
    (lambda m: _softmax(m, class_weight={-1: 2.0}), ValueError,
     r"class_weight has key -1, outside the valid class range \[0, 4\)", "class_weight_key_neg"),
    (lambda m: _sigmoid(m, pos_weight=[1.0, 2.0, 3.0]), ValueError,
     rf"pos_weight must be a scalar or have shape \[4\], got shape {_shape(3)}", "pos_weight_len3"),
    # non-finite weights: the message names the bad value and where it is
    (lambda m: _softmax(m, class_weight=[1.0, np.nan, 1.0, 1.0]), ValueError,
     r"class_weight must be finite, got nan at index \(1,\)", "class_weight_nan"),
    (lambda m: _softmax(m, class_weight=tf.constant([1.0, 1.0, 1.0, np.inf])), ValueError,
     r"class_weight must be finite, got inf at index \(3,\)", "class_weight_tensor_inf"),
    (lambda m: _softmax(m, class_weight={2: -np.inf}), ValueError,
     r"class_weight must be finite, got -inf at index \(2,\)", "class_weight_dict_inf"),
    (lambda m: _softmax(m, cost_matrix=np.where(np.eye(C) > 0, 0.0, np.inf)), ValueError,
     r"cost_matrix must be finite, got inf at index \(0, 1\)", "cost_matrix_inf"),
    (lambda m: _expected(m, cost=np.where(np.eye(C) > 0, np.nan, 1.0)), ValueError,
     r"cost_matrix must be finite, got nan at index \(0, 0\)", "expected_cost_nan"),
    (lambda m: _sigmoid(m, pos_weight=np.nan), ValueError,
     r"pos_weight must be finite, got nan at index \(0,\)", "pos_weight_nan"),
    (lambda m: _sigmoid(m, neg_weight=[1.0, 1.0, np.inf, 1.0]), ValueError,
     r"neg_weight must be finite, got inf at index \(2,\)", "neg_weight_inf"),
    # conflicting or missing weights
    (lambda m: _softmax(m, class_weight=[1.0] * C, cost_matrix=COST), ValueError,
     r"class_weight or cost_matrix, not both", "both_weights"),
    (lambda m: _expected(m, cost=None), ValueError,
     r"cost_matrix is required for expected_cost, got None", "expected_cost_no_matrix"),
    # C < 2 for the softmax losses
    (lambda m: _softmax(m, np.zeros(N, np.int32), Z[:, :1]), ValueError,
     rf"at least 2 classes .*got shape {_shape(5, 1)} \(C = 1\)", "softmax_C1"),
    (lambda m: _expected(m, np.zeros(N, np.int32), Z[:, :1], np.zeros((1, 1))), ValueError,
     rf"at least 2 classes .*got shape {_shape(5, 1)} \(C = 1\)", "expected_cost_C1"),
    # label / logit shape mismatches, sparse and dense
    (lambda m: _softmax(m, np.zeros(6, np.int32)), ValueError,
     rf"labels' leading shape {_shape(6)} does not match logits' {_shape(5)}", "sparse_len"),
    (lambda m: _softmax(m, np.zeros((5, 2), np.int32)), ValueError,
     rf"labels must have shape {_shape(5)} .*{_shape(5, 4)} .*got shape {_shape(5, 2)}",
     "sparse_rank"),
    (lambda m: _softmax(m, np.zeros((2, 3), np.int32), Z.reshape(5, 1, 4)), ValueError,
     rf"labels' leading shape {_shape(2, 3)} does not match logits' {_shape(5, 1)}",
     "sparse_lead"),
    (lambda m: _softmax(m, np.zeros((5, 3))), ValueError,
     rf"labels must have shape .*got shape {_shape(5, 3)}", "dense_classes"),
    (lambda m: _expected(m, np.zeros((6, 4))), ValueError,
     rf"labels' leading shape {_shape(6)} does not match logits' {_shape(5)}", "dense_rows"),
    (lambda m: _sigmoid(m, np.zeros((5, 3))), ValueError,
     rf"labels must have the logits' shape {_shape(5, 4)}, got {_shape(5, 3)}", "sigmoid_shape"),
    # ignore_class needs sparse labels
    (lambda m: _softmax(m, MULTI_HOT, ignore_class=0), ValueError,
     rf"ignore_class needs sparse labels .*got dense labels of shape {_shape(5, 4)}",
     "ignore_dense"),
    (lambda m: _expected(m, MULTI_HOT, ignore_class=-1), ValueError,
     rf"ignore_class needs sparse labels .*got dense labels of shape {_shape(5, 4)}",
     "ignore_dense_expected_cost"),
    # scalar options out of range
    (lambda m: _softmax(m, label_smoothing=1.5), ValueError,
     r"label_smoothing must be .*\[0\.0, 1\.0\], got 1\.5", "smoothing_above_1"),
    (lambda m: _expected(m, label_smoothing=-0.1), ValueError,
     r"label_smoothing must be .*\[0\.0, 1\.0\], got -0\.1", "smoothing_negative"),
    (lambda m: _sigmoid(m, label_smoothing=float("nan")), ValueError,
     r"label_smoothing must be .*\[0\.0, 1\.0\], got nan", "smoothing_nan"),
    (lambda m: _softmax(m, focal_gamma=-1.0), ValueError,
     r"focal_gamma must be .*\[0\.0, inf\], got -1\.0", "gamma_negative"),
    (lambda m: _sigmoid(m, focal_gamma=-0.5), ValueError,
     r"focal_gamma must be .*\[0\.0, inf\], got -0\.5", "sigmoid_gamma_negative"),
    # infinite options: the fused kernel rejects them, so the Python layer must too
    (lambda m: _softmax(m, focal_gamma=float("inf")), ValueError,
     r"focal_gamma must be a finite .*got inf", "gamma_inf"),
    (lambda m: _expected(m, ce_weight=float("inf")), ValueError,
     r"ce_weight must be a finite .*got inf", "ce_weight_inf"),
    (lambda m: _softmax(m, focal_gamma=tf.constant(2.0)), TypeError,
     r"focal_gamma must be a real number, got EagerTensor", "gamma_tensor"),
    # integer logits
    (lambda m: _softmax(m, logits=np.ones((N, C), np.int32)), TypeError,
     r"logits must be float16, bfloat16, float32 or float64, got dtype int32", "int32_logits"),
    (lambda m: _expected(m, logits=np.ones((N, C), np.int64)), TypeError,
     r"logits must be .*float64, got dtype int64", "int64_logits_expected_cost"),
    (lambda m: _sigmoid(m, logits=np.ones((N, C), np.int32)), TypeError,
     r"logits must be .*float64, got dtype int32", "int32_logits_sigmoid"),
    (lambda m: _softmax(m, 0, 1.0), ValueError,
     r"logits must have a class axis \(rank >= 1\), got shape \(\)", "scalar_logits"),
]
# fmt: on


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "call, error, pattern", [pytest.param(*case[:3], id=case[3]) for case in BAD_ARGUMENTS]
)
def test_bad_argument_is_named_with_expected_and_actual(
    impl: str, call: Callable[[ModuleType], tf.Tensor], error: type, pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call(_impl(impl))


def _bad_labels(n: int, bad_rows: dict[int, int], dtype: Any = np.int64) -> np.ndarray:
    labels = (np.arange(n) % C).astype(dtype)
    for row, value in bad_rows.items():
        labels[row] = value
    return labels


# name -> (call of (module, labels, logits, **kwargs), oracle of (labels, logits, **kwargs))
SPARSE_FUNCTIONS = {
    "softmax": (
        lambda m, y, z, **kw: m.softmax_cross_entropy(y, z, cost_matrix=COST, **kw),
        lambda y, z, **kw: oracle.softmax_cross_entropy(y, z, cost_matrix=COST, **kw),
    ),
    "expected_cost": (
        lambda m, y, z, **kw: m.expected_cost(y, z, COST, ce_weight=0.5, **kw),
        lambda y, z, **kw: oracle.expected_cost(y, z, COST, ce_weight=0.5, **kw),
    ),
}


@pytest.mark.parametrize("fn", list(SPARSE_FUNCTIONS))
@pytest.mark.parametrize(
    "n, bad_rows, graph",
    [
        (N, {3: 7}, False),
        (N, {2: -2, 4: 9}, False),
        (N, {1: 2**40}, False),
        (3001, {2500: -5, 2999: 4}, False),  # sharded over threads: still the first bad row
        (N, {3: 7}, True),
    ],
    ids=["above", "negative_first", "int64_value", "large_batch", "tf_function"],
)
def test_fused_cpu_out_of_range_label_names_row_and_value(
    fn: str, n: int, bad_rows: dict[int, int], graph: bool
) -> None:
    labels = _bad_labels(n, bad_rows)
    logits = np.random.default_rng(1).normal(size=(n, C)).astype(np.float32)
    call = lambda z: SPARSE_FUNCTIONS[fn][0](cx.ops, labels, z)  # noqa: E731
    row = min(bad_rows)
    pattern = rf"labels\[{row}\] = {bad_rows[row]} is outside the valid class range \[0, 4\)"
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        (tf.function(call) if graph else call)(tf.constant(logits))


def _training_step(loss: Any, compile: str) -> Callable[..., Any]:
    """A Keras loss's value and d loss / d logits under a tape: eagerly, in tf.function or
    under jit_compile."""

    def step(y: tf.Tensor, z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = loss(y, z)
        return value, tape.gradient(value, z)

    return step if compile == "eager" else tf.function(step, jit_compile=compile == "jit")


@pytest.mark.parametrize("compile", ["eager", "tf_function", "jit"])
@pytest.mark.parametrize(
    "n, bad_rows",
    [(2, {1: 9}), (5000, {2500: 7, 4000: -3}), (3001, {2999: 4})],
    ids=["second_of_two", "middle_of_many", "last_block"],
)
def test_out_of_range_label_in_a_training_step_names_row_and_value(
    compile: str, n: int, bad_rows: dict[int, int]
) -> None:
    # The Keras loss under a tape takes the reduced op, whose rows are sharded by reduction
    # blocks: a bad row past the number of blocks must still be reported, never a loss and
    # a gradient computed from the rows before it.
    labels = tf.constant(_bad_labels(n, bad_rows, np.int32))
    logits = tf.constant(np.random.default_rng(2).normal(size=(n, C)).astype(np.float32))
    run = _training_step(cx.WeightedCategoricalCrossentropy(from_logits=True), compile)
    row = min(bad_rows)
    pattern = rf"labels\[{row}\] = {bad_rows[row]} is outside the valid class range \[0, 4\)"
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        run(labels, logits)


@pytest.mark.parametrize("compile", ["eager", "tf_function", "jit"])
@pytest.mark.parametrize("first", [(1, 2), (2500, 3), (4999, 0)])
def test_sigmoid_label_outside_unit_interval_in_a_training_step_names_element(
    compile: str, first: tuple[int, int]
) -> None:
    rng = np.random.default_rng(3)
    labels = (rng.uniform(size=(5000, C)) < 0.3).astype(np.float32)
    labels[first] = 2.0
    logits = tf.constant(rng.normal(size=(5000, C)).astype(np.float32))
    run = _training_step(cx.WeightedBinaryCrossentropy(pos_weight=2.0, from_logits=True), compile)
    message = rf"labels\[{first[0]}, {first[1]}\] = 2 is outside \[0, 1\]"
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=message):
        run(tf.constant(labels), logits)


def test_fused_cpu_ignore_class_is_exempt_but_other_negatives_are_not() -> None:
    labels = np.array([0, -1, 2, -2, 1])
    with (
        tf.device("/CPU:0"),
        pytest.raises(tf.errors.InvalidArgumentError, match=r"labels\[3\] = -2 is outside"),
    ):
        cx.ops.softmax_cross_entropy(labels, Z, ignore_class=-1)
    # An ignore_class outside [0, C) is a valid choice; its rows are skipped, not rejected.
    labels = np.array([0, 7, 2, 3, 7])
    got = cx.ops.softmax_cross_entropy(labels, Z, ignore_class=7, validate=True)
    want, _ = oracle.softmax_cross_entropy(labels, Z, ignore_class=7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", list(SPARSE_FUNCTIONS))
def test_reference_out_of_range_label_gives_nan_for_that_row_only(fn: str) -> None:
    labels = _bad_labels(N, {1: BIG_ID, 3: -3})
    call, oracle_call = SPARSE_FUNCTIONS[fn]
    loss = call(cx.reference, labels, Z).numpy()
    assert np.isnan(loss[[1, 3]]).all()
    good = [0, 2, 4]
    want, _ = oracle_call(labels[good], Z[good])
    np.testing.assert_allclose(loss[good], want, rtol=1e-5, atol=1e-6)


LABEL_RANGE_MESSAGE = r"labels must be class ids in \[0, 4\)"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fn", list(SPARSE_FUNCTIONS))
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_validate_rejects_out_of_range_labels_on_both_paths(
    impl: str, fn: str, graph: bool
) -> None:
    module = _impl(impl)
    for bad_rows in ({3: 7}, {0: -1}):
        labels = tf.constant(_bad_labels(N, bad_rows, np.int32))
        call = lambda y: SPARSE_FUNCTIONS[fn][0](module, y, Z, validate=True)  # noqa: E731
        with pytest.raises(tf.errors.InvalidArgumentError, match=LABEL_RANGE_MESSAGE):
            (tf.function(call) if graph else call)(labels)


@pytest.mark.parametrize("impl", IMPLS)
def test_validate_message_names_the_offending_value(impl: str) -> None:
    labels = _bad_labels(N, {3: BIG_ID})
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(BIG_ID)):
        _impl(impl).softmax_cross_entropy(labels, Z, validate=True)


SIGMOID_BAD = np.array(
    [[0.0, 1.0, 0.5, 0.0], [1.0, 0.0, 2.0, 0.0], [0.0, -0.5, 1.0, 1.0], [0, 0, 0, 0], [1, 1, 1, 1]]
)


def test_fused_cpu_sigmoid_label_outside_unit_interval_names_element() -> None:
    with (
        tf.device("/CPU:0"),
        pytest.raises(
            tf.errors.InvalidArgumentError, match=r"labels\[1, 2\] = 2 is outside \[0, 1\]"
        ),
    ):
        cx.ops.sigmoid_cross_entropy(SIGMOID_BAD, Z, pos_weight=2.0)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("first", [(0, 0), (8, 29), (1234, 17), (4999, 29)])
def test_fused_cpu_sigmoid_names_first_invalid_label_of_a_large_batch(
    dtype: tf.DType, first: tuple[int, int]
) -> None:
    # Many rows: the check runs inside the element loop, stretch by stretch and shard by
    # shard, over whole vectors and a stretch's partial tail alike.
    rng = np.random.default_rng(7)
    labels = (rng.uniform(size=(5000, 30)) < 0.1).astype(np.float32)
    labels[first] = 1.5
    flat = labels.reshape(-1)
    later = np.ravel_multi_index(first, labels.shape) + 41  # a second one, later in the batch
    if later < flat.size:
        flat[later] = -1.0
    logits = tf.cast(rng.normal(size=(5000, 30)), dtype)
    message = rf"labels\[{first[0]}, {first[1]}\] = 1.5 is outside \[0, 1\]"
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=message):
        cx.ops.sigmoid_cross_entropy(tf.cast(labels, dtype), logits, pos_weight=2.0)


def test_reference_sigmoid_label_outside_unit_interval_is_nan_for_that_element() -> None:
    loss = cx.reference.sigmoid_cross_entropy(SIGMOID_BAD, Z, pos_weight=2.0).numpy()
    bad = (SIGMOID_BAD < 0) | (SIGMOID_BAD > 1)
    assert np.isnan(loss[bad]).all()
    want, _ = oracle.sigmoid_cross_entropy(SIGMOID_BAD, Z, pos_weight=2.0)
    np.testing.assert_allclose(loss[~bad], want[~bad], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_validate_rejects_sigmoid_labels_outside_unit_interval(impl: str) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 1\]"):
        _impl(impl).sigmoid_cross_entropy(SIGMOID_BAD, Z, validate=True)


NONFINITE_TENSOR_WEIGHTS = {
    "class_weight": (
        lambda m, w, **kw: m.softmax_cross_entropy(Y, Z, class_weight=w, **kw),
        [1.0, np.nan, 1.0, 1.0],
    ),
    "cost_matrix": (
        lambda m, w, **kw: m.expected_cost(Y, Z, w, **kw),
        np.where(np.eye(C) > 0, np.inf, 1.0),
    ),
    "pos_weight": (
        lambda m, w, **kw: m.sigmoid_cross_entropy(MULTI_HOT, Z, pos_weight=w, **kw),
        np.nan,
    ),
}


@pytest.mark.parametrize("name", list(NONFINITE_TENSOR_WEIGHTS))
@pytest.mark.parametrize("impl, validate", [("ops", False), ("ops", True), ("reference", True)])
def test_nonfinite_weight_tensor_inside_tf_function_is_an_error(
    name: str, impl: str, validate: bool
) -> None:
    """Weights traced as tensors cannot be checked in Python; the fused kernel and
    ``validate=True`` check them at run time."""
    call, weights = NONFINITE_TENSOR_WEIGHTS[name]
    run = tf.function(lambda w: call(_impl(impl), w, validate=validate))
    with (
        tf.device("/CPU:0"),
        pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name} must be finite"),
    ):
        run(tf.constant(weights, tf.float32))


def test_reference_nonfinite_weight_tensor_inside_tf_function_is_an_error() -> None:
    call, weights = NONFINITE_TENSOR_WEIGHTS["class_weight"]
    run = tf.function(lambda w: call(cx.reference, w))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class_weight must be finite"):
        run(tf.constant(weights, tf.float32))


# --------------------------------------------------------------------------------------
# Edge cases. Each problem: (call of (module, labels, logits, **kwargs), labels for a
# leading shape, oracle of (labels, logits), whether the loss is per row or per element).


def _ids_with_ignored(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Class ids with every third entry (from the second) set to the ignore_class -1."""
    ids = rng.integers(0, C, size=shape)
    ids.reshape(-1)[1::3] = -1
    return ids


PROBLEMS: dict[str, tuple[Callable, Callable, Callable, bool]] = {
    "softmax_sparse_cost_focal": (
        lambda m, y, z, **kw: m.softmax_cross_entropy(
            y, z, cost_matrix=COST, focal_gamma=0.5, **kw
        ),
        lambda lead, rng: rng.integers(0, C, size=lead).astype(np.int32),
        lambda y, z: oracle.softmax_cross_entropy(y, z, cost_matrix=COST, focal_gamma=0.5),
        True,
    ),
    "softmax_col_ignore_smooth": (
        lambda m, y, z, **kw: m.softmax_cross_entropy(
            y, z, ignore_class=-1, label_smoothing=0.1, **kw
        ),
        lambda lead, rng: _ids_with_ignored(lead + (1,), rng),
        lambda y, z: oracle.softmax_cross_entropy(y, z, ignore_class=-1, label_smoothing=0.1),
        True,
    ),
    "softmax_soft_class_weight": (
        lambda m, y, z, **kw: m.softmax_cross_entropy(
            y, z, class_weight=[0.5, 2.0, 1.0, 3.0], **kw
        ),
        lambda lead, rng: rng.dirichlet(np.ones(C), size=lead),
        lambda y, z: oracle.softmax_cross_entropy(y, z, class_weight=[0.5, 2.0, 1.0, 3.0]),
        True,
    ),
    "expected_cost_sparse": (
        lambda m, y, z, **kw: m.expected_cost(y, z, COST - 2.0, ce_weight=0.5, **kw),
        lambda lead, rng: rng.integers(0, C, size=lead).astype(np.int64),
        lambda y, z: oracle.expected_cost(y, z, COST - 2.0, ce_weight=0.5),
        True,
    ),
    "expected_cost_onehot": (
        lambda m, y, z, **kw: m.expected_cost(y, z, COST, label_smoothing=0.2, **kw),
        lambda lead, rng: np.eye(C)[rng.integers(0, C, size=lead)],
        lambda y, z: oracle.expected_cost(y, z, COST, label_smoothing=0.2),
        True,
    ),
    "sigmoid_weighted_focal": (
        lambda m, y, z, **kw: m.sigmoid_cross_entropy(
            y, z, pos_weight=[1.0, 3.0, 0.5, 2.0], neg_weight=0.5, focal_gamma=2.0, **kw
        ),
        lambda lead, rng: (rng.random(lead + (C,)) < 0.4).astype(np.float32),
        lambda y, z: oracle.sigmoid_cross_entropy(
            y, z, pos_weight=[1.0, 3.0, 0.5, 2.0], neg_weight=0.5, focal_gamma=2.0
        ),
        False,
    ),
}


def _run(
    module: ModuleType, problem: str, labels: Any, logits: np.ndarray, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and d sum(loss) / d logits through a GradientTape."""
    z = tf.constant(logits, dtype)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = PROBLEMS[problem][0](module, labels, z)
    return loss, tape.gradient(loss, z)


def _acc(dtype: tf.DType) -> tf.DType:
    return tf.float64 if dtype == tf.float64 else tf.float32


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize(
    "lead, dtype",
    [((0,), tf.float32), ((0, 3), tf.float16), ((2, 0, 3), tf.float64), ((3, 0), tf.bfloat16)],
    ids=["0", "0x3_f16", "2x0x3_f64", "3x0_bf16"],
)
def test_empty_batch(impl: str, problem: str, lead: tuple[int, ...], dtype: tf.DType) -> None:
    module = _impl(impl)
    fn, make_labels, _, per_row = PROBLEMS[problem]
    labels = make_labels(lead, np.random.default_rng(2))
    logits = np.zeros(lead + (C,))
    loss, grad = _run(module, problem, labels, logits, dtype)
    assert loss.shape == (lead if per_row else lead + (C,)) and loss.dtype == _acc(dtype)
    assert grad.shape == lead + (C,) and grad.dtype == dtype
    # The loss-only variant (no tape) and validate=True take empty batches too.
    for kwargs in ({}, {"validate": True}):
        untaped = fn(module, labels, tf.constant(logits, dtype), **kwargs)
        assert untaped.shape == loss.shape and untaped.dtype == loss.dtype


NONFINITE_LOGITS = np.array(
    [
        [np.nan, 0.0, 1.0, 2.0],
        [0.5, -1.0, 2.0, 0.0],
        [np.inf, 0.0, 0.0, 1.0],
        [0.0, -np.inf, 1.0, 0.0],
        [1.0, 2.0, -1.0, 0.5],
        [np.inf, -np.inf, 0.0, 0.0],
        [-0.5, 0.25, 3.0, -2.0],
    ]
)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("dtype", [tf.float32, tf.float16], ids=lambda d: d.name)
def test_nonfinite_logits_give_nan_for_exactly_that_row(
    impl: str, problem: str, dtype: tf.DType
) -> None:
    _, make_labels, reference_fn, per_row = PROBLEMS[problem]
    rng = np.random.default_rng(3)
    n = len(NONFINITE_LOGITS)
    labels = make_labels((n,), rng)
    if "ignore" in problem:  # no row ignored here: an ignored row's loss is 0 by definition
        labels = rng.integers(0, C, size=(n, 1))
    logits = tf.cast(tf.constant(NONFINITE_LOGITS, dtype), tf.float64).numpy()
    loss, grad = _run(_impl(impl), problem, labels, logits, dtype)
    loss, grad = loss.numpy().astype(np.float64), tf.cast(grad, tf.float64).numpy()
    # Softmax losses: a row with any non-finite logit; sigmoid: that element alone.
    bad = ~np.isfinite(logits).all(axis=-1) if per_row else ~np.isfinite(logits)
    want_loss, want_grad = reference_fn(labels, np.where(np.isfinite(logits), logits, 0.0))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == tf.float32 else dict(rtol=4e-3, atol=3e-3)
    assert np.isnan(loss[bad]).all(), loss
    np.testing.assert_allclose(loss[~bad], want_loss[~bad], **tol)
    np.testing.assert_allclose(grad[~bad], want_grad[~bad], **tol)
    if impl == "ops":  # the fused kernel's gradient is NaN where the loss is
        assert np.isnan(grad[bad]).all(), grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fn", list(SPARSE_FUNCTIONS))
def test_ignored_rows_stay_zero_with_nonfinite_logits(impl: str, fn: str) -> None:
    """An ignored row's loss and gradient are 0 even if its logits are NaN or infinite
    (padding positions with masked logits must not poison the batch's gradient)."""
    labels = np.array([-1, 1, -1, -1, 3, -1, 2])  # exactly the non-finite rows ignored
    call, oracle_call = SPARSE_FUNCTIONS[fn]
    z = tf.constant(NONFINITE_LOGITS, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = call(_impl(impl), labels, z, ignore_class=-1)
    loss, grad = loss.numpy(), tape.gradient(loss, z).numpy()
    ignored = labels == -1
    assert np.all(loss[ignored] == 0) and np.all(grad[ignored] == 0)
    want_loss, want_grad = oracle_call(
        labels, np.where(ignored[:, None], 0.0, NONFINITE_LOGITS), ignore_class=-1
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def _extreme_logits(big: float) -> np.ndarray:
    """Rows mixing +-big with moderate values, ties at the top included."""
    return np.array(
        [
            [big, 0.0, -big, 1.0],
            [-big, big, 0.0, -big],
            [0.0, -big, big, big],
            [big / 2, big, -big, 0.0],
            [-big, -big, -big, big],
            [1.0, -big, 2.0, 0.5],
        ]
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("dtype, big", [(tf.float32, 1e4), (tf.float16, 6e4)], ids=["f32", "f16"])
def test_extreme_logits_are_finite_and_match_float64_oracle(
    impl: str, problem: str, dtype: tf.DType, big: float
) -> None:
    _, make_labels, reference_fn, _ = PROBLEMS[problem]
    logits = tf.cast(tf.constant(_extreme_logits(big), dtype), tf.float64).numpy()
    labels = make_labels((len(logits),), np.random.default_rng(4))
    if labels.dtype.kind == "f":  # dense labels travel in the logits' dtype
        labels = tf.cast(tf.constant(labels, dtype), tf.float64).numpy()
    loss, grad = _run(_impl(impl), problem, labels, logits, dtype)
    loss, grad = loss.numpy().astype(np.float64), tf.cast(grad, tf.float64).numpy()
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    want_loss, want_grad = reference_fn(labels, logits)
    # The loss is float32 either way; the gradient is stored in the logits' dtype.
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6 * big)
    grad_tol = 2e-6 if dtype == tf.float32 else 1e-3
    np.testing.assert_allclose(grad, want_grad, rtol=grad_tol, atol=grad_tol)


RANGE_COST = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [1.0, 1.0, 0.0]], np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "fn, kwargs",
    [
        ("softmax_cross_entropy", {}),
        ("softmax_cross_entropy", {"class_weight": [2.0, 0.5, 1.0]}),
        ("softmax_cross_entropy", {"cost_matrix": RANGE_COST}),
        ("softmax_cross_entropy", {"label_smoothing": 0.1}),
        ("softmax_cross_entropy", {"focal_gamma": 2.0, "label_smoothing": 0.1}),
        ("expected_cost", {"cost_matrix": RANGE_COST, "ce_weight": 0.5, "label_smoothing": 0.1}),
    ],
    ids=["plain", "class_weight", "cost_matrix", "smoothing", "focal_smoothing", "expected_cost"],
)
def test_rows_spanning_the_float32_range_match_the_float64_oracle(
    impl: str, fn: str, kwargs: dict
) -> None:
    # max - z is 6e38 here, beyond float32, though every loss is within it (DESIGN 2.4).
    if impl == "reference" and kwargs.get("label_smoothing"):
        pytest.skip("the reference gives inf for a smoothed -log p of 6e38 (reference._weighted)")
    logits = np.array([[3e38, -3e38, 0.0], [3e38, 3e38, -3e38], [1.0, 2.0, 3.0]], np.float32)
    labels = np.array([0, 0, 1])
    z = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = getattr(_impl(impl), fn)(labels, z, **kwargs)
    grad = tape.gradient(loss, z).numpy()
    want_loss, want_grad = getattr(oracle, fn)(labels, logits, **kwargs)
    assert np.isfinite(loss.numpy()).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 3, 1, 2, 2, 0], np.float32),
        np.array([[0], [3], [1], [2], [2], [0]], np.float32),
        np.array([0, 3, 1, 2, 2, 0], np.float64),
        np.array([[0.0, 3.0, 1.0], [2.0, 2.0, 0.0]], np.float32),
        np.array([0, -1, 1, 2, -1, 0], np.float32),
    ],
    ids=["f32_N", "f32_Nx1", "f64_N", "f32_2x3", "f32_ignore"],
)
def test_keras_style_float_class_ids_equal_integer_ids(impl: str, labels: np.ndarray) -> None:
    """Keras casts integer targets to float before ``call``: float class ids [N] or [N, 1]
    must act exactly like the integer ids."""
    module = _impl(impl)
    ids = labels.astype(np.int64)
    lead = labels.shape[:-1] if labels.shape[-1] == 1 else labels.shape
    logits = np.random.default_rng(5).normal(size=lead + (C,))
    kwargs = {"cost_matrix": COST, "focal_gamma": 2.0, "ignore_class": -1}
    z = tf.constant(logits, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        got = module.softmax_cross_entropy(labels, z, **kwargs)
        got_ec = module.expected_cost(labels, z, COST, ce_weight=0.5, ignore_class=-1)
    want = oracle.softmax_cross_entropy(ids, logits, **kwargs)
    want_ec = oracle.expected_cost(ids, logits, COST, ce_weight=0.5, ignore_class=-1)
    for loss, (want_loss, want_grad) in [(got, want), (got_ec, want_ec)]:
        assert loss.shape == logits.shape[:-1]
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tape.gradient(loss, z), want_grad, rtol=1e-5, atol=1e-6)
