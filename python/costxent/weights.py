"""Class-weight helpers for imbalanced data.

The weights feed either a loss (``WeightedCategoricalCrossentropy(class_weight=w)``) or
``model.fit(class_weight=to_keras_class_weight(w))``. All functions take array-likes (lists,
NumPy arrays, eager TF tensors) and return NumPy float64 arrays or plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["balanced", "effective_number", "to_keras_class_weight"]


def _first(values: np.ndarray, limit: int = 5) -> list:
    """The first few offending values, for error messages."""
    return values.ravel()[:limit].tolist()


def _sparse_labels(y: Any) -> tuple[np.ndarray, int | None]:
    """Class ids from sparse labels ``[N]``/``[N, 1]`` or one-hot rows ``[N, C]``.

    Returns the ids and, for one-hot rows, ``C``.
    """
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] > 1:
        rows = labels.astype(np.float64)
        is_one_hot = np.all((rows == 0) | (rows == 1), axis=1) & (rows.sum(axis=1) == 1)
        if not np.all(is_one_hot):
            bad = np.flatnonzero(~is_one_hot)
            raise ValueError(
                f"y with shape {labels.shape} must hold one-hot rows (one 1, the rest 0); "
                f"rows {_first(bad)} are not (soft labels: pass their argmax)"
            )
        return rows.argmax(axis=1), labels.shape[1]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"y must be sparse labels [N] or [N, 1], or one-hot rows [N, C]; got shape "
            f"{labels.shape}"
        )
    if labels.dtype.kind not in "iuf":
        raise ValueError(f"y must hold integer class ids; got dtype {labels.dtype}")
    # Keras hands labels over as floats, so accept integral floats; NaN fails this test too.
    ids = labels.astype(np.float64)
    bad = ids[(ids != np.round(ids)) | (ids < 0)]
    if bad.size:
        raise ValueError(f"y must hold non-negative integer class ids; got {_first(bad)}")
    return ids.astype(np.int64), None


def balanced(y: Any, num_classes: int | None = None) -> np.ndarray:
    """Balanced class weights ``w_c = n / (C * count_c)``, as scikit-learn computes them.

    Equal to ``sklearn.utils.class_weight.compute_class_weight("balanced", classes=
    np.arange(C), y=y)``: every class then carries the same total weight ``n / C``.

    Args:
        y: sparse class ids (``[N]`` or ``[N, 1]``; integral floats are accepted because Keras
            casts labels to float) or one-hot rows ``[N, C]``.
        num_classes: ``C``. Default: ``max(y) + 1`` for sparse labels, the row length for
            one-hot rows.

    Returns:
        float64 array of length ``C``.

    Raises:
        ValueError: ``y`` is empty, not integral class ids / one-hot rows, has ids
            ``>= num_classes``, or some class in ``[0, C)`` has no examples (its weight would
            be infinite); the message names those classes.
    """
    ids, one_hot_classes = _sparse_labels(y)
    if ids.size == 0:
        raise ValueError("y must contain at least one label; got an empty array")
    if num_classes is None:
        num_classes = one_hot_classes if one_hot_classes is not None else int(ids.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int; got {num_classes!r}")
    elif num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    elif one_hot_classes is not None and num_classes != one_hot_classes:
        raise ValueError(
            f"num_classes={num_classes} does not match the {one_hot_classes} columns of the "
            "one-hot y"
        )
    too_big = ids[ids >= num_classes]
    if too_big.size:
        raise ValueError(
            f"y holds class ids {_first(np.unique(too_big))} outside [0, {num_classes}) "
            f"(num_classes={num_classes})"
        )
    counts = np.bincount(ids, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(
            f"classes {missing.tolist()} have no examples in y (n={ids.size}, C={num_classes}); "
            "balanced weights n / (C * count) are undefined for them"
        )
    return ids.size / (num_classes * counts.astype(np.float64))


def effective_number(counts: Any, beta: float = 0.999) -> np.ndarray:
    """Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    ``w_c = (1 - beta) / (1 - beta ** n_c)``, then rescaled so that ``sum_c w_c = C``.
    ``beta = 0`` gives equal weights; ``beta -> 1`` approaches inverse class frequency. The
    paper's suggestions are ``beta`` in {0.9, 0.99, 0.999, 0.9999}.

    Args:
        counts: number of training examples per class, length ``C``, each ``> 0``.
        beta: in ``[0, 1)``.

    Returns:
        float64 array of length ``C`` summing to ``C``.

    Raises:
        ValueError: ``beta`` outside ``[0, 1)``, or ``counts`` not a non-empty 1-D array of
            finite values ``> 0``.
    """
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta}")
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array; got shape {n.shape}")
    bad = np.flatnonzero(~(np.isfinite(n) & (n > 0)))
    if bad.size:
        raise ValueError(
            f"counts must be finite and > 0; classes {bad.tolist()} have {n[bad].tolist()}"
        )
    if beta == 0.0:
        weights = np.ones_like(n)
    else:
        # 1 - beta**n as -expm1(n log beta): exact even when beta**n is close to 1.
        weights = (1.0 - beta) / -np.expm1(n * np.log(beta))
    return weights * (n.size / weights.sum())


def to_keras_class_weight(w: Any) -> dict[int, float]:
    """``{class_id: weight}`` for ``model.fit(class_weight=...)`` from a weight vector.

    ``w[c]`` becomes ``{c: float(w[c])}``; a mapping is checked and normalised to
    ``{int: float}``. Keras looks up each example's weight by ``argmax`` of a one-hot label
    (or the sparse id) and uses 1.0 for classes missing from the dict.

    Raises:
        ValueError: weights that are not finite and ``>= 0``, keys that are not non-negative
            integers, or ``w`` that is not 1-D / is empty.
    """
    if isinstance(w, Mapping):
        keys = list(w.keys())
        for key in keys:
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
                raise ValueError(f"class_weight keys must be non-negative ints; got {key!r}")
        values = np.asarray([w[key] for key in keys], dtype=np.float64)
    else:
        values = np.asarray(w, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"w must be a non-empty 1-D array of weights; got shape {values.shape}"
            )
        keys = list(range(values.size))
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
    if bad.size:
        raise ValueError(
            "class weights must be finite and >= 0; got "
            + ", ".join(f"class {keys[i]}: {values[i]}" for i in bad[:5])
        )
    return {int(key): float(value) for key, value in zip(keys, values)}
