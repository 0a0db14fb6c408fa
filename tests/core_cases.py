"""Shared by the costxent._core tests (tests/test_core_module.py, tests/gpu) and
benchmarks/gpu: loading the extension without TensorFlow, the loss configurations, and the
float64 oracle's expectations with per-dtype tolerances.

Inputs are drawn in float64 and rounded to the storage dtype before the oracle sees them, so
a comparison measures the kernel's arithmetic and output rounding only.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import zlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

import oracle

DTYPES = ("float16", "bfloat16", "float32", "float64")
LABEL_KINDS = ("int32", "int64", "onehot", "soft")


def load_core() -> ModuleType:
    """costxent._core, found without importing costxent (whose __init__ imports TensorFlow).

    Looks at $COSTXENT_CORE (the built .so, or a folder holding it), then for
    costxent/_core*.so and _core*.so on sys.path. Raises ImportError when none loads.
    """
    candidates: list[str] = []
    env = os.environ.get("COSTXENT_CORE")
    if env:
        candidates += [env] if os.path.isfile(env) else sorted(glob.glob(os.path.join(env, "_core*.so")))
    for entry in sys.path:
        base = entry or "."
        candidates += sorted(glob.glob(os.path.join(base, "costxent", "_core*.so")))
        candidates += sorted(glob.glob(os.path.join(base, "_core*.so")))
    errors = []
    for path in candidates:
        spec = importlib.util.spec_from_file_location("_core", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError as e:  # built for another Python, say
            errors.append(f"{path}: {e}")
            continue
        return module
    raise ImportError(
        "costxent._core not found (set COSTXENT_CORE to the built _core*.so)"
        + ("; " + "; ".join(errors) if errors else "")
    )


def rng_for(*key: Any) -> np.random.Generator:
    """A generator seeded by `key`, the same in every process (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 copy of x with every value rounded (to nearest even) to `dtype`."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return x.copy()
    if dtype == "bfloat16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32).astype(np.float64)
    return x.astype(dtype).astype(np.float64)


def acc_dtype(dtype: str) -> str:
    """The kernels' arithmetic and loss dtype for logits of `dtype` (DESIGN 2.5)."""
    return "float64" if dtype == "float64" else "float32"


# Per dtype of the compared output (the loss is in the arithmetic dtype, the gradient in the
# logits'): (rtol of the float32 / float64 arithmetic, relative to the terms that sum to a
# value; atol as a fraction of the largest expected magnitude). Every output is also allowed
# ROUNDING_ULPS spacings of its own dtype at the expected value: a float16 / bfloat16
# gradient is a float32 value rounded once, so half a spacing of the output dtype is its
# floor (below the smallest normal, the subnormal spacing: 2^-24 in float16), and no
# fraction of the largest magnitude can stand in for it.
TOLERANCE = {
    "float16": (3e-5, 0.0),
    "bfloat16": (3e-5, 0.0),
    "float32": (3e-5, 1e-6),
    "float64": (1e-10, 1e-13),
}
ROUNDING_ULPS = 1.0
# (explicit mantissa bits, smallest normal exponent) of each float dtype.
_FORMAT = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126), "float64": (52, -1022)}


def spacing(x: np.ndarray, dtype: str) -> np.ndarray:
    """The distance between adjacent `dtype` values at |x| (the subnormal spacing below the
    smallest normal), as float64: one ulp of `dtype`, whether or not x is representable."""
    mantissa, min_exponent = _FORMAT[dtype]
    x = np.abs(np.asarray(x, dtype=np.float64))
    _, exponent = np.frexp(x)  # x = f 2^e, f in [0.5, 1); 0 gives e = 0
    return np.ldexp(1.0, np.maximum(np.where(x == 0, min_exponent, exponent - 1), min_exponent) - mantissa)


