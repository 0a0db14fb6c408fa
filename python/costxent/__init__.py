"""costxent: fused cost-sensitive cross-entropy for TensorFlow and Keras 3.

One kernel computes a cost-matrix / class-weighted / focal cross-entropy and its gradient
on the CPU (and on CUDA GPUs); ``costxent.reference`` is the pure-TF oracle with the same
signatures as ``costxent.ops``. The Keras losses and metrics run on every Keras backend
(TensorFlow, JAX, PyTorch); :func:`implementation` says which path they take there.

Importing costxent imports TensorFlow only on the TensorFlow backend. There ``ops``,
``reference`` and ``decision`` (TensorFlow functions) are imported at once, so that the op
library is loaded before anything is compiled by XLA; on other backends they are imported
when first used.
"""

import importlib
from typing import Any

import keras

from costxent import metrics, weights
from costxent._engine import implementation
from costxent.losses import (
    ExpectedCostLoss,
    WeightedBinaryCrossentropy,
    WeightedCategoricalCrossentropy,
)

__version__ = "0.1.0"

_TENSORFLOW_MODULES = ("decision", "ops", "reference")
if keras.backend.backend() == "tensorflow":
    from costxent import decision, ops, reference  # noqa: F401

__all__ = [
    "ExpectedCostLoss",
    "WeightedBinaryCrossentropy",
    "WeightedCategoricalCrossentropy",
    "decision",
    "implementation",
    "metrics",
    "ops",
    "reference",
    "weights",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The TensorFlow modules, imported on first use (PEP 562)."""
    if name in _TENSORFLOW_MODULES:
        return importlib.import_module(f"costxent.{name}")
    raise AttributeError(f"module 'costxent' has no attribute {name!r}")
