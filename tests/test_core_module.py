"""costxent._core on the CPU (NumPy arrays through DLPack) against the float64 oracle.

Every loss mode x label kind x dtype, non-finite rows, outputs written in place, views at
unaligned offsets, backprop aliasing logits, determinism, and the errors raised for bad
input. The GPU side of the same module is tested in tests/gpu.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import core_cases
from core_cases import acc_dtype, assert_close, rng_for, softmax_case

try:
    _core = core_cases.load_core()
except ImportError as exc:  # built without the extension: nothing to test here
    pytest.skip(f"costxent._core is not built: {exc}", allow_module_level=True)

NUMPY_DTYPES = ("float16", "float32", "float64")  # NumPy has no bfloat16: see test_bfloat16


def numpy_inputs(case: core_cases.SoftmaxCase) -> dict[str, Any]:
    """Arguments of _core.softmax_loss for a case, as NumPy arrays of the kernel dtypes."""
    args: dict[str, Any] = dict(case.kwargs)
    args["logits"] = case.logits.astype(case.dtype)
    args["labels"] = case.labels if case.sparse else case.labels.astype(case.dtype)
    if case.weights is not None:
        args["weights"] = case.weights.astype(acc_dtype(case.dtype))
    return args


def check_case(case: core_cases.SoftmaxCase, loss: np.ndarray, grad: np.ndarray | None) -> None:
    assert loss.dtype == acc_dtype(case.dtype)
    assert grad is None or grad.dtype == case.dtype
    case.check(loss, grad)


def offset_view(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `a` living `offset` elements into a larger buffer (a misaligned view)."""
    buf = np.empty(a.size + offset + 1, dtype=a.dtype)
    view = buf[offset : offset + a.size].reshape(a.shape)
    view[...] = a
    return view


# ---------------------------------------------------------------------------------------
# Values against the oracle.


@pytest.mark.parametrize("c", [2, 3, 7, 33, 130])
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("mode, kind", core_cases.MODE_KINDS)
def test_softmax_matches_oracle(mode: str, kind: str, dtype: str, c: int) -> None:
    case = softmax_case(mode, kind, dtype, 11, c, rng_for(mode, kind, dtype, c))
    loss, grad = _core.softmax_loss(**numpy_inputs(case))
    check_case(case, loss, grad)


@pytest.mark.parametrize("kind", core_cases.LABEL_KINDS)
@pytest.mark.parametrize("mode", ["plain", "cost", "focal", "expected_ce_smooth"])
def test_nonfinite_rows_are_nan(mode: str, kind: str) -> None:
    case = softmax_case(mode, kind, "float32", 12, 9, rng_for(mode, kind), nonfinite_rows=True)
    loss, grad = _core.softmax_loss(**numpy_inputs(case))
    assert case.nan_rows == [1, 2, 3]
    assert np.isnan(grad[case.nan_rows]).all()
    check_case(case, loss, grad)


@pytest.mark.parametrize("dtype, scale", [("float32", 1e4), ("float16", 6e4), ("float64", 1e4)])
def test_extreme_logits_stay_finite(dtype: str, scale: float) -> None:
    # Five standard deviations of `scale / 5` reach the largest finite float16 values.
    case = softmax_case("class", "int64", dtype, 9, 17, rng_for(dtype), scale=scale / 5)
    assert np.isfinite(case.logits).all() and np.abs(case.logits).max() > scale / 4
    loss, grad = _core.softmax_loss(**numpy_inputs(case))
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    check_case(case, loss, grad)


def test_sparse_labels_of_shape_n_1() -> None:
    case = softmax_case("class", "int32", "float32", 7, 5, rng_for("n1"))
    inputs = numpy_inputs(case)
    inputs["labels"] = inputs["labels"][:, None]
    check_case(case, *_core.softmax_loss(**inputs))


