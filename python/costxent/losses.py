"""Keras 3 losses on top of the fused cost-sensitive cross-entropy ops.

The classes here only translate Keras conventions (probabilities or logits, reductions,
``sample_weight``, masks, serialization) onto :mod:`costxent.ops`. Where a gradient is
recorded, ``__call__`` hands the reduction to the fused reduced op (one pass writes the scalar
loss and its gradient, class ids stay integers); otherwise ``keras.losses.Loss.__call__``
reduces the fused op's per-example losses.

Cost matrices follow the convention ``M[true, predicted]``: row = true class, column =
predicted class. For three classes A, B, C where "a true B predicted as C costs 5, a true B
predicted as A costs 1, everything else wrong costs 1"::

    M = [[0, 1, 1],   # true A
         [1, 0, 5],   # true B: predicted A costs 1, predicted C costs 5
         [1, 1, 0]]   # true C
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops as kops

from costxent import _args
from costxent import ops as cx_ops
from costxent._keras_compat import (
    get_keras_mask,
    set_keras_mask,
    squeeze_or_expand_to_same_rank,
    standardize_reduction,
)

__all__ = ["ExpectedCostLoss", "WeightedBinaryCrossentropy", "WeightedCategoricalCrossentropy"]

ClassWeight = Sequence[float] | Mapping[int | str, float]


def _plain(value: Any) -> Any:
    """A validated weight as JSON-compatible Python values (for ``get_config``)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {int(k): float(v) for k, v in value.items()}
    values = value.values if isinstance(value, _args.CheckedWeights) else np.asarray(value)
    return values.tolist()


def _public(value: Any) -> Any:
    """A validated weight as users read it back: a dict, a NumPy array (a copy) or None."""
    if isinstance(value, _args.CheckedWeights):
        return value.values.copy()
    return value


def _softmax_logits(y_pred: Any, from_logits: bool) -> Any:
    """Logits for the softmax losses: ``y_pred`` itself, or ``log(clip(p, eps, 1))``."""
    if from_logits:
        return y_pred
    return kops.log(kops.clip(y_pred, keras.config.epsilon(), 1.0))


def _mask_ignored(losses: Any, y_true: Any, ignore_class: int | None) -> Any:
    """Attach the Keras mask ``y_true != ignore_class`` to the per-example ``losses``.

    ``keras.losses.Loss.__call__`` honours that mask exactly as it does for
    ``keras.losses.SparseCategoricalCrossentropy(ignore_class=...)``: ignored examples are
    left out of the mean of ``"sum_over_batch_size"``/``"mean"`` and of the weight sum of
    ``"mean_with_sample_weight"``.
    """
    if ignore_class is not None:
        labels = kops.reshape(y_true, kops.shape(losses))
        set_keras_mask(losses, kops.not_equal(labels, kops.cast(ignore_class, labels.dtype)))
    return losses


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


class _CostxentLoss(keras.losses.Loss):
    """Shared plumbing: the fused reduction in ``__call__``, ``_loss`` per example, config."""

    _config_keys: tuple[str, ...] = ()
    _weight_keys: tuple[str, ...] = ()  # stored validated, as "_" + key

    def __init__(
        self,
        from_logits: bool,
        label_smoothing: float,
        reduction: str | None,
        name: str,
        dtype: Any,
    ) -> None:
        """Keras' own arguments, plus the two every costxent loss has."""
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """The reduced loss, as ``keras.losses.Loss.__call__`` computes it.

        With a reduction, the fused op applies it in the row pass (the gradient of the scalar
        is written there too); class ids are not cast to float and back. Per-example losses
        (``reduction=None``), masked predictions and weights the fused reduction cannot
        broadcast exactly take Keras' own path over :meth:`call`.
        """
        reduction = standardize_reduction(self.reduction)
        if (
            reduction in (None, "none")
            or get_keras_mask(y_pred) is not None
            or not isinstance(y_pred, (tf.Tensor, tf.Variable, np.ndarray, list, float))
        ):
            return super().__call__(y_true, y_pred, sample_weight)
        reduction = "sum_over_batch_size" if reduction == "mean" else reduction
        with tf.name_scope(self.name):
            logits = kops.convert_to_tensor(y_pred, dtype=self.dtype)
            labels = kops.convert_to_tensor(y_true)
            loss = self._reduced(labels, logits, sample_weight, reduction)
            if loss is not None:
                return tf.cast(loss, self.dtype)
        return super().__call__(y_true, y_pred, sample_weight)

    def _reduced(self, y_true: Any, y_pred: Any, sample_weight: Any, reduction: str) -> Any:
        """The fused reduced loss, or None to take Keras' path."""
        x = self._inputs(y_true, y_pred)
        lead = x.logits.shape[:-1]
        if lead.rank is None or lead.rank == 0 or lead.num_elements() == 0:
            return None  # Keras returns such losses unreduced
        weights = _row_weights(sample_weight, lead, x.acc_dtype)
        if weights is False:
            return None
        return cx_ops.reduced_loss(x, weights, reduction)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss of shape ``y_pred.shape[:-1]``, before Keras' reduction.

        ``Loss.__call__`` converts only the leaves of nested Python lists, so pack them here.
        """
        return self._loss(kops.convert_to_tensor(y_true), kops.convert_to_tensor(y_pred))

    def _inputs(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-compatible values (weights as plain lists)."""
        config = {key: getattr(self, key) for key in self._config_keys}
        for key in self._weight_keys:
            config[key] = _plain(getattr(self, "_" + key))
        return {**super().get_config(), **config, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="costxent")
