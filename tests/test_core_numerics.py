"""Numerical edge cases of the CPU kernels (DESIGN 2.4), through costxent._core.

Relative accuracy of tiny losses (confident sigmoid positives and softmax rows), long rows
(C = 10^6), finite logits anywhere in the float range, non-finite logits, and the output
scaling the reductions use (row_scale, scale, element_scale: rounded to the storage type
once). Expectations are float64 closed forms or the float64 oracle (tests/oracle.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import core_cases
import oracle
from core_cases import rng_for

try:
    _core = core_cases.load_core()
except ImportError as exc:  # built without the extension: nothing to test here
    pytest.skip(f"costxent._core is not built: {exc}", allow_module_level=True)


def softplus(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def relative_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    return np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float64).tiny)


# ---------------------------------------------------------------------------------------
# Every kernel path against the oracle: class counts on each side of the CPU kernels'
# boundaries (tiles of 2-4 classes known at compile time, tiles transposed by shuffles up to
# 8 classes and by 16 x 16 blocks up to 32, focal ones up to 64, longer rows walked in pairs
# or alone, rows past 1024 classes summed in blocks), with row counts that leave partial
# tiles.


@pytest.mark.parametrize("c", [2, 3, 4, 5, 8, 9, 16, 17, 31, 32, 33, 64, 65, 128, 1100])
@pytest.mark.parametrize("mode, kind", core_cases.MODE_KINDS)
def test_every_kernel_path_matches_the_oracle(c: int, mode: str, kind: str) -> None:
    case = core_cases.softmax_case(mode, kind, "float32", 37, c, rng_for("paths", mode, kind, c))
    args = dict(case.kwargs)
    labels = case.labels if case.sparse else case.labels.astype(np.float32)
    weights = None if case.weights is None else case.weights.astype(np.float32)
    loss, grad = _core.softmax_loss(case.logits.astype(np.float32), labels, weights, **args)
    case.check(loss, grad)


def _kernel_inputs(tag: str, mode: str, kind: str, dtype: str, n: int, c: int) -> tuple:
    """A case and its kernel arguments: (case, options, logits, labels, weights)."""
    case = core_cases.softmax_case(mode, kind, dtype, n, c, rng_for(tag, mode, kind, c, dtype))
    labels = case.labels if case.sparse else case.labels.astype(dtype)
    weights = None if case.weights is None else case.weights.astype(np.float32)
    return case, dict(case.kwargs), case.logits.astype(dtype), labels, weights


# Rows of 33 to 256 classes walk in pairs, two rows' chains interleaved. A row's result is the
# same bits whether it is paired with the row before, the row after, or walked alone (an odd
# last row, a row beside an ignored or non-finite one).
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("c", [33, 65, 100, 256])
@pytest.mark.parametrize("mode, kind", core_cases.MODE_KINDS)
def test_paired_rows_match_rows_walked_alone_bitwise(
    c: int, mode: str, kind: str, dtype: str
) -> None:
    n = 9
    case, args, logits, labels, weights = _kernel_inputs("pairs", mode, kind, dtype, n, c)
    loss, grad = _core.softmax_loss(logits, labels, weights, **args)
    case.check(loss, grad)
    for i in range(n):
        alone = _core.softmax_loss(logits[i : i + 1], labels[i : i + 1], weights, **args)
        np.testing.assert_array_equal(alone[0], loss[i : i + 1], err_msg=f"loss of row {i}")
        np.testing.assert_array_equal(alone[1], grad[i : i + 1], err_msg=f"gradient of row {i}")
    shifted = _core.softmax_loss(logits[1:], labels[1:], weights, **args)
    np.testing.assert_array_equal(shifted[0], loss[1:])
    np.testing.assert_array_equal(shifted[1], grad[1:])


# A per-example forward saves each row's state (max, 1 / exp sum, weight or expected cost,
# target sum); the backward given it reads the logits once, in one pass, and must give the
# bits of the backward that recomputes the rows: paired rows (C = 33, 256), rows walked alone
# and summed in blocks (C = 1100), rows that are ignored or not finite. Focal rows save none.
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("c", [33, 256, 1100])
@pytest.mark.parametrize("mode, kind", core_cases.MODE_KINDS)
def test_backward_from_the_saved_row_state_matches_the_recomputing_backward_bitwise(
    c: int, mode: str, kind: str, dtype: str
) -> None:
    n = 9
    case, args, logits, labels, weights = _kernel_inputs("state", mode, kind, dtype, n, c)
    size = _core.softmax_row_state_size(c, args.get("focal_gamma", 0.0))
    assert size == (0 if args.get("focal_gamma", 0.0) else 4)

    state = np.full((n, size), np.nan, np.float32)
    loss, none = _core.softmax_loss(logits, labels, weights, compute_backprop=False,
                                    save_state=state, **args)
    assert none is None
    no_loss, grad = _core.softmax_loss(logits, labels, weights, saved_state=state, **args)
    assert no_loss is None
    case.check(loss, grad)

    upstream = rng_for("upstream", mode, kind, c).uniform(-2.0, 2.0, n).astype(np.float32)
    bad = logits.copy()
    bad[4, c // 2] = np.nan
    bad[6, 1] = np.inf
    state = np.full((n, size), 7.0, np.float32)
    _core.softmax_loss(bad, labels, weights, compute_backprop=False, save_state=state, **args)
    _, resumed = _core.softmax_loss(bad, labels, weights, row_scale=upstream, saved_state=state,
                                    **args)
    _, recomputed = _core.softmax_loss(bad, labels, weights, row_scale=upstream, **args)
    np.testing.assert_array_equal(resumed, recomputed)
    assert np.isnan(resumed[[4, 6]]).all()


def test_saved_row_state_of_the_wrong_shape_is_named() -> None:
    logits = np.zeros((3, 100), np.float32)
    labels = np.zeros(3, np.int32)
    with pytest.raises(ValueError, match=r"row_state must have shape \[3, 0\] or \[3, 4\].*got shape \[3, 2\]"):
        _core.softmax_loss(logits, labels, saved_state=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"save_state.*shape"):
        _core.softmax_loss(logits, labels, compute_backprop=False,
                           save_state=np.zeros((3, 0), np.float32))
    with pytest.raises(ValueError, match="compute_backprop must be False"):
        _core.softmax_loss(logits, labels, save_state=np.zeros((3, 4), np.float32))


# Float32 gradients of at least 16 MiB with rows of at least 2 KiB are written with streaming
# stores over each row's whole cache lines, the lines shared between rows with ordinary ones:
# C = 1037 starts rows at every offset in a line, and an output one element past a line
# boundary shifts them all.
STREAMED_N, STREAMED_C = 4100, 1037
STREAMED_CASES = (
    [(mode, kind, 1) for mode, kind in core_cases.MODE_KINDS if kind in ("int32", "onehot")]
    + [("plain", "int32", 0), ("plain", "soft", 1), ("cost", "soft", 1)]
)


@pytest.mark.parametrize("mode, kind, offset", STREAMED_CASES)
def test_streamed_gradients_match_the_oracle(mode: str, kind: str, offset: int) -> None:
    n, c = STREAMED_N, STREAMED_C
    assert n * c * 4 >= 16 << 20 and c * 4 >= 2048
    case = core_cases.softmax_case(mode, kind, "float32", n, c, rng_for("streamed", mode, kind))
    labels = case.labels if case.sparse else case.labels.astype(np.float32)
    weights = None if case.weights is None else case.weights.astype(np.float32)
    out = np.full(n * c + offset, np.nan, np.float32)[offset:].reshape(n, c)
    loss, grad = _core.softmax_loss(
        case.logits.astype(np.float32), labels, weights, backprop=out, **case.kwargs
    )
    assert np.shares_memory(grad, out)
    case.check(loss, grad)


# ---------------------------------------------------------------------------------------
# Sigmoid: -log s = softplus(-z) computed directly, relatively accurate everywhere.


def test_sigmoid_confident_positives_keep_relative_accuracy() -> None:
    logits = np.array([[10.0, 17.0, 30.0]], np.float32)
    loss, grad = _core.sigmoid_loss(logits, np.ones_like(logits))
    want = softplus(-logits)  # 4.5399e-05, 4.14e-08, 9.36e-14
    assert np.all(relative_error(loss, want) < 1e-6), (loss, want)
    assert np.all(relative_error(grad, -np.exp(-softplus(logits))) < 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_sigmoid_loss_relative_error_over_the_logit_range(dtype: str, gamma: float) -> None:
    z = np.linspace(-80, 80, 4001).astype(dtype)
    logits = np.stack([z, z])
    labels = np.stack([np.ones_like(z), np.zeros_like(z)])
    loss, grad = _core.sigmoid_loss(logits, labels, 2.0, 0.5, focal_gamma=gamma)
    want, want_grad = oracle.sigmoid_cross_entropy(
        labels, logits.astype(np.float64), pos_weight=2.0, neg_weight=0.5, focal_gamma=gamma
    )
    # Compared where the value is a normal number of the arithmetic (float32 focal losses of
    # confident elements, ~exp(-3 |z|), underflow).
    bound = 1e-12 if dtype == "float64" else 2e-6
    normal = 1e3 * np.finfo(dtype).smallest_normal
    assert relative_error(loss, want)[np.abs(want) > normal].max() < bound
    assert relative_error(grad, want_grad)[np.abs(want_grad) > normal].max() < bound


# ---------------------------------------------------------------------------------------
# Softmax: a confident row's loss is log1p of the other classes' share, not log(1 + tiny).


@pytest.mark.parametrize("c", [2, 3, 10, 100, 1000])
@pytest.mark.parametrize("dense", [False, True])
def test_confident_softmax_rows_keep_relative_accuracy(c: int, dense: bool) -> None:
    margins = np.array([5.0, 12.0, 20.0, 40.0, 80.0])
    logits = np.zeros((margins.size, c), np.float32)
    logits[:, 0] = margins
    labels = np.zeros(margins.size, np.int32)
    if dense:
        labels = np.eye(c, dtype=np.float32)[labels]
    loss, _ = _core.softmax_loss(logits, labels)
    want = np.log1p((c - 1) * np.exp(-margins))
    assert relative_error(loss, want).max() < 1e-6, (loss, want)


# ---------------------------------------------------------------------------------------
# Long rows: blocked sums stay accurate at C = 10^6.


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.1}, {"focal_gamma": 2.0}, {"focal_gamma": 2.0, "label_smoothing": 0.1}],
    ids=["plain", "smooth", "focal", "focal-smooth"],
)
@pytest.mark.parametrize("dense", [False, True])
def test_million_class_rows_are_accurate(options: dict, dense: bool) -> None:
    c = 1_000_000
    rng = rng_for("million", dense, sorted(options.items()))
    logits = rng.normal(0.0, 2.0, size=(2, c)).astype(np.float32)
    ids = np.array([3, c - 7])
    if dense:
        labels = np.zeros((2, c), np.float32)
        labels[0, ids[0]] = 1.0
        labels[1, ids[1]] = 0.75
        labels[1, 11] = 0.25
    else:
        labels = ids.astype(np.int32)
    loss, grad = _core.softmax_loss(logits, labels, **options)
    want, want_grad = oracle.softmax_cross_entropy(
        labels, logits.astype(np.float64),
        label_smoothing=options.get("label_smoothing", 0.0),
        focal_gamma=options.get("focal_gamma", 0.0),
    )
    assert relative_error(loss, want).max() < 2e-6, (loss, want)
    # The gradient sums to 0 along a row; float32 sums of 10^6 terms would miss by ~1e-2.
    row_sums = grad.astype(np.float64).sum(axis=1)
    assert np.abs(row_sums).max() < 1e-5, row_sums
    scale = np.abs(want_grad).max()
    assert np.abs(grad - want_grad).max() < 1e-5 * scale


# ---------------------------------------------------------------------------------------
# The whole float range: finite logits give finite, correct results (no 0 * inf).


EXTREME = {"float16": 6e4, "float32": 3e38, "float64": 1e308}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("c", [2, 40])
def test_logits_at_the_ends_of_the_float_range(dtype: str, eps: float, dense: bool, c: int) -> None:
    big = EXTREME[dtype]
    logits = np.zeros((2, c), dtype)
    logits[:, 0] = big
    logits[:, 1] = -big
    ids = np.array([0, 1])
    labels = np.eye(c, dtype=dtype)[ids] if dense else ids.astype(np.int32)
    loss, grad = _core.softmax_loss(logits, labels, label_smoothing=eps)
    # p = e_0 in both rows; -log p_j is 0, 2 big (class 1) and big (the zeros). Row 0's
    # loss is eps / C * (2 big + (C - 2) big) = eps big; row 1's, whose label is the class at
    # -big, (1 - eps) 2 big + eps big, beyond the float32 range unless the logits are float16.
    assert loss[0] == 0 if eps == 0 else relative_error(loss[0], eps * big) < 1e-6
    want1 = (2 - eps) * big
    if want1 > np.finfo(loss.dtype).max:
        assert loss[1] == np.inf
    else:
        assert relative_error(loss[1], want1) < 1e-6
    assert np.all(np.isfinite(grad))
    ts = (1 - eps) * np.eye(c)[ids] + eps / c
    np.testing.assert_allclose(grad.astype(np.float64), np.eye(c)[[0, 0]] - ts, rtol=1e-3, atol=1e-7)


def test_extreme_row_through_every_weighting() -> None:
    logits = np.array([[3e38, -3e38], [-3e38, 3e38]], np.float32)
    labels = np.array([0, 0], np.int32)
    cost = np.array([[0.0, 2.0], [3.0, 0.0]], np.float32)
    for kwargs in (
        {"weights": np.array([2.0, 0.5], np.float32)},
        {"weights": cost},
        {"focal_gamma": 2.0, "label_smoothing": 0.1},
        {"loss_kind": "expected_cost", "weights": cost, "ce_weight": 0.5, "label_smoothing": 0.1},
    ):
        loss, grad = _core.softmax_loss(logits, labels, **kwargs)
        assert np.isfinite(loss[0]), kwargs
        assert np.all(np.isfinite(grad)), kwargs
    loss, _ = _core.softmax_loss(logits, labels, focal_gamma=2.0, label_smoothing=0.1)
    assert relative_error(loss[0], 0.05 * 6e38) < 1e-6


def nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p_y in float64 with lse = m + log1p(sum of the non-max classes' exp(z - m))."""
    z = np.asarray(logits, np.float64)
    top = np.argmax(z, axis=-1)
    m = z[np.arange(len(z)), top]
    e = np.exp(z - m[:, None])
    e[np.arange(len(z)), top] = 0.0
    return (m - z[np.arange(len(z)), labels]) + np.log1p(e.sum(axis=-1))


