"""Pure-TensorFlow implementation of the costxent losses.

The correctness oracle for the fused kernels, and the path taken when XLA compiles the
caller (``jit_compile=True``), since XLA cannot compile a custom op but fuses these plain
ops well. Same signatures and results as ``costxent.ops``; gradients come from autodiff.
Weights (class weights, cost matrices, pos/neg weights) and labels are constants of the
loss: no gradient flows to them, as in the fused op.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from costxent import _args
from costxent._args import WeightLike


def _row_is_finite(z: tf.Tensor) -> tf.Tensor:
    return tf.reduce_all(tf.math.is_finite(z), axis=-1)


def _nan_where_not(finite: tf.Tensor, loss: tf.Tensor) -> tf.Tensor:
    """A row with a NaN or infinite logit gets a NaN loss, never a finite one (DESIGN 2.4)."""
    return tf.where(finite, loss, tf.constant(float("nan"), loss.dtype))


def _focal_modulation(logp: tf.Tensor, gamma: float) -> tf.Tensor:
    """(1 - p)^gamma with 1 - p = -expm1(log p); the masked pow keeps gamma < 1 finite at p = 1."""
    q = -tf.math.expm1(logp)
    positive = q > 0
    safe_q = tf.where(positive, q, tf.ones_like(q))
    return tf.where(positive, tf.pow(safe_q, gamma), tf.zeros_like(q))


def _targets(x: _args.SoftmaxInputs) -> tuple[tf.Tensor, tf.Tensor]:
    """(t, ignored): unsmoothed [N, C] targets, and the rows whose label is ignore_class."""
    labels = _flat_labels(x)
    if not x.sparse:
        return tf.cast(labels, x.acc_dtype), tf.zeros(tf.shape(labels)[:1], tf.bool)
    if x.ignore_class is None:
        ignored = tf.zeros_like(labels, tf.bool)
    else:
        ignored = tf.equal(labels, tf.cast(x.ignore_class, labels.dtype))
    # An out-of-range id gives an all-zero one_hot row; the row is made NaN below.
    safe = tf.where(ignored, tf.zeros_like(labels), labels)
    return tf.one_hot(safe, x.num_classes, dtype=x.acc_dtype), ignored


def _label_in_range(x: _args.SoftmaxInputs, ignored: tf.Tensor) -> tf.Tensor:
    if not x.sparse:
        return tf.ones_like(ignored)
    labels = _flat_labels(x)
    return tf.logical_or(ignored, tf.logical_and(labels >= 0, labels < x.num_classes))


def _first_argmax(z: tf.Tensor) -> tf.Tensor:
    """argmax over the last axis, lowest index on ties (tf.argmax does not promise that).

    A NaN row has no maximum; index 0 keeps the gather in range (its loss becomes NaN).
    """
    c = tf.shape(z)[-1]
    is_max = tf.equal(z, tf.reduce_max(z, axis=-1, keepdims=True))
    index = tf.broadcast_to(tf.range(c), tf.shape(z))
    first = tf.reduce_min(tf.where(is_max, index, c), axis=-1)
    return tf.where(first < c, first, tf.zeros_like(first))


def _smoothed(t: tf.Tensor, x: _args.SoftmaxInputs) -> tf.Tensor:
    eps = x.label_smoothing
    return (1.0 - eps) * t + eps / x.num_classes


def _weighted(phi: tf.Tensor, ts: tf.Tensor) -> tf.Tensor:
    """``ts * phi``, 0 where ``ts`` is 0: a finite row spanning more than float32's range
    (``[3e38, -3e38]``) has ``log p = -inf`` at its lowest classes, and ``0 * inf`` is NaN.
    With label smoothing their ``ts`` is not 0 and the term stays inf, where the fused op's
    halved logits give the finite value."""
    return tf.math.multiply_no_nan(phi, ts)


def _finish(
    x: _args.SoftmaxInputs, loss: tf.Tensor, finite: tf.Tensor, ignored: tf.Tensor
) -> tf.Tensor:
    loss = _nan_where_not(tf.logical_and(finite, _label_in_range(x, ignored)), loss)
    loss = tf.where(ignored, tf.zeros_like(loss), loss)
    loss = tf.reshape(loss, tf.shape(x.logits)[:-1])
    loss.set_shape(x.logits.shape[:-1])
    return loss


def _with_checks(x: Any, validate: bool):
    """What the fused CPU op checks as it runs (leading shapes, weights fed as tensors), and
    label ranges on request."""
    return tf.control_dependencies(_args.runtime_checks(x, validate))


def _flat_logits(x: _args.SoftmaxInputs) -> tf.Tensor:
    return tf.reshape(tf.cast(x.logits, x.acc_dtype), [-1, x.num_classes])


def _flat_labels(x: _args.SoftmaxInputs) -> tf.Tensor:
    return tf.reshape(x.labels, [-1] if x.sparse else [-1, x.num_classes])


def softmax_cross_entropy(
    labels: Any,
    logits: Any,
    *,
    class_weight: WeightLike = None,
    cost_matrix: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    ignore_class: Optional[int] = None,
    validate: bool = False,
) -> tf.Tensor:
    """Per-example weighted (focal) softmax cross-entropy, DESIGN 2.1.

    ``loss_i = w_i * sum_k ts_ik * phi(p_ik)`` with ``p = softmax(logits)``,
    ``ts = (1 - eps) t + eps / C`` and ``phi(p) = -(1 - p)^gamma log p``. ``w_i`` is 1,
    ``class_weight[y_i]`` (``sum_k t_ik a_k`` for dense labels), or with a cost matrix
    ``M[true, predicted]`` the cost of the mistake made, ``sum_k t_ik M[k, argmax_j z_ij]``.
    Returns float32 (float64 for float64 logits) of shape ``logits.shape[:-1]``.
    """
    x = _args.softmax_inputs(
        labels,
        logits,
        class_weight=class_weight,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
        ignore_class=ignore_class,
    )
    return softmax_loss(x, validate)


def softmax_loss(x: _args.SoftmaxInputs, validate: bool = False) -> tf.Tensor:
    """The loss of validated softmax inputs (either loss kind), per example."""
    if x.loss_kind == "expected_cost":
        return _expected_cost(x, validate)
    with _with_checks(x, validate):
        z = _flat_logits(x)
        t, ignored = _targets(x)
        z = tf.where(ignored[:, None], tf.zeros_like(z), z)  # no NaN gradient from ignored rows
        logp = tf.nn.log_softmax(z)
        phi = -logp
        if x.focal_gamma > 0:
            modulation = _focal_modulation(logp, x.focal_gamma)
            # Where log p is -inf (see _weighted) the modulation has slope 0; times that
            # inf it would be NaN.
            finite = tf.math.is_finite(logp)
            phi = tf.where(finite, modulation, tf.stop_gradient(modulation)) * phi
        loss = tf.reduce_sum(_weighted(phi, _smoothed(t, x)), axis=-1)
        if x.weight_mode == "class":
            loss = loss * tf.linalg.matvec(t, x.weights)
        elif x.weight_mode == "cost":
            # Column jhat_i of M, as a row: entries M[k, jhat_i].
            mistake_costs = tf.gather(tf.transpose(x.weights), _first_argmax(z))
            loss = loss * tf.stop_gradient(tf.reduce_sum(t * mistake_costs, axis=-1))
        return _finish(x, loss, _row_is_finite(z), ignored)


def expected_cost(
    labels: Any,
    logits: Any,
    cost_matrix: WeightLike,
    *,
    ce_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_class: Optional[int] = None,
    validate: bool = False,
) -> tf.Tensor:
    """Per-example expected misclassification cost plus weighted cross-entropy, DESIGN 2.2.

    ``loss_i = sum_j c_ij p_ij + ce_weight * CE_i`` with ``c_i = M^T t_i`` (``M[y_i, :]`` for
    sparse labels, unsmoothed) and ``CE_i = -sum_j ts_ij log p_ij``. Smooth in the logits
    (no argmax), so it can train towards low cost directly; negative costs are rewards.
    """
    x = _args.softmax_inputs(
        labels,
        logits,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        ce_weight=ce_weight,
        ignore_class=ignore_class,
        expected_cost=True,
    )
    return _expected_cost(x, validate)


def _expected_cost(x: _args.SoftmaxInputs, validate: bool) -> tf.Tensor:
    with _with_checks(x, validate):
        z = _flat_logits(x)
        t, ignored = _targets(x)
        z = tf.where(ignored[:, None], tf.zeros_like(z), z)  # no NaN gradient from ignored rows
        logp = tf.nn.log_softmax(z)
        costs = tf.matmul(t, x.weights)
        loss = tf.reduce_sum(costs * tf.exp(logp), axis=-1)
        if x.ce_weight != 0:
            loss += x.ce_weight * tf.reduce_sum(_weighted(-logp, _smoothed(t, x)), axis=-1)
        return _finish(x, loss, _row_is_finite(z), ignored)


def sigmoid_cross_entropy(
    labels: Any,
    logits: Any,
    *,
    pos_weight: WeightLike = None,
    neg_weight: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    validate: bool = False,
) -> tf.Tensor:
    """Per-element weighted (focal) sigmoid cross-entropy, DESIGN 2.3.

    With ``y = labels (1 - eps) + eps / 2`` and ``s = sigmoid(z)``:
    ``loss = (1 - pt)^gamma * (a y softplus(-z) + b (1 - y) softplus(z))``,
    ``pt = y s + (1 - y)(1 - s)``, ``a = pos_weight``, ``b = neg_weight`` (scalars or one per
    class, default 1). With gamma = 0 and b = 1 this is
    ``tf.nn.weighted_cross_entropy_with_logits``. Returns the logits' shape, float32.
    """
    x = _args.sigmoid_inputs(
        labels,
        logits,
        pos_weight=pos_weight,
        neg_weight=neg_weight,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
    )
    return sigmoid_loss(x, validate)


def sigmoid_loss(x: _args.SigmoidInputs, validate: bool = False) -> tf.Tensor:
    """The per-element loss of validated sigmoid inputs."""
    with _with_checks(x, validate):
        z = tf.cast(x.logits, x.acc_dtype)
        y = tf.cast(x.labels, x.acc_dtype)
        valid = tf.logical_and(tf.logical_and(y >= 0, y <= 1), tf.math.is_finite(z))
        y = y * (1.0 - x.label_smoothing) + 0.5 * x.label_smoothing
        a = x.pos_weight if x.pos_weight.shape[0] else tf.ones([1], x.acc_dtype)
        b = x.neg_weight if x.neg_weight.shape[0] else tf.ones([1], x.acc_dtype)
        loss = a * y * tf.nn.softplus(-z) + b * (1.0 - y) * tf.nn.softplus(z)
        if x.focal_gamma > 0:
            s = tf.sigmoid(z)
            miss = y * tf.sigmoid(-z) + (1.0 - y) * s
            positive = miss > 0
            safe = tf.where(positive, miss, tf.ones_like(miss))
            loss *= tf.where(positive, tf.pow(safe, x.focal_gamma), tf.zeros_like(miss))
        return _nan_where_not(valid, loss)
