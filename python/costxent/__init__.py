"""costxent: fused cost-sensitive cross-entropy for TensorFlow and Keras 3.

One kernel computes a cost-matrix / class-weighted / focal cross-entropy and its gradient
on the CPU (and on CUDA GPUs); ``costxent.reference`` is the pure-TF oracle with the same
signatures as ``costxent.ops``.
"""

from costxent import decision, metrics, ops, reference, weights
from costxent.losses import (
    ExpectedCostLoss,
    WeightedBinaryCrossentropy,
    WeightedCategoricalCrossentropy,
)

__version__ = "0.1.0"

__all__ = [
    "ExpectedCostLoss",
    "WeightedBinaryCrossentropy",
    "WeightedCategoricalCrossentropy",
    "decision",
    "metrics",
    "ops",
    "reference",
    "weights",
    "__version__",
]
