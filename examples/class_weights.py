"""Class weights done right: balanced weights, one-hot labels, two equivalent routes.

``cx.weights.balanced(y)`` is ``n / (C * count_c)``, the same as scikit-learn's
``compute_class_weight("balanced", classes=np.unique(y), y=y)``. (Old answers call it
positionally, ``compute_class_weight("balanced", np.unique(y), y)``; ``classes`` and ``y`` are
keyword-only in current scikit-learn, so that now raises ``TypeError``.)

The weights can go either into the loss or into ``model.fit``; with one-hot labels both give
the same objective:

* the loss: ``cx.WeightedCategoricalCrossentropy(class_weight=w)`` weighs example ``i`` by
  ``sum_k t_ik w_k``, which is ``w[y_i]`` for a one-hot row ``t_i`` (and a blend for soft
  labels);
* Keras: ``model.fit(x, y_one_hot, class_weight=cx.weights.to_keras_class_weight(w))`` turns
  each one-hot row into its ``argmax`` (for soft labels that keeps only the top class), looks
  the weight up in the dict (missing classes weigh 1.0) and passes it as ``sample_weight``.

Either way the default ``"sum_over_batch_size"`` reduction divides ``sum_i w_i loss_i`` by the
batch size. The script checks that equality on a batch, then trains three models with the same
seed: unweighted, weights in the loss, weights in ``fit``.

Run from the repository root: ``python examples/class_weights.py [--fast]``.
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
from sklearn.datasets import make_classification
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

import costxent as cx

SEED = 0


def train(
    loss: keras.losses.Loss,
    x: np.ndarray,
    y_one_hot: np.ndarray,
    epochs: int,
    class_weight: dict[int, float] | None = None,
) -> keras.Model:
    """The same seeded network for every route; ``class_weight`` goes to ``model.fit``."""
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(y_one_hot.shape[1]),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    model.fit(x, y_one_hot, class_weight=class_weight, epochs=epochs, batch_size=64, verbose=0)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small data, 2 epochs")
    args = parser.parse_args(argv)

    x, y = make_classification(
        n_samples=2000 if args.fast else 8000,
        n_features=20,
        n_informative=8,
        n_classes=3,
        weights=[0.85, 0.12, 0.03],
        class_sep=0.8,
        random_state=SEED,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=0.5, stratify=y, random_state=SEED
    )
    y_one_hot = keras.utils.to_categorical(y_train, 3)
    print(f"class counts in training: {np.bincount(y_train).tolist()}")

    w = cx.weights.balanced(y_one_hot)  # one-hot rows or class ids, same result
    reference = compute_class_weight("balanced", classes=np.unique(y_train), y=y_train)
    np.testing.assert_allclose(w, reference, rtol=1e-12)
    print(f"{'cx.weights.balanced(y):':<30} {np.round(w, 4).tolist()}")
    print(f"{'sklearn compute_class_weight:':<30} {np.round(reference, 4).tolist()}")
    try:
        compute_class_weight("balanced", np.unique(y_train), y_train)
    except TypeError as error:
        print(f"the positional form from old answers: TypeError: {error}")

    # The two routes compute the same batch loss.
    logits = np.random.default_rng(SEED).normal(size=(64, 3)).astype("float32")
    in_loss = cx.WeightedCategoricalCrossentropy(class_weight=w, from_logits=True)
    via_fit = keras.losses.CategoricalCrossentropy(from_logits=True)
    batch = y_one_hot[:64]
    a = float(in_loss(batch, logits))
    b = float(via_fit(batch, logits, sample_weight=w[batch.argmax(axis=1)]))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    print(
        f"batch loss: class_weight in the loss {a:.6f}, sample weights as fit applies "
        f"them {b:.6f}"
    )

    epochs = 2 if args.fast else 20
    models = {
        "unweighted": train(
            cx.WeightedCategoricalCrossentropy(from_logits=True), x_train, y_one_hot, epochs
        ),
        "class_weight in the loss": train(in_loss, x_train, y_one_hot, epochs),
        "class_weight in model.fit": train(
            cx.WeightedCategoricalCrossentropy(from_logits=True),
            x_train,
            y_one_hot,
            epochs,
            class_weight=cx.weights.to_keras_class_weight(w),
        ),
    }
    print(f"\n{'model':<28} {'recall per class':>20} {'balanced accuracy':>18}")
    predictions = {}
    for name, model in models.items():
        predictions[name] = model(x_test).numpy()
        predicted = predictions[name].argmax(axis=1)
        recall = recall_score(y_test, predicted, average=None)
        print(
            f"{name:<28} {' '.join(f'{r:.2f}' for r in recall):>20} "
            f"{balanced_accuracy_score(y_test, predicted):>18.3f}"
        )
    gap = np.abs(
        predictions["class_weight in the loss"] - predictions["class_weight in model.fit"]
    ).max()
    print(f"\nlargest logit difference between the two weighted routes: {gap:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
