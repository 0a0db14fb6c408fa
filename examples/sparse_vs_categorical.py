"""Sparse vs categorical labels: one loss object, both label formats, identical results.

Keras has two losses for one job (``SparseCategoricalCrossentropy`` for class ids,
``CategoricalCrossentropy`` for one-hot rows). costxent's losses and metrics take either and
decide by shape, not dtype (Keras casts integer labels to float before a loss sees them):

* ``y.shape == y_pred.shape[:-1]`` or ``y_pred.shape[:-1] + (1,)``: class ids;
* ``y.shape == y_pred.shape``: one-hot (or soft) rows.

The script evaluates each loss on the same logits with ids ``[N]``, ids ``[N, 1]`` and
one-hot ``[N, C]`` labels, then trains the same model twice (same seed), once on ids and once
on one-hot rows, and checks that the losses and weights agree.

Run from the repository root: ``python examples/sparse_vs_categorical.py [--fast]``.
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
from sklearn.datasets import load_digits

import costxent as cx

SEED = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="2 epochs")
    args = parser.parse_args(argv)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    one_hot = keras.utils.to_categorical(y, 10)
    cost = 1.0 - np.eye(10)
    cost[8] *= 5.0  # M[true, predicted]: a missed 8 costs 5
    losses = {
        "WeightedCategoricalCrossentropy(class_weight)": cx.WeightedCategoricalCrossentropy(
            class_weight=cx.weights.balanced(y), from_logits=True
        ),
        "WeightedCategoricalCrossentropy(cost_matrix)": cx.WeightedCategoricalCrossentropy(
            cost_matrix=cost, from_logits=True, label_smoothing=0.1
        ),
        "ExpectedCostLoss": cx.ExpectedCostLoss(cost, ce_weight=0.3, from_logits=True),
    }
    logits = np.random.default_rng(SEED).normal(size=(len(y), 10)).astype("float32")
    print(f"{'loss':<46} {'ids [N]':>9} {'ids [N,1]':>9} {'one-hot':>9}")
    for name, loss in losses.items():
        values = [float(loss(labels, logits)) for labels in (y, y[:, None], one_hot)]
        np.testing.assert_allclose(values, values[0], rtol=1e-6)
        print(f"{name:<46} " + " ".join(f"{v:>9.5f}" for v in values))

    metric_values = []
    for labels in (y, one_hot):
        metric = cx.metrics.MisclassificationCost(cost, from_logits=True)
        metric.update_state(labels, logits)
        metric_values.append(float(metric.result()))
    assert metric_values[0] == metric_values[1]
    print(
        f"{'MisclassificationCost':<46} {metric_values[0]:>9.5f} {'':>9} "
        f"{metric_values[1]:>9.5f}"
    )

    histories, weights = [], []
    for labels in (y, one_hot):
        keras.utils.set_random_seed(SEED)
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
        )
        model.compile(optimizer="adam", loss=losses["ExpectedCostLoss"])
        history = model.fit(x, labels, epochs=2 if args.fast else 10, batch_size=64, verbose=0)
        histories.append(history.history["loss"])
        weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    gap = float(np.abs(weights[0] - weights[1]).max())
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)
    print(
        f"\ntrained on ids vs one-hot: final loss {histories[0][-1]:.5f} vs "
        f"{histories[1][-1]:.5f}, largest weight difference {gap:.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
