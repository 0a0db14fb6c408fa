"""Keras 3 losses on top of the fused cost-sensitive cross-entropy ops.

The classes here only translate Keras conventions (probabilities or logits, reductions,
``sample_weight``, masks, serialization) onto the path of the running Keras backend
(:mod:`costxent._engine`): the fused TF ops of :mod:`costxent.ops` on TensorFlow, the fused
``torch.library`` ops on PyTorch, the ``keras.ops`` reference elsewhere. Where the path has a
fused reduction and a gradient is recorded, ``__call__`` hands the reduction to it (one pass
writes the scalar loss and its gradient); otherwise Keras' own reduction runs over the
per-example losses.

Unlike ``keras.losses.Loss.__call__``, class ids are never cast to the loss' dtype (a
bfloat16 cast turns 257 into 256), and float16/bfloat16 logits reach the kernel as they are
(mixed precision: no upcast copy); the kernels accumulate in float32 and the loss comes
back in the loss' ``dtype`` (float32 unless given).

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

from costxent import _checks, _engine
from costxent._keras_compat import (
    get_keras_mask,
    reduce_weighted_values,
    squeeze_or_expand_to_same_rank,
    standardize_reduction,
)
from costxent._portable import SigmoidParams, SoftmaxParams

__all__ = ["ExpectedCostLoss", "WeightedBinaryCrossentropy", "WeightedCategoricalCrossentropy"]

ClassWeight = Sequence[float] | Mapping[int | str, float]


def _plain(value: Any) -> Any:
    """A validated weight as JSON-compatible Python values (for ``get_config``)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {int(k): float(v) for k, v in value.items()}
    values = value.values if isinstance(value, _checks.CheckedWeights) else np.asarray(value)
    return values.tolist()


def _public(value: Any) -> Any:
    """A validated weight as users read it back: a dict, a NumPy array (a copy) or None."""
    if isinstance(value, _checks.CheckedWeights):
        return value.values.copy()
    return value


