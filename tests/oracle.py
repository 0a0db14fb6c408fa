"""Independent float64 NumPy oracle for DESIGN.md sections 2.1, 2.2 and 2.3.

Every function returns ``(loss, grad)``: the per-example (softmax) or per-element (sigmoid)
loss and its analytic gradient ``d loss / d logits``, both float64. The class axis is last;
leading shapes are arbitrary. Written straight from the formulas with NumPy only, so that it
shares no code with ``costxent.reference`` or the fused kernels it checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ClassWeight = Sequence[float] | Mapping[int, float] | np.ndarray


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """``log p = (z - m) - log sum exp(z - m)`` along the last axis, ``m`` the row's max
    (subtracted first: ``z - (m + log 2)`` would lose the ``log 2`` at ``|z| ~ 1e38``)."""
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (z - m) - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def _targets(
    labels: np.ndarray, logits: np.ndarray, ignore_class: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Dense targets ``t`` (float64, shape of logits) and a keep mask (shape ``logits[:-1]``).

    Labels are sparse when their shape is ``logits.shape[:-1]`` or ``logits.shape[:-1] + (1,)``
    and dense when it is ``logits.shape``. Sparse labels equal to ``ignore_class`` get an
    all-zero target row and ``keep = False``.
    """
    labels = np.asarray(labels)
    num_classes = logits.shape[-1]
    lead = logits.shape[:-1]
    if labels.shape == logits.shape:
        if ignore_class is not None:
            raise ValueError("ignore_class applies to sparse labels only")
        return labels.astype(np.float64), np.ones(lead, dtype=bool)
    if labels.shape == lead + (1,):
        labels = labels.reshape(lead)
    if labels.shape != lead:
        raise ValueError(f"labels shape {labels.shape} fits neither {logits.shape} nor {lead}")
    ids = labels.astype(np.int64)
    keep = np.ones(lead, dtype=bool) if ignore_class is None else ids != ignore_class
    if np.any((ids[keep] < 0) | (ids[keep] >= num_classes)):
        raise ValueError(f"label out of range [0, {num_classes})")
    t = np.zeros(logits.shape, dtype=np.float64)
    np.put_along_axis(t, np.where(keep, ids, 0)[..., None], 1.0, axis=-1)
    return t * keep[..., None], keep


def _class_weight_vector(class_weight: ClassWeight, num_classes: int) -> np.ndarray:
    """Length-C weight vector from a sequence or a ``{class: weight}`` dict (missing -> 1)."""
    if isinstance(class_weight, Mapping):
        a = np.ones(num_classes, dtype=np.float64)
        for k, v in class_weight.items():
            a[int(k)] = float(v)
        return a
    return np.asarray(class_weight, dtype=np.float64).reshape(num_classes)


