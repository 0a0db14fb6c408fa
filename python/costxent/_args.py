"""Argument checking and normalisation shared by ``costxent.ops`` and ``costxent.reference``.

Both paths see exactly the same validated, flattened inputs, so they raise the same errors
and differ only in how they compute.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

WeightLike = Union[None, Sequence[float], Mapping[int, float], np.ndarray, tf.Tensor]

_LOGIT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


@dataclasses.dataclass(frozen=True)
class SoftmaxInputs:
    """Validated inputs of a softmax loss, flattened to rows.

    logits: [N, C] in the caller's dtype. labels: sparse [N] int32/int64, or dense [N, C]
    in the logits' dtype. weights: [C] class weights or [C, C] cost matrix in the
    accumulation dtype, or None. batch_shape: the leading shape to restore on the loss.
    """

    logits: tf.Tensor
    labels: tf.Tensor
    sparse: bool
    num_classes: int
    acc_dtype: tf.DType
    weight_mode: str
    weights: Optional[tf.Tensor]
    label_smoothing: float
    focal_gamma: float
    ce_weight: float
    ignore_class: Optional[int]
    batch_shape: tf.Tensor
    static_batch_shape: tf.TensorShape

    def restore(self, per_row: tf.Tensor) -> tf.Tensor:
        """Reshape a per-row [N] result back to the logits' leading shape."""
        out = tf.reshape(per_row, self.batch_shape)
        out.set_shape(self.static_batch_shape)
        return out


@dataclasses.dataclass(frozen=True)
class SigmoidInputs:
    """Validated inputs of the sigmoid loss, flattened to [N, C] with weights as [0|1|C]."""

    logits: tf.Tensor
    labels: tf.Tensor
    acc_dtype: tf.DType
    pos_weight: tf.Tensor
    neg_weight: tf.Tensor
    label_smoothing: float
    focal_gamma: float
    shape: tf.Tensor
    static_shape: tf.TensorShape

    def restore(self, per_element: tf.Tensor) -> tf.Tensor:
        """Reshape an [N, C] result back to the logits' shape."""
        out = tf.reshape(per_element, self.shape)
        out.set_shape(self.static_shape)
        return out


def accumulation_dtype(dtype: tf.DType) -> tf.DType:
    """float64 for float64 logits, float32 otherwise (DESIGN 2.5)."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _logits(logits: Any) -> tf.Tensor:
    logits = tf.convert_to_tensor(logits)
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(
            "logits must be float16, bfloat16, float32 or float64, got dtype "
            f"{logits.dtype.name}"
        )
    if logits.shape.rank is None or logits.shape.rank < 1:
        raise ValueError(
            f"logits must have a class axis (rank >= 1), got shape {logits.shape}"
        )
    return logits


def _scalar(name: str, value: Any, low: float, high: float = math.inf) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (low <= value <= high) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value}")
    return value


def _num_classes(logits: tf.Tensor, minimum: int) -> int:
    c = logits.shape[-1]
    if c is None:
        raise ValueError(
            f"logits must have a statically known class axis, got shape {logits.shape}"
        )
    if c < minimum:
        raise ValueError(
            f"logits must have at least {minimum} classes on the last axis, got shape "
            f"{logits.shape} (C = {c})"
        )
    return int(c)


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(
            f"{name} must be finite, got {values[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )


def _weight_tensor(
    name: str, value: Any, expected_shape: tuple, dtype: tf.DType
) -> tf.Tensor:
    """A constant or tensor weight of an exact shape, checked for finiteness when constant."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        tensor = tf.cast(value, dtype)
        if not tensor.shape.is_compatible_with(expected_shape):
            raise ValueError(
                f"{name} must have shape {list(expected_shape)}, got shape {tensor.shape}"
            )
        if tf.executing_eagerly():
            _check_finite(name, tensor.numpy())
        return tf.ensure_shape(tensor, expected_shape)
    array = np.asarray(value, dtype=np.float64)
    if array.shape != expected_shape:
        raise ValueError(
            f"{name} must have shape {list(expected_shape)}, got shape {list(array.shape)}"
        )
    _check_finite(name, array)
    return tf.constant(array, dtype=dtype)


def class_weight_vector(class_weight: Any, num_classes: int) -> Any:
    """A {class: weight} dict becomes a length-C list (missing classes weigh 1.0, as in Keras)."""
    if not isinstance(class_weight, Mapping):
        return class_weight
    vector = [1.0] * num_classes
    for key, weight in class_weight.items():
        cls = int(key)
        if not 0 <= cls < num_classes:
            raise ValueError(
                f"class_weight has key {key!r}, outside the valid class range [0, {num_classes})"
            )
        vector[cls] = float(weight)
    return vector