@pytest.mark.parametrize("c", [3, 64])
@pytest.mark.parametrize("dtype, big", [("float32", 1e4), ("float16", 6e4)])
def test_large_logits_are_finite_and_correct(c: int, dtype: str, big: float) -> None:
    rng = rng_for("large", c, dtype)
    logits = rng.uniform(-big, big, size=(37, c)).astype(dtype)
    labels = rng.integers(0, c, size=37).astype(np.int32)
    loss, grad = _core.softmax_loss(logits, labels)
    # Relative accuracy down to float32's normal range (a smaller loss may flush to 0).
    want = nll(logits, labels)
    assert np.all(np.abs(loss - want) <= 1e-6 * want + np.finfo(np.float32).smallest_normal)
    for kwargs in ({}, {"label_smoothing": 0.2}, {"focal_gamma": 0.5}):
        loss, grad = _core.softmax_loss(logits, labels, **kwargs)
        want, want_grad = oracle.softmax_cross_entropy(
            labels, logits.astype(np.float64),
            label_smoothing=kwargs.get("label_smoothing", 0.0),
            focal_gamma=kwargs.get("focal_gamma", 0.0),
        )
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        # The oracle's float64 log(sum) rounds losses below ~1e-16 to 0.
        assert np.all(np.abs(loss - want) <= 1e-6 * np.abs(want) + 1e-15)
        assert np.abs(grad.astype(np.float64) - want_grad).max() < 2e-3


