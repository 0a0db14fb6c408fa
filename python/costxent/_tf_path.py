"""The Keras losses' path on the TensorFlow backend: the fused TF ops of
:mod:`costxent.ops`, with the Keras reduction folded into the row pass where it can be."""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from costxent import _args
from costxent import ops as cx_ops
from costxent._portable import SigmoidParams, SoftmaxParams


def implementation() -> str:
    """What :func:`costxent.ops.implementation` says (a call made here)."""
    return cx_ops.implementation()


def _softmax_inputs(labels: Any, logits: Any, p: SoftmaxParams) -> _args.SoftmaxInputs:
    return _args.softmax_inputs(
        labels,
        logits,
        class_weight=p.class_weight,
        cost_matrix=p.cost_matrix,
        label_smoothing=p.label_smoothing,
        focal_gamma=p.focal_gamma,
        ce_weight=p.ce_weight,
        ignore_class=p.ignore_class,
        expected_cost=p.expected_cost,
    )


def _sigmoid_inputs(labels: Any, logits: Any, p: SigmoidParams) -> _args.SigmoidInputs:
    return _args.sigmoid_inputs(
        labels,
        logits,
        pos_weight=p.pos_weight,
        neg_weight=p.neg_weight,
        label_smoothing=p.label_smoothing,
        focal_gamma=p.focal_gamma,
    )


def softmax(labels: Any, logits: Any, params: SoftmaxParams) -> tf.Tensor:
    """Per-example softmax loss through :func:`costxent.ops.softmax_loss`."""
    return cx_ops.softmax_loss(_softmax_inputs(labels, logits, params))


def sigmoid(labels: Any, logits: Any, params: SigmoidParams) -> tf.Tensor:
    """Per-element sigmoid loss through :func:`costxent.ops.sigmoid_loss`."""
    return cx_ops.sigmoid_loss(_sigmoid_inputs(labels, logits, params))


def _row_weights(sample_weight: Any, lead: tf.TensorShape, dtype: tf.DType) -> Any:
    """Keras' ``sample_weight`` as one weight per row of the leading shape; None if there is
    none; ``False`` when only Keras' broadcasting reproduces its meaning (a weight of another
    shape: ``mean_with_sample_weight`` divides by the weights' own sum, before broadcasting)."""
    if sample_weight is None:
        return None
    weight = tf.cast(tf.convert_to_tensor(sample_weight), dtype)
    if weight.shape.rank == lead.rank + 1 and weight.shape[-1] == 1:
        weight = tf.squeeze(weight, axis=-1)
    if weight.shape.rank != lead.rank or not weight.shape.is_compatible_with(lead):
        return False
    return weight


def reduced(
    labels: Any, logits: Any, params: Any, sample_weight: Any, reduction: str
) -> Optional[tf.Tensor]:
    """The fused reduced loss (accumulation dtype), or None where Keras' own reduction of
    the per-example losses must run (see :func:`costxent.ops.reduced_loss`)."""
    if isinstance(params, SoftmaxParams):
        x = _softmax_inputs(labels, logits, params)
    else:
        x = _sigmoid_inputs(labels, logits, params)
    lead = x.logits.shape[:-1]
    if lead.rank is None or lead.rank == 0 or lead.num_elements() == 0:
        return None  # Keras returns such losses unreduced
    weights = _row_weights(sample_weight, lead, x.acc_dtype)
    if weights is False:
        return None
    return cx_ops.reduced_loss(x, weights, reduction)
