"""Loss configurations and data shared by the backend suite and its cross-backend checks."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import oracle

N, C = 10, 4
RNG = np.random.default_rng(2027)
LOGITS = RNG.normal(scale=2.0, size=(N, C)).astype(np.float32)
IDS = RNG.integers(0, C, size=N).astype(np.int64)
IDS_IGNORED = np.where(np.arange(N) % 4 == 1, -1, IDS)
SOFT = np.exp(RNG.normal(size=(N, C)))
SOFT = (SOFT / SOFT.sum(-1, keepdims=True)).astype(np.float32)
MULTI = (RNG.uniform(size=(N, C)) < 0.3).astype(np.float32)
SAMPLE_WEIGHT = RNG.uniform(0.1, 2.0, size=N).astype(np.float32)
COST = np.array(
    [[0.0, 1.0, 2.0, 4.0], [3.0, 0.0, 7.0, 1.0], [1.0, 1.0, 0.0, 2.0], [2.0, 5.0, 1.0, 0.0]]
)
REWARDS = COST - 2.0 * np.eye(C)
REDUCTIONS = ["sum_over_batch_size", "sum", "mean_with_sample_weight", "none"]


def _probs(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


# name -> (loss class name, constructor kwargs, labels, predictions, float64 oracle of the
# per-example loss and its gradient w.r.t. the logits, from_logits)
CASES: dict[str, tuple[str, dict, np.ndarray, np.ndarray, Callable[[], tuple]]] = {
    "ce_plain": (
        "WeightedCategoricalCrossentropy", dict(from_logits=True), IDS, LOGITS,
        lambda: oracle.softmax_cross_entropy(IDS, LOGITS),
    ),
    "ce_class_weight_dict_soft": (
        "WeightedCategoricalCrossentropy",
        dict(class_weight={1: 3.0, 3: 0.5}, label_smoothing=0.1, from_logits=True),
        SOFT, LOGITS,
        lambda: oracle.softmax_cross_entropy(
            SOFT, LOGITS, class_weight={1: 3.0, 3: 0.5}, label_smoothing=0.1),
    ),
    "ce_cost_focal_ignore": (
        "WeightedCategoricalCrossentropy",
        dict(cost_matrix=COST.tolist(), focal_gamma=2.0, ignore_class=-1, from_logits=True),
        IDS_IGNORED, LOGITS,
        lambda: oracle.softmax_cross_entropy(
            IDS_IGNORED, LOGITS, cost_matrix=COST, focal_gamma=2.0, ignore_class=-1),
    ),
    "ce_probabilities": (
        "WeightedCategoricalCrossentropy", dict(class_weight=[1.0, 2.0, 0.5, 4.0]),
        IDS[:, None], _probs(LOGITS),
        lambda: oracle.softmax_cross_entropy(
            IDS, np.log(_probs(LOGITS).astype(np.float64)), class_weight=[1.0, 2.0, 0.5, 4.0]),
    ),
    "expected_cost_ignore": (
        "ExpectedCostLoss",
        dict(cost_matrix=REWARDS.tolist(), ce_weight=0.2, label_smoothing=0.05,
             ignore_class=-1, from_logits=True),
        IDS_IGNORED, LOGITS,
        lambda: oracle.expected_cost(
            IDS_IGNORED, LOGITS, REWARDS, ce_weight=0.2, label_smoothing=0.05, ignore_class=-1),
    ),
    "binary_weighted_focal": (
        "WeightedBinaryCrossentropy",
        dict(pos_weight=[3.0, 1.0, 9.0, 2.0], neg_weight=0.5, focal_gamma=1.5,
             label_smoothing=0.05, from_logits=True),
        MULTI, LOGITS,
        lambda: oracle.sigmoid_cross_entropy(
            MULTI, LOGITS, pos_weight=[3.0, 1.0, 9.0, 2.0], neg_weight=0.5, focal_gamma=1.5,
            label_smoothing=0.05),
    ),
}


def keep_mask(name: str) -> np.ndarray:
    """Rows a Keras reduction counts (those not labelled ignore_class)."""
    kwargs = CASES[name][1]
    if kwargs.get("ignore_class") is None:
        return np.ones(N, bool)
    return np.asarray(CASES[name][2]).reshape(N) != kwargs["ignore_class"]


def expected(name: str, reduction: str, sample_weight: Any) -> tuple[np.ndarray, np.ndarray]:
    """The float64 reduced loss (Keras' reduction of the oracle's per-example losses) and
    its gradient w.r.t. the logits."""
    loss, grad = CASES[name][4]()
    if loss.ndim == 2:  # sigmoid: per element, averaged over the last axis as Keras does
        loss, grad = loss.mean(-1), grad / loss.shape[-1]
    keep = keep_mask(name).astype(np.float64)
    s = (np.ones(N) if sample_weight is None else np.asarray(sample_weight, np.float64)) * keep
    if reduction == "none":
        return loss * (s if sample_weight is not None else 1.0), None
    divisor = {"sum": 1.0, "sum_over_batch_size": keep.sum(),
               "mean_with_sample_weight": s.sum()}[reduction]
    return np.sum(s * loss) / divisor, (s / divisor)[:, None] * grad


def loss_input_gradient(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """d logits / d y_pred for a case whose predictions are probabilities (chain rule)."""
    if "from_logits" in CASES[name][1]:
        return lambda g: g
    p = CASES[name][3].astype(np.float64)
    return lambda g: g / p


# The functional-API configurations of the fused backend modules' tests (test_torch_ops.py,
# test_jax_ops.py): name -> (labels, keyword arguments, whether it is the expected cost).
FUNCTIONAL: dict[str, tuple[np.ndarray, dict, bool]] = {
    "plain": (IDS, {}, False),
    "class_weight_soft": (SOFT, dict(class_weight=[1.0, 2.0, 0.5, 3.0], label_smoothing=0.1), False),
    "cost_focal_ignore": (IDS_IGNORED, dict(cost_matrix=COST, focal_gamma=2.0, ignore_class=-1),
                          False),
    "expected_cost": (IDS, dict(ce_weight=0.3), True),
}


def functional_call(api: Any, name: str, logits: Any, array: Callable = np.asarray) -> Any:
    """The per-example loss of configuration ``name`` from a backend module ``api``, its
    labels converted by ``array``."""
    labels, kwargs, expected = FUNCTIONAL[name]
    if expected:
        return api.expected_cost(array(labels), logits, COST, **kwargs)
    return api.softmax_cross_entropy(array(labels), logits, **kwargs)


def functional_oracle(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The float64 oracle's (loss, gradient) of configuration ``name`` on LOGITS."""
    labels, kwargs, expected = FUNCTIONAL[name]
    if expected:
        return oracle.expected_cost(labels, LOGITS, COST, **kwargs)
    return oracle.softmax_cross_entropy(labels, LOGITS, **kwargs)
