"""Binary, 91% / 9%: reward the minority's true positives, penalise its false positives.

The question: "my score is ``3 * TP - FP`` for the rare class. I wrote a loss that takes the
argmax of the predictions, counts TP and FP and calls ``K.eval`` - it does not train." It
cannot: argmax is piecewise constant, so its gradient is zero (TensorFlow returns ``None``),
and ``K.eval`` leaves the graph altogether.

The differentiable way is to write the score as a cost matrix ``M[true, predicted]``, rewards
as negative costs::

    M = [[0,  1],    # true negative: predicting 1 (a false positive) costs 1
         [0, -3]]    # true positive: predicting 1 (a true positive) earns 3

so that ``sum_i M[y_i, prediction_i] = FP - 3 * TP``. ``cx.ExpectedCostLoss(M)`` minimises the
expected value of that cost under the predicted probabilities, ``sum_j p_ij M[y_i, j]``,
which has a gradient; a little cross-entropy (``ce_weight``) keeps learning going where the
probabilities saturate. ``cx.metrics.MisclassificationCost(M)`` reports the mean cost per
example, i.e. ``-(3 * TP - FP) / n``. (``WeightedCategoricalCrossentropy(cost_matrix=...)``
uses the matrix as per-example *weights*, which must not be negative, so rewards belong in
``ExpectedCostLoss``.)

A cost matrix also fixes the decision: with probabilities from plain cross-entropy, predicting
1 pays off as soon as ``p(1) >= cx.decision.binary_threshold(cost_fp=1, cost_fn=0,
cost_tp=-3) = 0.25`` (``cx.decision.min_expected_cost`` makes that choice for any ``M``).

Run from the repository root: ``python examples/binary_reward_tp.py [--fast]``.
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import make_classification
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import train_test_split

import costxent as cx

COST = np.array([[0.0, 1.0], [0.0, -3.0]])  # M[true, predicted]; negative = reward
SEED = 0


def make_data(n: int) -> tuple[np.ndarray, ...]:
    """Synthetic features, 91% negatives / 9% positives, split in half (stratified)."""
    x, y = make_classification(
        n_samples=n,
        n_features=20,
        n_informative=6,
        weights=[0.91],
        class_sep=0.6,
        flip_y=0.02,
        random_state=SEED,
    )
    return train_test_split(x.astype("float32"), y, test_size=0.5, stratify=y, random_state=SEED)


def make_model(num_features: int) -> keras.Model:
    """The same seeded two-logit network for every loss."""
    keras.utils.set_random_seed(SEED)
    return keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(2),
        ]
    )  # logits of classes 0 and 1


def train(loss: keras.losses.Loss, x: np.ndarray, y: np.ndarray, epochs: int) -> keras.Model:
    """Fit ``make_model`` with ``loss``, reporting the mean cost per example as a metric."""
    model = make_model(x.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=loss,
        metrics=[cx.metrics.MisclassificationCost(COST, from_logits=True, name="cost")],
    )
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def score(y: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int]:
    """TP, FP and 3 * TP - FP, counted by scikit-learn."""
    (_, fp), (_, tp) = confusion_matrix(y, predicted, labels=[0, 1])
    return int(tp), int(fp), int(3 * tp - fp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small data, 2 epochs")
    args = parser.parse_args(argv)
    x_train, x_test, y_train, y_test = make_data(2000 if args.fast else 8000)
    epochs = 2 if args.fast else 30
    print(
        f"train {len(y_train)} examples, {y_train.mean():.1%} positive; "
        f"test {len(y_test)}, {int(y_test.sum())} positives"
    )

    # Why the argmax loss cannot train: no gradient reaches the weights.
    probe = make_model(x_train.shape[1])
    with tf.GradientTape() as tape:
        predicted = tf.argmax(probe(x_train[:64]), axis=-1)
        positive, truth = tf.cast(predicted == 1, tf.float32), tf.cast(y_train[:64], tf.float32)
        argmax_score = tf.reduce_sum(3.0 * positive * truth - positive * (1.0 - truth))
    gradients = tape.gradient(argmax_score, probe.trainable_variables)
    print(f"gradient of an argmax-based 3*TP - FP: {gradients}")
    assert all(g is None for g in gradients)

    plain = train(cx.WeightedCategoricalCrossentropy(from_logits=True), x_train, y_train, epochs)
    expected = train(
        cx.ExpectedCostLoss(COST, ce_weight=0.1, from_logits=True), x_train, y_train, epochs
    )
    plain_probs = tf.nn.softmax(plain(x_test)).numpy()
    threshold = cx.decision.binary_threshold(cost_fp=1.0, cost_fn=0.0, cost_tp=-3.0)
    rows = {
        "cross-entropy, argmax (p >= 0.5)": (plain, plain_probs.argmax(axis=1)),
        f"cross-entropy, min expected cost (p >= {threshold:g})": (
            plain,
            cx.decision.min_expected_cost(plain_probs, COST),
        ),
        "ExpectedCostLoss(M, ce_weight=0.1), argmax": (
            expected,
            expected(x_test).numpy().argmax(axis=1),
        ),
    }
    print(f"\n{'model and decision':<48} {'TP':>5} {'FP':>5} {'3*TP - FP':>10}")
    for name, (model, predicted) in rows.items():
        tp, fp, total = score(y_test, predicted)
        print(f"{name:<48} {tp:>5} {fp:>5} {total:>10}")

    # The metric reports the same score, as a mean cost per example.
    for model in (plain, expected):
        mean_cost = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["cost"]
        _, _, total = score(y_test, model(x_test).numpy().argmax(axis=1))
        assert round(-mean_cost * len(y_test)) == total, (mean_cost, total)
    print("\nchecked: -MisclassificationCost(M) * n == 3*TP - FP for both models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