def assert_close(
    name: str, got: np.ndarray, want: np.ndarray, dtype: str, terms: np.ndarray | None = None
) -> None:
    """Element-wise |got - want| <= atol + rtol max(|want|, terms) + ROUNDING_ULPS
    spacing(want, dtype), NaN exactly where want is (infinities must match exactly).

    terms: the magnitude of the terms that sum to each value, where they can cancel (a
    float32 sum of terms of size T is only good to about eps T, however small the sum).
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    size = np.abs(want) if terms is None else np.maximum(np.abs(want), terms)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != expected {want.shape}"
    nan_want = np.isnan(want)
    wrong_nan = np.isnan(got) != nan_want
    if wrong_nan.any():
        idx = tuple(int(i) for i in np.argwhere(wrong_nan)[0])
        raise AssertionError(f"{name}: NaN mismatch at {idx}: got {got[idx]}, expected {want[idx]}")
    rtol, atol_fraction = TOLERANCE[dtype]
    finite = want[~nan_want]
    atol = atol_fraction * (float(np.max(np.abs(finite))) if finite.size else 0.0)
    with np.errstate(invalid="ignore"):  # inf - inf: exactly equal infinities are no error
        err = np.where(nan_want | (got == want), 0.0, np.abs(got - want))
    bound = atol + rtol * np.where(nan_want, 0.0, size) + ROUNDING_ULPS * np.where(
        nan_want | np.isinf(want), 0.0, spacing(np.where(np.isfinite(want), want, 0.0), dtype)
    )
    bad = err > bound
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(err - bound), err.shape))
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())} of {bad.size} elements off; first at {idx}: "
            f"got {got[idx]!r}, expected {want[idx]!r}; worst at {worst}: got {got[worst]!r}, "
            f"expected {want[worst]!r} (rtol {rtol}, atol {atol:.3g}, {ROUNDING_ULPS} {dtype} ulp)"
        )



# Loss configurations: keyword arguments of _core.softmax_loss (without the arrays); the
# weights a mode takes are WEIGHTS[mode] ("class": a vector, "matrix": C x C), and the kernel
# tells the two apart by their rank.
MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "class": {},
    "cost": {},
    "smooth": {"label_smoothing": 0.2},
    "focal": {"focal_gamma": 2.0},
    "focal_half_smooth_class": {"focal_gamma": 0.5, "label_smoothing": 0.1},
    "expected": {"loss_kind": "expected_cost"},
    "expected_ce_smooth": {"loss_kind": "expected_cost", "ce_weight": 0.3, "label_smoothing": 0.1},
    "ignore": {"ignore_class": 1},
}
# Every (mode, label kind) pair that exists: ignore_class takes sparse labels only.
MODE_KINDS = [
    (mode, kind)
    for mode in MODES
    for kind in LABEL_KINDS
    if "ignore_class" not in MODES[mode] or kind in ("int32", "int64")
]


WEIGHTS: dict[str, str] = {
    "class": "class",
    "cost": "matrix",
    "focal_half_smooth_class": "class",
    "expected": "matrix",
    "expected_ce_smooth": "matrix",
}


def weights_kind(mode: str) -> str | None:
    return WEIGHTS.get(mode)


@dataclass
class SoftmaxCase:
    """Inputs (NumPy, already rounded to their dtypes) and the oracle's loss and gradient."""

    dtype: str
    logits: np.ndarray  # float64 values, representable in dtype
    labels: np.ndarray  # int32 / int64 ids, or float64 dense rows representable in dtype
    weights: np.ndarray | None  # float64 values, representable in the arithmetic dtype
    kwargs: dict[str, Any]
    loss: np.ndarray
    grad: np.ndarray
    loss_terms: np.ndarray  # magnitudes for assert_close's `terms`
    grad_terms: np.ndarray
    nan_rows: list[int] = field(default_factory=list)

    @property
    def sparse(self) -> bool:
        return self.labels.dtype.kind == "i"

    def check(self, loss: np.ndarray, grad: np.ndarray | None) -> None:
        """Asserts a kernel's outputs match the oracle within the dtypes' tolerances."""
        assert_close("loss", loss, self.loss, acc_dtype(self.dtype), self.loss_terms)
        if grad is not None:
            assert_close("grad", grad, self.grad, self.dtype, self.grad_terms)