class WeightedCategoricalCrossentropy(_CostxentLoss):
    """Class-weighted or cost-matrix-weighted, focal, smoothed categorical cross-entropy.

    Per example ``i`` with probabilities ``p_i``, targets ``t_i`` (one-hot of a sparse label,
    or a dense one-hot/soft row) and smoothed targets ``ts_i = (1 - eps) t_i + eps / C``::

        loss_i = w_i * sum_k ts_ik * -(1 - p_ik)^gamma * log(p_ik)

    where ``w_i = 1`` by default, ``w_i = class_weight[y_i]`` (``sum_k t_ik a_k`` for dense
    labels) with ``class_weight``, or ``w_i = sum_k t_ik M[k, argmax_j p_ij]`` with
    ``cost_matrix`` — the cost of the mistake the model actually makes, ``M[true,
    predicted]``. ``w_i`` is not differentiated. The loss and its gradient are computed by
    one fused kernel (:func:`costxent.ops.softmax_cross_entropy`).

    Args:
        class_weight: Per-class weights, a sequence of length C or a ``{class: weight}``
            dict (missing classes weigh 1.0). Exclusive with ``cost_matrix``.
        cost_matrix: ``C x C`` matrix ``M[true, predicted]``; a correct prediction usually
            costs ``M[k, k] = 0`` — then the loss of correctly classified examples is 0.
        from_logits: Whether ``y_pred`` holds logits. With ``False`` (probabilities) the
            logits are taken as ``log(clip(y_pred, keras.config.epsilon(), 1))``;
            ``from_logits=True`` on a linear output layer is faster and more accurate.
        label_smoothing: ``eps`` in ``[0, 1]``.
        focal_gamma: Focal modulation ``gamma >= 0`` (Lin et al. 2017); 0 is plain
            cross-entropy.
        ignore_class: A sparse label value (e.g. -1 or 255) whose examples get loss 0 and
            are excluded from the mean, as in ``keras.losses.SparseCategoricalCrossentropy``.
        reduction: Any Keras reduction: ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or ``None``.
        name: Name of the loss.
        dtype: Dtype of the loss computation (default ``keras.config.floatx()``).

    Labels are sparse or dense by shape: ``y_pred.shape[:-1]`` or ``y_pred.shape[:-1] + (1,)``
    means class ids, ``y_pred.shape`` means one-hot or soft rows.

    Example:

    >>> M = [[0.0, 1.0, 1.0],
    ...      [1.0, 0.0, 5.0],   # a true 1 predicted as 2 costs 5
    ...      [1.0, 1.0, 0.0]]
    >>> loss = WeightedCategoricalCrossentropy(cost_matrix=M, from_logits=True)
    >>> round(float(loss([1], [[0.0, 1.0, 3.0]])), 2)  # predicted 2: 5 * CE
    10.85
    """

    _config_keys = (
        "class_weight",
        "cost_matrix",
        "from_logits",
        "label_smoothing",
        "focal_gamma",
        "ignore_class",
    )
    _weight_keys = ("class_weight", "cost_matrix")

    def __init__(
        self,
        class_weight: ClassWeight | None = None,
        cost_matrix: Sequence[Sequence[float]] | None = None,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        ignore_class: int | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "weighted_categorical_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(from_logits, label_smoothing, reduction, name, dtype)
        if class_weight is not None and cost_matrix is not None:
            raise ValueError("pass class_weight or cost_matrix, not both")
        self._class_weight = _args.checked_weights("class_weight", class_weight, True)
        self._cost_matrix = _args.checked_weights("cost_matrix", cost_matrix, True)
        self.focal_gamma = float(focal_gamma)
        self.ignore_class = None if ignore_class is None else int(ignore_class)

    @property
    def class_weight(self) -> Any:
        """The class weights: a ``{class: weight}`` dict, a NumPy array, or None."""
        return _public(self._class_weight)

    @property
    def cost_matrix(self) -> np.ndarray | None:
        """The cost matrix ``M[true, predicted]`` (a copy), or None."""
        return _public(self._cost_matrix)

    def _inputs(self, y_true: Any, y_pred: Any) -> _args.SoftmaxInputs:
        return _args.softmax_inputs(
            y_true,
            _softmax_logits(y_pred, self.from_logits),
            class_weight=self._class_weight,
            cost_matrix=self._cost_matrix,
            label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma,
            ignore_class=self.ignore_class,
        )

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        losses = cx_ops.softmax_loss(self._inputs(y_true, y_pred))
        return _mask_ignored(losses, y_true, self.ignore_class)


@keras.saving.register_keras_serializable(package="costxent")
class ExpectedCostLoss(_CostxentLoss):
    """Expected misclassification cost under the predicted distribution, plus optional CE.

    With ``c_i = M^T t_i`` (the row ``M[y_i, :]`` for a sparse label) and ``M[true,
    predicted]``::

        loss_i = sum_j c_ij * p_ij + ce_weight * CE_i

    ``CE_i = -sum_k ts_ik log p_ik`` is the label-smoothed cross-entropy. Unlike
    :class:`WeightedCategoricalCrossentropy` the cost term is differentiable in every
    probability, so the model is pushed away from expensive mistakes and towards cheap
    ones; negative costs (rewards) are allowed. Computed by
    :func:`costxent.ops.expected_cost`. A small ``ce_weight`` (e.g. 0.1) keeps the
    gradient alive on confidently wrong examples, where ``p`` saturates.

    Args:
        cost_matrix: ``C x C`` matrix ``M[true, predicted]``.
        ce_weight: Weight ``lam >= 0`` of the cross-entropy term.
        from_logits: Whether ``y_pred`` holds logits; with ``False`` the logits are
            ``log(clip(y_pred, keras.config.epsilon(), 1))``. ``True`` is faster and more
            accurate.
        label_smoothing: ``eps`` of the cross-entropy term.
        ignore_class: Sparse label value whose examples get loss 0 and are excluded from
            the mean, as in ``keras.losses.SparseCategoricalCrossentropy``.
        reduction: Any Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the loss computation.

    Example:

    >>> M = [[0.0, 1.0], [10.0, 0.0]]  # missing a true 1 costs 10, a false alarm costs 1
    >>> loss = ExpectedCostLoss(M)
    >>> round(float(loss([1, 0], [[0.3, 0.7], [0.9, 0.1]])), 2)  # (10 * 0.3 + 1 * 0.1) / 2
    1.55
    """

    _config_keys = ("cost_matrix", "ce_weight", "from_logits", "label_smoothing", "ignore_class")
    _weight_keys = ("cost_matrix",)

    def __init__(
        self,
        cost_matrix: Sequence[Sequence[float]],
        ce_weight: float = 0.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        ignore_class: int | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "expected_cost",
        dtype: Any = None,
    ) -> None:
        super().__init__(from_logits, label_smoothing, reduction, name, dtype)
        if cost_matrix is None:
            raise ValueError("cost_matrix is required for ExpectedCostLoss, got None")
        self._cost_matrix = _args.checked_weights("cost_matrix", cost_matrix, False)
        self.ce_weight = float(ce_weight)
        self.ignore_class = None if ignore_class is None else int(ignore_class)

    @property
    def cost_matrix(self) -> np.ndarray:
        """The cost matrix ``M[true, predicted]`` (a copy)."""
        return _public(self._cost_matrix)

    def _inputs(self, y_true: Any, y_pred: Any) -> _args.SoftmaxInputs:
        return _args.softmax_inputs(
            y_true,
            _softmax_logits(y_pred, self.from_logits),
            cost_matrix=self._cost_matrix,
            ce_weight=self.ce_weight,
            label_smoothing=self.label_smoothing,
            ignore_class=self.ignore_class,
            expected_cost=True,
        )

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        losses = cx_ops.softmax_loss(self._inputs(y_true, y_pred))
        return _mask_ignored(losses, y_true, self.ignore_class)


@keras.saving.register_keras_serializable(package="costxent")
class WeightedBinaryCrossentropy(_CostxentLoss):
    """Weighted focal binary cross-entropy for binary and multi-label problems.

    Per element, with ``s = sigmoid(z)``, smoothed labels ``y <- y (1 - eps) + eps / 2`` and
    ``pt = y s + (1 - y)(1 - s)``::

        loss = (1 - pt)^gamma * -(a * y * log(s) + b * (1 - y) * log(1 - s))

    averaged over the last axis like ``keras.losses.BinaryCrossentropy``. ``a`` is
    ``pos_weight`` and ``b`` is ``neg_weight``, scalars or per-label vectors (length of the
    last axis), default 1. With ``gamma = 0, b = 1`` this is
    ``tf.nn.weighted_cross_entropy_with_logits``; ``pos_weight=alpha, neg_weight=1-alpha``
    with hard labels is ``keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True)``.
    Computed by :func:`costxent.ops.sigmoid_cross_entropy`.

    Args:
        pos_weight: Weight of the positive term, e.g. ``n_negative / n_positive`` (about 27
            for 30 labels with one positive each).
        neg_weight: Weight of the negative term.
        from_logits: Whether ``y_pred`` holds logits. With ``False`` the probabilities are
            clipped to ``[eps, 1 - eps]`` (``eps = keras.config.epsilon()``) and turned into
            logits ``log(p / (1 - p))``, as ``keras.losses.binary_crossentropy`` does;
            ``from_logits=True`` on a linear output layer is faster and more accurate.
        label_smoothing: ``eps`` in ``[0, 1]``: labels are squeezed towards 0.5.
        focal_gamma: Focal modulation ``gamma >= 0``.
        reduction: Any Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the loss computation.

    Example:

    >>> loss = WeightedBinaryCrossentropy(pos_weight=27.0, from_logits=True)
    >>> round(float(loss([[1.0, 0.0]], [[0.0, 0.0]])), 2)  # (27 log 2 + log 2) / 2
    9.7
    """

    _config_keys = ("pos_weight", "neg_weight", "from_logits", "label_smoothing", "focal_gamma")
    _weight_keys = ("pos_weight", "neg_weight")

    def __init__(
        self,
        pos_weight: float | Sequence[float] | None = None,
        neg_weight: float | Sequence[float] | None = None,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "weighted_binary_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(from_logits, label_smoothing, reduction, name, dtype)
        self._pos_weight = _args.checked_weights("pos_weight", pos_weight, True)
        self._neg_weight = _args.checked_weights("neg_weight", neg_weight, True)
        self.focal_gamma = float(focal_gamma)

    @property
    def pos_weight(self) -> np.ndarray | None:
        """The positive-term weight (scalar or per label) as a NumPy array, or None."""
        return _public(self._pos_weight)

    @property
    def neg_weight(self) -> np.ndarray | None:
        """The negative-term weight (scalar or per label) as a NumPy array, or None."""
        return _public(self._neg_weight)

    def _inputs(self, y_true: Any, y_pred: Any) -> _args.SigmoidInputs:
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        if self.from_logits:
            logits = y_pred
        else:
            eps = keras.config.epsilon()
            p = kops.clip(y_pred, eps, 1.0 - eps)
            logits = kops.log(p) - kops.log1p(-p)
        return _args.sigmoid_inputs(
            y_true,
            logits,
            pos_weight=self._pos_weight,
            neg_weight=self._neg_weight,
            label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma,
        )

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        """Per-element loss averaged over the last axis (as ``keras.losses.BinaryCrossentropy``)."""
        return kops.mean(cx_ops.sigmoid_loss(self._inputs(y_true, y_pred)), axis=-1)
