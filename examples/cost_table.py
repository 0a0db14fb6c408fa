"""Cost tables: "a true B predicted as C must cost more than a true B predicted as A".

costxent indexes cost matrices ``M[true, predicted]``: the row is the true class, the column
the prediction. (A popular answer on the web indexes them ``[predicted, true]``; with ours
transposed, the expensive mistake silently becomes a cheap one - the worked example below
shows it.) For classes A, B, C::

    M = [[0, 1, 1],   # true A
         [1, 0, 5],   # true B: predicted A costs 1, predicted C costs 5
         [1, 1, 0]]   # true C

The script then trains on a 3-class problem where B lies between A and C, and on a 10-class
rating problem (a 0-9 rating predicted from 8 synthetic features) with the table
``M[i, j] = |i - j|``: predicting 7 for a true 1 costs 6, predicting 2 costs 1. Each compares
plain cross-entropy (argmax, then the cost-optimal decision ``cx.decision.min_expected_cost``)
with ``cx.ExpectedCostLoss(M, ce_weight=0.3)``. For ``|i - j|`` the cost-optimal decision is
the median of the predicted distribution, not its mode: the decision matters as much as the
loss.

Run from the repository root: ``python examples/cost_table.py [--fast]``.
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import make_blobs
from sklearn.model_selection import train_test_split

import costxent as cx

A, B, C = 0, 1, 2
COST_3 = np.array(
    [[0.0, 1.0, 1.0], [1.0, 0.0, 5.0], [1.0, 1.0, 0.0]]  # M[B, C] = 5: a true B predicted as C
)
COST_10 = np.abs(np.subtract.outer(np.arange(10), np.arange(10))).astype(float)  # |i - j|
SEED = 0


def worked_example() -> None:
    """Two true Bs, one predicted C and one predicted A: costs 5 and 1, mean 3."""
    y_true = np.array([B, B])
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])  # predicted C  # predicted A
    ours = cx.metrics.MisclassificationCost(COST_3)
    ours.update_state(y_true, probs)
    transposed = cx.metrics.MisclassificationCost(COST_3.T)
    transposed.update_state(y_true, probs)
    print("worked example: two true Bs, predicted C and A")
    print(
        f"  read M[true, predicted]: costs M[B, C] = {COST_3[B, C]:g} and M[B, A] = "
        f"{COST_3[B, A]:g}, mean {float(ours.result()):g}"
    )
    print(
        f"  read M[predicted, true]: costs {COST_3[C, B]:g} and {COST_3[A, B]:g}, mean "
        f"{float(transposed.result()):g} - the expensive mistake is lost"
    )
    assert float(ours.result()) == 3.0 and float(transposed.result()) == 1.0

    # The cost-weighted loss weighs each row by the cost of the mistake it makes.
    logits = np.log(probs).astype("float32")
    weighted = cx.ops.softmax_cross_entropy(y_true, logits, cost_matrix=COST_3)
    plain = cx.ops.softmax_cross_entropy(y_true, logits)
    print(
        f"  softmax_cross_entropy(cost_matrix=M) / plain cross-entropy: "
        f"{np.round((weighted / plain).numpy(), 3).tolist()}  (= M[B, C], M[B, A])"
    )


def compare(name: str, cost: np.ndarray, data: tuple, ce_weight: float, epochs: int) -> None:
    """Plain cross-entropy (argmax and min-expected-cost decisions) vs ExpectedCostLoss."""
    x_train, x_test, y_train, y_test = data
    num_classes = cost.shape[0]

    def fit(loss: keras.losses.Loss) -> np.ndarray:
        keras.utils.set_random_seed(SEED)
        model = keras.Sequential(
            [
                keras.Input((x_train.shape[1],)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(num_classes),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        return tf.nn.softmax(model(x_test)).numpy()

    plain = fit(cx.WeightedCategoricalCrossentropy(from_logits=True))
    expected = fit(cx.ExpectedCostLoss(cost, ce_weight=ce_weight, from_logits=True))
    decisions = {
        "cross-entropy, argmax": plain.argmax(axis=1),
        "cross-entropy, min expected cost": cx.decision.min_expected_cost(plain, cost),
        f"ExpectedCostLoss(ce_weight={ce_weight:g}), argmax": expected.argmax(axis=1),
    }
    print(f"\n{name}: {len(y_train)} training examples, {len(y_test)} held out")
    print(f"  {'model and decision':<42} {'mean cost':>9} {'accuracy':>9}")
    for label, predicted in decisions.items():
        metric = cx.metrics.MisclassificationCost(cost)
        metric.update_state(y_test, np.eye(num_classes)[predicted])
        accuracy = np.mean(predicted == y_test)
        print(f"  {label:<42} {float(metric.result()):>9.3f} {accuracy:>9.3f}")
        if num_classes == 3:
            conf = metric.confusion_matrix.numpy()
            print(
                f"  {'':<42} true B predicted C: {conf[B, C]:.0f}, predicted A: "
                f"{conf[B, A]:.0f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small data, 2 epochs")
    args = parser.parse_args(argv)
    epochs = 2 if args.fast else 20

    worked_example()

    x, y = make_blobs(
        n_samples=1000 if args.fast else 6000,
        centers=[(-2.0, 0.0), (0.0, 0.0), (2.0, 0.0)],
        cluster_std=1.0,
        random_state=SEED,
    )
    blobs = train_test_split(x.astype("float32"), y, test_size=0.5, random_state=SEED)
    compare("3 classes, A | B | C in a row", COST_3, blobs, ce_weight=0.3, epochs=epochs)

    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(1000 if args.fast else 6000, 8)).astype("float32")
    latent = x @ rng.normal(size=8) + rng.normal(size=len(x))
    rating = np.digitize(latent, np.quantile(latent, np.linspace(0.1, 0.9, 9)))  # 0..9
    ratings = train_test_split(x, rating, test_size=0.5, random_state=SEED)
    compare("10 ratings, M[i, j] = |i - j|", COST_10, ratings, ce_weight=0.3, epochs=epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
