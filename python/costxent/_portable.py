"""The costxent losses in ``keras.ops``: the reference for every Keras backend.

The same math as :mod:`costxent.reference` (DESIGN 2), written once in ``keras.ops`` so that
it runs, and differentiates, under the JAX, PyTorch and TensorFlow backends alike. It serves
the backends that have no fused path (and the tests compare the fused paths against it);
:mod:`costxent.reference` stays the pure-TF oracle. Arguments are checked here as
:mod:`costxent._args` checks them for TensorFlow, through the same :mod:`costxent._checks`;
what only the data can tell (a label outside ``[0, C)``, a non-finite logit) makes that row
NaN, never an error raised from inside a traced function and never a finite number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Optional

import keras
import numpy as np
from keras import ops as kops

from costxent import _checks


@dataclasses.dataclass(frozen=True)
class SoftmaxParams:
    """The constants of a softmax loss, weights already checked by
    :func:`costxent._checks.checked_weights`: ``class_weight`` ``[C]`` or a dict, or
    ``cost_matrix`` ``[C, C]`` (``M[true, predicted]``), or neither."""

    expected_cost: bool = False
    class_weight: Any = None
    cost_matrix: Any = None
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0
    ce_weight: float = 0.0
    ignore_class: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class SigmoidParams:
    """The constants of the sigmoid loss: scalar or ``[C]`` weights (checked by
    :func:`costxent._checks.checked_weights`), or None."""

    pos_weight: Any = None
    neg_weight: Any = None
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0


@dataclasses.dataclass(frozen=True)
class FunctionalApi:
    """A fused backend's functions with the signatures of :mod:`costxent.ops`."""

    softmax_cross_entropy: Callable[..., Any]
    expected_cost: Callable[..., Any]
    sigmoid_cross_entropy: Callable[..., Any]


def functional_api(
    softmax_params_loss: Callable[[Any, Any, SoftmaxParams], Any],
    sigmoid_params_loss: Callable[[Any, Any, SigmoidParams], Any],
    checked: Callable[[str, Any, bool], Any],
    module: str,
) -> FunctionalApi:
    """The functional API of a backend (defined in ``module``) over its per-example losses of
    params: each argument checked as :mod:`costxent.ops` checks it, the weights by
    ``checked(name, value, nonnegative)`` (costs may be negative, as rewards, only in the
    expected cost)."""

    def softmax_cross_entropy(
        labels: Any,
        logits: Any,
        *,
        class_weight: Any = None,
        cost_matrix: Any = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        ignore_class: Optional[int] = None,
    ) -> Any:
        """Per-example weighted (focal) softmax cross-entropy (DESIGN 2.1).

        ``loss_i = w_i * sum_k ts_ik * -(1 - p_ik)^gamma log p_ik`` with
        ``p = softmax(logits)``, ``ts = (1 - eps) t + eps / C``; ``w_i`` = 1,
        ``class_weight[y_i]``, or the cost of the mistake made, ``M[y_i, argmax_j
        logits_ij]`` (``M[true, predicted]``, not differentiated). Returns float32 (float64
        for float64 logits) of shape ``logits.shape[:-1]``; differentiable in the logits.
        """
        params = SoftmaxParams(
            class_weight=checked("class_weight", class_weight, True),
            cost_matrix=checked("cost_matrix", cost_matrix, True),
            label_smoothing=_checks.scalar("label_smoothing", label_smoothing, 0.0, 1.0),
            focal_gamma=_checks.scalar("focal_gamma", focal_gamma, 0.0),
            ignore_class=_checks.ignore_class(ignore_class),
        )
        return softmax_params_loss(labels, logits, params)

    def expected_cost(
        labels: Any,
        logits: Any,
        cost_matrix: Any,
        *,
        ce_weight: float = 0.0,
        label_smoothing: float = 0.0,
        ignore_class: Optional[int] = None,
    ) -> Any:
        """Per-example expected cost plus weighted cross-entropy (DESIGN 2.2).

        ``loss_i = sum_j (M^T t_i)_j p_ij + ce_weight * CE_i``; negative costs are rewards.
        """
        params = SoftmaxParams(
            expected_cost=True,
            cost_matrix=checked("cost_matrix", cost_matrix, False),
            label_smoothing=_checks.scalar("label_smoothing", label_smoothing, 0.0, 1.0),
            ce_weight=_checks.scalar("ce_weight", ce_weight, 0.0),
            ignore_class=_checks.ignore_class(ignore_class),
        )
        return softmax_params_loss(labels, logits, params)

    def sigmoid_cross_entropy(
        labels: Any,
        logits: Any,
        *,
        pos_weight: Any = None,
        neg_weight: Any = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
    ) -> Any:
        """Per-element weighted (focal) sigmoid cross-entropy (DESIGN 2.3).

        ``loss = (1 - pt)^gamma * (a y softplus(-z) + b (1 - y) softplus(z))``, smoothed
        ``y = labels (1 - eps) + eps / 2``, ``a = pos_weight``, ``b = neg_weight``.
        """
        params = SigmoidParams(
            pos_weight=checked("pos_weight", pos_weight, True),
            neg_weight=checked("neg_weight", neg_weight, True),
            label_smoothing=_checks.scalar("label_smoothing", label_smoothing, 0.0, 1.0),
            focal_gamma=_checks.scalar("focal_gamma", focal_gamma, 0.0),
        )
        return sigmoid_params_loss(labels, logits, params)

    functions = (softmax_cross_entropy, expected_cost, sigmoid_cross_entropy)
    for function in functions:
        function.__module__ = module
        function.__qualname__ = function.__name__
    return FunctionalApi(*functions)