def _term_magnitudes(
    kwargs: dict[str, Any], labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the terms the kernels add up for each loss and gradient element (DESIGN 2):
    S lse - sum ts zs and w (ts g - p sum ts g) for cross-entropy (|g| <= 1 + gamma),
    sum c p + lam CE and p (c - E) + lam (p S - ts) for expected cost."""
    n, c = logits.shape
    zs = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(zs).sum(axis=1, keepdims=True))
    p = np.exp(zs - lse)
    if labels.ndim == 1:
        t = np.zeros((n, c))
        keep = labels != kwargs.get("ignore_class", -1)
        t[np.nonzero(keep)[0], labels[keep]] = 1.0
    else:
        t = labels
    eps = kwargs.get("label_smoothing", 0.0)
    ts = ((1 - eps) * t + eps / c) * (t.sum(axis=1, keepdims=True) > 0)
    s = ts.sum(axis=1, keepdims=True)
    ce = s * np.abs(lse) + (ts * np.abs(zs)).sum(axis=1, keepdims=True)
    if kwargs.get("loss_kind") == "expected_cost":
        cost = np.abs(t) @ np.abs(weights)
        e = (cost * p).sum(axis=1, keepdims=True)
        lam = abs(kwargs.get("ce_weight", 0.0))
        return (e + lam * ce)[:, 0], p * (cost + e) + lam * (p * s + ts)
    w = 1.0 if weights is None else float(np.abs(weights).max())
    w *= 1.0 + kwargs.get("focal_gamma", 0.0)
    return (w * ce)[:, 0], w * (ts + p * s)


def _labels(kind: str, n: int, c: int, rng: np.random.Generator, dtype: str) -> np.ndarray:
    if kind in ("int32", "int64"):
        return rng.integers(0, c, size=n).astype(kind)
    if kind == "onehot":
        t = np.zeros((n, c))  # not np.eye(c)[ids]: C x C float64 is 128 GiB at C = 2^17
        t[np.arange(n), rng.integers(0, c, size=n)] = 1.0
        return t
    raw = rng.random((n, c)) ** 4  # skewed soft rows, with many near-zero entries
    raw[:, rng.integers(0, c)] = 0.0  # and an exact zero column
    return round_to(raw / raw.sum(axis=1, keepdims=True), dtype)


def softmax_case(
    mode: str,
    kind: str,
    dtype: str,
    n: int,
    c: int,
    rng: np.random.Generator,
    *,
    scale: float = 3.0,
    nonfinite_rows: bool = False,
    bad_labels: bool = False,
) -> SoftmaxCase:
    """A random problem for `mode` with `kind` labels, and its oracle.

    nonfinite_rows: a NaN, +inf and -inf logit in rows 1, 2, 3, which every kernel answers
    with NaN loss and gradient rows, unless the row's label is ignore_class (then loss 0 and a
    zero gradient row, as for any ignored row: with ignore_class a NaN logit is also put in
    the last row, which is ignored); bad_labels: (sparse) labels C and -1 in rows 4 and 5,
    which the GPU kernel answers with NaN rows. Ignored rows are the last two, so n >= 9.
    """
    kwargs = dict(MODES[mode])
    logits = round_to(rng.normal(0.0, scale, size=(n, c)), dtype)
    if c > 3:  # exact ties for the cost-weight argmax: the lowest index wins
        logits[0, 1] = logits[0, 3] = round_to(np.max(logits[0]) + 1.0, dtype)
    labels = _labels(kind, n, c, rng, dtype)
    ignore = kwargs.get("ignore_class")
    if ignore is not None:
        labels[-2:] = ignore
    acc = acc_dtype(dtype)
    weights = None
    wk = weights_kind(mode)
    if wk == "class":
        weights = round_to(rng.uniform(0.25, 4.0, size=c), acc)
    elif wk == "matrix":
        # Negative costs are rewards in expected cost and refused in a cross-entropy.
        low = -1.0 if kwargs.get("loss_kind") == "expected_cost" else 0.0
        weights = round_to(rng.uniform(low, 5.0, size=(c, c)), acc)
        np.fill_diagonal(weights, 0.0)

    if nonfinite_rows or bad_labels:
        assert n >= 9, "bad rows take rows 1 to 5, and ignored rows the last two"
    nonfinite: list[int] = []
    if nonfinite_rows:
        logits[1, c // 2] = np.nan
        logits[2, 0] = np.inf
        logits[3, c - 1] = -np.inf
        nonfinite += [1, 2, 3]
        if ignore is not None:
            logits[-1, c // 3] = np.nan
            nonfinite.append(n - 1)
    ignored = labels == ignore if ignore is not None else np.zeros(n, dtype=bool)
    nan_rows = [r for r in nonfinite if not ignored[r]]
    zero_rows = [r for r in nonfinite if ignored[r]]
    if bad_labels and labels.dtype.kind == "i":
        labels[4] = c
        labels[5] = -1
        nan_rows += [4, 5]
    good = np.ones(n, dtype=bool)
    good[nan_rows + zero_rows] = False

    loss = np.full(n, np.nan)
    grad = np.full((n, c), np.nan)
    loss_terms = np.zeros(n)
    grad_terms = np.zeros((n, c))
    loss_terms[good], grad_terms[good] = _term_magnitudes(kwargs, labels[good], logits[good], weights)
    args = dict(
        label_smoothing=kwargs.get("label_smoothing", 0.0),
        ignore_class=kwargs.get("ignore_class"),
    )
    if kwargs.get("loss_kind") == "expected_cost":
        lo, gr = oracle.expected_cost(
            labels[good], logits[good], weights, ce_weight=kwargs.get("ce_weight", 0.0), **args
        )
    else:
        lo, gr = oracle.softmax_cross_entropy(
            labels[good],
            logits[good],
            class_weight=weights if wk == "class" else None,
            cost_matrix=weights if wk == "matrix" else None,
            focal_gamma=kwargs.get("focal_gamma", 0.0),
            **args,
        )
    loss[good] = lo
    grad[good] = gr
    loss[zero_rows] = 0.0
    grad[zero_rows] = 0.0
    return SoftmaxCase(
        dtype, logits, labels, weights, kwargs, loss, grad, loss_terms, grad_terms, nan_rows
    )


@dataclass
class SigmoidCase:
    dtype: str
    logits: np.ndarray
    labels: np.ndarray
    pos_weight: np.ndarray | float | None
    neg_weight: np.ndarray | float | None
    kwargs: dict[str, Any]
    loss: np.ndarray
    grad: np.ndarray


SIGMOID_MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "weighted": {"pos_weight": "vector", "neg_weight": "scalar"},
    "focal_smooth": {"focal_gamma": 2.0, "label_smoothing": 0.1, "pos_weight": "scalar"},
    "focal_half": {"focal_gamma": 0.5, "neg_weight": "vector"},
}


def sigmoid_case(
    mode: str, dtype: str, n: int, c: int, rng: np.random.Generator, *, bad: bool = False
) -> SigmoidCase:
    """A random multi-label problem (soft and hard labels); bad: labels outside [0, 1] in a
    few elements, which the GPU kernel answers with NaN."""
    spec = dict(SIGMOID_MODES[mode])
    acc = acc_dtype(dtype)
    weights: dict[str, Any] = {}
    for name in ("pos_weight", "neg_weight"):
        shape = {"vector": (c,), "scalar": (1,)}.get(spec.pop(name, ""), None)
        weights[name] = None if shape is None else round_to(rng.uniform(0.25, 4.0, size=shape), acc)
    logits = round_to(rng.normal(0.0, 4.0, size=(n, c)), dtype)
    labels = (rng.random((n, c)) < 0.3).astype(np.float64)
    labels[::2] = round_to(rng.random((len(labels[::2]), c)), dtype)
    loss, grad = oracle.sigmoid_cross_entropy(
        labels,
        logits,
        pos_weight=weights["pos_weight"],
        neg_weight=weights["neg_weight"],
        label_smoothing=spec.get("label_smoothing", 0.0),
        focal_gamma=spec.get("focal_gamma", 0.0),
    )
    if bad:
        labels.flat[[1, 2 * c // 3 + 1]] = [1.5, -0.25]
        loss.flat[[1, 2 * c // 3 + 1]] = np.nan
        grad.flat[[1, 2 * c // 3 + 1]] = np.nan
    return SigmoidCase(dtype, logits, labels, weights["pos_weight"], weights["neg_weight"], spec, loss, grad)