def _labels(labels: Any, logits: tf.Tensor, num_classes: int) -> tuple[tf.Tensor, bool]:
    """Sparse or dense by shape (Keras casts integer labels to float, so never by dtype)."""
    labels = tf.convert_to_tensor(labels)
    rank = logits.shape.rank
    lead = logits.shape[:-1]
    shape = labels.shape
    if shape.rank == rank and shape[-1] == num_classes and num_classes != 1:
        sparse = False
    elif shape.rank == rank - 1:
        sparse = True
    elif shape.rank == rank and shape[-1] == 1:
        sparse = True
        labels = tf.squeeze(labels, axis=-1)
    else:
        raise ValueError(
            f"labels must have shape {lead} (sparse class ids), {lead + [1]} (sparse) or "
            f"{logits.shape} (dense one-hot or soft); got shape {shape}"
        )
    if not labels.shape[: rank - 1].is_compatible_with(lead):
        raise ValueError(
            f"labels' leading shape {labels.shape[: rank - 1]} does not match logits' {lead}"
        )
    if sparse:
        if labels.dtype not in (tf.int32, tf.int64):
            if not (labels.dtype.is_integer or labels.dtype.is_floating):
                raise TypeError(f"sparse labels must be integers, got dtype {labels.dtype.name}")
            labels = tf.cast(labels, tf.int64)
        return tf.reshape(labels, [-1]), True
    if not (labels.dtype.is_floating or labels.dtype.is_integer or labels.dtype == tf.bool):
        raise TypeError(f"dense labels must be numeric, got dtype {labels.dtype.name}")
    return tf.reshape(tf.cast(labels, logits.dtype), [-1, num_classes]), False


def softmax_inputs(
    labels: Any,
    logits: Any,
    *,
    class_weight: WeightLike = None,
    cost_matrix: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    ce_weight: float = 0.0,
    ignore_class: Optional[int] = None,
    expected_cost: bool = False,
) -> SoftmaxInputs:
    """Validate and flatten the arguments of the softmax losses (DESIGN 2.1, 2.2, 2.4)."""
    logits = _logits(logits)
    c = _num_classes(logits, 2)
    acc = accumulation_dtype(logits.dtype)
    label_smoothing = _scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    focal_gamma = _scalar("focal_gamma", focal_gamma, 0.0)
    ce_weight = _scalar("ce_weight", ce_weight, -math.inf)
    if ignore_class is not None and (
        not isinstance(ignore_class, numbers.Integral) or isinstance(ignore_class, bool)
    ):
        raise TypeError(f"ignore_class must be an int or None, got {ignore_class!r}")
    flat_labels, sparse = _labels(labels, logits, c)
    if ignore_class is not None and not sparse:
        raise ValueError(
            "ignore_class needs sparse labels (class ids of shape logits.shape[:-1]); got dense "
            f"labels of shape {tf.convert_to_tensor(labels).shape}"
        )
    if expected_cost:
        if cost_matrix is None:
            raise ValueError("cost_matrix is required for expected_cost, got None")
        weight_mode = "cost"
    elif class_weight is not None and cost_matrix is not None:
        raise ValueError("pass class_weight or cost_matrix, not both")
    elif class_weight is not None:
        weight_mode = "class"
    elif cost_matrix is not None:
        weight_mode = "cost"
    else:
        weight_mode = "none"
    if weight_mode == "class":
        weights = _weight_tensor(
            "class_weight", class_weight_vector(class_weight, c), (c,), acc
        )
    elif weight_mode == "cost":
        weights = _weight_tensor("cost_matrix", cost_matrix, (c, c), acc)
    else:
        weights = None
    return SoftmaxInputs(
        logits=tf.reshape(logits, [-1, c]),
        labels=flat_labels,
        sparse=sparse,
        num_classes=c,
        acc_dtype=acc,
        weight_mode=weight_mode,
        weights=weights,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
        ce_weight=ce_weight,
        ignore_class=None if ignore_class is None else int(ignore_class),
        batch_shape=tf.shape(logits)[:-1],
        static_batch_shape=logits.shape[:-1],
    )


