"""Argument checking and normalisation shared by ``costxent.ops`` and ``costxent.reference``.

This is the Python layer's one validation: both paths receive the same validated inputs
(a ``SoftmaxInputs`` / ``SigmoidInputs``), so they raise the same errors and differ only in how
they compute. What cannot be known while tracing (leading shapes under dynamic shapes, label
ranges, values of weights fed as tensors) is checked at run time by the fused op through the
C++ validation in ``cc/core/spec.cc``, or by ``runtime_checks`` on the reference path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from costxent._checks import (  # noqa: F401 (checked_weights: used through this module)
    CheckedWeights,
    check_weight_values,
    checked_weights,
    class_weight_vector,
)
from costxent._checks import ignore_class as _ignore_class
from costxent._checks import scalar as _scalar

_LOGIT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

WeightLike = Union[
    None, Sequence[float], Mapping[int, float], np.ndarray, tf.Tensor, CheckedWeights
]


@dataclasses.dataclass(frozen=True)
class SoftmaxInputs:
    """Validated inputs of a softmax loss.

    logits: ``[..., C]`` in the caller's dtype. labels: sparse ``[...]`` int32/int64, or dense
    ``[..., C]`` in the logits' dtype. weights: ``[C]`` class weights or ``[C, C]`` cost
    matrix in the accumulation dtype, or None. weights_checked: their values are known to be
    valid (constants checked here), so the op need not scan them again.
    """

    logits: tf.Tensor
    labels: tf.Tensor
    sparse: bool
    num_classes: int
    acc_dtype: tf.DType
    loss_kind: str
    weights: Optional[tf.Tensor]
    weights_checked: bool
    label_smoothing: float
    focal_gamma: float
    ce_weight: float
    ignore_class: Optional[int]

    @property
    def weight_mode(self) -> str:
        """'none', 'class' or 'cost', from the weights' rank (as the C++ spec derives it)."""
        if self.weights is None:
            return "none"
        return "class" if self.weights.shape.rank == 1 else "cost"

    @property
    def differentiable_extras(self) -> list:
        """Float tensors besides the logits that a tape could watch."""
        extras = [] if self.sparse else [self.labels]
        return extras + ([self.weights] if self.weights is not None else [])


@dataclasses.dataclass(frozen=True)
class SigmoidInputs:
    """Validated inputs of the sigmoid loss: logits and labels ``[..., C]``; weights ``[0]``
    (all ones), ``[1]`` (broadcast) or ``[C]``."""

    logits: tf.Tensor
    labels: tf.Tensor
    acc_dtype: tf.DType
    pos_weight: tf.Tensor
    neg_weight: tf.Tensor
    weights_checked: bool
    label_smoothing: float
    focal_gamma: float

    @property
    def differentiable_extras(self) -> list:
        """Float tensors besides the logits that a tape could watch."""
        return [self.labels, self.pos_weight, self.neg_weight]


def accumulation_dtype(dtype: tf.DType) -> tf.DType:
    """float64 for float64 logits, float32 otherwise (DESIGN 2.5)."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _dense_tensor(name: str, value: Any) -> tf.Tensor:
    if isinstance(value, tf.RaggedTensor):
        raise TypeError(
            f"{name} is a tf.RaggedTensor; costxent.ops takes dense tensors: pass "
            f"{name}.flat_values (with labels.flat_values) and rebuild the result with "
            f"{name}.with_flat_values(...), or call {name}.to_tensor()"
        )
    if isinstance(value, tf.SparseTensor):
        raise TypeError(f"{name} is a tf.SparseTensor; pass tf.sparse.to_dense({name})")
    return tf.convert_to_tensor(value)


def _logits(logits: Any) -> tf.Tensor:
    logits = _dense_tensor("logits", logits)
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(
            "logits must be float16, bfloat16, float32 or float64, got dtype "
            f"{logits.dtype.name}"
        )
    if logits.shape.rank is None or logits.shape.rank < 1:
        raise ValueError(f"logits must have a class axis (rank >= 1), got shape {logits.shape}")
    return logits


def _num_classes(logits: tf.Tensor, minimum: int) -> int:
    c = logits.shape[-1]
    if c is None:
        raise ValueError(f"logits must have a statically known class axis, got shape {logits.shape}")
    if c < minimum:
        raise ValueError(
            f"logits must have at least {minimum} classes on the last axis, got shape "
            f"{logits.shape} (C = {c})"
        )
    return int(c)


def _checked_eagerly(name: str, tensor: tf.Tensor, nonnegative: bool) -> bool:
    """Check a weight tensor's values now if they are known now (eager execution); inside a
    traced function they are checked when the op runs."""
    if not tf.executing_eagerly():
        return False
    check_weight_values(name, tensor.numpy(), nonnegative)
    return True


def _weight_tensor(
    name: str, value: Any, expected_shape: tuple, dtype: tf.DType, nonnegative: bool
) -> tuple[tf.Tensor, bool]:
    """(tensor of an exact shape, whether its values are already validated)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        tensor = tf.cast(value, dtype)
        if not tensor.shape.is_compatible_with(expected_shape):
            raise ValueError(
                f"{name} must have shape {list(expected_shape)}, got shape {tensor.shape}"
            )
        return tf.ensure_shape(tensor, expected_shape), _checked_eagerly(name, tensor, nonnegative)
    if isinstance(value, CheckedWeights):
        array = value.values
    else:
        array = np.asarray(value, dtype=np.float64)
    if array.shape != expected_shape:
        raise ValueError(
            f"{name} must have shape {list(expected_shape)}, got shape {list(array.shape)}"
        )
    if not isinstance(value, CheckedWeights):
        check_weight_values(name, array, nonnegative)
    return tf.constant(array, dtype=dtype), True