def fused_softmax_constants(
    labels_shape: tuple, logits_shape: tuple, c: int, params: SoftmaxParams
) -> tuple[str, Optional[np.ndarray], tuple]:
    """What a fused backend hands its softmax kernel besides the arrays: the label layout
    (:func:`costxent._checks.label_layout`), the weights (:func:`softmax_weights`) and the
    options ``(loss_kind, label_smoothing, focal_gamma, ce_weight, ignore_class)``."""
    layout = _checks.label_layout(labels_shape, logits_shape, c)
    if params.ignore_class is not None and layout == "dense":
        raise ValueError(
            "ignore_class needs sparse labels (class ids of shape logits.shape[:-1]); got dense "
            f"labels of shape {list(labels_shape)}"
        )
    kind = "expected_cost" if params.expected_cost else "cross_entropy"
    options = (kind, params.label_smoothing, params.focal_gamma, params.ce_weight,
               params.ignore_class)
    return layout, softmax_weights(params, c), options


def accumulation_dtype(dtype: str) -> str:
    """float64 for float64 logits, float32 otherwise (DESIGN 2.5)."""
    return "float64" if dtype == "float64" else "float32"


def checked_logits(logits: Any, minimum: int) -> tuple[Any, int]:
    """(logits as a tensor, C): a float dtype, a class axis of at least ``minimum``."""
    logits = kops.convert_to_tensor(logits)
    dtype = keras.backend.standardize_dtype(logits.dtype)
    return logits, _checks.num_classes(dtype, tuple(logits.shape), minimum)


def labels_by_shape(labels: Any, logits: Any, num_classes: int) -> tuple[Any, bool]:
    """(labels, sparse): sparse ids squeezed to ``logits.shape[:-1]``, or dense rows.

    Decided by shape (:func:`costxent._checks.label_layout`), as for TensorFlow: class ids
    may have any numeric dtype (Keras casts them to float); a float id that is not a whole
    number makes its row NaN where it is used.
    """
    labels = kops.convert_to_tensor(labels)
    layout = _checks.label_layout(tuple(labels.shape), tuple(logits.shape), num_classes)
    if layout == "sparse_squeeze":
        labels = kops.squeeze(labels, axis=-1)
    return labels, layout != "dense"


def _values(value: Any) -> np.ndarray:
    return value.values if isinstance(value, _checks.CheckedWeights) else np.asarray(value, np.float64)


def _shaped(name: str, value: Any, shape: tuple) -> np.ndarray:
    array = _values(value)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got shape {list(array.shape)}")
    return array


