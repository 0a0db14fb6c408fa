"""Where tests/gpu run: on a CUDA device against costxent._core's CUDA kernels, or, where
there is none, against a *perfect kernel* so that the harness itself is tested everywhere.

The perfect kernel (PerfectCore) answers softmax_loss, sigmoid_loss and scale_gradient from
the float64 oracle (tests/oracle.py) applied to the whole inputs, with the GPU kernels'
contract for the rows the oracle refuses or cannot know (DESIGN 2.4): rows labelled
ignore_class give 0 whatever their logits, other rows with a non-finite logit or a label
outside [0, C) (elements outside [0, 1] for the sigmoid) give NaN; its outputs are rounded
once to their dtypes and written into the arrays passed, like the real kernels. Expectations
are built separately by tests/core_cases.py, so a wrong expectation, a tolerance below a
dtype's quantum, a case too large to build or a bookkeeping error in the tests fails here.

Mode: $COSTXENT_GPU_HARNESS = "cuda" (the real kernels; an error where they cannot run),
"perfect", or unset (cuda where available, else perfect). Arrays are PyTorch CUDA tensors
in cuda mode and NumPy arrays (ml_dtypes' bfloat16) in perfect mode; tests reach them only
through a Backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import core_cases
import oracle

MODE_VARIABLE = "COSTXENT_GPU_HARNESS"
# A deliberate defect of the perfect kernel, for tests of the harness: "unwritten" (the last
# gradient column), "ulps" (one gradient element 3 spacings off), "ignored_nan" (ignored rows
# with a non-finite logit answered with NaN).
FAULT_VARIABLE = "COSTXENT_PERFECT_FAULT"


def _cuda_unavailable() -> str | None:
    """Why the real kernels cannot run here, or None."""
    try:
        import torch
    except ImportError:
        return "tests/gpu use PyTorch for device arrays, and it is not installed"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "no CUDA device visible through PyTorch"
    try:
        core = core_cases.load_core()
    except ImportError as e:
        return str(e)
    if not core.has_cuda():
        return "costxent._core was built without its CUDA kernels"
    return None


def select_mode() -> tuple[str, str | None]:
    """("cuda" or "perfect", why cuda is not used). Forced cuda that cannot run raises."""
    wanted = os.environ.get(MODE_VARIABLE, "")
    if wanted not in ("", "cuda", "perfect"):
        raise ValueError(f"{MODE_VARIABLE} must be cuda, perfect or unset, got {wanted!r}")
    if wanted == "perfect":
        return "perfect", f"{MODE_VARIABLE}=perfect"
    reason = _cuda_unavailable()
    if reason is None:
        return "cuda", None
    if wanted == "cuda":
        raise RuntimeError(f"{MODE_VARIABLE}=cuda, but the CUDA kernels cannot run: {reason}")
    return "perfect", reason


MODE, WHY_NOT_CUDA = select_mode()
PERFECT = MODE == "perfect"


# ---------------------------------------------------------------------------------------
# Arrays.


class TorchCuda:
    """PyTorch tensors on the current CUDA device."""

    name = "cuda"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.dtypes = {
            "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
            "float64": torch.float64, "int32": torch.int32, "int64": torch.int64,
        }

    def buffer(self, size: int, dtype: str, fill: float) -> Any:
        return self.torch.full((size,), fill, dtype=self.dtypes[dtype], device="cuda")

    def put(self, view: Any, values: np.ndarray) -> None:
        # values are representable in the view's dtype: the conversion is exact
        view.copy_(self.torch.from_numpy(np.ascontiguousarray(values).reshape(view.shape)).to(view.dtype))

    def reshape(self, flat: Any, shape: tuple[int, ...]) -> Any:
        return flat.view(shape)

    def host(self, a: Any) -> np.ndarray:
        return a.detach().to(self.torch.float64).cpu().numpy()

    def set_rows(self, a: Any, rows: list[int], value: float) -> None:
        if rows:
            a[rows] = value

    def set_where(self, a: Any, mask: np.ndarray, value: float) -> None:
        a[self.torch.from_numpy(mask).to(a.device)] = value

    def same_bits(self, a: Any, b: Any) -> bool:
        u8 = self.torch.uint8
        return self.torch.equal(a.contiguous().view(u8), b.contiguous().view(u8))

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def stream(self) -> int:
        return self.torch.cuda.current_stream().cuda_stream


class NumPyHost:
    """NumPy arrays in the storage dtypes (bfloat16 from ml_dtypes), for the perfect kernel."""

    name = "perfect"

    def __init__(self) -> None:
        import ml_dtypes

        self.dtypes = {
            "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
            "float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
            "int32": np.dtype(np.int32), "int64": np.dtype(np.int64),
        }

    def buffer(self, size: int, dtype: str, fill: float) -> np.ndarray:
        return np.full(size, fill, dtype=self.dtypes[dtype])

    def put(self, view: np.ndarray, values: np.ndarray) -> None:
        view[...] = np.asarray(values).reshape(view.shape).astype(view.dtype)

    def reshape(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return flat.reshape(shape)  # a view: flat is contiguous

    def host(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a).astype(np.float64)

    def set_rows(self, a: np.ndarray, rows: list[int], value: float) -> None:
        if rows:
            a[rows] = value

    def set_where(self, a: np.ndarray, mask: np.ndarray, value: float) -> None:
        a[mask] = value

    def same_bits(self, a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()

    def sync(self) -> None:
        pass

    def stream(self) -> int:
        return 0


def backend() -> TorchCuda | NumPyHost:
    return NumPyHost() if PERFECT else TorchCuda()


# ---------------------------------------------------------------------------------------
# The perfect kernel.


def _array(a: Any) -> np.ndarray:
    """A float64 copy of a float array (bfloat16 included); integer arrays as they are."""
    a = np.asarray(a)
    return a if a.dtype.kind in "iu" else a.astype(np.float64)


def _dtype_name(a: np.ndarray) -> str:
    return str(a.dtype)  # ml_dtypes' bfloat16 prints as "bfloat16"


def _store(out: np.ndarray, values: np.ndarray) -> None:
    """Writes float64 values into out, rounded once to its dtype (bfloat16 included)."""
    out[...] = core_cases.round_to(values, _dtype_name(out)).reshape(out.shape).astype(out.dtype)


class PerfectCore:
    """The part of costxent._core's interface that tests/gpu call, answered exactly."""

    def has_cuda(self) -> bool:
        return True

    def softmax_loss(
        self, logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, *,
        loss_kind: str = "cross_entropy", label_smoothing: float = 0.0, focal_gamma: float = 0.0,
        ce_weight: float = 0.0, ignore_class: int | None = None, loss: np.ndarray,
        backprop: np.ndarray | None = None, compute_backprop: bool = True, stream: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        z = _array(logits)  # a copy: backprop may alias logits
        y = _array(labels)
        n, c = z.shape
        sparse = y.ndim == 1
        w = None if weights is None else _array(weights)
        ignored = (y == ignore_class) if sparse and ignore_class is not None else np.zeros(n, bool)
        bad = ~np.isfinite(z).all(axis=1)
        if sparse:
            bad |= (y < 0) | (y >= c)
        bad &= ~ignored
        ok = ~bad & ~ignored
        out_loss = np.where(ignored, 0.0, np.nan)
        out_grad = np.where(ignored[:, None], 0.0, np.full((n, c), np.nan))
        if ok.any():
            if loss_kind == "expected_cost":
                lo, gr = oracle.expected_cost(
                    y[ok], z[ok], w, ce_weight=ce_weight, label_smoothing=label_smoothing)
            else:
                lo, gr = oracle.softmax_cross_entropy(
                    y[ok], z[ok],
                    class_weight=w if w is not None and w.ndim == 1 else None,
                    cost_matrix=w if w is not None and w.ndim == 2 else None,
                    label_smoothing=label_smoothing, focal_gamma=focal_gamma)
            out_loss[ok], out_grad[ok] = lo, gr
        fault = os.environ.get(FAULT_VARIABLE, "")
        if fault == "ulps" and ok.any():
            r = int(np.flatnonzero(ok)[0])
            out_grad[r, 0] += 3 * core_cases.spacing(out_grad[r, 0], _dtype_name(backprop))
        if fault == "ignored_nan":
            out_loss[ignored & ~np.isfinite(z).all(axis=1)] = np.nan
        _store(loss, out_loss)
        if compute_backprop and backprop is not None:
            columns = slice(None, -1) if fault == "unwritten" else slice(None)
            _store(backprop[:, columns], out_grad[:, columns])
            return loss, backprop
        return loss, None

    def sigmoid_loss(
        self, logits: np.ndarray, labels: np.ndarray, pos_weight: np.ndarray | None = None,
        neg_weight: np.ndarray | None = None, *, label_smoothing: float = 0.0,
        focal_gamma: float = 0.0, loss: np.ndarray, backprop: np.ndarray | None = None,
        compute_backprop: bool = True, stream: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        z, y = _array(logits), _array(labels)
        bad = (y < 0) | (y > 1) | ~np.isfinite(z)
        lo, gr = oracle.sigmoid_cross_entropy(
            np.where(bad, 0.0, y), np.where(bad, 0.0, z),
            pos_weight=None if pos_weight is None else _array(pos_weight),
            neg_weight=None if neg_weight is None else _array(neg_weight),
            label_smoothing=label_smoothing, focal_gamma=focal_gamma)
        _store(loss, np.where(bad, np.nan, lo))
        if compute_backprop and backprop is not None:
            _store(backprop, np.where(bad, np.nan, gr))
            return loss, backprop
        return loss, None

    def scale_gradient(self, grad: np.ndarray, scale: np.ndarray, out: np.ndarray, *,
                       stream: int = 0) -> np.ndarray:
        value = float(_array(scale).reshape(()))
        if out is grad and value == 1.0:
            return out
        _store(out, _array(grad) * value)
        return out


def core() -> Any:
    return PerfectCore() if PERFECT else core_cases.load_core()