def labels_by_shape(
    labels: Any, logits: tf.Tensor, num_classes: int, strict_ids: bool = True
) -> tuple[tf.Tensor, bool]:
    """(labels, sparse): sparse ids squeezed to ``logits.shape[:-1]``, or dense rows.

    Sparse or dense is decided by shape (Keras casts integer labels to float, so never by
    dtype). With ``strict_ids`` float class ids must be whole numbers (a NaN or 1.5 is an
    error, never a cast); without, they are truncated (metrics, which turn bad rows into NaN
    instead of asserting, so that they behave the same under XLA).
    """
    labels = _dense_tensor("labels", labels)
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
    if not sparse:
        if not (labels.dtype.is_floating or labels.dtype.is_integer or labels.dtype == tf.bool):
            raise TypeError(f"dense labels must be numeric, got dtype {labels.dtype.name}")
        return tf.cast(labels, logits.dtype), False
    if labels.dtype in (tf.int32, tf.int64):
        return labels, True
    if labels.dtype.is_integer:
        return tf.cast(labels, tf.int64), True
    if not labels.dtype.is_floating:
        raise TypeError(f"sparse labels must be integers, got dtype {labels.dtype.name}")
    return (_float_class_ids(labels) if strict_ids else tf.cast(labels, tf.int64)), True


def _float_class_ids(labels: tf.Tensor) -> tf.Tensor:
    """int64 ids from float labels, refusing NaN, infinities and fractions by value."""
    whole = tf.logical_and(tf.math.is_finite(labels), tf.equal(labels, tf.round(labels)))
    if tf.executing_eagerly():
        values = labels.numpy()
        bad = np.argwhere(~whole.numpy())
        if bad.size:
            index = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"labels must be whole class ids, got {values[index]} at index {index}"
            )
        return tf.cast(labels, tf.int64)
    check = assert_all(whole, labels, "labels must be whole class ids (no NaN, inf or fraction)")
    with tf.control_dependencies([check]):
        return tf.cast(labels, tf.int64)


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
    """Validate the arguments of the softmax losses (DESIGN 2.1, 2.2, 2.4)."""
    logits = _logits(logits)
    c = _num_classes(logits, 2)
    acc = accumulation_dtype(logits.dtype)
    label_smoothing = _scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    focal_gamma = _scalar("focal_gamma", focal_gamma, 0.0)
    ce_weight = _scalar("ce_weight", ce_weight, 0.0)
    ignore_class = _ignore_class(ignore_class)
    labels, sparse = labels_by_shape(labels, logits, c)
    if ignore_class is not None and not sparse:
        raise ValueError(
            "ignore_class needs sparse labels (class ids of shape logits.shape[:-1]); got dense "
            f"labels of shape {labels.shape}"
        )
    weights, checked = None, True
    if expected_cost:
        if cost_matrix is None:
            raise ValueError("cost_matrix is required for expected_cost, got None")
        weights, checked = _weight_tensor("cost_matrix", cost_matrix, (c, c), acc, False)
    elif class_weight is not None and cost_matrix is not None:
        raise ValueError("pass class_weight or cost_matrix, not both")
    elif class_weight is not None:
        weights, checked = _weight_tensor(
            "class_weight",
            class_weight_vector(class_weight, c) if isinstance(class_weight, Mapping)
            else class_weight,
            (c,),
            acc,
            True,
        )
    elif cost_matrix is not None:
        weights, checked = _weight_tensor("cost_matrix", cost_matrix, (c, c), acc, True)
    return SoftmaxInputs(
        logits=logits,
        labels=labels,
        sparse=sparse,
        num_classes=c,
        acc_dtype=acc,
        loss_kind="expected_cost" if expected_cost else "cross_entropy",
        weights=weights,
        weights_checked=checked,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
        ce_weight=ce_weight,
        ignore_class=None if ignore_class is None else int(ignore_class),
    )


