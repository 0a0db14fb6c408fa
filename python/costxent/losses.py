"""Keras 3 losses on top of the fused cost-sensitive cross-entropy ops.

The classes here only translate Keras conventions (probabilities or logits, labels cast to
float by ``keras.losses.Loss.__call__``, reductions, ``sample_weight``, masks,
serialization) onto :mod:`costxent.ops`, which computes the per-example loss and its gradient
in one fused kernel.

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
from keras import ops as kops
from keras.src.backend import set_keras_mask
from keras.src.losses.loss import squeeze_or_expand_to_same_rank

from costxent import ops as cx_ops

__all__ = ["ExpectedCostLoss", "WeightedBinaryCrossentropy", "WeightedCategoricalCrossentropy"]

ClassWeight = Sequence[float] | Mapping[int | str, float]


def _plain(value: Any) -> float | list | None:
    """A scalar, vector or matrix (list, NumPy array, eager tensor) as plain Python floats."""
    if value is None:
        return None
    return np.asarray(value, dtype=np.float64).tolist()


def _plain_class_weight(class_weight: Any) -> dict[int, float] | list | None:
    """``{class: weight}`` with int keys (JSON turns them into strings) or a list of floats."""
    if isinstance(class_weight, Mapping):
        return {int(k): float(v) for k, v in class_weight.items()}
    return _plain(class_weight)


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


class _CostxentLoss(keras.losses.Loss):
    """Shared plumbing: tensors in, ``_loss`` per example, config from ``_config_keys``."""

    _config_keys: tuple[str, ...] = ()

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

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss of shape ``y_pred.shape[:-1]``, before Keras' reduction.

        ``Loss.__call__`` converts only the leaves of nested Python lists, so pack them here.
        """
        return self._loss(kops.convert_to_tensor(y_true), kops.convert_to_tensor(y_pred))

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-compatible values (weights as plain lists)."""
        return {
            **super().get_config(),
            **{key: getattr(self, key) for key in self._config_keys},
            "dtype": self.dtype,
        }


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
        self.class_weight = _plain_class_weight(class_weight)
        self.cost_matrix = _plain(cost_matrix)
        self.focal_gamma = float(focal_gamma)
        self.ignore_class = None if ignore_class is None else int(ignore_class)

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        losses = cx_ops.softmax_cross_entropy(
            y_true,
            _softmax_logits(y_pred, self.from_logits),
            class_weight=self.class_weight,
            cost_matrix=self.cost_matrix,
            label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma,
            ignore_class=self.ignore_class,
        )
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
        self.cost_matrix = _plain(cost_matrix)
        self.ce_weight = float(ce_weight)
        self.ignore_class = None if ignore_class is None else int(ignore_class)

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        losses = cx_ops.expected_cost(
            y_true,
            _softmax_logits(y_pred, self.from_logits),
            self.cost_matrix,
            ce_weight=self.ce_weight,
            label_smoothing=self.label_smoothing,
            ignore_class=self.ignore_class,
        )
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
        self.pos_weight = _plain(pos_weight)
        self.neg_weight = _plain(neg_weight)
        self.focal_gamma = float(focal_gamma)

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        """Per-element loss averaged over the last axis (as ``keras.losses.BinaryCrossentropy``)."""
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        if self.from_logits:
            logits = y_pred
        else:
            eps = keras.config.epsilon()
            p = kops.clip(y_pred, eps, 1.0 - eps)
            logits = kops.log(p) - kops.log1p(-p)
        losses = cx_ops.sigmoid_cross_entropy(
            y_true,
            logits,
            pos_weight=self.pos_weight,
            neg_weight=self.neg_weight,
            label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma,
        )
        return kops.mean(losses, axis=-1)
