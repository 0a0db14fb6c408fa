"""Which path the Keras losses take on the running Keras backend, decided once.

- TensorFlow: the fused TF ops (:mod:`costxent._tf_path`), with their own fallback to the
  pure-TF reference.
- PyTorch: the fused ``torch.library`` ops (:mod:`costxent.torch_ops`) when the core module
  ``costxent._core`` is built, otherwise the ``keras.ops`` reference.
- JAX and any other backend: the ``keras.ops`` reference (:mod:`costxent._portable`).

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


@functools.lru_cache(maxsize=None)
def path(backend: Optional[str] = None) -> Path:
    """The path for ``backend`` (default: the running Keras backend)."""
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        from costxent import _tf_path

        return Path(_tf_path.softmax, _tf_path.sigmoid, _tf_path.reduced, _tf_path.implementation)
    if backend == "torch":
        from costxent import torch_ops

        reason = torch_ops.unavailable_reason()
        if reason is None:
            return Path(
                torch_ops.softmax_params_loss,
                torch_ops.sigmoid_params_loss,
                torch_ops.reduced_params_loss,
                torch_ops.implementation,
            )
        return _portable_path(f"keras.ops on the torch backend ({reason})")
    if backend == "jax":
        return _portable_path(
            "keras.ops on the JAX backend (the JAX FFI path of the fused kernels is not built)"
        )
    return _portable_path(f"keras.ops on the {backend} backend (no fused path exists for it)")


def implementation() -> str:
    """Which path the costxent Keras losses take on the running Keras backend.

    On TensorFlow, what :func:`costxent.ops.implementation` says ("fused-cpu", "fused-gpu",
    "fused-xla-cpu", "fused-xla-gpu" or "reference: <why>"); on PyTorch "fused-cpu" (and
    "fused-gpu" where CUDA kernels are built and a GPU is visible) or "reference: <why>";
    on JAX "reference: <why>".
    """
    return path().implementation()