def softmax_weights(params: SoftmaxParams, c: int) -> Optional[np.ndarray]:
    """The weights of a softmax loss for C classes: class weights ``[C]``, a cost matrix
    ``[C, C]`` or None. Their values were checked when ``params`` was made
    (:func:`costxent._checks.checked_weights`); their shapes are checked here."""
    if params.expected_cost:
        if params.cost_matrix is None:
            raise ValueError("cost_matrix is required for expected_cost, got None")
        return _shaped("cost_matrix", params.cost_matrix, (c, c))
    if params.class_weight is not None and params.cost_matrix is not None:
        raise ValueError("pass class_weight or cost_matrix, not both")
    if isinstance(params.class_weight, Mapping):
        return _checks.class_weight_vector(params.class_weight, c)
    if params.class_weight is not None:
        return _shaped("class_weight", params.class_weight, (c,))
    if params.cost_matrix is not None:
        return _shaped("cost_matrix", params.cost_matrix, (c, c))
    return None


def _binary_weight(name: str, value: Any, c: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    array = _values(value)
    array = array.reshape(1) if array.ndim == 0 else array
    if array.shape not in ((1,), (c,)):
        raise ValueError(
            f"{name} must be a scalar or have shape [{c}], got shape {list(array.shape)}"
        )
    return array


def sigmoid_weights(params: SigmoidParams, c: int) -> tuple[Optional[np.ndarray], ...]:
    """(pos_weight, neg_weight) for C labels: ``[1]``, ``[C]`` or None (all ones); values
    checked when ``params`` was made, shapes here."""
    return (
        _binary_weight("pos_weight", params.pos_weight, c),
        _binary_weight("neg_weight", params.neg_weight, c),
    )


def first_argmin(x: Any) -> Any:
    """``argmin`` over the last axis, lowest index on ties on every backend (int32).

    A row with no minimum (all NaN) gets index 0; callers flag non-finite rows themselves.
    """
    c = x.shape[-1]
    index = kops.arange(c, dtype="int32")
    is_min = kops.equal(x, kops.min(x, axis=-1, keepdims=True))
    first = kops.min(kops.where(is_min, index, c), axis=-1)
    return kops.where(first == c, 0, first)


def _masked_pow(q: Any, gamma: float) -> Any:
    """q^gamma for q >= 0, with a masked base so that gamma < 1 keeps a finite gradient at 0."""
    positive = q > 0
    return kops.where(positive, kops.power(kops.where(positive, q, 1.0), gamma), 0.0)


def _sparse_ids(labels: Any, c: int, ignore_class: Optional[int]) -> tuple[Any, Any, Any]:
    """(safe int32 ids, ignored rows, valid rows) of flattened sparse labels; a float id
    that is not a whole number is neither valid nor ignored."""
    whole = None
    if "float" in keras.backend.standardize_dtype(labels.dtype):
        whole = kops.logical_and(kops.isfinite(labels), kops.equal(labels, kops.round(labels)))
        labels = kops.where(whole, labels, 0.0)
    ids = kops.cast(labels, "int32")
    ignored = (
        kops.zeros_like(ids, "bool") if ignore_class is None else kops.equal(ids, ignore_class)
    )
    valid = kops.logical_or(ignored, kops.logical_and(ids >= 0, ids < c))
    if whole is not None:
        valid = kops.logical_and(valid, whole)
        ignored = kops.logical_and(ignored, whole)
    safe = kops.where(kops.logical_and(valid, kops.logical_not(ignored)), ids, 0)
    return safe, ignored, valid


def softmax_loss(labels: Any, logits: Any, params: SoftmaxParams) -> Any:
    """Per-example loss of shape ``logits.shape[:-1]`` in the accumulation dtype.

    Cross-entropy (DESIGN 2.1): ``loss_i = w_i * sum_k ts_ik * -(1 - p_ik)^gamma log p_ik``,
    ``ts = (1 - eps) t + eps / C``, ``w_i`` = 1, ``sum_k t_ik a_k`` or
    ``sum_k t_ik M[k, argmax_j z_ij]`` (not differentiated). Expected cost (DESIGN 2.2):
    ``loss_i = sum_j (M^T t_i)_j p_ij + lam * CE_i``. Rows labelled ``ignore_class`` give 0.
    """
    logits, c = checked_logits(logits, 2)
    labels, sparse = labels_by_shape(labels, logits, c)
    if params.ignore_class is not None and not sparse:
        raise ValueError(
            "ignore_class needs sparse labels (class ids of shape logits.shape[:-1]); got dense "
            f"labels of shape {list(labels.shape)}"
        )
    acc = accumulation_dtype(keras.backend.standardize_dtype(logits.dtype))
    lead = kops.shape(logits)[:-1]
    z = kops.reshape(kops.cast(logits, acc), (-1, c))
    if sparse:
        ids, ignored, valid = _sparse_ids(kops.reshape(labels, (-1,)), c, params.ignore_class)
        t = kops.one_hot(ids, c, dtype=acc)
    else:
        t = kops.reshape(kops.cast(labels, acc), (-1, c))
        ignored = kops.zeros(kops.shape(t)[:1], "bool")
        valid = kops.logical_not(ignored)
    finite = kops.all(kops.isfinite(z), axis=-1)
    z = kops.where(ignored[:, None], 0.0, z)  # no NaN gradient from ignored rows
    logp = kops.log_softmax(z, axis=-1)
    ts = (1.0 - params.label_smoothing) * t + params.label_smoothing / c
    weights = softmax_weights(params, c)
    if params.expected_cost:
        costs = kops.matmul(t, kops.convert_to_tensor(weights, acc))
        loss = kops.sum(costs * kops.exp(logp), axis=-1)
        if params.ce_weight != 0:
            loss = loss + params.ce_weight * kops.sum(ts * -logp, axis=-1)
    else:
        phi = -logp
        if params.focal_gamma > 0:
            phi = _masked_pow(-kops.expm1(logp), params.focal_gamma) * phi
        loss = kops.sum(ts * phi, axis=-1)
        if weights is not None and weights.ndim == 1:
            loss = loss * kops.sum(t * kops.convert_to_tensor(weights, acc), axis=-1)
        elif weights is not None:
            column = kops.take(kops.convert_to_tensor(weights.T, acc), first_argmin(-z), axis=0)
            loss = loss * kops.stop_gradient(kops.sum(t * column, axis=-1))
    loss = kops.where(kops.logical_and(finite, valid), loss, float("nan"))
    loss = kops.where(ignored, 0.0, loss)
    return kops.reshape(loss, lead)


def sigmoid_loss(labels: Any, logits: Any, params: SigmoidParams) -> Any:
    """Per-element loss of the logits' shape in the accumulation dtype (DESIGN 2.3).

    ``loss = (1 - pt)^gamma * (a y softplus(-z) + b (1 - y) softplus(z))`` with smoothed
    ``y = labels (1 - eps) + eps / 2`` and ``pt = y s + (1 - y)(1 - s)``, ``s = sigmoid(z)``;
    a label outside ``[0, 1]`` or a non-finite logit gives NaN.
    """
    logits, c = checked_logits(logits, 1)
    labels = kops.convert_to_tensor(labels)
    if tuple(labels.shape) != tuple(logits.shape):
        raise ValueError(
            f"labels must have the logits' shape {list(logits.shape)}, got {list(labels.shape)}"
        )
    acc = accumulation_dtype(keras.backend.standardize_dtype(logits.dtype))
    z = kops.cast(logits, acc)
    y = kops.cast(labels, acc)
    valid = kops.logical_and(kops.logical_and(y >= 0, y <= 1), kops.isfinite(z))
    y = y * (1.0 - params.label_smoothing) + 0.5 * params.label_smoothing
    a, b = sigmoid_weights(params, c)
    positive = y * kops.softplus(-z)
    negative = (1.0 - y) * kops.softplus(z)
    if a is not None:
        positive = positive * kops.convert_to_tensor(a, acc)
    if b is not None:
        negative = negative * kops.convert_to_tensor(b, acc)
    loss = positive + negative
    if params.focal_gamma > 0:
        miss = y * kops.sigmoid(-z) + (1.0 - y) * kops.sigmoid(z)
        loss = loss * _masked_pow(miss, params.focal_gamma)
    return kops.where(valid, loss, float("nan"))