@pytest.mark.parametrize("kind", ["int64", "soft"])
def test_dlpack_capsules_are_accepted(kind: str) -> None:
    case = softmax_case("class", kind, "float32", 7, 5, rng_for("capsule", kind))
    inputs = numpy_inputs(case)
    for name in ("logits", "labels", "weights"):
        inputs[name] = inputs[name].__dlpack__()
    check_case(case, *_core.softmax_loss(**inputs))


# ---------------------------------------------------------------------------------------
# Outputs, views and aliasing.


def test_outputs_are_written_in_place() -> None:
    case = softmax_case("focal", "int32", "float32", 9, 6, rng_for("inplace"))
    loss = np.full(9, np.nan, dtype=np.float32)
    backprop = np.full((9, 6), np.nan, dtype=np.float32)
    out = _core.softmax_loss(**numpy_inputs(case), loss=loss, backprop=backprop)
    assert out[0] is loss and out[1] is backprop
    check_case(case, loss, backprop)


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_unaligned_views(dtype: str, offset: int) -> None:
    case = softmax_case("cost", "soft", dtype, 13, 37, rng_for("view", dtype, offset))
    inputs = numpy_inputs(case)
    for name in ("logits", "labels", "weights"):
        inputs[name] = offset_view(inputs[name], offset)
    loss = offset_view(np.full(13, np.nan, dtype=acc_dtype(dtype)), offset + 1)
    backprop = offset_view(np.full((13, 37), np.nan, dtype=dtype), offset + 2)
    _core.softmax_loss(**inputs, loss=loss, backprop=backprop)
    check_case(case, loss, backprop)


@pytest.mark.parametrize("mode", ["plain", "cost", "focal_half_smooth_class", "expected_ce_smooth"])
def test_backprop_may_alias_logits(mode: str) -> None:
    case = softmax_case(mode, "soft", "float32", 15, 40, rng_for("alias", mode))
    inputs = numpy_inputs(case)
    want_loss, want_grad = _core.softmax_loss(**inputs)
    logits = inputs["logits"].copy()
    inputs["logits"] = logits
    loss, grad = _core.softmax_loss(**inputs, backprop=logits)
    assert grad is logits
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


def test_loss_only_variant() -> None:
    case = softmax_case("focal", "int64", "float32", 9, 7, rng_for("loss-only"))
    full_loss, _ = _core.softmax_loss(**numpy_inputs(case))
    loss, grad = _core.softmax_loss(**numpy_inputs(case), compute_backprop=False)
    assert grad is None
    np.testing.assert_array_equal(loss, full_loss)


def test_results_are_bitwise_deterministic() -> None:
    # Large enough to be split over threads.
    case = softmax_case("cost", "soft", "float32", 4001, 64, rng_for("determinism"))
    first = _core.softmax_loss(**numpy_inputs(case))
    for _ in range(2):
        again = _core.softmax_loss(**numpy_inputs(case))
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1], first[1])
    check_case(case, *first)