def _binary_weight(name: str, value: Any, c: int, dtype: tf.DType) -> tuple[tf.Tensor, bool]:
    """Scalar (-> [1]) or per-class [C] weight; None -> [0] meaning all ones."""
    if value is None:
        return tf.zeros([0], dtype), True
    if isinstance(value, (tf.Tensor, tf.Variable)):
        rank = value.shape.rank
        if rank not in (0, 1) or (rank == 1 and not value.shape.is_compatible_with((c,))):
            raise ValueError(
                f"{name} must be a scalar or have shape [{c}], got shape {tuple(value.shape)}"
            )
        tensor = tf.reshape(tf.cast(value, dtype), (1,) if rank == 0 else (c,))
        return tensor, _checked_eagerly(name, tensor, nonnegative=True)
    array = value.values if isinstance(value, CheckedWeights) else np.asarray(value, np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.shape not in ((1,), (c,)):
        raise ValueError(
            f"{name} must be a scalar or have shape [{c}], got shape {list(np.shape(array))}"
        )
    if not isinstance(value, CheckedWeights):
        check_weight_values(name, array, nonnegative=True)
    return tf.constant(array, dtype=dtype), True


def sigmoid_inputs(
    labels: Any,
    logits: Any,
    *,
    pos_weight: WeightLike = None,
    neg_weight: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
) -> SigmoidInputs:
    """Validate the arguments of the sigmoid loss (DESIGN 2.3, 2.4)."""
    logits = _logits(logits)
    c = _num_classes(logits, 1)
    acc = accumulation_dtype(logits.dtype)
    labels = _dense_tensor("labels", labels)
    if not labels.shape.is_compatible_with(logits.shape):
        raise ValueError(f"labels must have the logits' shape {logits.shape}, got {labels.shape}")
    if not (labels.dtype.is_floating or labels.dtype.is_integer or labels.dtype == tf.bool):
        raise TypeError(f"labels must be numeric, got dtype {labels.dtype.name}")
    pos, pos_checked = _binary_weight("pos_weight", pos_weight, c, acc)
    neg, neg_checked = _binary_weight("neg_weight", neg_weight, c, acc)
    return SigmoidInputs(
        logits=logits,
        labels=tf.cast(labels, logits.dtype),
        acc_dtype=acc,
        pos_weight=pos,
        neg_weight=neg,
        weights_checked=pos_checked and neg_checked,
        label_smoothing=_scalar("label_smoothing", label_smoothing, 0.0, 1.0),
        focal_gamma=_scalar("focal_gamma", focal_gamma, 0.0),
    )


# Weights fed as tensors up to this size are checked on every call of the reference path (as
# the fused CPU op does); a larger one is only checked when it is a constant.
_MAX_WEIGHTS_CHECKED_PER_CALL = 1 << 22


def assert_all(ok: tf.Tensor, values: tf.Tensor, message: str) -> tf.Operation:
    """Fails naming the first offending position (flat index) and its value."""
    flat_ok = tf.reshape(ok, [-1])
    first_bad = tf.where(tf.logical_not(flat_ok))[:1, 0]
    return tf.debugging.Assert(
        tf.reduce_all(flat_ok),
        [message, "first offending flat index:", first_bad, "value:",
         tf.gather(tf.reshape(values, [-1]), first_bad)],
    )


def _leading_shape_check(labels: tf.Tensor, logits: tf.Tensor) -> list:
    """Labels and logits must agree on the leading shape at run time, not only in size."""
    lead = logits.shape[:-1]
    if lead.is_fully_defined() and labels.shape[: lead.rank].is_fully_defined():
        return []
    return [
        tf.debugging.assert_equal(
            tf.shape(labels)[: lead.rank],
            tf.shape(logits)[:-1],
            message="labels' leading shape must equal logits.shape[:-1]",
        )
    ]


def _weight_value_checks(named: list) -> list:
    checks = []
    for name, tensor, nonnegative in named:
        size = tensor.shape.num_elements()
        if size is None or size > _MAX_WEIGHTS_CHECKED_PER_CALL:
            continue
        checks.append(tf.debugging.assert_all_finite(tensor, f"{name} must be finite"))
        if nonnegative:
            checks.append(assert_all(tensor >= 0, tensor, f"{name} must be >= 0"))
    return checks


def runtime_checks(inputs: Union[SoftmaxInputs, SigmoidInputs], validate: bool) -> list:
    """What the reference path checks when it runs: leading shapes, weights fed as tensors,
    and with ``validate=True`` the label ranges (on any device)."""
    if isinstance(inputs, SoftmaxInputs):
        checks = _leading_shape_check(inputs.labels, inputs.logits)
        if not inputs.weights_checked:
            checks += _weight_value_checks(
                [(inputs.weight_mode == "class" and "class_weight" or "cost_matrix",
                  inputs.weights, inputs.loss_kind == "cross_entropy")]
            )
        if validate and inputs.sparse:
            labels = inputs.labels
            in_range = tf.logical_and(labels >= 0, labels < inputs.num_classes)
            if inputs.ignore_class is not None:
                in_range = tf.logical_or(in_range, tf.equal(labels, inputs.ignore_class))
            checks.append(
                assert_all(in_range, labels, f"labels must be class ids in [0, {inputs.num_classes})")
            )
        return checks
    checks = []
    if not inputs.weights_checked:
        checks += _weight_value_checks(
            [("pos_weight", inputs.pos_weight, True), ("neg_weight", inputs.neg_weight, True)]
        )
    if validate:
        y = tf.cast(inputs.labels, inputs.acc_dtype)
        checks.append(assert_all(tf.logical_and(y >= 0, y <= 1), y, "labels must be in [0, 1]"))
    return checks
