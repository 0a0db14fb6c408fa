"""Keras 3 metrics for cost-sensitive classification.

Cost matrices are indexed ``M[true, predicted]``: row = true class, column = predicted class.
Labels are sparse (class ids, shape ``y_pred.shape[:-1]`` or ``[..., 1]``) or dense (one-hot or
soft rows, shape ``y_pred.shape``), told apart by shape because Keras casts integer labels to
float before metrics see them.

Bad rows are never dropped silently: a row with ``sample_weight`` 0 is ignored (that is how
Keras masks), but any other row whose label is not a class id in ``[0, C)`` (or, dense, not
finite) or whose prediction is not finite makes the metric NaN. This works the same inside
XLA-compiled steps, where TF assertions would be skipped. (Fractional sparse labels are
truncated to integers.)

Written in ``keras.ops``, so the metrics run on every Keras backend.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops as kops

from costxent._checks import cost_matrix as _as_cost_matrix
from costxent._portable import first_argmin, labels_by_shape

__all__ = ["CostWeightedAccuracy", "MisclassificationCost", "Precision", "Recall"]

_DECISIONS = ("argmax", "min_expected_cost")


def _flat_labels(y_true: Any, y_pred: Any, c: int) -> tuple[Any, Any, bool]:
    """(labels, usable, sparse): labels by shape (as the losses), flattened to int32 ids
    ``[N]`` (truncated) or float rows ``[N, C]``, and which rows hold a usable label."""
    labels, sparse = labels_by_shape(y_true, y_pred, c)
    if not sparse:
        rows = kops.reshape(labels, (-1, c))
        return rows, kops.all(kops.isfinite(kops.cast(rows, "float32")), axis=-1), False
    labels = kops.reshape(labels, (-1,))
    usable = kops.ones_like(labels, "bool")
    if "float" in keras.backend.standardize_dtype(labels.dtype):
        # Casting NaN or inf to an integer gives an arbitrary id on some backends.
        usable = kops.isfinite(labels)
        labels = kops.where(usable, labels, -1.0)
    ids = kops.cast(labels, "int32")
    return ids, kops.logical_and(usable, kops.logical_and(ids >= 0, ids < c)), True


def _row_weights(sample_weight: Any, y_pred: Any, dtype: str) -> Any:
    """Per-row weights ``[N]`` from Keras' ``sample_weight`` (None, scalar, ``[...]`` or
    ``[..., 1]``)."""
    lead = kops.shape(y_pred)[:-1]
    if sample_weight is None:
        return kops.reshape(kops.ones(lead, dtype), (-1,))
    weight = kops.cast(kops.convert_to_tensor(sample_weight), dtype)
    if len(weight.shape) == len(lead) + 1:
        weight = kops.squeeze(weight, axis=-1)
    return kops.reshape(kops.broadcast_to(weight, lead), (-1,))


class _ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates the weighted ``C x C`` confusion matrix ``conf[true, predicted]``.

    For dense labels, example ``i`` adds ``w_i * t_i`` to column ``pred_i`` (so a soft label
    row spreads over several true classes; a one-hot row adds ``w_i`` to one cell).
    """

    def __init__(
        self,
        cost_matrix: Any,
        from_logits: bool = False,
        decision: str = "argmax",
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        if decision not in _DECISIONS:
            raise ValueError(f"decision must be one of {_DECISIONS}; got {decision!r}")
        self._cost_matrix = _as_cost_matrix(cost_matrix)
        self.num_classes = self._cost_matrix.shape[0]
        self.from_logits = bool(from_logits)
        self.decision = decision
        self._confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            name="confusion_matrix",
            dtype=self.dtype,
        )

    @property
    def cost_matrix(self) -> np.ndarray:
        """The cost matrix ``M[true, predicted]`` (a copy)."""
        return self._cost_matrix.copy()

    @property
    def confusion_matrix(self) -> Any:
        """The accumulated weighted confusion matrix ``[C, C]``, rows = true, cols = predicted.

        Same convention as ``sklearn.metrics.confusion_matrix(y_true, y_pred,
        sample_weight=w)``.
        """
        return kops.convert_to_tensor(self._confusion)

    def _predict(self, scores: Any) -> Any:
        """Predicted class ``[N]`` from logits or probabilities ``[N, C]``."""
        if self.decision == "argmax":
            # softmax is monotonic, so logits and probabilities give the same argmax.
            return first_argmin(-scores)
        probs = kops.softmax(scores, axis=-1) if self.from_logits else scores
        return first_argmin(kops.matmul(probs, kops.convert_to_tensor(self._cost_matrix, probs.dtype)))

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add a batch to the confusion matrix."""
        y_pred = kops.convert_to_tensor(y_pred)
        y_true = kops.convert_to_tensor(y_true)
        if len(y_pred.shape) == 0 or y_pred.shape[-1] != self.num_classes:
            raise ValueError(
                f"y_pred must have shape [..., {self.num_classes}] to match the "
                f"{self.num_classes} x {self.num_classes} cost_matrix; got {tuple(y_pred.shape)}"
            )
        c = self.num_classes
        labels, label_ok, sparse = _flat_labels(y_true, y_pred, c)
        scores = kops.reshape(kops.cast(y_pred, self.dtype), (-1, c))
        weight = _row_weights(sample_weight, y_pred, self.dtype)
        if sparse:
            truth = kops.one_hot(kops.where(label_ok, labels, 0), c, dtype=self.dtype)
        else:
            truth = kops.cast(labels, self.dtype)
        valid = kops.logical_and(label_ok, kops.all(kops.isfinite(scores), axis=-1))

        # An invalid row gets a NaN weight, which turns the matrix and the result NaN, unless
        # its weight is 0 (masked): then its zeroed label row adds nothing.
        weight = kops.where(kops.logical_or(valid, kops.equal(weight, 0)), weight, float("nan"))
        truth = kops.where(valid[:, None], truth, 0.0)
        predicted = kops.one_hot(self._predict(scores), c, dtype=self.dtype)
        self._confusion.assign_add(
            kops.matmul(kops.transpose(truth * weight[:, None]), predicted)
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "cost_matrix": self._cost_matrix.tolist(),
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="costxent")
class MisclassificationCost(_ConfusionMatrixMetric):
    """Mean misclassification cost per example under a cost matrix ``M[true, predicted]``.

    Streams a weighted confusion matrix ``conf`` (see :attr:`confusion_matrix`) and reports::

        cost = sum_kj conf[k, j] * M[k, j] / sum_kj conf[k, j]
             = sum_i w_i * M[y_i, pred_i] / sum_i w_i

    (0 before any example). Lower is better. With ``M = 1 - I`` it is the error rate; with
    rewards as negative costs, ``-cost * n`` is a score such as ``3 * TP - FP``.

    Args:
        cost_matrix: ``C x C`` finite costs, ``M[true, predicted]``; negative = reward.
        from_logits: whether ``y_pred`` are logits (softmax is applied before the
            ``"min_expected_cost"`` decision; ``"argmax"`` does not depend on it).
        decision: how predictions become classes: ``"argmax"`` (what Keras' accuracy does) or
            ``"min_expected_cost"``, the Bayes-optimal ``argmin_j sum_k p_k M[k, j]`` of
            :func:`costxent.decision.min_expected_cost`. Ties go to the lowest index.
        name, dtype: as for any Keras metric.

    Sparse or dense labels, by shape; ``sample_weight`` weighs examples. See the module
    docstring for what happens to invalid labels and non-finite predictions.
    """

    def __init__(
        self,
        cost_matrix: Any,
        from_logits: bool = False,
        decision: str = "argmax",
        name: str = "misclassification_cost",
        dtype: Any = None,
    ) -> None:
        super().__init__(cost_matrix, from_logits, decision, name=name, dtype=dtype)
        # Read by Keras callbacks (EarlyStopping, ModelCheckpoint) when mode="auto".
        self._direction = "down"

    def result(self) -> Any:
        conf = kops.convert_to_tensor(self._confusion)
        total_cost = kops.sum(conf * kops.convert_to_tensor(self._cost_matrix, conf.dtype))
        return kops.divide_no_nan(total_cost, kops.sum(conf))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "decision": self.decision}


@keras.saving.register_keras_serializable(package="costxent")
class CostWeightedAccuracy(_ConfusionMatrixMetric):
    """Accuracy in which each example counts by what is at stake for its true class.

    A naive "weight example ``i`` by ``M[y_i, pred_i]``" is degenerate: right answers usually
    cost 0, so correct examples would weigh nothing. Instead, for true class ``k`` let
    ``hi_k = max_j M[k, j]`` (the worst decision) and ``lo_k = min_j M[k, j]`` (the best), and
    with sample weights ``w_i`` (argmax predictions)::

        acc = sum_i w_i * (hi[y_i] - M[y_i, pred_i]) / sum_i w_i * (hi[y_i] - lo[y_i])
            = 1 - (cost - best possible cost) / (worst possible cost - best possible cost)

    Why this definition: it is a weighted fraction correct where example ``i`` weighs
    ``hi - lo`` of its true class (the cost at stake for it), with partial credit for a
    mistake cheaper than the worst one. It is 1 when every example gets its cheapest
    decision, 0 when every example gets its most expensive one, equals plain accuracy for
    ``M = 1 - I``, and stays meaningful with rewards (negative costs) or nonzero diagonals.
    Classes whose row of ``M`` is constant (no decision matters) do not count. Higher is
    better; 0 before any example.

    Args:
        cost_matrix: ``C x C`` finite costs ``M[true, predicted]``, with at least one row that
            is not constant.
        from_logits: accepted for symmetry with the other metrics; argmax does not depend
            on it.
        name, dtype: as for any Keras metric.
    """

    def __init__(
        self,
        cost_matrix: Any,
        from_logits: bool = False,
        name: str = "cost_weighted_accuracy",
        dtype: Any = None,
    ) -> None:
        super().__init__(cost_matrix, from_logits, "argmax", name=name, dtype=dtype)
        stake = self._cost_matrix.max(axis=1) - self._cost_matrix.min(axis=1)
        if not np.any(stake > 0):
            raise ValueError(
                "cost_matrix must have at least one row with different costs (otherwise no "
                f"decision matters); got {self._cost_matrix.tolist()}"
            )
        self._direction = "up"

    def result(self) -> Any:
        conf = kops.convert_to_tensor(self._confusion)
        cost = kops.convert_to_tensor(self._cost_matrix, conf.dtype)
        worst = kops.max(cost, axis=1, keepdims=True)
        best = kops.min(cost, axis=1, keepdims=True)
        return kops.divide_no_nan(
            kops.sum(conf * (worst - cost)), kops.sum(conf * (worst - best))
        )


class _FromLogits:
    """Adds ``from_logits`` to a Keras Precision/Recall, and sparse labels for ``C > 1``."""

    def __init__(
        self,
        thresholds: Any = None,
        top_k: int | None = None,
        class_id: int | None = None,
        from_logits: bool = False,
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            thresholds=thresholds, top_k=top_k, class_id=class_id, name=name, dtype=dtype
        )
        self.from_logits = bool(from_logits)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_pred = kops.convert_to_tensor(y_pred)
        y_true = kops.convert_to_tensor(y_true)
        if self.from_logits:
            y_pred = kops.sigmoid(y_pred)
        num_classes = y_pred.shape[-1]
        if num_classes is not None and num_classes > 1:
            labels, sparse = labels_by_shape(y_true, y_pred, num_classes)
            if sparse:
                ids = kops.cast(kops.reshape(labels, (-1,)), "int32")
                one_hot = kops.one_hot(ids, num_classes, dtype=y_pred.dtype)
                y_true = kops.reshape(one_hot, kops.shape(y_pred))
        super().update_state(y_true, y_pred, sample_weight=sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="costxent")
class Precision(_FromLogits, keras.metrics.Precision):
    """``keras.metrics.Precision`` that also accepts logits: ``TP / (TP + FP)``.

    With ``from_logits=True`` a sigmoid is applied first, so ``thresholds`` are probabilities
    either way: ``Precision(from_logits=True, thresholds=0.85)`` counts ``sigmoid(z) > 0.85``
    as a positive prediction (Keras compares strictly). The sigmoid suits a binary or
    multi-label model that ends in logits; for a softmax model pass probabilities instead.
    Sparse class ids for a ``[..., C]`` output (``C > 1``) are one-hot encoded; pick the class
    with ``class_id``. The other arguments are Keras'.
    """


@keras.saving.register_keras_serializable(package="costxent")
class Recall(_FromLogits, keras.metrics.Recall):
    """``keras.metrics.Recall`` that also accepts logits: ``TP / (TP + FN)``.

    Same conventions as :class:`Precision`: ``from_logits=True`` applies a sigmoid, so
    ``thresholds`` are probabilities; sparse ids for a ``[..., C]`` output are one-hot
    encoded.
    """
