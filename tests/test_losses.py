"""The Keras 3 losses against Keras' own losses, tf.nn and the float64 NumPy oracle.

Covers every reduction with and without ``sample_weight``, ``ignore_class`` masking,
``from_logits=False``, dtypes, empty batches, get_config/from_config, JSON and ``.keras``
round trips with no custom_objects, and ``model.fit`` with and without XLA.
"""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import costxent as cx
import oracle

REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]
RNG = np.random.default_rng(1234)
N, C = 12, 4
LOGITS = RNG.normal(size=(N, C)).astype(np.float32)
PROBS = tf.nn.softmax(LOGITS).numpy()
IDS = RNG.integers(0, C, size=N)
ONEHOT = np.eye(C, dtype=np.float32)[IDS]
SOFT = tf.nn.softmax(RNG.normal(size=(N, C))).numpy()
SAMPLE_WEIGHT = RNG.uniform(0.0, 2.0, size=N).astype(np.float32)
COST = np.array(
    [[0.0, 1.0, 2.0, 4.0], [3.0, 0.0, 7.0, 1.0], [1.0, 1.0, 0.0, 2.0], [2.0, 5.0, 1.0, 0.0]]
)

LossFactory = Callable[[Any], keras.losses.Loss]


def _value_and_gradient(loss: keras.losses.Loss, y_true: Any, y_pred: Any, sw: Any) -> tuple:
    """The loss, and its gradient w.r.t. y_pred: with a tape recording, costxent's losses
    run their fused reduced op; without one, the loss-only op and Keras' reduction."""
    x = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(y_true, x, sample_weight=sw)
    return value, tape.gradient(value, x)


def _assert_same_as(
    ours: LossFactory,
    theirs: LossFactory,
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = SAMPLE_WEIGHT,
    rtol: float = 1e-5,
) -> None:
    """``ours(reduction)`` and ``theirs(reduction)`` agree for every reduction, with and
    without ``sample_weight``, in value, shape and dtype, with and without a tape, and in
    the gradient with respect to ``y_pred``."""
    for reduction in REDUCTIONS:
        for sw in (None, sample_weight):
            where = f"reduction={reduction}, sample_weight={sw is not None}"
            want, want_grad = _value_and_gradient(theirs(reduction), y_true, y_pred, sw)
            untaped = ours(reduction)(y_true, y_pred, sample_weight=sw)
            got, got_grad = _value_and_gradient(ours(reduction), y_true, y_pred, sw)
            for value in (untaped, got):
                assert value.dtype == want.dtype and value.shape == want.shape, where
                np.testing.assert_allclose(value, want, rtol=rtol, atol=1e-6, err_msg=where)
            np.testing.assert_allclose(got_grad, want_grad, rtol=rtol, atol=1e-6, err_msg=where)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("labels", ["onehot", "soft"])
def test_matches_keras_categorical_crossentropy(
    from_logits: bool, label_smoothing: float, labels: str
) -> None:
    y = ONEHOT if labels == "onehot" else SOFT
    kwargs = {"from_logits": from_logits, "label_smoothing": label_smoothing}
    _assert_same_as(
        lambda r: cx.WeightedCategoricalCrossentropy(reduction=r, **kwargs),
        lambda r: keras.losses.CategoricalCrossentropy(reduction=r, **kwargs),
        y,
        LOGITS if from_logits else PROBS,
    )


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("ignore_class", [None, -1, 255])
@pytest.mark.parametrize("column", [False, True])
def test_matches_keras_sparse_categorical_crossentropy(
    from_logits: bool, ignore_class: int | None, column: bool
) -> None:
    ids = IDS.copy()
    if ignore_class is not None:
        ids[[1, 4, 5, 11]] = ignore_class
    y = ids[:, None] if column else ids
    kwargs = {"from_logits": from_logits, "ignore_class": ignore_class}
    _assert_same_as(
        lambda r: cx.WeightedCategoricalCrossentropy(reduction=r, **kwargs),
        lambda r: keras.losses.SparseCategoricalCrossentropy(reduction=r, **kwargs),
        y,
        LOGITS if from_logits else PROBS,
    )