@pytest.mark.parametrize("c", [3, 10, 64, 100, 300])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dense", [False, True])
def test_non_finite_logits_give_nan_rows_only(c: int, bad: float, dense: bool) -> None:
    rng = rng_for("nonfinite", c, str(bad), dense)
    logits = rng.normal(size=(40, c)).astype(np.float32)
    rows = [0, 17, 39]
    logits[rows, [1, c - 1, 0]] = bad
    ids = rng.integers(0, c, size=40)
    labels = np.eye(c, dtype=np.float32)[ids] if dense else ids.astype(np.int32)
    for kwargs in ({}, {"label_smoothing": 0.1}, {"focal_gamma": 2.0}):
        loss, grad = _core.softmax_loss(logits, labels, **kwargs)
        assert np.all(np.isnan(loss[rows])) and np.all(np.isnan(grad[rows]))
        good = np.setdiff1d(np.arange(40), rows)
        assert np.all(np.isfinite(loss[good])) and np.all(np.isfinite(grad[good]))


# ---------------------------------------------------------------------------------------
# Output scaling inside the row pass: one rounding to the storage type.


def half_ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    x = np.abs(np.asarray(x, np.float64))
    info = np.finfo(dtype)
    exponent = np.floor(np.log2(np.maximum(x, float(info.smallest_normal))))
    return 0.5 * np.exp2(exponent - info.nmant)