def softmax_cross_entropy(
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    class_weight: ClassWeight | None = None,
    cost_matrix: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    ignore_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted, focal, smoothed softmax cross-entropy (DESIGN 2.1) and its gradient.

    ``loss_i = w_i * sum_k ts_ik * phi(p_ik)``, ``phi(p) = -(1 - p)^gamma log p``,
    ``ts = (1 - eps) t + eps / C``; ``w_i = 1``, ``sum_k t_ik a_k`` (class weights) or
    ``sum_k t_ik M[k, argmax_j z_ij]`` (cost matrix, lowest index on ties, unsmoothed ``t``).
    ``d loss_i / d z_ij = w_i (ts_ij g_ij - p_ij sum_k ts_ik g_ik)`` with
    ``g = gamma p (1 - p)^(gamma - 1) log p - (1 - p)^gamma``. Ignored rows: loss 0, grad 0.
    """
    z = np.asarray(logits, dtype=np.float64)
    num_classes = z.shape[-1]
    if class_weight is not None and cost_matrix is not None:
        raise ValueError("pass class_weight or cost_matrix, not both")
    t, keep = _targets(labels, z, ignore_class)
    ts = ((1.0 - label_smoothing) * t + label_smoothing / num_classes) * keep[..., None]

    if class_weight is not None:
        w = t @ _class_weight_vector(class_weight, num_classes)
    elif cost_matrix is not None:
        m = np.asarray(cost_matrix, dtype=np.float64).reshape(num_classes, num_classes)
        jhat = np.argmax(z, axis=-1)
        w = np.sum(t * np.moveaxis(m[:, jhat], 0, -1), axis=-1)
    else:
        w = keep.astype(np.float64)

    logp = _log_softmax(z)
    p = np.exp(logp)
    q = -np.expm1(logp)  # 1 - p without cancellation
    gamma = float(focal_gamma)
    phi = -(q**gamma) * logp
    if gamma == 0.0:
        g = -np.ones_like(p)
    else:
        # gamma * p * q^(gamma-1) * log p -> 0 as q -> 0 (log p ~ -q), also for gamma < 1.
        safe_q = np.where(q > 0.0, q, 1.0)
        g = np.where(q > 0.0, gamma * p * safe_q ** (gamma - 1.0) * logp, 0.0) - q**gamma
    loss = w * np.sum(ts * phi, axis=-1)
    grad = w[..., None] * (ts * g - p * np.sum(ts * g, axis=-1, keepdims=True))
    return np.where(keep, loss, 0.0), grad * keep[..., None]


def expected_cost(
    labels: np.ndarray,
    logits: np.ndarray,
    cost_matrix: np.ndarray,
    *,
    ce_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected misclassification cost plus ``ce_weight`` times cross-entropy (DESIGN 2.2).

    ``loss_i = sum_j c_ij p_ij + lam * CE_i`` with ``c_i = M^T t_i`` (unsmoothed ``t``) and
    ``CE_i = -sum_k ts_ik log p_ik``; ``d loss_i / d z_ij = p_ij (c_ij - E_i) +
    lam (p_ij S_i - ts_ij)``, ``E_i = sum_j c_ij p_ij``, ``S_i = sum_k ts_ik``.
    Ignored rows: loss 0, grad 0.
    """
    z = np.asarray(logits, dtype=np.float64)
    num_classes = z.shape[-1]
    m = np.asarray(cost_matrix, dtype=np.float64).reshape(num_classes, num_classes)
    t, keep = _targets(labels, z, ignore_class)
    ts = ((1.0 - label_smoothing) * t + label_smoothing / num_classes) * keep[..., None]
    logp = _log_softmax(z)
    p = np.exp(logp)
    c = t @ m
    e = np.sum(c * p, axis=-1)
    ce = -np.sum(ts * logp, axis=-1)
    s = np.sum(ts, axis=-1, keepdims=True)
    loss = e + ce_weight * ce
    grad = p * (c - e[..., None]) + ce_weight * (p * s - ts)
    return np.where(keep, loss, 0.0), grad * keep[..., None]


def _softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid_cross_entropy(
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    pos_weight: float | Sequence[float] | np.ndarray | None = None,
    neg_weight: float | Sequence[float] | np.ndarray | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted focal sigmoid cross-entropy per element (DESIGN 2.3) and its gradient.

    With ``y <- y (1 - eps) + eps / 2``, ``s = sigmoid(z)``, ``pt = y s + (1 - y)(1 - s)``:
    ``loss = (1 - pt)^gamma * (a y softplus(-z) + b (1 - y) softplus(z))``;
    ``a``/``b`` are ``pos_weight``/``neg_weight`` (scalars or per-class vectors, default 1).
    Gradient: ``m * (b (1 - y) s - a y (1 - s)) - gamma (1 - pt)^(gamma - 1) (2y - 1) s (1 - s) L0``
    with ``m = (1 - pt)^gamma`` and ``L0`` the unmodulated weighted loss.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) * (1.0 - label_smoothing) + label_smoothing / 2.0
    a = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    b = 1.0 if neg_weight is None else np.asarray(neg_weight, dtype=np.float64)
    s = np.exp(-_softplus(-z))
    one_minus_s = np.exp(-_softplus(z))
    base = a * y * _softplus(-z) + b * (1.0 - y) * _softplus(z)
    dbase = b * (1.0 - y) * s - a * y * one_minus_s
    gamma = float(focal_gamma)
    if gamma == 0.0:
        return base, dbase
    q = y * one_minus_s + (1.0 - y) * s  # 1 - pt without cancellation
    safe_q = np.where(q > 0.0, q, 1.0)
    dmod = np.where(
        q > 0.0, -gamma * safe_q ** (gamma - 1.0) * (2.0 * y - 1.0) * s * one_minus_s, 0.0
    )
    return q**gamma * base, dmod * base + q**gamma * dbase
