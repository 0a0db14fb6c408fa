"""Cost-optimal decisions: turn predicted probabilities and costs into predictions.

A loss has no threshold. Training produces probabilities; the prediction that minimises the
expected cost is chosen afterwards, from the costs (Elkan 2001, "The Foundations of
Cost-Sensitive Learning"). Cost matrices are indexed ``M[true, predicted]``: row = true class,
column = predicted class.

Both functions accept NumPy arrays (or nested lists / Python numbers) and TensorFlow tensors,
and return the same kind they were given.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import tensorflow as tf

from costxent._checks import check_weight_values
from costxent._checks import cost_matrix as _as_cost_matrix

__all__ = ["binary_threshold", "min_expected_cost"]

# Softmax outputs in float32 can exceed 1 by a few ulps; anything further out is not a
# probability (most likely a logit passed by mistake).
_PROB_TOLERANCE = 1e-5


def _first_argmin(x: tf.Tensor) -> tf.Tensor:
    """``argmin`` over the last axis returning the lowest index on ties, on every device.

    ``tf.argmin`` does not promise which index wins a tie; decisions must be reproducible.
    A row with no minimum (all NaN) gets index 0: callers flag non-finite rows themselves.
    """
    num_classes = tf.shape(x)[-1]
    index = tf.range(num_classes, dtype=tf.int64)
    is_min = tf.equal(x, tf.reduce_min(x, axis=-1, keepdims=True))
    first = tf.reduce_min(tf.where(is_min, index, tf.cast(num_classes, tf.int64)), axis=-1)
    return tf.where(first == tf.cast(num_classes, tf.int64), tf.zeros_like(first), first)


def _check_probs_static(probs: np.ndarray) -> None:
    if not np.all(np.isfinite(probs)):
        rows = np.argwhere(~np.all(np.isfinite(probs), axis=-1))[:5].tolist()
        raise ValueError(f"probs must be finite; rows with NaN or Inf: {rows}")
    if probs.size and (probs.min() < -_PROB_TOLERANCE or probs.max() > 1 + _PROB_TOLERANCE):
        raise ValueError(
            "probs must be probabilities in [0, 1] (apply softmax to logits first); got "
            f"values in [{probs.min():g}, {probs.max():g}]"
        )


def min_expected_cost(probs: Any, cost_matrix: Any) -> Any:
    """The Bayes-optimal class for each row of probabilities under a cost matrix.

    ``decision_i = argmin_j sum_k p_ik * M[k, j]``: predict the class ``j`` whose expected
    cost, over the true class ``k ~ p_i``, is lowest. ``M[true, predicted]``; negative entries
    (rewards) are allowed. Ties go to the lowest index. Scaling a row of ``probs`` by a
    positive number does not change its decision, so rows need not sum exactly to 1.

    With ``M = 1 - I`` (every mistake costs 1) this is ``argmax_j p_ij``. For two classes it is
    the threshold rule of :func:`binary_threshold`.

    Args:
        probs: probabilities ``[..., C]`` (NumPy or TF). Not logits: apply softmax first.
        cost_matrix: ``C x C`` costs, ``M[true, predicted]``.

    Returns:
        int64 class indices of shape ``probs.shape[:-1]``: a ``tf.Tensor`` for tensor input,
        a NumPy array otherwise.

    Raises:
        ValueError: ``cost_matrix`` is not a finite ``C x C`` matrix matching ``probs``, or
            ``probs`` holds NaN/Inf or values outside [0, 1]. For a symbolic tensor (inside a
            ``tf.function``) finiteness is checked by a TF assertion instead.
    """
    if tf.is_tensor(probs):
        cost = _as_cost_matrix(cost_matrix, num_classes=probs.shape[-1])
        static = tf.get_static_value(probs)
        if static is not None:
            _check_probs_static(np.asarray(static, dtype=np.float64))
        dtype = probs.dtype if probs.dtype in (tf.float32, tf.float64) else tf.float32
        p = tf.cast(probs, dtype)
        if static is None:
            p = tf.debugging.assert_all_finite(p, "min_expected_cost: probs must be finite")
        return _first_argmin(tf.linalg.matvec(tf.constant(cost.T, dtype), p))

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 1:
        raise ValueError(f"probs must have a class axis [..., C]; got shape {p.shape}")
    cost = _as_cost_matrix(cost_matrix, num_classes=p.shape[-1])
    _check_probs_static(p)
    # np.argmin returns the first occurrence, matching _first_argmin.
    return np.argmin(p @ cost, axis=-1).astype(np.int64)


def _real(name: str, value: Any) -> Any:
    """``value`` as a float64 array (TF tensors: their static value, or None if symbolic)."""
    if tf.is_tensor(value):
        value = tf.get_static_value(value)
        if value is None:
            return None
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    return np.asarray(value, dtype=np.float64)


def binary_threshold(cost_fp: Any, cost_fn: Any, cost_tp: Any = 0.0, cost_tn: Any = 0.0) -> Any:
    """The probability threshold that minimises expected cost for a binary decision.

    Predict positive when ``p(positive) >= t`` with (Elkan 2001, theorem 1)::

        t = (cost_fp - cost_tn) / ((cost_fp - cost_tn) + (cost_fn - cost_tp))

    because predicting positive costs ``p * cost_tp + (1 - p) * cost_fp`` in expectation and
    predicting negative costs ``p * cost_fn + (1 - p) * cost_tn``. Example: a false positive
    costing 17 and a false negative costing 3 give ``t = 17 / 20 = 0.85``. Negative costs
    (rewards) are fine as long as each mistake costs more than the matching right answer.

    Args:
        cost_fp: cost of predicting positive for a true negative (``M[0, 1]``).
        cost_fn: cost of predicting negative for a true positive (``M[1, 0]``).
        cost_tp: cost of a true positive (``M[1, 1]``), default 0.
        cost_tn: cost of a true negative (``M[0, 0]``), default 0.
        Each may be a number, a NumPy array or a TF tensor (broadcast together, e.g. one
        threshold per label of a multi-label problem).

    Returns:
        The threshold(s): a ``tf.Tensor`` if any argument is one, else a NumPy array if any
        argument is an array, else a Python float.

    Raises:
        ValueError: a cost is not finite, or ``cost_fp <= cost_tn`` or ``cost_fn <= cost_tp``
            (then one decision is always at least as good and no threshold exists). For
            symbolic tensors these checks run as TF assertions instead.
    """
    args = {"cost_fp": cost_fp, "cost_fn": cost_fn, "cost_tp": cost_tp, "cost_tn": cost_tn}
    values = {name: _real(name, v) for name, v in args.items()}
    if any(v is None for v in values.values()):
        return _binary_threshold_symbolic(args)

    for name, v in values.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be finite; got {v.tolist()}")
    fp_margin = values["cost_fp"] - values["cost_tn"]
    fn_margin = values["cost_fn"] - values["cost_tp"]
    if np.any(fp_margin <= 0):
        raise ValueError(
            "cost_fp must be greater than cost_tn (a false positive must cost more than a "
            f"true negative); got cost_fp={values['cost_fp'].tolist()}, "
            f"cost_tn={values['cost_tn'].tolist()}"
        )
    if np.any(fn_margin <= 0):
        raise ValueError(
            "cost_fn must be greater than cost_tp (a false negative must cost more than a "
            f"true positive); got cost_fn={values['cost_fn'].tolist()}, "
            f"cost_tp={values['cost_tp'].tolist()}"
        )
    threshold = fp_margin / (fp_margin + fn_margin)

    if any(tf.is_tensor(v) for v in args.values()):
        dtypes = [v.dtype for v in args.values() if tf.is_tensor(v) and v.dtype.is_floating]
        return tf.constant(threshold, dtype=dtypes[0] if dtypes else tf.float32)
    if all(isinstance(v, numbers.Real) for v in args.values()):
        return float(threshold)
    return threshold


def _binary_threshold_symbolic(args: dict[str, Any]) -> tf.Tensor:
    """``binary_threshold`` inside a graph: the same formula, checks as TF assertions."""
    dtypes = [v.dtype for v in args.values() if tf.is_tensor(v) and v.dtype.is_floating]
    dtype = dtypes[0] if dtypes else tf.float32
    c = {name: tf.cast(v, dtype) for name, v in args.items()}
    fp_margin = c["cost_fp"] - c["cost_tn"]
    fn_margin = c["cost_fn"] - c["cost_tp"]
    checks = [
        tf.debugging.assert_positive(
            fp_margin, message="binary_threshold: cost_fp must be greater than cost_tn"
        ),
        tf.debugging.assert_positive(
            fn_margin, message="binary_threshold: cost_fn must be greater than cost_tp"
        ),
    ]
    with tf.control_dependencies(checks):
        return fp_margin / (fp_margin + fn_margin)