def _softmax_logits(y_pred: Any, from_logits: bool) -> Any:
    """Logits for the softmax losses: ``y_pred`` itself, or ``log(clip(p, eps, 1))``."""
    if from_logits:
        return y_pred
    return kops.log(kops.clip(y_pred, keras.config.epsilon(), 1.0))


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

        With a reduction and a fused path that can fold it in, the row pass applies it (the
        gradient of the scalar is written there too). Per-example losses
        (``reduction=None``), masked predictions and weights the fused reduction cannot
        broadcast exactly take Keras' own reduction over :meth:`call`. Rows labelled
        ``ignore_class`` are left out of the mean, as in
        ``keras.losses.SparseCategoricalCrossentropy``.
        """
        reduction = standardize_reduction(self.reduction)
        in_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            logits = self._convert_predictions(y_pred)
            labels = kops.convert_to_tensor(y_true)
            labels, logits = self._logits(labels, logits)
            if reduction not in (None, "none") and in_mask is None:
                fused = "sum_over_batch_size" if reduction == "mean" else reduction
                loss = self._path.reduced(labels, logits, self._params, sample_weight, fused)
                if loss is not None:
                    return kops.cast(loss, self.dtype)
            losses = self._loss(labels, logits)
            mask = self._ignored_mask(labels, losses)
            if in_mask is not None:
                mask = in_mask if mask is None else kops.logical_and(in_mask, mask)
            return reduce_weighted_values(
                losses,
                sample_weight=sample_weight,
                mask=mask,
                reduction=self.reduction,
                dtype=self.dtype,
            )

    @property
    def _path(self) -> _engine.Path:
        return _engine.path()

    def _convert_predictions(self, y_pred: Any) -> Any:
        """``y_pred`` as a tensor: half-precision logits as they are (the fused kernels read
        them), anything else in the loss' dtype, as Keras converts it."""
        y_pred = kops.convert_to_tensor(y_pred)
        dtype = keras.backend.standardize_dtype(y_pred.dtype)
        if self.from_logits and dtype in ("float16", "bfloat16"):
            return y_pred
        return kops.cast(y_pred, self.dtype)

    def _ignored_mask(self, labels: Any, losses: Any) -> Any:
        """``labels != ignore_class`` of the losses' shape, or None."""
        ignore_class = getattr(self, "ignore_class", None)
        if ignore_class is None:
            return None
        labels = kops.reshape(labels, kops.shape(losses))
        return kops.not_equal(labels, kops.cast(ignore_class, labels.dtype))

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss of shape ``y_pred.shape[:-1]``, before Keras' reduction.

        ``y_pred`` must be a tensor or array: ``__call__`` converts nested Python lists.
        """
        y_true, logits = self._logits(kops.convert_to_tensor(y_true), kops.convert_to_tensor(y_pred))
        return self._loss(y_true, logits)

    @property
    def _params(self) -> Any:
        raise NotImplementedError

    def _logits(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """(labels, logits) from ``y_pred`` under ``from_logits``."""
        raise NotImplementedError

    def _loss(self, y_true: Any, logits: Any) -> Any:
        """Per-example loss of labels and logits (as :meth:`_logits` returns them)."""
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
        self._class_weight = _checks.checked_weights("class_weight", class_weight, True)
        self._cost_matrix = _checks.checked_weights("cost_matrix", cost_matrix, True)
        self.focal_gamma = float(focal_gamma)
        self.ignore_class = _checks.ignore_class(ignore_class)

    @property
    def class_weight(self) -> Any:
        """The class weights: a ``{class: weight}`` dict, a NumPy array, or None."""
        return _public(self._class_weight)

    @property
    def cost_matrix(self) -> np.ndarray | None:
        """The cost matrix ``M[true, predicted]`` (a copy), or None."""
        return _public(self._cost_matrix)

    @property
    def _params(self) -> SoftmaxParams:
        return SoftmaxParams(
            class_weight=self._class_weight,
            cost_matrix=self._cost_matrix,
            label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma,
            ignore_class=self.ignore_class,
        )

    def _logits(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        return y_true, _softmax_logits(y_pred, self.from_logits)

    def _loss(self, y_true: Any, logits: Any) -> Any:
        return self._path.softmax(y_true, logits, self._params)


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
        self._cost_matrix = _checks.checked_weights("cost_matrix", cost_matrix, False)
        self.ce_weight = float(ce_weight)
        self.ignore_class = _checks.ignore_class(ignore_class)

    @property
    def cost_matrix(self) -> np.ndarray:
        """The cost matrix ``M[true, predicted]`` (a copy)."""
        return _public(self._cost_matrix)

    @property
    def _params(self) -> SoftmaxParams:
        return SoftmaxParams(
            expected_cost=True,
            cost_matrix=self._cost_matrix,
            label_smoothing=self.label_smoothing,
            ce_weight=self.ce_weight,
            ignore_class=self.ignore_class,
        )

    def _logits(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        return y_true, _softmax_logits(y_pred, self.from_logits)

    def _loss(self, y_true: Any, logits: Any) -> Any:
        return self._path.softmax(y_true, logits, self._params)


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
        self._pos_weight = _checks.checked_weights("pos_weight", pos_weight, True)
        self._neg_weight = _checks.checked_weights("neg_weight", neg_weight, True)
        self.focal_gamma = float(focal_gamma)

    @property
    def pos_weight(self) -> np.ndarray | None:
        """The positive-term weight (scalar or per label) as a NumPy array, or None."""
        return _public(self._pos_weight)

    @property
    def neg_weight(self) -> np.ndarray | None:
        """The negative-term weight (scalar or per label) as a NumPy array, or None."""
        return _public(self._neg_weight)

    @property
    def _params(self) -> SigmoidParams:
        return SigmoidParams(
            pos_weight=self._pos_weight,
            neg_weight=self._neg_weight,
            label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma,
        )

    def _logits(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        if self.from_logits:
            return y_true, y_pred
        eps = keras.config.epsilon()
        p = kops.clip(y_pred, eps, 1.0 - eps)
        return y_true, kops.log(p) - kops.log1p(-p)

    def _loss(self, y_true: Any, logits: Any) -> Any:
        """Per-element loss averaged over the last axis (as ``keras.losses.BinaryCrossentropy``)."""
        return kops.mean(self._path.sigmoid(y_true, logits, self._params), axis=-1)