def test_empty_batch() -> None:
    loss, grad = _core.softmax_loss(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    assert loss.shape == (0,) and grad.shape == (0, 4)
    loss, grad = _core.sigmoid_loss(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert loss.shape == (0, 4) and grad.shape == (0, 4)


# ---------------------------------------------------------------------------------------
# Errors particular to the module (DLPack, outputs, option strings); the rules shared with
# the TensorFlow ops are tested rule by rule in test_spec.py.


def _base() -> dict[str, Any]:
    return {"logits": np.zeros((4, 3), np.float32), "labels": np.zeros(4, np.int32)}


BAD_INPUTS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("logits not an array", {"logits": [[1.0, 2.0]]}, TypeError, "logits must be an array supporting DLPack"),
    ("strided logits", {"logits": np.zeros((4, 6), np.float32)[:, ::2]}, ValueError, r"logits must be C-contiguous .* got element strides \[6, 2\]"),
    ("transposed logits", {"logits": np.zeros((3, 4), np.float32).T}, ValueError, "logits must be C-contiguous"),
    ("strided labels", {"labels": np.zeros(8, np.int32)[::2]}, ValueError, "labels must be C-contiguous"),
    ("bad loss_kind", {"loss_kind": "mse"}, ValueError, "loss_kind must be one of 'cross_entropy', 'expected_cost', got 'mse'"),
    ("bad reduction", {"reduction": "mean_over_classes"}, ValueError, "reduction must be one of 'none', 'sum', 'sum_over_batch_size', 'mean_with_sample_weight', got 'mean_over_classes'"),
    ("weight_mode is gone", {"weight_mode": "class"}, TypeError, "incompatible function arguments"),
    ("non-finite scale", {"scale": float("inf")}, ValueError, "scale must be a finite number, got inf"),
    ("loss of wrong dtype", {"loss": np.zeros(4, np.float64)}, TypeError, "loss must have dtype float32, got dtype float64"),
    ("loss of wrong shape", {"loss": np.zeros(5, np.float32)}, ValueError, r"loss must have shape \[4\], got shape \[5\]"),
    ("backprop of wrong dtype", {"backprop": np.zeros((4, 3), np.float16)}, TypeError, "backprop must have dtype float32, got dtype float16"),
    ("backprop of wrong shape", {"backprop": np.zeros((3, 4), np.float32)}, ValueError, r"backprop must have shape \[4, 3\], got shape \[3, 4\]"),
    ("backprop without compute", {"backprop": np.zeros((4, 3), np.float32), "compute_backprop": False}, ValueError, "backprop was given but compute_backprop is False"),
    ("loss of a reduced call", {"reduction": "sum", "loss": np.zeros(4, np.float32)}, ValueError, "loss= is the per-example output; a reduced call"),
]


@pytest.mark.parametrize("change, error, message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_softmax_inputs_raise(change: dict[str, Any], error: type[Exception], message: str) -> None:
    args = {**_base(), **change}
    with pytest.raises(error, match=message):
        _core.softmax_loss(**args)


def test_read_only_output_is_refused() -> None:
    loss = np.zeros(4, np.float32)
    loss.setflags(write=False)
    with pytest.raises(ValueError, match="loss is read-only"):
        _core.softmax_loss(**_base(), loss=loss)


def test_read_only_inputs_are_fine() -> None:
    case = softmax_case("class", "int32", "float32", 5, 4, rng_for("readonly"))
    inputs = numpy_inputs(case)
    for name in ("logits", "labels", "weights"):
        inputs[name].setflags(write=False)
    check_case(case, *_core.softmax_loss(**inputs))


def test_invalid_label_stops_a_reduced_call_too() -> None:
    labels = np.zeros(3000, np.int64)
    labels[2500] = 3
    with pytest.raises(ValueError, match=r"^labels\[2500\] = 3 is outside the valid class range \[0, 3\)$"):
        _core.softmax_loss(np.zeros((3000, 3), np.float32), labels, reduction="sum")


# ---------------------------------------------------------------------------------------
# Sigmoid and gradient scaling.


@pytest.mark.parametrize("c", [1, 5, 33])
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("mode", list(core_cases.SIGMOID_MODES))
def test_sigmoid_matches_oracle(mode: str, dtype: str, c: int) -> None:
    case = core_cases.sigmoid_case(mode, dtype, 9, c, rng_for("sigmoid", mode, dtype, c))
    acc = acc_dtype(dtype)
    weights = {
        name: None if w is None else w.astype(acc)
        for name, w in (("pos_weight", case.pos_weight), ("neg_weight", case.neg_weight))
    }
    loss, grad = _core.sigmoid_loss(
        offset_view(case.logits.astype(dtype), 1), case.labels.astype(dtype), **weights, **case.kwargs
    )
    assert_close("loss", loss, case.loss, acc)
    assert_close("grad", grad, case.grad, dtype)


def test_sigmoid_python_number_weights() -> None:
    case = core_cases.sigmoid_case("focal_smooth", "float64", 6, 4, rng_for("sigmoid-number"))
    loss, grad = _core.sigmoid_loss(
        case.logits, case.labels, float(case.pos_weight[0]), 1, **case.kwargs
    )
    assert_close("loss", loss, case.loss, "float64")
    assert_close("grad", grad, case.grad, "float64")


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_scale_gradient(dtype: str) -> None:
    rng = rng_for("scale", dtype)
    grad = core_cases.round_to(rng.normal(size=(7, 5)), dtype).astype(dtype)
    for value in (np.array(-1.5), np.array([0.25]), np.array(1.0)):
        scale = value.astype(acc_dtype(dtype))
        out = _core.scale_gradient(grad, scale)
        assert_close("scaled", out, grad.astype(np.float64) * float(value.reshape(())), dtype)
        in_place = grad.copy()
        assert _core.scale_gradient(in_place, scale, in_place) is in_place
        np.testing.assert_array_equal(in_place, out)


@pytest.mark.parametrize(
    "scale, error, message",
    [
        (np.ones(2, np.float32), ValueError, r"scale must be a scalar \(shape \[\] or \[1\]\), got shape \[2\]"),
        (np.ones((1, 1), np.float32), ValueError, r"scale must be a scalar .* got shape \[1, 1\]"),
        (np.ones((), np.float64), TypeError, "scale must have dtype float32, got dtype float64"),
    ],
)
def test_scale_gradient_takes_a_scalar(scale: np.ndarray, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _core.scale_gradient(np.zeros((3, 2), np.float32), scale)


# ---------------------------------------------------------------------------------------
# Logits of any rank: leading dimensions are rows.


def test_leading_dimensions_are_rows() -> None:
    case = softmax_case("cost", "int64", "float32", 12, 5, rng_for("rank3"))
    inputs = numpy_inputs(case)
    logits = inputs["logits"].reshape(3, 4, 5)
    for labels in (case.labels.reshape(3, 4), case.labels.reshape(3, 4, 1)):
        loss, grad = _core.softmax_loss(logits, labels, inputs["weights"])
        assert loss.shape == (3, 4) and grad.shape == (3, 4, 5)
        check_case(case, loss.reshape(12), grad.reshape(12, 5))


def test_rank_1_logits_are_one_row() -> None:
    case = softmax_case("focal", "int32", "float64", 1, 6, rng_for("rank1"))
    loss, grad = _core.softmax_loss(case.logits[0], np.array(case.labels[0]), **case.kwargs)
    assert loss.shape == () and grad.shape == (6,)
    check_case(case, loss.reshape(1), grad.reshape(1, 6))


def test_sigmoid_leading_dimensions() -> None:
    case = core_cases.sigmoid_case("weighted", "float32", 6, 4, rng_for("sigmoid-rank3"))
    loss, grad = _core.sigmoid_loss(
        case.logits.astype("float32").reshape(2, 3, 4), case.labels.astype("float32").reshape(2, 3, 4),
        case.pos_weight.astype("float32"), case.neg_weight.astype("float32"),
    )
    assert loss.shape == grad.shape == (2, 3, 4)
    assert_close("loss", loss.reshape(6, 4), case.loss, "float32")
    assert_close("grad", grad.reshape(6, 4), case.grad, "float32")


# ---------------------------------------------------------------------------------------
# Output scaling: row_scale, element_scale and scale multiply the gradient, written once.

SCALED_MODES = [
    ("plain", "int32"), ("class", "onehot"), ("cost", "soft"), ("focal", "int64"),
    ("expected_ce_smooth", "int32"), ("ignore", "int64"),
]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("mode, kind", SCALED_MODES)
def test_row_scale_and_scale_multiply_the_gradient(mode: str, kind: str, dtype: str) -> None:
    rng = rng_for("row_scale", mode, kind, dtype)
    case = softmax_case(mode, kind, dtype, 11, 7, rng)
    acc = acc_dtype(dtype)
    # Upstream gradients of any sign, one exactly 0.
    row_scale = core_cases.round_to(rng.normal(size=11), acc)
    row_scale[3] = 0.0
    factor = row_scale[:, None] * 0.75
    loss, grad = _core.softmax_loss(**numpy_inputs(case), row_scale=row_scale.astype(acc), scale=0.75)
    assert_close("loss", loss, case.loss, acc, case.loss_terms)  # the loss stays unscaled
    assert_close("grad", grad, case.grad * factor, dtype, case.grad_terms * np.abs(factor))
    assert not grad[3].any()


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("mode", list(core_cases.SIGMOID_MODES))
def test_sigmoid_element_and_row_scale(mode: str, dtype: str) -> None:
    rng = rng_for("sigmoid-scale", mode, dtype)
    case = core_cases.sigmoid_case(mode, dtype, 9, 5, rng)
    acc = acc_dtype(dtype)
    element_scale = core_cases.round_to(rng.normal(size=(9, 5)), acc)
    row_scale = core_cases.round_to(rng.uniform(0.0, 2.0, size=9), acc)
    weights = {
        name: None if w is None else w.astype(acc)
        for name, w in (("pos_weight", case.pos_weight), ("neg_weight", case.neg_weight))
    }
    loss, grad = _core.sigmoid_loss(
        case.logits.astype(dtype), case.labels.astype(dtype), **weights, **case.kwargs,
        element_scale=element_scale.astype(acc), row_scale=row_scale.astype(acc), scale=-2.0,
    )
    assert_close("loss", loss, case.loss, acc)
    assert_close("grad", grad, case.grad * element_scale * row_scale[:, None] * -2.0, dtype)


# ---------------------------------------------------------------------------------------
# Reductions (Keras' sum, sum_over_batch_size, mean_with_sample_weight) folded into the pass.

REDUCTIONS = ["sum", "sum_over_batch_size", "mean_with_sample_weight"]


def keras_reduced(
    per_row: np.ndarray, keep: np.ndarray, sample_weight: np.ndarray | None, reduction: str, scale: float = 1.0
) -> tuple[float, np.ndarray]:
    """scale times Keras' reduction of per-row losses (keras/src/losses/loss.py: apply_mask,
    then reduce_weighted_values) in float64, and its derivative by each row's loss: the
    factor the module folds into that row's gradient."""
    w = keep.astype(np.float64)
    if sample_weight is not None:
        w = w * sample_weight
    if reduction == "sum":
        divisor = 1.0
    elif reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = float(w.sum())
    else:
        divisor = float(keep.sum())
    d_row = np.zeros_like(w) if divisor == 0 else scale * w / divisor
    return float((d_row * per_row).sum()), d_row


def reduction_case(mode: str, dtype: str, n: int, c: int, weighted: bool, key: Any):
    rng = rng_for("reduction", mode, dtype, n, c, weighted, key)
    case = softmax_case(mode, "int64", dtype, n, c, rng)
    sample_weight = None
    if weighted:
        sample_weight = core_cases.round_to(rng.uniform(0.0, 2.0, size=n), acc_dtype(dtype))
        sample_weight[::7] = 0.0
    keep = case.labels != case.kwargs.get("ignore_class", -1)
    return case, sample_weight, keep


def check_reduced(case, got_loss: float, got_grad: np.ndarray, want_loss: float, d_row: np.ndarray) -> None:
    acc = acc_dtype(case.dtype)
    assert isinstance(got_loss, float)
    terms = float((np.abs(d_row) * case.loss_terms).sum())
    assert_close("reduced loss", np.array(got_loss), np.array(want_loss), acc, np.array(terms))
    grad_terms = case.grad_terms * np.abs(d_row[:, None])
    if case.dtype == "float16":
        # Gradients scaled by 1 / divisor reach float16's subnormals, where one rounding is
        # worth up to half their spacing of 2^-24 however small the value.
        grad_terms = np.maximum(grad_terms, 2.0**-25 / core_cases.TOLERANCE["float16"][0])
    assert_close("grad", got_grad, case.grad * d_row[:, None], case.dtype, grad_terms)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("mode", ["plain", "ignore", "expected_ce_smooth", "focal_half_smooth_class"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reduced_softmax(reduction: str, mode: str, weighted: bool, dtype: str) -> None:
    # Over two reduction blocks (1024 rows each) and a partial third.
    case, sample_weight, keep = reduction_case(mode, dtype, 2600, 5, weighted, "values")
    inputs = numpy_inputs(case)
    if sample_weight is not None:
        inputs["row_scale"] = sample_weight.astype(acc_dtype(dtype))
    loss, grad = _core.softmax_loss(**inputs, reduction=reduction)
    want, d_row = keras_reduced(case.loss, keep, sample_weight, reduction)
    check_reduced(case, loss, grad, want, d_row)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reduced_scale_multiplies_loss_and_gradient(reduction: str) -> None:
    case, sample_weight, keep = reduction_case("ignore", "float32", 40, 4, True, "scale")
    loss, grad = _core.softmax_loss(
        **numpy_inputs(case), row_scale=sample_weight.astype("float32"), scale=-3.0, reduction=reduction
    )
    want, d_row = keras_reduced(case.loss, keep, sample_weight, reduction, scale=-3.0)
    check_reduced(case, loss, grad, want, d_row)


def test_reduced_loss_only() -> None:
    case, sample_weight, keep = reduction_case("class", "float32", 30, 4, True, "loss-only")
    inputs = {**numpy_inputs(case), "row_scale": sample_weight.astype("float32")}
    loss, grad = _core.softmax_loss(**inputs, reduction="mean_with_sample_weight", compute_backprop=False)
    assert grad is None
    assert loss == _core.softmax_loss(**inputs, reduction="mean_with_sample_weight")[0]


def test_reduced_results_are_bitwise_deterministic() -> None:
    # Large enough that the rows are split over threads (at whole reduction blocks).
    case, sample_weight, keep = reduction_case("ignore", "float32", 20011, 64, True, "determinism")
    inputs = {**numpy_inputs(case), "row_scale": sample_weight.astype("float32")}
    first = _core.softmax_loss(**inputs, reduction="sum_over_batch_size")
    for _ in range(2):
        again = _core.softmax_loss(**inputs, reduction="sum_over_batch_size")
        assert again[0] == first[0]
        np.testing.assert_array_equal(again[1], first[1])
    check_reduced(case, *first, *keras_reduced(case.loss, keep, sample_weight, "sum_over_batch_size"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reduction_with_every_row_ignored_is_zero(reduction: str) -> None:
    logits = rng_for("all-ignored").normal(size=(6, 3)).astype(np.float32)
    weights = np.ones(6, np.float32)
    loss, grad = _core.softmax_loss(logits, np.full(6, 2, np.int32), ignore_class=2, row_scale=weights, reduction=reduction)
    assert loss == 0.0 and not grad.any()


def test_zero_sample_weight_sum_gives_zero() -> None:
    # mean_with_sample_weight divides by the kept rows' weights: 0 here (the ignored rows'
    # weights do not count), so divide-no-nan gives a zero loss and gradient.
    logits = rng_for("zero-weights").normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2, 0], np.int64)
    sample_weight = np.array([0, 1, 0, 1, 0], np.float32)
    loss, grad = _core.softmax_loss(
        logits, labels, ignore_class=2, row_scale=sample_weight, reduction="mean_with_sample_weight"
    )
    assert loss == 0.0 and not grad.any()
    loss, grad = _core.softmax_loss(logits, labels, row_scale=np.zeros(5, np.float32), reduction="sum")
    assert loss == 0.0 and not grad.any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reduced_empty_batch(reduction: str) -> None:
    loss, grad = _core.softmax_loss(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), reduction=reduction)
    assert loss == 0.0 and grad.shape == (0, 4)
    loss, grad = _core.sigmoid_loss(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), reduction=reduction)
    assert loss == 0.0 and grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reduced_sigmoid(reduction: str, weighted: bool, dtype: str) -> None:
    # keras.losses.BinaryCrossentropy: the per-example loss is the mean over the last axis.
    rng = rng_for("reduced-sigmoid", reduction, weighted, dtype)
    n, c = 2100, 3
    case = core_cases.sigmoid_case("focal_smooth", dtype, n, c, rng)
    acc = acc_dtype(dtype)
    sample_weight = core_cases.round_to(rng.uniform(0.0, 2.0, size=n), acc) if weighted else None
    loss, grad = _core.sigmoid_loss(
        case.logits.astype(dtype), case.labels.astype(dtype), case.pos_weight.astype(acc), **case.kwargs,
        row_scale=None if sample_weight is None else sample_weight.astype(acc), reduction=reduction,
    )
    want, d_row = keras_reduced(case.loss.mean(axis=1), np.ones(n, bool), sample_weight, reduction)
    assert isinstance(loss, float)
    assert_close("reduced loss", np.array(loss), np.array(want), acc)
    assert_close("grad", grad, case.grad * d_row[:, None] / c, dtype)


def test_reductions_match_keras() -> None:
    """keras_reduced (and so the module) against Keras' own reduction code and its gradient."""
    pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from keras.src.losses.loss import reduce_weighted_values

    for reduction in REDUCTIONS:
        for weighted in (False, True):
            case, sample_weight, keep = reduction_case("ignore", "float64", 50, 4, weighted, "keras")
            values = tf.constant(case.loss)
            with tf.GradientTape() as tape:
                tape.watch(values)
                total = reduce_weighted_values(
                    values,
                    sample_weight=None if sample_weight is None else tf.constant(sample_weight),
                    mask=tf.constant(keep),
                    reduction=reduction,
                    dtype="float64",
                )
            inputs = numpy_inputs(case)
            if sample_weight is not None:
                inputs["row_scale"] = sample_weight
            loss, grad = _core.softmax_loss(**inputs, reduction=reduction)
            d_row = tape.gradient(total, values).numpy()
            check_reduced(case, loss, grad, float(total), d_row)


# ---------------------------------------------------------------------------------------
# Negative weights: refused where they multiply a cross-entropy, rewards in expected cost.


def test_negative_costs_are_rewards_in_expected_cost() -> None:
    case = softmax_case("expected", "int32", "float64", 9, 4, rng_for("rewards"))
    assert (case.weights < 0).any()
    check_case(case, *_core.softmax_loss(**numpy_inputs(case)))


@pytest.mark.parametrize("weights", [np.array([1, -1, 1], np.float32), -np.ones((3, 3), np.float32)], ids=["class_weight", "cost_matrix"])
def test_negative_weights_are_refused_in_cross_entropy(weights: np.ndarray) -> None:
    name = "class_weight" if weights.ndim == 1 else "cost_matrix"
    with pytest.raises(ValueError, match=f"^{name} must be >= 0"):
        _core.softmax_loss(**_base(), weights=weights)


# ---------------------------------------------------------------------------------------
# bfloat16 (through PyTorch's CPU tensors, where installed) and module facts.


@pytest.mark.parametrize("kind", ["int64", "soft"])
def test_bfloat16(kind: str) -> None:
    torch = pytest.importorskip("torch")
    case = softmax_case("focal_half_smooth_class", kind, "bfloat16", 11, 19, rng_for("bf16", kind))
    logits = torch.tensor(case.logits, dtype=torch.float32).to(torch.bfloat16)
    labels = (
        torch.tensor(case.labels)
        if case.sparse
        else torch.tensor(case.labels, dtype=torch.float32).to(torch.bfloat16)
    )
    backprop = torch.full_like(logits, float("nan"))
    with pytest.raises(TypeError, match="pass backprop= for bfloat16 logits"):
        _core.softmax_loss(logits, labels, torch.tensor(case.weights, dtype=torch.float32), **case.kwargs)
    loss, _ = _core.softmax_loss(
        logits, labels, torch.tensor(case.weights, dtype=torch.float32), **case.kwargs, backprop=backprop
    )
    case.check(np.asarray(loss), backprop.float().numpy())  # no loss= given: a NumPy array


def test_module_facts() -> None:
    assert isinstance(_core.has_cuda(), bool)
    assert _core.cpu_instruction_set() in ("avx512", "avx2-fma", "baseline")
