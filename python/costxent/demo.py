"""``python -m costxent demo``: four losses on digits with a rare, expensive class.

scikit-learn's bundled 8x8 digits (no download) are split 30% train / 70% held out. In the
training part only two 8s in five are kept, so 8 is the minority class; the held-out part keeps
all its 8s but weighs each by 2/5 (``sample_weight``), which estimates the cost under the same
class mix with less noise than dropping three 8s in five. Missing an 8 costs 20; any other
mistake costs 1; a right answer costs 0. Balanced class weights see the counts (8s are 2.5x
rarer), not the costs (a missed 8 is 20x worse). The same small network (same seed, same
budget) is trained with

1. plain cross-entropy,
2. balanced class weights: ``WeightedCategoricalCrossentropy(class_weight=balanced(y))``,
3. the cost matrix as per-example weights, ``w_i = M[y_i, argmax_j z_ij]``:
   ``WeightedCategoricalCrossentropy(cost_matrix=M)``,
4. expected cost plus cross-entropy: ``ExpectedCostLoss(M, ce_weight=0.3)``,

and the held-out misclassification cost per example (argmax decisions), the recall of the 8s
and the accuracy are printed; the four confusion matrices go to a PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import costxent as cx

MINORITY = 8
KEEP_FRACTION = 0.4  # of the minority class in training; its held-out weight
MISS_COST = 20.0  # cost of predicting anything else for a true 8; other mistakes cost 1
CE_WEIGHT = 0.3
TRAIN_FRACTION = 0.3
EPOCHS, FAST_EPOCHS = 30, 2
SEED = 0


def cost_matrix(num_classes: int = 10) -> np.ndarray:
    """``M[true, predicted]``: 0 on the diagonal, 1 off it, ``MISS_COST`` for a missed 8."""
    m = 1.0 - np.eye(num_classes)
    m[MINORITY] *= MISS_COST
    return m


def load_data(seed: int) -> tuple[np.ndarray, ...]:
    """Digits scaled to [0, 1]: ``x_train, y_train, x_test, y_test, w_test``.

    A stratified split; the minority class is thinned in training and down-weighted held out.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    part = np.zeros(len(y), dtype=bool)  # the training share of every class
    for c in range(10):
        members = np.flatnonzero(y == c)
        part[members[: round(TRAIN_FRACTION * len(members))]] = True
    minority = np.flatnonzero(part & (y == MINORITY))
    train = part & (y != MINORITY)
    train[minority[: round(KEEP_FRACTION * len(minority))]] = True
    test = ~part
    w_test = np.where(y[test] == MINORITY, KEEP_FRACTION, 1.0)
    return x[train], y[train], x[test], y[test], w_test


def make_losses(y_train: np.ndarray, cost: np.ndarray) -> dict[str, keras.losses.Loss]:
    """The four contenders, all on logits."""
    return {
        "plain cross-entropy": cx.WeightedCategoricalCrossentropy(from_logits=True),
        "balanced class weights": cx.WeightedCategoricalCrossentropy(
            class_weight=cx.weights.balanced(y_train), from_logits=True
        ),
        "cost matrix weights": cx.WeightedCategoricalCrossentropy(
            cost_matrix=cost, from_logits=True
        ),
        f"expected cost + {CE_WEIGHT:g} CE": cx.ExpectedCostLoss(
            cost, ce_weight=CE_WEIGHT, from_logits=True
        ),
    }