def _ours_ignoring(reduction: Any) -> keras.losses.Loss:
    return cx.WeightedCategoricalCrossentropy(
        from_logits=True, ignore_class=-1, reduction=reduction
    )


def _keras_ignoring(reduction: Any) -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=-1, reduction=reduction
    )


def test_ignore_class_on_sequences_matches_keras() -> None:
    logits = RNG.normal(size=(3, 5, C)).astype(np.float32)
    ids = RNG.integers(0, C, size=(3, 5))
    ids[0, 3:] = -1
    ids[2, :] = -1
    for sw in (RNG.random((3, 5)).astype(np.float32), RNG.random((3, 5, 1)).astype(np.float32)):
        _assert_same_as(_ours_ignoring, _keras_ignoring, ids, logits, sample_weight=sw)


def test_expected_cost_ignore_class_reduces_like_keras() -> None:
    """With a zero cost matrix and ce_weight=1 ExpectedCostLoss is plain sparse CE, so its
    masking and reductions must equal Keras' SparseCategoricalCrossentropy(ignore_class)."""
    ids = IDS.copy()
    ids[[0, 7]] = -1
    _assert_same_as(
        lambda r: cx.ExpectedCostLoss(
            np.zeros((C, C)), ce_weight=1.0, from_logits=True, ignore_class=-1, reduction=r
        ),
        _keras_ignoring,
        ids,
        LOGITS,
    )


def test_all_ignored_batch_gives_zero_like_keras() -> None:
    _assert_same_as(_ours_ignoring, _keras_ignoring, np.full(N, -1), LOGITS)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_keras_categorical_focal_crossentropy(
    from_logits: bool, gamma: float, label_smoothing: float
) -> None:
    """Keras' ``alpha`` is one scalar multiplying every term, so alpha=1 is our unweighted
    focal loss and alpha=a is ours with ``class_weight=[a] * C``."""
    y_pred = LOGITS if from_logits else PROBS
    kwargs = {"from_logits": from_logits, "label_smoothing": label_smoothing}
    for alpha, class_weight in [(1.0, None), (0.25, [0.25] * C)]:
        _assert_same_as(
            lambda r: cx.WeightedCategoricalCrossentropy(
                focal_gamma=gamma, class_weight=class_weight, reduction=r, **kwargs
            ),
            lambda r: keras.losses.CategoricalFocalCrossentropy(
                alpha=alpha, gamma=gamma, reduction=r, **kwargs
            ),
            ONEHOT,
            y_pred,
        )


@pytest.mark.parametrize("class_weight", [[0.5, 2.0, 1.0, 3.0], {1: 2.0, 3: 3.0}])
def test_class_weight_equals_keras_sample_weight(class_weight: Any) -> None:
    """A class weight acts like Keras' ``sample_weight = class_weight[y]`` (what
    ``model.fit(class_weight=...)`` does)."""
    a = np.ones(C, dtype=np.float32)
    for k, v in (
        class_weight.items() if isinstance(class_weight, dict) else enumerate(class_weight)
    ):
        a[k] = v
    for reduction in ["none", "sum", "sum_over_batch_size"]:
        for y in (IDS, ONEHOT):
            got = cx.WeightedCategoricalCrossentropy(
                class_weight=class_weight, from_logits=True, reduction=reduction
            )(y, LOGITS, sample_weight=SAMPLE_WEIGHT)
            want = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)(
                ONEHOT, LOGITS, sample_weight=SAMPLE_WEIGHT * a[IDS]
            )
            np.testing.assert_allclose(got, want, rtol=1e-5)


