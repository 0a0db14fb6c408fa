"""Checks of constant arguments that need no framework: numbers, weight values, class-weight
dicts, cost matrices.

``costxent._args`` (TensorFlow inputs) and ``costxent._portable`` (``keras.ops`` on any
backend) both validate through these, so the rules and messages are the same everywhere, and
importing this module never imports TensorFlow. A ``tf.Tensor`` is recognised only when
TensorFlow is already imported: nobody can hold one otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from typing import Any, Mapping, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class CheckedWeights:
    """Weights whose values were validated once (finite; >= 0 where they multiply a
    cross-entropy), e.g. when a Keras loss was built. ``values`` is a read-only float64 array;
    the shape is still checked against C at every call, the values never again."""

    name: str
    values: np.ndarray

    def tolist(self) -> list:
        """The values as nested Python floats (for ``get_config``)."""
        return self.values.tolist()


def is_tf_tensor(value: Any) -> bool:
    """Whether ``value`` is a ``tf.Tensor`` or ``tf.Variable`` (False without TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, (tf.Tensor, tf.Variable))


def scalar(name: str, value: Any, low: float, high: float = math.inf) -> float:
    """A finite real number in ``[low, high]`` as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (low <= value <= high) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value}")
    return value


def ignore_class(value: Any) -> Optional[int]:
    """``ignore_class`` as an int, or None (a bool or a float is refused, not rounded)."""
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"ignore_class must be an int or None, got {value!r}")
    return int(value)


def check_weight_values(name: str, values: np.ndarray, nonnegative: bool) -> None:
    """Finite, and >= 0 when the weight multiplies a cross-entropy (DESIGN 2.4)."""
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {values[index]} at index {index}")
    if nonnegative and (values < 0).any():
        index = tuple(int(i) for i in np.argwhere(values < 0)[0])
        raise ValueError(
            f"{name} must be >= 0 (a negative weight turns the loss into gradient ascent), "
            f"got {values[index]} at index {index}"
        )


def _class_key(key: Any) -> int:
    """A class id from a ``class_weight`` key: an int, or its string (JSON's form of it)."""
    if isinstance(key, str) and key.lstrip("-").isdigit():
        return int(key)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return int(key)
    raise ValueError(f"class_weight keys must be integer class ids, got key {key!r}")


def class_weight_vector(class_weight: Mapping, num_classes: int) -> np.ndarray:
    """A ``{class: weight}`` dict as a length-C vector (missing classes weigh 1.0, as Keras)."""
    vector = np.ones(num_classes)
    for key, weight in class_weight.items():
        key = _class_key(key)
        if not 0 <= key < num_classes:
            raise ValueError(
                f"class_weight has key {key!r}, outside the valid class range [0, {num_classes})"
            )
        vector[int(key)] = float(weight)
    return vector


def checked_weights(name: str, value: Any, nonnegative: bool) -> Any:
    """Validate constant weights once, for reuse on every call: arrays become a
    ``CheckedWeights``; a ``{class: weight}`` dict keeps its form with int keys (its vector
    depends on C, known only at a call, and costs C values to rebuild)."""
    if value is None or isinstance(value, CheckedWeights) or is_tf_tensor(value):
        return value
    if isinstance(value, Mapping):
        keyed = {_class_key(k): float(v) for k, v in value.items()}
        check_weight_values(name, np.array(list(keyed.values()), np.float64), nonnegative)
        return keyed
    array = np.array(value, dtype=np.float64)
    check_weight_values(name, array, nonnegative)
    array.setflags(write=False)
    return CheckedWeights(name, array)


def cost_matrix(value: Any, num_classes: int | None = None) -> np.ndarray:
    """Validate a cost matrix (``C x C``, ``C >= 2``, finite) and return it as float64."""
    if is_tf_tensor(value):
        static = sys.modules["tensorflow"].get_static_value(value)
        if static is None:
            raise ValueError(
                "cost_matrix must be a concrete value (NumPy array, nested list or eager "
                f"tensor); got a symbolic tensor {value!r}"
            )
        value = static
    m = np.asarray(value, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cost_matrix must be a square C x C matrix; got shape {m.shape}")
    if m.shape[0] < 2:
        raise ValueError(f"cost_matrix must have at least 2 classes; got shape {m.shape}")
    if num_classes is not None and m.shape[0] != num_classes:
        raise ValueError(
            f"cost_matrix must be {num_classes} x {num_classes} to match the {num_classes} "
            f"classes of the predictions; got shape {m.shape}"
        )
    check_weight_values("cost_matrix", m, nonnegative=False)
    return m


LOGIT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def num_classes(dtype: str, shape: tuple, minimum: int) -> int:
    """C of logits of dtype ``dtype`` (a name) and ``shape``: a float dtype, a statically
    known class axis of at least ``minimum``."""
    if dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got dtype {dtype}")
    if len(shape) < 1:
        raise ValueError(f"logits must have a class axis (rank >= 1), got shape {list(shape)}")
    c = shape[-1]
    if c is None:
        raise ValueError(
            f"logits must have a statically known class axis, got shape {list(shape)}"
        )
    if c < minimum:
        raise ValueError(
            f"logits must have at least {minimum} classes on the last axis, got shape "
            f"{list(shape)} (C = {c})"
        )
    return int(c)


def label_layout(labels_shape: tuple, logits_shape: tuple, c: int) -> str:
    """How labels of ``labels_shape`` pair with logits of ``logits_shape`` (C classes), by
    shape alone: "dense" (one-hot or soft rows, the logits' shape), "sparse" (class ids of
    ``logits.shape[:-1]``) or "sparse_squeeze" (ids of ``logits.shape[:-1] + [1]``)."""
    lead = tuple(logits_shape)[:-1]
    shape = tuple(labels_shape)
    if len(shape) == len(lead) + 1 and shape[-1] == c and c != 1:
        layout = "dense"
    elif len(shape) == len(lead):
        layout = "sparse"
    elif len(shape) == len(lead) + 1 and shape[-1] == 1:
        layout = "sparse_squeeze"
    else:
        raise ValueError(
            f"labels must have shape {lead} (sparse class ids), {lead + (1,)} (sparse) or "
            f"{tuple(logits_shape)} (dense one-hot or soft); got shape {shape}"
        )
    if any(a is not None and b is not None and a != b for a, b in zip(shape, lead)):
        raise ValueError(f"labels' leading shape {shape[: len(lead)]} does not match logits' {lead}")
    return layout


def fused_reduction(lead: tuple, weight_shape: Optional[tuple]) -> Optional[bool]:
    """Whether a Keras reduction folds into a fused pass over logits of leading shape
    ``lead`` with a ``sample_weight`` of ``weight_shape`` (None: no weights). None where
    Keras' own reduction must run (a scalar or empty batch, or weights that are not one per
    row, which Keras broadcasts); otherwise whether the weights must be squeezed (True for
    ``lead + (1,)``, False for ``lead`` or no weights)."""
    lead = tuple(lead)
    if len(lead) == 0 or math.prod(lead) == 0:
        return None
    if weight_shape is None:
        return False
    weight_shape = tuple(weight_shape)
    if len(weight_shape) == len(lead) + 1 and weight_shape[-1] == 1:
        return True if weight_shape[:-1] == lead else None
    return False if weight_shape == lead else None
