"""Which path the Keras losses take on the running Keras backend, decided once.

- TensorFlow: the fused TF ops (:mod:`costxent._tf_path`), with their own fallback to the
  pure-TF reference.
- PyTorch: the fused ``torch.library`` ops (:mod:`costxent.torch_ops`) when the core module
  ``costxent._core`` is built, otherwise the ``keras.ops`` reference.
- JAX: the fused kernels through ``jax.ffi`` (:mod:`costxent.jax_ops`) when
  ``costxent._core`` has the XLA FFI handlers, otherwise the ``keras.ops`` reference.
- Any other backend: the ``keras.ops`` reference (:mod:`costxent._portable`).

Nothing here imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Optional

import keras

from costxent import _portable

_log = logging.getLogger("costxent")


@dataclasses.dataclass(frozen=True)
class Path:
    """One backend's loss functions: per-example ``softmax(labels, logits, params)``,
    per-element ``sigmoid(...)``, ``reduced(labels, logits, params, sample_weight,
    reduction)`` (a scalar, or None for Keras' own reduction) and ``implementation()``."""

    softmax: Callable[..., Any]
    sigmoid: Callable[..., Any]
    reduced: Callable[..., Optional[Any]]
    implementation: Callable[[], str]


def _portable_path(reason: str) -> Path:
    _log.info("costxent: %s", reason)
    return Path(
        softmax=_portable.softmax_loss,
        sigmoid=_portable.sigmoid_loss,
        reduced=lambda *args: None,
        implementation=lambda: f"reference: {reason}",
    )


def _fused_path(module: Any, backend: str) -> Path:
    """A backend module's fused functions (torch_ops, jax_ops), or the reference where they
    cannot run."""
    reason = module.unavailable_reason()
    if reason is not None:
        return _portable_path(f"keras.ops on the {backend} backend ({reason})")
    return Path(
        module.softmax_params_loss,
        module.sigmoid_params_loss,
        module.reduced_params_loss,
        module.implementation,
    )


@functools.lru_cache(maxsize=None)
def path(backend: Optional[str] = None) -> Path:
    """The path for ``backend`` (default: the running Keras backend)."""
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        from costxent import _tf_path

        return Path(_tf_path.softmax, _tf_path.sigmoid, _tf_path.reduced, _tf_path.implementation)
    if backend == "torch":
        from costxent import torch_ops

        return _fused_path(torch_ops, "torch")
    if backend == "jax":
        from costxent import jax_ops

        return _fused_path(jax_ops, "JAX")
    return _portable_path(f"keras.ops on the {backend} backend (no fused path exists for it)")


def implementation() -> str:
    """Which path the costxent Keras losses take on the running Keras backend.

    On TensorFlow, what :func:`costxent.ops.implementation` says ("fused-cpu", "fused-gpu",
    "fused-xla-cpu", "fused-xla-gpu" or "reference: <why>"); on PyTorch "fused-cpu" (and
    "fused-gpu" where CUDA kernels are built and a GPU is visible) or "reference: <why>";
    on JAX the same, for JAX's default device.
    """
    return path().implementation()