def _oracle_mean(per_example: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(per_example * sample_weight) / per_example.size)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("labels", ["sparse", "onehot", "soft"])
def test_cost_matrix_loss_matches_oracle(from_logits: bool, labels: str) -> None:
    y = {"sparse": IDS, "onehot": ONEHOT, "soft": SOFT}[labels]
    y_pred = LOGITS if from_logits else PROBS
    kwargs = {"cost_matrix": COST, "focal_gamma": 0.5, "label_smoothing": 0.1}
    want, _ = oracle.softmax_cross_entropy(y, LOGITS.astype(np.float64), **kwargs)
    loss = cx.WeightedCategoricalCrossentropy(from_logits=from_logits, reduction="none", **kwargs)
    np.testing.assert_allclose(loss(y, y_pred), want, rtol=1e-5)
    loss = cx.WeightedCategoricalCrossentropy(from_logits=from_logits, **kwargs)
    np.testing.assert_allclose(
        loss(y, y_pred, sample_weight=SAMPLE_WEIGHT), _oracle_mean(want, SAMPLE_WEIGHT), rtol=1e-5
    )


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("labels", ["sparse", "soft"])
def test_expected_cost_loss_matches_oracle(from_logits: bool, labels: str) -> None:
    y = IDS if labels == "sparse" else SOFT
    y_pred = LOGITS if from_logits else PROBS
    signed = COST - 1.0
    want, _ = oracle.expected_cost(
        y, LOGITS.astype(np.float64), signed, ce_weight=0.3, label_smoothing=0.1
    )
    loss = cx.ExpectedCostLoss(
        signed, ce_weight=0.3, label_smoothing=0.1, from_logits=from_logits, reduction=None
    )
    np.testing.assert_allclose(loss(y, y_pred), want, rtol=1e-5, atol=1e-6)
    loss = cx.ExpectedCostLoss(signed, ce_weight=0.3, label_smoothing=0.1, from_logits=from_logits)
    np.testing.assert_allclose(
        loss(y, y_pred, sample_weight=SAMPLE_WEIGHT), _oracle_mean(want, SAMPLE_WEIGHT), rtol=1e-5
    )


def test_cost_matrix_gradient_through_keras_loss_matches_oracle() -> None:
    z = tf.constant(LOGITS)
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = cx.WeightedCategoricalCrossentropy(
            cost_matrix=COST, from_logits=True, reduction="sum"
        )(IDS, z)
    _, want = oracle.softmax_cross_entropy(IDS, LOGITS.astype(np.float64), cost_matrix=COST)
    np.testing.assert_allclose(tape.gradient(value, z), want, rtol=1e-5, atol=1e-6)


def _binary_problem(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits = (RNG.normal(size=shape) * 2).astype(np.float32)
    labels = (RNG.random(shape) < 0.4).astype(np.float32)
    return labels, logits, tf.sigmoid(logits).numpy()


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(N, 5), (N, 1), (3, 4, 5)])
def test_matches_keras_binary_crossentropy(
    from_logits: bool, label_smoothing: float, shape: tuple[int, ...]
) -> None:
    y, logits, probs = _binary_problem(shape)
    sw = RNG.random(shape[:-1]).astype(np.float32)
    kwargs = {"from_logits": from_logits, "label_smoothing": label_smoothing}
    _assert_same_as(
        lambda r: cx.WeightedBinaryCrossentropy(reduction=r, **kwargs),
        lambda r: keras.losses.BinaryCrossentropy(reduction=r, **kwargs),
        y,
        logits if from_logits else probs,
        sample_weight=sw,
    )


