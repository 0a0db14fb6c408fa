"""costxent._core's CUDA kernels against the float64 oracle, with PyTorch device tensors.

Every loss mode x label kind x dtype over C from 2 to 131072 (each warp / block / cluster
regime and its edges), odd N, logits and outputs as views at unaligned offsets, outputs
poisoned before every run so that an unwritten element fails, NaN / infinite logits and
out-of-range labels (NaN rows), backprop aliasing logits, and two runs bitwise equal.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import core_cases  # noqa: E402  (tests/ is on sys.path through conftest.py)
from core_cases import acc_dtype, assert_close, rng_for, softmax_case, weights_kind  # noqa: E402

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
}
CLASSES = [2, 3, 7, 31, 32, 33, 255, 1000, 4097, 32768, 131072]
MATRIX_MAX_C = 4097  # a C x C cost matrix beyond this is gigabytes
POISON = float("nan")
SENTINEL = 12345.0  # poison for outputs that are expected to be NaN


def rows_for(c: int) -> int:
    return 9 if c >= 32768 else 33  # odd; at least 9 for the bad rows


def to_device(values: np.ndarray, dtype: str, offset: int = 0) -> torch.Tensor:
    """values as a `dtype` tensor on the GPU, `offset` elements into a larger buffer."""
    flat = torch.from_numpy(np.ascontiguousarray(values).reshape(-1))
    buf = torch.empty(flat.numel() + offset + 1, dtype=TORCH_DTYPES[dtype], device="cuda")
    view = buf[offset : offset + flat.numel()]
    view.copy_(flat.to(TORCH_DTYPES[dtype]))  # values are representable: exact
    return view.view(values.shape)


def poisoned(shape: tuple[int, ...], dtype: str, offset: int = 0, value: float = POISON) -> torch.Tensor:
    size = int(np.prod(shape))
    buf = torch.full((size + offset + 1,), value, dtype=TORCH_DTYPES[dtype], device="cuda")
    return buf[offset : offset + size].view(shape)


def host(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def run_softmax(core, case: core_cases.SoftmaxCase, offset: int, *, alias: bool = False):
    """One launch on device copies of the case at `offset`; returns (loss, backprop)."""
    logits = to_device(case.logits, case.dtype, offset)
    labels = to_device(case.labels, str(case.labels.dtype) if case.sparse else case.dtype, offset)
    weights = None if case.weights is None else to_device(case.weights, acc_dtype(case.dtype), offset)
    n, c = case.logits.shape
    nan_rows = case.nan_rows
    loss = poisoned((n,), acc_dtype(case.dtype), offset + 1)
    loss[nan_rows] = SENTINEL
    backprop = logits if alias else poisoned((n, c), case.dtype, offset + 3)
    if not alias:
        backprop[nan_rows] = SENTINEL
    out = core.softmax_loss(logits, labels, weights, **case.kwargs, loss=loss, backprop=backprop, stream=stream())
    assert out[0] is loss and out[1] is backprop
    torch.cuda.synchronize()
    return loss, backprop


def check(case: core_cases.SoftmaxCase, loss: torch.Tensor, backprop: torch.Tensor) -> None:
    case.check(host(loss), host(backprop))


SOFTMAX_PARAMS = [
    (mode, kind, dtype, c)
    for mode, kind in core_cases.MODE_KINDS
    for dtype in core_cases.DTYPES
    for c in CLASSES
    if weights_kind(mode) != "matrix" or c <= MATRIX_MAX_C
]


@pytest.mark.parametrize("mode, kind, dtype, c", SOFTMAX_PARAMS)
def test_softmax_matches_oracle(core, mode: str, kind: str, dtype: str, c: int) -> None:
    case = softmax_case(
        mode, kind, dtype, rows_for(c), c, rng_for(mode, kind, dtype, c),
        nonfinite_rows=True, bad_labels=True,
    )
    first = None
    for offset in (0, 3):
        loss, backprop = run_softmax(core, case, offset)
        check(case, loss, backprop)
        if offset == 0:
            first = (loss, backprop)
    again = run_softmax(core, case, 0)
    assert same_bits(again[0], first[0]) and same_bits(again[1], first[1]), "two runs differ"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("c", [262144, 300001])
def test_rows_longer_than_a_cluster(core, dtype: str, c: int) -> None:
    case = softmax_case("class", "int64", dtype, 3, c, rng_for("long", dtype, c))
    for offset in (0, 3):
        check(case, *run_softmax(core, case, offset))


@pytest.mark.parametrize("c", [7, 33, 1000, 4097, 32768, 131072])
@pytest.mark.parametrize("mode", ["plain", "focal_half_smooth_class", "expected_ce_smooth"])
def test_backprop_may_alias_logits(core, mode: str, c: int) -> None:
    if weights_kind(mode) == "matrix" and c > MATRIX_MAX_C:
        pytest.skip("cost matrix too large")
    case = softmax_case(mode, "soft", "float32", rows_for(c), c, rng_for("alias", mode, c))
    for offset in (0, 1):
        want = run_softmax(core, case, offset)
        got = run_softmax(core, case, offset, alias=True)
        assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


def test_loss_only_variant(core) -> None:
    case = softmax_case("cost", "int32", "bfloat16", 33, 1000, rng_for("loss-only"))
    full_loss, _ = run_softmax(core, case, 0)
    logits = to_device(case.logits, "bfloat16")
    loss = poisoned((33,), "float32")
    out = core.softmax_loss(
        logits, to_device(case.labels, "int32"), to_device(case.weights, "float32"),
        **case.kwargs, loss=loss, compute_backprop=False,
    )
    torch.cuda.synchronize()
    assert out[1] is None
    assert same_bits(loss, full_loss)


@pytest.mark.parametrize("dtype, scale", [("float32", 1e4), ("float16", 6e4)])
@pytest.mark.parametrize("c", [10, 1000, 32768])
def test_extreme_logits_stay_finite(core, dtype: str, scale: float, c: int) -> None:
    # A standard deviation of scale / 6 reaches about 0.75 scale over these many draws and
    # stays below float16's largest finite value.
    case = softmax_case("class", "int64", dtype, 9, c, rng_for("extreme", dtype, c), scale=scale / 6)
    assert np.isfinite(case.logits).all()
    loss, backprop = run_softmax(core, case, 0)
    assert torch.isfinite(loss).all() and torch.isfinite(backprop).all()
    check(case, loss, backprop)


def test_non_default_stream(core) -> None:
    case = softmax_case("focal", "int32", "float32", 33, 255, rng_for("stream"))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loss, backprop = run_softmax(core, case, 0)
    check(case, loss, backprop)


def test_empty_batch_launches_nothing(core) -> None:
    logits = torch.zeros((0, 5), device="cuda")
    loss = torch.zeros((0,), device="cuda")
    backprop = torch.zeros((0, 5), device="cuda")
    core.softmax_loss(logits, torch.zeros(0, dtype=torch.int32, device="cuda"), loss=loss, backprop=backprop)
    core.sigmoid_loss(logits, logits, loss=backprop, backprop=backprop)
    torch.cuda.synchronize()


def test_device_errors(core) -> None:
    logits = torch.zeros((4, 3), device="cuda")
    labels = torch.zeros(4, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="loss is required for arrays on a CUDA device"):
        core.softmax_loss(logits, labels)
    with pytest.raises(ValueError, match="labels is on cpu but logits is on cuda:0"):
        core.softmax_loss(logits, labels.cpu(), loss=torch.zeros(4, device="cuda"))
    with pytest.raises(TypeError, match="pos_weight must be an array on cuda:0"):
        core.sigmoid_loss(logits, logits, 2.0, loss=torch.zeros_like(logits), backprop=torch.zeros_like(logits))


# ---------------------------------------------------------------------------------------
# Sigmoid and gradient scaling.


@pytest.mark.parametrize("c", [1, 7, 33, 1000])
@pytest.mark.parametrize("dtype", core_cases.DTYPES)
@pytest.mark.parametrize("mode", list(core_cases.SIGMOID_MODES))
def test_sigmoid_matches_oracle(core, mode: str, dtype: str, c: int) -> None:
    case = core_cases.sigmoid_case(mode, dtype, 17, c, rng_for("sigmoid", mode, dtype, c), bad=True)
    acc = acc_dtype(dtype)
    nan = np.isnan(case.loss)
    for offset in (0, 1):
        weights = {
            name: None if w is None else to_device(w, acc, offset)
            for name, w in (("pos_weight", case.pos_weight), ("neg_weight", case.neg_weight))
        }
        loss = poisoned(case.logits.shape, acc, offset + 1)
        backprop = poisoned(case.logits.shape, dtype, offset + 2)
        expect_nan = torch.from_numpy(nan).to("cuda")
        loss[expect_nan] = SENTINEL
        backprop[expect_nan] = SENTINEL
        core.sigmoid_loss(
            to_device(case.logits, dtype, offset), to_device(case.labels, dtype, offset),
            **weights, **case.kwargs, loss=loss, backprop=backprop, stream=stream(),
        )
        torch.cuda.synchronize()
        assert_close("loss", host(loss), case.loss, acc)
        assert_close("grad", host(backprop), case.grad, dtype)


@pytest.mark.parametrize("value", [1.0, 0.37, -2.0])
@pytest.mark.parametrize("dtype", core_cases.DTYPES)
def test_scale_gradient(core, dtype: str, value: float) -> None:
    """The reduced losses' backward: grad * upstream scalar (read on the device), in place or
    into another buffer; in place with a scalar of exactly 1 nothing is written."""
    rng = rng_for("scale", dtype, value)
    grad = core_cases.round_to(rng.normal(size=(37, 129)), dtype)
    scale = np.array(value, dtype=acc_dtype(dtype))
    want = core_cases.round_to(grad * value, dtype)
    for offset in (0, 1):
        out = poisoned(grad.shape, dtype, offset + 2)
        core.scale_gradient(to_device(grad, dtype, offset), to_device(scale, acc_dtype(dtype), 0),
                            out, stream=stream())
        torch.cuda.synchronize()
        assert_close("scaled", host(out), want, dtype)
        in_place = to_device(grad, dtype, offset)
        core.scale_gradient(in_place, to_device(scale, acc_dtype(dtype), 0), in_place, stream=stream())
        torch.cuda.synchronize()
        assert_close("scaled in place", host(in_place), want, dtype)