def _binary_weight(name: str, value: Any, c: int, dtype: tf.DType) -> tf.Tensor:
    """Scalar (-> [1]) or per-class [C] weight; None -> [0] meaning all ones."""
    if value is None:
        return tf.zeros([0], dtype)
    if isinstance(value, (tf.Tensor, tf.Variable)):
        shape = tuple(value.shape)
        expected = (1,) if value.shape.rank == 0 else (c,)
        if value.shape.rank not in (0, 1) or not value.shape.is_compatible_with(
            () if value.shape.rank == 0 else (c,)
        ):
            raise ValueError(f"{name} must be a scalar or have shape [{c}], got shape {shape}")
        tensor = tf.reshape(tf.cast(value, dtype), expected)
        if tf.executing_eagerly():
            _check_finite(name, tensor.numpy())
        return tensor
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.shape not in ((1,), (c,)):
        raise ValueError(
            f"{name} must be a scalar or have shape [{c}], got shape {list(np.shape(value))}"
        )
    _check_finite(name, array)
    return tf.constant(array, dtype=dtype)


def sigmoid_inputs(
    labels: Any,
    logits: Any,
    *,
    pos_weight: WeightLike = None,
    neg_weight: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
) -> SigmoidInputs:
    """Validate and flatten the arguments of the sigmoid loss (DESIGN 2.3, 2.4)."""
    logits = _logits(logits)
    c = _num_classes(logits, 1)
    acc = accumulation_dtype(logits.dtype)
    labels = tf.convert_to_tensor(labels)
    if not labels.shape.is_compatible_with(logits.shape):
        raise ValueError(f"labels must have the logits' shape {logits.shape}, got {labels.shape}")
    if not (labels.dtype.is_floating or labels.dtype.is_integer or labels.dtype == tf.bool):
        raise TypeError(f"labels must be numeric, got dtype {labels.dtype.name}")
    return SigmoidInputs(
        logits=tf.reshape(logits, [-1, c]),
        labels=tf.reshape(tf.cast(labels, logits.dtype), [-1, c]),
        acc_dtype=acc,
        pos_weight=_binary_weight("pos_weight", pos_weight, c, acc),
        neg_weight=_binary_weight("neg_weight", neg_weight, c, acc),
        label_smoothing=_scalar("label_smoothing", label_smoothing, 0.0, 1.0),
        focal_gamma=_scalar("focal_gamma", focal_gamma, 0.0),
        shape=tf.shape(logits),
        static_shape=logits.shape,
    )


# Weights up to this size are checked for finiteness on every traced call (as the CPU
# kernel does); a larger cost matrix is only checked when it is a constant.
_MAX_WEIGHTS_CHECKED_PER_CALL = 1 << 22


def _assert_in_range(in_range: tf.Tensor, values: tf.Tensor, message: str) -> tf.Operation:
    """Fails naming the first out-of-range position (flat index) and its value."""
    flat_ok = tf.reshape(in_range, [-1])
    first_bad = tf.where(tf.logical_not(flat_ok))[:1, 0]
    return tf.debugging.Assert(
        tf.reduce_all(flat_ok),
        [message, "first offending flat index:", first_bad, "value:",
         tf.gather(tf.reshape(values, [-1]), first_bad)],
    )


def weight_checks(inputs: Union[SoftmaxInputs, SigmoidInputs]) -> list:
    """Finiteness checks of the weights, for weights given as tensors at run time."""
    if isinstance(inputs, SoftmaxInputs):
        named = []
        if inputs.weights is not None:
            named.append(("class_weight" if inputs.weight_mode == "class" else "cost_matrix",
                          inputs.weights))
    else:
        named = [("pos_weight", inputs.pos_weight), ("neg_weight", inputs.neg_weight)]
    return [
        tf.debugging.assert_all_finite(w, f"{name} must be finite")
        for name, w in named
        if w.shape.num_elements() is not None
        and w.shape.num_elements() <= _MAX_WEIGHTS_CHECKED_PER_CALL
    ]


def validation_ops(inputs: Union[SoftmaxInputs, SigmoidInputs]) -> list:
    """Runtime checks for ``validate=True``: label ranges and weight finiteness on any device."""
    checks = weight_checks(inputs)
    if isinstance(inputs, SoftmaxInputs):
        if inputs.sparse:
            labels = inputs.labels
            in_range = tf.logical_and(labels >= 0, labels < inputs.num_classes)
            if inputs.ignore_class is not None:
                in_range = tf.logical_or(in_range, tf.equal(labels, inputs.ignore_class))
            checks.append(
                _assert_in_range(
                    in_range, labels, f"labels must be class ids in [0, {inputs.num_classes})"
                )
            )
    else:
        y = tf.cast(inputs.labels, inputs.acc_dtype)
        checks.append(
            _assert_in_range(tf.logical_and(y >= 0, y <= 1), y, "labels must be in [0, 1]")
        )
    return checks
