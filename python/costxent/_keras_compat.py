"""The Keras internals costxent relies on, reached in one place.

Keras 3 exposes these only under ``keras.src``; if a release moves them, this module is the
one to change.
"""

from keras.src.backend import get_keras_mask
from keras.src.losses.loss import (
    reduce_weighted_values,
    squeeze_or_expand_to_same_rank,
    standardize_reduction,
)

__all__ = [
    "get_keras_mask",
    "reduce_weighted_values",
    "squeeze_or_expand_to_same_rank",
    "standardize_reduction",
]