@pytest.mark.parametrize("c", [3, 10, 50])
@pytest.mark.parametrize("dense", [False, True])
def test_scaled_float16_gradient_is_rounded_once(c: int, dense: bool) -> None:
    rng = rng_for("round-once", c, dense)
    n = 300
    logits = rng.normal(0, 2, size=(n, c)).astype(np.float16)
    ids = rng.integers(0, c, size=n)
    labels = np.eye(c, dtype=np.float16)[ids] if dense else ids.astype(np.int32)
    row_scale = rng.uniform(0.1, 3.0, size=n).astype(np.float32)
    scale = np.float32(1.0 / 7.0)
    _, grad = _core.softmax_loss(logits, labels, row_scale=row_scale, scale=float(scale))
    _, exact = oracle.softmax_cross_entropy(labels, logits.astype(np.float64))
    exact = exact * row_scale[:, None].astype(np.float64) * float(scale)
    # Within half a float16 ulp of the exact value (plus float32 arithmetic slack): a second
    # rounding (of an already rounded unscaled gradient) would miss by up to a whole ulp.
    err = np.abs(grad.astype(np.float64) - exact)
    assert np.all(err <= half_ulp(exact, "float16") * 1.01 + 1e-6 * np.abs(exact))


def test_row_scale_and_scale_multiply_the_gradient_not_the_loss() -> None:
    rng = rng_for("row-scale")
    logits = rng.normal(size=(50, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=50).astype(np.int32)
    row_scale = rng.uniform(-2, 2, size=50).astype(np.float32)
    loss, grad = _core.softmax_loss(logits, labels, row_scale=row_scale, scale=0.25)
    want, want_grad = oracle.softmax_cross_entropy(labels, logits.astype(np.float64))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad * row_scale[:, None] * 0.25, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("c", [3, 100])
def test_nan_row_scale_propagates_and_ignored_rows_are_zero(c: int) -> None:
    rng = rng_for("nan-scale", c)
    logits = rng.normal(size=(20, c)).astype(np.float32)
    labels = rng.integers(0, c - 1, size=20).astype(np.int32)
    labels[[2, 9]] = c - 1  # ignored
    row_scale = np.ones(20, np.float32)
    row_scale[[5, 9]] = np.nan
    _, grad = _core.softmax_loss(logits, labels, ignore_class=c - 1, row_scale=row_scale)
    assert np.all(np.isnan(grad[5]))
    assert not np.any(grad[[2, 9]])
    others = np.setdiff1d(np.arange(20), [2, 5, 9])
    assert np.all(np.isfinite(grad[others]))


@pytest.mark.parametrize("c", [2, 30, 200])
@pytest.mark.parametrize("weighted", [False, True])
def test_reduced_sum_matches_float64(c: int, weighted: bool) -> None:
    rng = rng_for("reduced", c, weighted)
    n = 3000  # three reduction blocks, the last partial
    logits = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n).astype(np.int32)
    sample_weight = rng.uniform(0, 2, size=n).astype(np.float32) if weighted else None
    loss, grad = _core.softmax_loss(logits, labels, row_scale=sample_weight, reduction="sum")
    want, want_grad = oracle.softmax_cross_entropy(labels, logits.astype(np.float64))
    sw = np.ones(n) if sample_weight is None else sample_weight.astype(np.float64)
    assert relative_error(loss, np.sum(sw * want)) < 1e-6
    np.testing.assert_allclose(grad, want_grad * sw[:, None], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("c", [1, 5, 30, 300])
def test_sigmoid_element_and_row_scale(c: int) -> None:
    rng = rng_for("sigmoid-scale", c)
    n = 40
    logits = rng.normal(0, 3, size=(n, c)).astype(np.float32)
    labels = rng.uniform(size=(n, c)).astype(np.float32)
    upstream = rng.normal(size=(n, c)).astype(np.float32)
    row_scale = rng.uniform(0, 2, size=n).astype(np.float32)
    loss, grad = _core.sigmoid_loss(
        logits, labels, 1.5, element_scale=upstream, row_scale=row_scale, scale=0.5
    )
    want, want_grad = oracle.sigmoid_cross_entropy(labels, logits.astype(np.float64), pos_weight=1.5)
    np.testing.assert_allclose(loss, want, rtol=2e-6)
    np.testing.assert_allclose(
        grad, want_grad * upstream * row_scale[:, None] * 0.5, rtol=1e-5, atol=1e-7
    )


# ---------------------------------------------------------------------------------------
# Dispatch: the AVX-512 build runs where the CPU has it.


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_instruction_set_matches_the_cpu() -> None:
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags")
    order = ["baseline", "avx2-fma", "avx512"]
    best = "baseline"
    if {"avx2", "fma", "f16c"} <= flags:
        best = "avx2-fma"
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
            best = "avx512"
    caps = {"baseline": "baseline", "avx2": "avx2-fma", "avx512": "avx512"}
    cap = caps.get(os.environ.get("COSTXENT_CPU_ISA", ""))
    if cap is not None and order.index(cap) < order.index(best):
        best = cap
    assert _core.cpu_instruction_set() == best


# ---------------------------------------------------------------------------------------
# bfloat16 (NumPy has none, so through the TensorFlow op when it is built): every kernel
# path, and a gradient within half a bfloat16 ulp of the exact one (rounded once).


def fused_ops():
    tf = pytest.importorskip("tensorflow")
    from costxent import ops

    if ops.implementation() != "fused-cpu":
        pytest.skip(f"the fused CPU op is not in use ({ops.implementation()})")
    return tf, ops


@pytest.mark.parametrize("c", [2, 3, 4, 5, 9, 17, 64, 65, 128, 1100])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("mode", ["plain", "class", "cost", "smooth"])
def test_bfloat16_paths_round_the_exact_gradient_once(c: int, dense: bool, mode: str) -> None:
    tf, ops = fused_ops()
    import ml_dtypes

    rng = rng_for("bf16-paths", c, dense, mode)
    n = 37
    logits = rng.normal(0, 2, size=(n, c)).astype(ml_dtypes.bfloat16).astype(np.float64)
    ids = rng.integers(0, c, size=n)
    labels = np.eye(c)[ids] if dense else ids
    kwargs: dict = {}
    if mode == "class":
        kwargs["class_weight"] = rng.uniform(0.5, 2, size=c).astype(np.float32)
    if mode == "cost":
        kwargs["cost_matrix"] = rng.uniform(0, 3, size=(c, c)).astype(np.float32)
    if mode == "smooth":
        kwargs["label_smoothing"] = 0.1
    z = tf.constant(logits, tf.bfloat16)
    y = tf.constant(labels, tf.bfloat16) if dense else tf.constant(labels, tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = ops.softmax_cross_entropy(y, z, **kwargs)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, z)
    want, want_grad = oracle.softmax_cross_entropy(
        labels, logits,
        class_weight=kwargs.get("class_weight"),
        cost_matrix=kwargs.get("cost_matrix"),
        label_smoothing=kwargs.get("label_smoothing", 0.0),
    )
    assert grad.dtype == tf.bfloat16
    np.testing.assert_allclose(loss.numpy(), want, rtol=2e-6)
    got = tf.cast(grad, tf.float64).numpy()
    half_ulp_bf16 = 0.5 * np.exp2(np.floor(np.log2(np.maximum(np.abs(want_grad), 1e-38))) - 7)
    # Plus float32 arithmetic on the terms p_j and ts_j, which cancel where p_j ~ eps / C.
    terms = np.abs(want_grad) + 2 * kwargs.get("label_smoothing", 0.0) / c
    assert np.all(np.abs(got - want_grad) <= half_ulp_bf16 * 1.01 + 1e-6 * terms)
