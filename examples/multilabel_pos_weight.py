"""30 labels, about one positive each: plain vs ``pos_weight`` binary cross-entropy.

A learnable synthetic multi-label problem (no downloads): Gaussian features ``x``, a fixed
random linear map ``W`` and label ``j`` is on when ``(x W)_j + noise`` exceeds a threshold
chosen so that each label is positive with probability 1/28 (about 1.07 positives per
example, ``negatives / positives`` about 27). The same small Keras model is trained twice
with the same seed and budget:

* ``cx.WeightedBinaryCrossentropy(from_logits=True)``: plain binary cross-entropy;
* ``cx.WeightedBinaryCrossentropy(pos_weight=neg/pos, from_logits=True)``: each missed
  positive costs ``neg/pos`` times as much as a false alarm.

Held-out recall and precision are computed from the logits at threshold 0.5
(``cx.metrics.Recall(from_logits=True, thresholds=0.5)``), with the number of predicted
positives per example. The script also shows the per-label ``pos_weight`` vector and checks
that ``pos_weight=a, neg_weight=1`` (``focal_gamma=0``) is
``tf.nn.weighted_cross_entropy_with_logits`` averaged over the labels.

Run from the repository root::

    python examples/multilabel_pos_weight.py          # full run, under a minute on 2 cores
    python examples/multilabel_pos_weight.py --fast   # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

import costxent as cx

NUM_FEATURES = 32
NUM_LABELS = 30
POSITIVE_RATE = 1.0 / 28.0  # per label: ~1.07 positives per example, neg/pos ~27
NOISE_STD = 0.5
DATA_SEED = 0
MODEL_SEED = 1


@dataclass(frozen=True)
class Budget:
    """Dataset size and training budget of one run."""

    num_train: int
    num_test: int
    epochs: int
    batch_size: int = 256


FULL = Budget(num_train=40_000, num_test=10_000, epochs=10)
FAST = Budget(num_train=8_000, num_test=4_000, epochs=3)


@dataclass(frozen=True)
class Scores:
    """Held-out decisions at threshold 0.5, from logits."""

    recall: float
    precision: float
    predicted_per_example: float
    examples_with_no_prediction: float
    labels_never_predicted: int


def make_dataset(num_examples: int, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[n, 32]`` and multi-hot labels ``[n, 30]`` (float32) from a fixed linear map.

    ``(x W)_j`` is standard normal; with the noise its variance is ``1 + NOISE_STD**2``, and the
    threshold is that normal's ``1 - POSITIVE_RATE`` quantile, so every label is positive with
    probability ``POSITIVE_RATE``. The map ``W`` depends only on ``seed``; pass a larger
    ``num_examples`` and split to get train and test sets from the same rule.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(NUM_FEATURES, NUM_LABELS))
    w /= np.linalg.norm(w, axis=0)  # unit columns: every (x W)_j is standard normal
    x = rng.normal(size=(num_examples, NUM_FEATURES))
    scores = x @ w + NOISE_STD * rng.normal(size=(num_examples, NUM_LABELS))
    threshold = statistics.NormalDist(0.0, np.sqrt(1.0 + NOISE_STD**2)).inv_cdf(1.0 - POSITIVE_RATE)
    return x.astype(np.float32), (scores > threshold).astype(np.float32)


def build_model() -> keras.Model:
    """A small MLP that ends in 30 logits (no sigmoid: the loss takes ``from_logits=True``)."""
    return keras.Sequential(
        [
            keras.Input(shape=(NUM_FEATURES,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_LABELS),
        ]
    )


def train(loss: keras.losses.Loss, x: np.ndarray, y: np.ndarray, budget: Budget) -> keras.Model:
    """Train a fresh model with ``loss``; the seed makes the initial weights and batches equal."""
    keras.utils.set_random_seed(MODEL_SEED)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    model.fit(x, y, batch_size=budget.batch_size, epochs=budget.epochs, verbose=0)
    return model


def score(y: np.ndarray, logits: np.ndarray) -> Scores:
    """Recall and precision at threshold 0.5 from logits, and how many positives are predicted."""
    recall = cx.metrics.Recall(from_logits=True, thresholds=0.5)
    precision = cx.metrics.Precision(from_logits=True, thresholds=0.5)
    recall.update_state(y, logits)
    precision.update_state(y, logits)
    predicted = logits > 0.0  # sigmoid(z) > 0.5, the metrics' (strict) decision
    return Scores(
        recall=float(recall.result()),
        precision=float(precision.result()),
        predicted_per_example=float(predicted.sum(axis=1).mean()),
        examples_with_no_prediction=float((~predicted.any(axis=1)).mean()),
        labels_never_predicted=int((~predicted.any(axis=0)).sum()),
    )


def check_against_tf_nn(
    y: np.ndarray, logits: np.ndarray, pos_weight: np.floating | np.ndarray
) -> None:
    """``pos_weight=a, neg_weight=1`` equals ``tf.nn.weighted_cross_entropy_with_logits``.

    The Keras loss averages the per-element loss over the last axis (like
    ``keras.losses.BinaryCrossentropy``), so the reference is averaged the same way.
    """
    loss = cx.WeightedBinaryCrossentropy(
        pos_weight=pos_weight, neg_weight=1.0, from_logits=True, reduction="none"
    )
    expected = tf.reduce_mean(
        tf.nn.weighted_cross_entropy_with_logits(y, logits, pos_weight=pos_weight), axis=-1
    )
    np.testing.assert_allclose(np.asarray(loss(y, logits)), expected.numpy(), rtol=1e-5, atol=1e-6)


def main() -> None:
    """Build the data, train with and without ``pos_weight``, print held-out scores."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fast", action="store_true", help="small data, 3 epochs (seconds)")
    budget = FAST if parser.parse_args().fast else FULL
    start = time.perf_counter()

    x, y = make_dataset(budget.num_train + budget.num_test)
    x_train, y_train = x[: budget.num_train], y[: budget.num_train]
    x_test, y_test = x[budget.num_train :], y[budget.num_train :]

    positives = y_train.sum()
    pos_weight = float((y_train.size - positives) / positives)
    per_label_pos = y_train.sum(axis=0)
    per_label_pos_weight = (budget.num_train - per_label_pos) / np.maximum(per_label_pos, 1.0)
    print(f"costxent implementation: {cx.ops.implementation()}")
    print(
        f"data: {budget.num_train} train / {budget.num_test} test examples, "
        f"{NUM_LABELS} labels, {y_train.sum(axis=1).mean():.3f} positives per example"
    )
    print(f"pos_weight = negatives / positives = {pos_weight:.2f}")
    print(
        f"per-label pos_weight vector (length {NUM_LABELS}): "
        f"min {per_label_pos_weight.min():.1f}, max {per_label_pos_weight.max():.1f}"
    )

    runs = {
        "plain": cx.WeightedBinaryCrossentropy(from_logits=True),
        f"pos_weight={pos_weight:.1f}": cx.WeightedBinaryCrossentropy(
            pos_weight=pos_weight, from_logits=True
        ),
    }
    print(
        f"\nheld-out, threshold 0.5 from logits ({budget.epochs} epochs, batch "
        f"{budget.batch_size}, same seed); true positives per example: "
        f"{y_test.sum(axis=1).mean():.3f}"
    )
    print(
        f"{'loss':<16} {'recall':>7} {'precision':>9} {'predicted/example':>17} "
        f"{'examples with none':>18} {'labels never predicted':>22}"
    )
    for name, loss in runs.items():
        logits = train(loss, x_train, y_train, budget).predict(x_test, verbose=0)
        s = score(y_test, logits)
        print(
            f"{name:<16} {s.recall:>7.3f} {s.precision:>9.3f} {s.predicted_per_example:>17.3f} "
            f"{s.examples_with_no_prediction:>18.1%} {s.labels_never_predicted:>19d}/{NUM_LABELS}"
        )

    # logits of the last run (the pos_weight model)
    check_against_tf_nn(y_test, logits, np.float32(pos_weight))
    check_against_tf_nn(y_test, logits, per_label_pos_weight.astype(np.float32))
    print(
        "\nchecked: WeightedBinaryCrossentropy(pos_weight=a, neg_weight=1) == "
        "mean over labels of tf.nn.weighted_cross_entropy_with_logits "
        "(scalar a and per-label vector a)"
    )
    print(f"total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