def test_binary_labels_without_trailing_axis_match_keras() -> None:
    y, logits, _ = _binary_problem((N, 1))
    _assert_same_as(
        lambda r: cx.WeightedBinaryCrossentropy(from_logits=True, reduction=r),
        lambda r: keras.losses.BinaryCrossentropy(from_logits=True, reduction=r),
        y[:, 0],
        logits,
    )


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("alpha", [0.25, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_matches_keras_binary_focal_crossentropy(
    from_logits: bool, alpha: float, gamma: float
) -> None:
    y, logits, probs = _binary_problem((N, 5))
    _assert_same_as(
        lambda r: cx.WeightedBinaryCrossentropy(
            pos_weight=alpha,
            neg_weight=1 - alpha,
            focal_gamma=gamma,
            from_logits=from_logits,
            reduction=r,
        ),
        lambda r: keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True,
            alpha=alpha,
            gamma=gamma,
            from_logits=from_logits,
            reduction=r,
        ),
        y,
        logits if from_logits else probs,
    )


@pytest.mark.parametrize("pos_weight", [27.0, [1.0, 2.0, 27.0, 0.5, 3.0]])
def test_pos_weight_matches_tf_weighted_cross_entropy(pos_weight: Any) -> None:
    _, logits, _ = _binary_problem((N, 5))
    y = RNG.random((N, 5)).astype(np.float32)
    got = cx.WeightedBinaryCrossentropy(pos_weight=pos_weight, from_logits=True, reduction="none")(
        y, logits
    )
    want = tf.reduce_mean(
        tf.nn.weighted_cross_entropy_with_logits(y, logits, tf.constant(pos_weight)), axis=-1
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_binary_per_label_weights_match_oracle() -> None:
    y, logits, _ = _binary_problem((N, 5))
    kwargs = {"pos_weight": [1.0, 2.0, 27.0, 0.5, 3.0], "neg_weight": [0.5, 1.0, 1.0, 2.0, 0.1]}
    loss = cx.WeightedBinaryCrossentropy(
        from_logits=True, focal_gamma=0.5, label_smoothing=0.1, **kwargs
    )
    want, _ = oracle.sigmoid_cross_entropy(
        y, logits.astype(np.float64), focal_gamma=0.5, label_smoothing=0.1, **kwargs
    )
    np.testing.assert_allclose(
        loss(y, logits, sample_weight=SAMPLE_WEIGHT),
        _oracle_mean(want.mean(-1), SAMPLE_WEIGHT),
        rtol=1e-5,
    )


LOSS_FACTORIES: dict[str, Callable[..., keras.losses.Loss]] = {
    "categorical": lambda **kw: cx.WeightedCategoricalCrossentropy(
        cost_matrix=COST, focal_gamma=0.5, label_smoothing=0.1, ignore_class=-1, **kw
    ),
    "class_weight": lambda **kw: cx.WeightedCategoricalCrossentropy(
        class_weight={0: 2.0, 2: 0.5}, **kw
    ),
    "expected_cost": lambda **kw: cx.ExpectedCostLoss(
        COST - 1.0, ce_weight=0.2, ignore_class=-1, **kw
    ),
    "binary": lambda **kw: cx.WeightedBinaryCrossentropy(
        pos_weight=[1.0, 3.0, 0.5, 2.0], neg_weight=0.5, focal_gamma=2.0, label_smoothing=0.1, **kw
    ),
}


def _inputs(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits for a loss factory: sparse with ignored entries, or multi-label."""
    if kind == "binary":
        return (RNG.random((N, C)) < 0.5).astype(np.float32), LOGITS
    ids = IDS.copy()
    if kind != "class_weight":
        ids[3] = -1
    return ids, LOGITS


@pytest.mark.parametrize("kind", list(LOSS_FACTORIES))
def test_probabilities_agree_with_logits(kind: str) -> None:
    y, logits = _inputs(kind)
    probs = tf.sigmoid(logits) if kind == "binary" else tf.nn.softmax(logits)
    for reduction in ["none", "sum_over_batch_size"]:
        from_probs = LOSS_FACTORIES[kind](from_logits=False, reduction=reduction)(y, probs)
        from_logits = LOSS_FACTORIES[kind](from_logits=True, reduction=reduction)(y, logits)
        np.testing.assert_allclose(from_probs, from_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(LOSS_FACTORIES))
@pytest.mark.parametrize("dtype,rtol", [("float16", 2e-3), ("bfloat16", 2e-2), ("float64", 1e-5)])
def test_loss_dtype(kind: str, dtype: str, rtol: float) -> None:
    y, logits = _inputs(kind)
    got = LOSS_FACTORIES[kind](from_logits=True, dtype=dtype, reduction="none")(y, logits)
    want = LOSS_FACTORIES[kind](from_logits=True, reduction="none")(y, logits)
    assert got.dtype == dtype and want.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(got, tf.float64), want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("kind", list(LOSS_FACTORIES))
def test_empty_batch_like_keras(kind: str) -> None:
    y, logits = _inputs(kind)
    theirs = (
        keras.losses.BinaryCrossentropy
        if kind == "binary"
        else keras.losses.SparseCategoricalCrossentropy
    )
    keras_y = y[:0] if kind == "binary" else np.zeros(0)
    for reduction in REDUCTIONS:
        got = LOSS_FACTORIES[kind](from_logits=True, reduction=reduction)(y[:0], logits[:0])
        want = theirs(from_logits=True, reduction=reduction)(keras_y, logits[:0])
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", list(LOSS_FACTORIES))
def test_config_round_trip_through_json(kind: str) -> None:
    y, logits = _inputs(kind)
    loss = LOSS_FACTORIES[kind](from_logits=True, reduction="sum", name="my_loss", dtype="float64")
    config = loss.get_config()
    assert json.loads(json.dumps(config)) == json.loads(
        json.dumps(type(loss).from_config(config).get_config())
    )
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    assert serialized["registered_name"] == f"costxent>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    np.testing.assert_array_equal(
        restored(y, logits.astype(np.float64)), loss(y, logits.astype(np.float64))
    )


def test_class_weight_dict_keys_survive_json() -> None:
    loss = cx.WeightedCategoricalCrossentropy(class_weight={1: 3.0, 2: 0.5}, from_logits=True)
    restored = cx.WeightedCategoricalCrossentropy.from_config(
        json.loads(json.dumps(loss.get_config()))
    )
    assert restored.class_weight == {1: 3.0, 2: 0.5}
    np.testing.assert_allclose(restored(IDS, LOGITS), loss(IDS, LOGITS), rtol=0)


def test_array_and_tensor_arguments_are_stored_as_plain_lists() -> None:
    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=tf.constant(COST))
    assert loss.get_config()["cost_matrix"] == COST.tolist()
    loss = cx.WeightedBinaryCrossentropy(
        pos_weight=np.array([1.0, 2.0]), neg_weight=np.float32(0.5)
    )
    assert loss.get_config()["pos_weight"] == [1.0, 2.0] and loss.get_config()["neg_weight"] == 0.5


def _classification_data(kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """A learnable problem: features, labels (sparse or multi-hot), output width."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    w = rng.normal(size=(8, C)).astype(np.float32)
    if kind == "binary":
        return x, (x @ w > 0.5).astype(np.float32), C
    return x, np.argmax(x @ w, axis=-1), C


def _model(width: int) -> keras.Model:
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(width)]
    )


@pytest.mark.parametrize("kind", ["categorical", "expected_cost", "binary"])
@pytest.mark.parametrize("jit_compile", ["auto", True])
def test_model_fit_loss_falls(kind: str, jit_compile: str | bool) -> None:
    """Keras' default ("auto": no XLA on a CPU-only machine, the fused op) and XLA (the
    reference path) both train."""
    keras.utils.set_random_seed(0)
    x, y, width = _classification_data(kind)
    model = _model(width)
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=LOSS_FACTORIES[kind](from_logits=True),
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=64, epochs=6, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.7 * history[0]


@pytest.mark.parametrize("kind", list(LOSS_FACTORIES))
def test_model_save_and_load_without_custom_objects(kind: str, tmp_path: Any) -> None:
    x, y, width = _classification_data(kind)
    model = _model(width)
    loss = LOSS_FACTORIES[kind](from_logits=True, reduction="sum")
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )


def test_docstring_examples() -> None:
    results = doctest.testmod(cx.losses, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 3 and results.failed == 0