class _Progress(keras.callbacks.Callback):
    """One status line per model, rewritten in place on a terminal."""

    def __init__(self, label: str, epochs: int) -> None:
        super().__init__()
        self.label, self.epochs = label, epochs
        self.start = time.perf_counter()
        self.live = sys.stdout.isatty()

    def _line(self, epoch: int, loss: float) -> str:
        elapsed = time.perf_counter() - self.start
        return (
            f"  {self.label:<28} epoch {epoch:>3}/{self.epochs}  loss {loss:.4f}  {elapsed:5.1f}s"
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        line = self._line(epoch + 1, float((logs or {}).get("loss", float("nan"))))
        if self.live:
            print("\r" + line, end="", flush=True)
        elif epoch + 1 == self.epochs:
            print(line, flush=True)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.live:
            print(flush=True)


def train(
    loss: keras.losses.Loss, x: np.ndarray, y: np.ndarray, epochs: int, label: str, seed: int
) -> keras.Model:
    """The same network, initialisation and batch order for every loss."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    # Our own dataset rather than arrays: Keras' array adapter makes TF 2.21 log a spurious
    # "NodeDef mentions attribute use_unbounded_threadpool" error line per model.
    batches = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).batch(32)
    model.fit(
        batches, epochs=epochs, verbose=0, shuffle=False, callbacks=[_Progress(label, epochs)]
    )
    return model


def evaluate(
    model: keras.Model, x: np.ndarray, y: np.ndarray, w: np.ndarray, cost: np.ndarray
) -> dict:
    """Held-out cost per example (weighted by ``w``), minority recall, accuracy, and the
    confusion matrix of plain counts."""
    # A direct call: model.predict would trace a new tf.function for every model.
    logits = model(x, training=False)
    weighted = cx.metrics.MisclassificationCost(cost, from_logits=True)
    weighted.update_state(y, logits, sample_weight=w)
    counts = cx.metrics.MisclassificationCost(cost, from_logits=True)
    counts.update_state(y, logits)
    conf = counts.confusion_matrix.numpy()
    weighted_conf = weighted.confusion_matrix.numpy()
    return {
        "cost": float(weighted.result()),
        "recall": conf[MINORITY, MINORITY] / conf[MINORITY].sum(),
        "accuracy": np.trace(weighted_conf) / weighted_conf.sum(),
        "confusion": conf,
    }


def plot(results: dict[str, dict], path: str) -> None:
    """A 2 x 2 grid of confusion matrices (counts), the minority row outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(11, 10), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (name, r) in zip(fig.subplots(2, 2).ravel(), results.items()):
        conf = r["confusion"]
        ax.imshow(np.log1p(conf), cmap="Blues")
        for (i, j), v in np.ndenumerate(conf):
            if v:
                ax.text(
                    j,
                    i,
                    f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > conf.max() / 3 else "black",
                )
        ax.add_patch(Rectangle((-0.5, MINORITY - 0.5), 10, 1, fill=False, ec="red", lw=1.5))
        ax.set_title(
            f"{name}\ncost/example {r['cost']:.3f}, recall({MINORITY}) "
            f"{r['recall']:.2f}, accuracy {r['accuracy']:.3f}",
            fontsize=10,
        )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(10))
        ax.set_yticks(range(10))
    fig.suptitle(
        f"Held-out confusion matrices (counts); a missed {MINORITY} (red row) costs "
        f"{MISS_COST:g}, any other mistake 1"
    )
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m costxent demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"{FAST_EPOCHS} epochs instead of {EPOCHS} (a smoke test)",
    )
    parser.add_argument(
        "--out",
        default="costxent_demo.png",
        help="where to write the confusion-matrix PNG (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="split and training seed")
    args = parser.parse_args(argv)

    # Same numbers on every run of the same machine and TF build.
    tf.config.experimental.enable_op_determinism()
    epochs = FAST_EPOCHS if args.fast else EPOCHS
    x_train, y_train, x_test, y_test, w_test = load_data(args.seed)
    cost = cost_matrix()
    print(
        f"digits with a rare {MINORITY}: train {len(y_train)} examples "
        f"({np.sum(y_train == MINORITY)} of them {MINORITY}s); held out {len(y_test)} "
        f"({np.sum(y_test == MINORITY)} {MINORITY}s, each weighing {KEEP_FRACTION:g})"
    )
    print(
        f"cost M[true, predicted]: a missed {MINORITY} costs {MISS_COST:g}, any other "
        f"mistake 1, a right answer 0; kernel: {cx.ops.implementation()}"
    )
    print(f"training one network per loss, {epochs} epochs, seed {args.seed}:")

    results = {}
    for name, loss in make_losses(y_train, cost).items():
        model = train(loss, x_train, y_train, epochs, name, args.seed)
        results[name] = evaluate(model, x_test, y_test, w_test, cost)

    print(
        f"\n{'loss':<28} {'cost/example':>12} {'recall(' + str(MINORITY) + ')':>10} "
        f"{'accuracy':>9}"
    )
    for name, r in results.items():
        print(f"{name:<28} {r['cost']:>12.3f} {r['recall']:>10.2f} {r['accuracy']:>9.3f}")
    plot(results, args.out)
    print(f"\nconfusion matrices written to {args.out}")
    return 0
