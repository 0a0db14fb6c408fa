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


def core_kwargs(case: core_cases.SoftmaxCase) -> dict[str, Any]:
    """The case's options as _core.softmax_loss takes them: the weight mode is not an
    option but follows from the weights' rank."""
    return {k: v for k, v in case.kwargs.items() if k != "weight_mode"}


def numpy_inputs(case: core_cases.SoftmaxCase) -> dict[str, Any]:
    """Arguments of _core.softmax_loss for a case, as NumPy arrays of the kernel dtypes."""
    args: dict[str, Any] = core_kwargs(case)
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
    loss, grad = _core.softmax_loss(case.logits[0], np.array(case.labels[0]), **core_kwargs(case))
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
        _core.softmax_loss(logits, labels, torch.tensor(case.weights, dtype=torch.float32), **core_kwargs(case))
    loss, _ = _core.softmax_loss(
        logits, labels, torch.tensor(case.weights, dtype=torch.float32), **core_kwargs(case), backprop=backprop
    )
    case.check(loss.numpy(), backprop.float().numpy())


def test_module_facts() -> None:
    assert isinstance(_core.has_cuda(), bool)
    assert _core.cpu_instruction_set() in ("avx2-fma", "baseline")
