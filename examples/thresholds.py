"""Thresholds: "Keras uses 0.5; I want 0.85".

A loss has no threshold: it trains probabilities. The threshold belongs to the decision, and
it follows from what the two mistakes cost (Elkan 2001): predict positive when
``p >= cost_fp / (cost_fp + cost_fn)``. If a false positive costs 17 and a false negative 3,
that is ``cx.decision.binary_threshold(cost_fp=17, cost_fn=3) = 0.85``;
``cx.decision.min_expected_cost(probs, M)`` makes the same decision from the cost matrix
``M[true, predicted] = [[0, 17], [3, 0]]`` (and works for any number of classes).

To watch precision and recall at that threshold during training, on a model that outputs
logits, use ``cx.metrics.Precision(from_logits=True, thresholds=0.85)`` and
``cx.metrics.Recall(...)``: they apply the sigmoid first (Keras' own metrics would compare
the logits with 0.85). The script checks the metrics against scikit-learn and the two decision
functions against each other, and prints the total cost at 0.5 and at 0.85.

Run from the repository root: ``python examples/thresholds.py [--fast]``.
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import make_classification
from sklearn.metrics import precision_score, recall_score
from sklearn.model_selection import train_test_split

import costxent as cx

COST_FP, COST_FN = 17.0, 3.0
SEED = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small data, 2 epochs")
    args = parser.parse_args(argv)

    threshold = cx.decision.binary_threshold(cost_fp=COST_FP, cost_fn=COST_FN)
    cost = np.array([[0.0, COST_FP], [COST_FN, 0.0]])  # M[true, predicted]
    print(
        f"false positive costs {COST_FP:g}, false negative {COST_FN:g}: "
        f"binary_threshold = {threshold:g}"
    )

    x, y = make_classification(
        n_samples=2000 if args.fast else 8000,
        n_features=20,
        n_informative=6,
        weights=[0.7],
        class_sep=0.8,
        random_state=SEED,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y.astype("float32"), test_size=0.5, stratify=y, random_state=SEED
    )

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1),
        ]
    )  # one logit
    metrics = [
        cls(from_logits=True, thresholds=t, name=f"{cls.__name__.lower()}@{t:g}")
        for t in (0.5, threshold)
        for cls in (cx.metrics.Precision, cx.metrics.Recall)
    ]
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=cx.WeightedBinaryCrossentropy(from_logits=True),
        metrics=metrics,
    )
    model.fit(x_train, y_train, epochs=2 if args.fast else 20, batch_size=64, verbose=0)
    logged = model.evaluate(x_test, y_test, verbose=0, return_dict=True)

    p = tf.sigmoid(model(x_test)[:, 0]).numpy()  # float32, as the metrics see it
    bayes = cx.decision.min_expected_cost(np.stack([1.0 - p, p], axis=1), cost)
    away = np.abs(p - threshold) > 1e-6  # exactly at the threshold both choices cost the same
    assert np.array_equal(bayes[away], (p >= threshold)[away])
    print(
        f"min_expected_cost(probs, M) agrees with p >= {threshold:g} on {away.sum()} of "
        f"{len(p)} held-out examples (the others tie)"
    )

    print(
        f"\n{'threshold':>9} {'precision':>9} {'recall':>7} {'FP':>5} {'FN':>5} "
        f"{'total cost':>10}"
    )
    for t in (0.5, threshold):
        predicted = p > np.float32(t)  # as Keras' metrics count a positive
        precision = logged[f"precision@{t:g}"]
        recall = logged[f"recall@{t:g}"]
        np.testing.assert_allclose(precision, precision_score(y_test, predicted), atol=1e-5)
        np.testing.assert_allclose(recall, recall_score(y_test, predicted), atol=1e-5)
        fp = int(np.sum(predicted & (y_test == 0)))
        fn = int(np.sum(~predicted & (y_test == 1)))
        print(
            f"{t:>9g} {precision:>9.3f} {recall:>7.3f} {fp:>5} {fn:>5} "
            f"{COST_FP * fp + COST_FN * fn:>10g}"
        )
    print("\nchecked: Precision/Recall(from_logits=True) equal scikit-learn's on sigmoid(logits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
