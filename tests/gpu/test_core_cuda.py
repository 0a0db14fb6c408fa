"""costxent._core's CUDA kernels against the float64 oracle (or, without a device, the
perfect kernel: conftest.py).

Every loss mode x label kind x dtype over C at every launch-regime edge of the dtype
(regimes.py: each warp-group width, block, cluster of 2..8, the 9-block cluster, 16 blocks,
chunked rows) and a fixed spread from 2 to 131072; odd N; three buffer layouts (all arrays
16-byte aligned; logits, labels and backprop at the same misalignment, which takes the
16-byte store path at a shifted start; and backprop misaligned against the logits, which
takes the element path); outputs poisoned before every run so that an unwritten element
fails, guard elements around them that must stay untouched, NaN / infinite logits and
out-of-range labels (NaN rows; ignored rows stay 0), backprop aliasing logits, two runs
bitwise equal. In perfect mode the grid keeps C <= PERFECT_MAX_C, plus one case per mode
and label kind at the largest C, so that it runs in seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import core_cases
import harness
import regimes
from core_cases import acc_dtype, assert_close, rng_for, softmax_case, weights_kind

BASE_CLASSES = [2, 3, 7, 31, 32, 33, 255, 1000, 4097, 32768, 131072]
MATRIX_MAX_C = 4097  # a C x C cost matrix beyond this is gigabytes
PERFECT_MAX_C = 300
PERFECT_MATRIX_C = 1000  # the oracle of a 4097 x 4097 cost matrix takes seconds: soft labels only
POISON = float("nan")
SENTINEL = 12345.0  # poison for outputs that are expected to be NaN
GUARD = 16  # poisoned elements after each output, which no kernel may write

# Element offsets of each array inside its buffer (buffers start 256-byte aligned).
LAYOUTS: dict[str, dict[str, int]] = {
    "aligned": {"logits": 0, "labels": 0, "weights": 0, "loss": 0, "backprop": 0},
    "coaligned": {"logits": 3, "labels": 3, "weights": 1, "loss": 1, "backprop": 3},
    "misaligned": {"logits": 3, "labels": 1, "weights": 1, "loss": 2, "backprop": 1},
}

_PLAN = regimes.planner(None if harness.PERFECT else core_cases.load_core())


def classes_for(dtype: str) -> list[int]:
    """BASE_CLASSES and the regime edges of dtype (from _core.launch_plan where it exists);
    in perfect mode C = 2 and the smallest C of each regime up to PERFECT_MAX_C."""
    if harness.PERFECT:
        return sorted(c for c in smoke_classes(dtype) | {2} if c <= PERFECT_MAX_C)
    return sorted(set(BASE_CLASSES) | set(regimes.edges(dtype, _PLAN)))


def layouts_for(*key: Any) -> list[str]:
    """Every layout; in perfect mode one, drawn by the case (the harness code is the same)."""
    names = list(LAYOUTS)
    return [names[int(rng_for("layout", *key).integers(len(names)))]] if harness.PERFECT else names


def smoke_classes(dtype: str) -> set[int]:
    """The smallest C of each regime of dtype."""
    seen: dict[str, int] = {}
    for c in sorted(set(BASE_CLASSES) | set(regimes.edges(dtype, _PLAN))):
        seen.setdefault(regimes.regime_key(_PLAN(dtype, c)), c)
    return set(seen.values())


def rows_for(c: int) -> int:
    return 9 if c >= 32768 else 33  # odd; at least 9 for the bad rows


def _softmax_params() -> list[Any]:
    params = []
    for dtype in core_cases.DTYPES:
        smoke = smoke_classes(dtype)
        for mode, kind in core_cases.MODE_KINDS:
            for c in classes_for(dtype):
                if weights_kind(mode) == "matrix" and c > MATRIX_MAX_C:
                    continue
                marks = [pytest.mark.smoke] if (mode, kind) == ("plain", "int32") and c in smoke else []
                params.append(pytest.param(mode, kind, dtype, c, marks=marks))
    if harness.PERFECT:  # one large case per (mode, kind), the dtypes in turn
        for i, (mode, kind) in enumerate(core_cases.MODE_KINDS):
            # one-hot rows at the largest C: a C x C identity there is 128 GiB
            c = max(BASE_CLASSES) if kind == "onehot" else 32768
            dtype = core_cases.DTYPES[i % 4]
            if weights_kind(mode) == "matrix":  # small probabilities: float16's subnormals
                c, dtype = (MATRIX_MAX_C if kind == "soft" else PERFECT_MATRIX_C), "float16"
            params.append(pytest.param(mode, kind, dtype, c))
    return params


# ---------------------------------------------------------------------------------------
# Device copies of a case.


class Output:
    """A poisoned output of `shape` at `offset` elements into its buffer, with GUARD poisoned
    elements on each side that must survive the launch."""

    def __init__(self, arrays, shape: tuple[int, ...], dtype: str, offset: int):
        self.arrays, self.offset, self.size = arrays, offset, int(np.prod(shape))
        fill = POISON if dtype.startswith(("float", "bfloat")) else -7  # ids: a bad label
        self.buffer = arrays.buffer(GUARD + offset + self.size + GUARD, dtype, fill)
        start = GUARD + offset
        self.view = arrays.reshape(self.buffer[start : start + self.size], shape)

    def check_guards(self, name: str) -> None:
        whole = self.arrays.host(self.buffer)
        start = GUARD + self.offset
        outside = np.concatenate([whole[:start], whole[start + self.size :]])
        assert np.isnan(outside).all(), f"{name}: an element outside the array was written"


def to_device(arrays, values: np.ndarray, dtype: str, offset: int = 0) -> Output:
    out = Output(arrays, values.shape, dtype, offset)
    arrays.put(out.view, values)
    return out


def run_softmax(core, arrays, case: core_cases.SoftmaxCase, layout: str, *, alias: bool = False):
    """One launch on device copies of the case laid out as LAYOUTS[layout]; checks that
    nothing outside the outputs was written; returns (loss, backprop) as device arrays."""
    at = LAYOUTS[layout]
    logits = to_device(arrays, case.logits, case.dtype, at["logits"])
    label_dtype = str(case.labels.dtype) if case.sparse else case.dtype
    labels = to_device(arrays, case.labels, label_dtype, at["labels"])
    weights = None if case.weights is None else to_device(arrays, case.weights, acc_dtype(case.dtype), at["weights"])
    n, c = case.logits.shape
    loss = Output(arrays, (n,), acc_dtype(case.dtype), at["loss"])
    arrays.set_rows(loss.view, case.nan_rows, SENTINEL)
    backprop = logits if alias else Output(arrays, (n, c), case.dtype, at["backprop"])
    if not alias:
        arrays.set_rows(backprop.view, case.nan_rows, SENTINEL)
    out = core.softmax_loss(
        logits.view, labels.view, None if weights is None else weights.view, **case.kwargs,
        loss=loss.view, backprop=backprop.view, stream=arrays.stream(),
    )
    assert out[0] is loss.view and out[1] is backprop.view
    arrays.sync()
    loss.check_guards("loss")
    backprop.check_guards("backprop")
    return loss.view, backprop.view


@pytest.mark.parametrize("mode, kind, dtype, c", _softmax_params())
def test_softmax_matches_oracle(core, arrays, mode: str, kind: str, dtype: str, c: int) -> None:
    case = softmax_case(
        mode, kind, dtype, rows_for(c), c, rng_for(mode, kind, dtype, c),
        nonfinite_rows=True, bad_labels=True,
    )
    layouts = layouts_for(mode, kind, dtype, c)
    runs = {}
    for layout in layouts:
        loss, backprop = run_softmax(core, arrays, case, layout)
        case.check(arrays.host(loss), arrays.host(backprop))
        runs[layout] = (loss, backprop)
    again = run_softmax(core, arrays, case, layouts[0])
    first = runs[layouts[0]]
    assert arrays.same_bits(again[0], first[0]) and arrays.same_bits(again[1], first[1]), "two runs differ"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("c", [300001] if harness.PERFECT else [262144, 300001])
def test_rows_longer_than_a_cluster(core, arrays, dtype: str, c: int) -> None:
    case = softmax_case("class", "int64", dtype, 3, c, rng_for("long", dtype, c))
    for layout in LAYOUTS:
        loss, backprop = run_softmax(core, arrays, case, layout)
        case.check(arrays.host(loss), arrays.host(backprop))


_ALIAS_CLASSES = [7, 33, 1000, 4097, 32768, 131072]


@pytest.mark.parametrize("c", [c for c in _ALIAS_CLASSES if not harness.PERFECT or c <= PERFECT_MAX_C])
@pytest.mark.parametrize("mode", ["plain", "focal_half_smooth_class", "expected_ce_smooth"])
def test_backprop_may_alias_logits(core, arrays, mode: str, c: int) -> None:
    if weights_kind(mode) == "matrix" and c > MATRIX_MAX_C:
        pytest.skip("cost matrix too large")
    case = softmax_case(mode, "soft", "float32", rows_for(c), c, rng_for("alias", mode, c))
    for layout in ("aligned", "coaligned"):
        want = run_softmax(core, arrays, case, layout)
        got = run_softmax(core, arrays, case, layout, alias=True)
        assert arrays.same_bits(got[0], want[0]) and arrays.same_bits(got[1], want[1])


def test_loss_only_variant(core, arrays) -> None:
    case = softmax_case("cost", "int32", "bfloat16", 33, 1000, rng_for("loss-only"))
    full_loss, _ = run_softmax(core, arrays, case, "aligned")
    loss = Output(arrays, (33,), "float32", 0)
    out = core.softmax_loss(
        to_device(arrays, case.logits, "bfloat16").view, to_device(arrays, case.labels, "int32").view,
        to_device(arrays, case.weights, "float32").view, **case.kwargs, loss=loss.view,
        compute_backprop=False, stream=arrays.stream(),
    )
    arrays.sync()
    assert out[1] is None
    assert arrays.same_bits(loss.view, full_loss)
    loss.check_guards("loss")


@pytest.mark.parametrize("dtype, scale", [("float32", 1e4), ("float16", 6e4)])
@pytest.mark.parametrize("c", [10, 1000, 32768])
def test_extreme_logits_stay_finite(core, arrays, dtype: str, scale: float, c: int) -> None:
    # A standard deviation of scale / 6 reaches about 0.75 scale over these many draws and
    # stays below float16's largest finite value.
    case = softmax_case("class", "int64", dtype, 9, c, rng_for("extreme", dtype, c), scale=scale / 6)
    assert np.isfinite(case.logits).all()
    loss, backprop = run_softmax(core, arrays, case, "misaligned")
    loss, backprop = arrays.host(loss), arrays.host(backprop)
    assert np.isfinite(loss).all() and np.isfinite(backprop).all()
    case.check(loss, backprop)


@pytest.mark.real_kernel
def test_non_default_stream(core, arrays) -> None:
    torch = arrays.torch
    case = softmax_case("focal", "int32", "float32", 33, 255, rng_for("stream"))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loss, backprop = run_softmax(core, arrays, case, "coaligned")
    case.check(arrays.host(loss), arrays.host(backprop))


@pytest.mark.real_kernel
def test_empty_batch_launches_nothing(core, arrays) -> None:
    torch = arrays.torch
    logits = torch.zeros((0, 5), device="cuda")
    loss = torch.zeros((0,), device="cuda")
    backprop = torch.zeros((0, 5), device="cuda")
    core.softmax_loss(logits, torch.zeros(0, dtype=torch.int32, device="cuda"), loss=loss, backprop=backprop)
    core.sigmoid_loss(logits, logits, loss=backprop, backprop=backprop)
    torch.cuda.synchronize()


@pytest.mark.real_kernel
def test_device_errors(core, arrays) -> None:
    torch = arrays.torch
    logits = torch.zeros((4, 3), device="cuda")
    labels = torch.zeros(4, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="loss is required for arrays on a CUDA device"):
        core.softmax_loss(logits, labels)
    with pytest.raises(ValueError, match="labels is on cpu but logits is on cuda:0"):
        core.softmax_loss(logits, labels.cpu(), loss=torch.zeros(4, device="cuda"))
    with pytest.raises(TypeError, match="pos_weight must be an array on cuda:0"):
        core.sigmoid_loss(logits, logits, 2.0, loss=torch.zeros_like(logits), backprop=torch.zeros_like(logits))


# ---------------------------------------------------------------------------------------
# The class-count limit. Indices inside a row are 32-bit in cuda_kernels.cu (kMaxClasses =
# INT32_MAX - 64); a row walk forms indices up to the end of its last chunk, past C.

KMAX_CLASSES = 2**31 - 1 - 64


def _max_classes(core) -> int:
    return int(core.max_classes()) if hasattr(core, "max_classes") else KMAX_CLASSES


@pytest.mark.real_kernel
@pytest.mark.parametrize("dtype", core_cases.DTYPES)
def test_row_indices_fit_in_32_bits_up_to_the_limit(core, dtype: str) -> None:
    """At the largest accepted C, the last slot of the last chunk ends within INT32_MAX
    (whole_aligned adds the vector width to first(), in int)."""
    if not hasattr(core, "launch_plan"):
        pytest.skip("_core has no launch_plan: the row walk's geometry is unknown")
    c = _max_classes(core)
    plan = regimes.core_plan(core, dtype, c)
    end = regimes.max_index_touched(dtype, c, plan)
    assert end <= regimes.INT32_MAX, (
        f"{dtype} C={c}: {plan} forms element indices up to {end} > INT32_MAX; the limit needs a "
        f"margin of at least {end - c} classes, or 64-bit indices"
    )


@pytest.mark.real_kernel
def test_classes_beyond_the_limit_are_refused(core, arrays) -> None:
    """C = limit + 1 (4 GiB of float16 logits, never written or read) gives a clear error
    naming the logits before any launch."""
    torch = arrays.torch
    c = _max_classes(core) + 1
    logits = torch.empty((1, c), dtype=torch.float16, device="cuda")
    loss = torch.empty((1,), dtype=torch.float32, device="cuda")
    with pytest.raises(ValueError, match="logits"):
        core.softmax_loss(logits, torch.zeros(1, dtype=torch.int32, device="cuda"), loss=loss,
                          compute_backprop=False, stream=arrays.stream())
    torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------
# Sigmoid and gradient scaling.

_SIGMOID_CLASSES = [1, 7, 33, 1000]


@pytest.mark.parametrize("c", [pytest.param(c, marks=[pytest.mark.smoke] if c == 33 else []) for c in _SIGMOID_CLASSES])
@pytest.mark.parametrize("dtype", core_cases.DTYPES)
@pytest.mark.parametrize("mode", list(core_cases.SIGMOID_MODES))
def test_sigmoid_matches_oracle(core, arrays, mode: str, dtype: str, c: int) -> None:
    case = core_cases.sigmoid_case(mode, dtype, 17, c, rng_for("sigmoid", mode, dtype, c), bad=True)
    acc = acc_dtype(dtype)
    nan = np.isnan(case.loss)
    for layout in LAYOUTS.values():
        weights = {
            name: None if w is None else to_device(arrays, w, acc, layout["weights"]).view
            for name, w in (("pos_weight", case.pos_weight), ("neg_weight", case.neg_weight))
        }
        loss = Output(arrays, case.logits.shape, acc, layout["loss"])
        backprop = Output(arrays, case.logits.shape, dtype, layout["backprop"])
        arrays.set_where(loss.view, nan, SENTINEL)
        arrays.set_where(backprop.view, nan, SENTINEL)
        core.sigmoid_loss(
            to_device(arrays, case.logits, dtype, layout["logits"]).view,
            to_device(arrays, case.labels, dtype, layout["labels"]).view,
            **weights, **case.kwargs, loss=loss.view, backprop=backprop.view, stream=arrays.stream(),
        )
        arrays.sync()
        assert_close("loss", arrays.host(loss.view), case.loss, acc)
        assert_close("grad", arrays.host(backprop.view), case.grad, dtype)
        loss.check_guards("loss")
        backprop.check_guards("backprop")


@pytest.mark.parametrize("value", [1.0, pytest.param(0.37, marks=pytest.mark.smoke), -2.0])
@pytest.mark.parametrize("dtype", core_cases.DTYPES)
def test_scale_gradient(core, arrays, dtype: str, value: float) -> None:
    """The reduced losses' backward: grad * upstream scalar (read on the device), in place or
    into another buffer; in place with a scalar of exactly 1 nothing is written."""
    rng = rng_for("scale", dtype, value)
    grad = core_cases.round_to(rng.normal(size=(37, 129)), dtype)
    scale = np.array(value, dtype=acc_dtype(dtype))
    want = core_cases.round_to(grad * value, dtype)
    for offset in (0, 1):
        out = Output(arrays, grad.shape, dtype, offset + 2)
        device_scale = to_device(arrays, scale, acc_dtype(dtype)).view
        core.scale_gradient(to_device(arrays, grad, dtype, offset).view, device_scale, out.view,
                            stream=arrays.stream())
        arrays.sync()
        assert_close("scaled", arrays.host(out.view), want, dtype)
        out.check_guards("scaled")
        in_place = to_device(arrays, grad, dtype, offset)
        core.scale_gradient(in_place.view, device_scale, in_place.view, stream=arrays.stream())
        arrays.sync()
        assert_close("scaled in place", arrays.host(in_place.view), want, dtype)
        in_place.check_guards("scaled in place")
