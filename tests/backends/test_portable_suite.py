"""The Keras losses and metrics on the running Keras backend against the float64 oracle.

Every loss configuration of ``cases.py`` under every reduction, with and without
``sample_weight``: the value and the gradient with respect to ``y_pred`` (by the backend's
own autodiff); the metrics against NumPy; ``model.fit``/``evaluate``/``predict`` and a
``.keras`` round trip. The same file runs under TensorFlow (the main test run) and, from
tests/test_backends.py, under JAX and PyTorch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops as kops

import costxent as cx
from cases import CASES, COST, IDS, LOGITS, N, REDUCTIONS, SAMPLE_WEIGHT, C
from cases import expected, loss_input_gradient

BACKEND = keras.backend.backend()
RTOL = 2e-5  # float32 arithmetic against the float64 oracle


def _value_and_grad(loss: keras.losses.Loss, y_true: Any, y_pred: np.ndarray, sw: Any):
    """The loss and d(sum of it)/d y_pred, by the backend's autodiff."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(y_pred)
        with tf.GradientTape() as tape:
            value = loss(y_true, x, sample_weight=sw)
            total = tf.reduce_sum(value)
        return np.asarray(value), tape.gradient(total, x).numpy()
    if BACKEND == "jax":
        import jax

        def total(x):
            value = loss(y_true, x, sample_weight=sw)
            return kops.sum(value), value

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(jax.numpy.asarray(y_pred))
        return np.asarray(value), np.asarray(grad)
    if BACKEND == "torch":
        import torch

        x = torch.tensor(y_pred, requires_grad=True)
        value = loss(torch.as_tensor(y_true), x, sample_weight=sw)
        value.sum().backward()
        return value.detach().cpu().numpy(), x.grad.cpu().numpy()
    pytest.skip(f"no autodiff helper for the {BACKEND} backend")


def _loss(name: str, **overrides: Any) -> keras.losses.Loss:
    cls, kwargs = CASES[name][0], CASES[name][1]
    return getattr(cx, cls)(**{**kwargs, **overrides})


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(CASES))
def test_loss_value_and_gradient(name: str, reduction: str, weighted: bool) -> None:
    sw = SAMPLE_WEIGHT if weighted else None
    y_true, y_pred = CASES[name][2], CASES[name][3]
    value, grad = _value_and_grad(_loss(name, reduction=reduction), y_true, y_pred, sw)
    want, want_grad = expected(name, reduction, sw)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, want, rtol=RTOL, atol=1e-6)
    if want_grad is not None:
        np.testing.assert_allclose(grad, loss_input_gradient(name)(want_grad), rtol=1e-4, atol=1e-6)


def test_implementation_names_the_path() -> None:
    path = cx.implementation()
    assert path.startswith(("fused-", "reference: "))
    if BACKEND in ("jax", "torch"):
        assert path == importlib.import_module(f"costxent.{BACKEND}_ops").implementation()


def test_bad_labels_give_nan_or_a_clear_error() -> None:
    loss = cx.WeightedCategoricalCrossentropy(from_logits=True, reduction="none")
    labels = np.array([0, C, 1, 2] + [0] * (N - 4))
    errors: tuple = (ValueError,)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        errors += (tf.errors.InvalidArgumentError,)
    try:
        value = np.asarray(loss(labels, LOGITS))
    except errors as exc:  # the fused CPU kernels name the row and the value
        assert f"labels[1] = {C}" in str(exc)
    else:
        assert np.isnan(value[1]) and np.isfinite(np.delete(value, 1)).all()
    logits = LOGITS.copy()
    logits[3, 2] = np.nan
    assert np.isnan(np.asarray(loss(IDS, logits))[3])


def test_wrong_shapes_are_named() -> None:
    loss = cx.WeightedCategoricalCrossentropy(class_weight=[1.0, 2.0], from_logits=True)
    with pytest.raises(ValueError, match="class_weight must have shape"):
        loss(IDS, LOGITS)
    with pytest.raises(ValueError, match="labels must have shape"):
        cx.WeightedCategoricalCrossentropy(from_logits=True)(np.zeros((N, 2)), LOGITS)


def _numpy_confusion(y: np.ndarray, pred: np.ndarray, sw: np.ndarray) -> np.ndarray:
    conf = np.zeros((C, C))
    np.add.at(conf, (y, pred), sw)
    return conf


@pytest.mark.parametrize("decision", ["argmax", "min_expected_cost"])
def test_misclassification_cost_and_accuracy(decision: str) -> None:
    metric = cx.metrics.MisclassificationCost(COST, from_logits=True, decision=decision)
    accuracy = cx.metrics.CostWeightedAccuracy(COST)
    for m in (metric, accuracy):
        m.update_state(IDS[:6], LOGITS[:6], sample_weight=SAMPLE_WEIGHT[:6])
        m.update_state(IDS[6:].astype(np.float32)[:, None], LOGITS[6:], SAMPLE_WEIGHT[6:])
    z = LOGITS.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pred = np.argmax(z, -1) if decision == "argmax" else np.argmin(p @ COST, -1)
    conf = _numpy_confusion(IDS, pred, SAMPLE_WEIGHT.astype(np.float64))
    np.testing.assert_allclose(float(metric.result()), (conf * COST).sum() / conf.sum(), rtol=1e-6)
    conf = _numpy_confusion(IDS, np.argmax(z, -1), SAMPLE_WEIGHT.astype(np.float64))
    worst, best = COST.max(1, keepdims=True), COST.min(1, keepdims=True)
    np.testing.assert_allclose(
        float(accuracy.result()), (conf * (worst - COST)).sum() / (conf * (worst - best)).sum(),
        rtol=1e-6,
    )


def test_metric_nan_label_is_not_counted_silently() -> None:
    metric = cx.metrics.MisclassificationCost(COST)
    labels = IDS.astype(np.float32)
    labels[2] = np.nan
    metric.update_state(labels, LOGITS)
    assert np.isnan(float(metric.result()))


def test_precision_recall_from_logits_with_sparse_ids() -> None:
    precision = cx.metrics.Precision(from_logits=True, class_id=2)
    recall = cx.metrics.Recall(from_logits=True, class_id=2)
    precision.update_state(IDS, LOGITS)
    recall.update_state(IDS, LOGITS)
    predicted = 1.0 / (1.0 + np.exp(-LOGITS[:, 2].astype(np.float64))) > 0.5
    actual = IDS == 2
    tp = np.sum(predicted & actual)
    np.testing.assert_allclose(float(precision.result()), tp / max(predicted.sum(), 1), rtol=1e-6)
    np.testing.assert_allclose(float(recall.result()), tp / max(actual.sum(), 1), rtol=1e-6)


def fit_case(name: str) -> dict[str, Any]:
    """A linear model trained by ``name``'s loss from fixed weights: the weights, the
    evaluated loss and metrics before and after a ``.keras`` round trip, and predictions."""
    cls, kwargs, y, _, _ = CASES[name]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, 6)).astype(np.float32)
    kernel = rng.normal(scale=0.3, size=(6, C)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(C)])
    model.set_weights([kernel, np.zeros(C, np.float32)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=getattr(cx, cls)(**kwargs),
        metrics=[
            cx.metrics.MisclassificationCost(COST, from_logits=True, name="cost"),
            cx.metrics.CostWeightedAccuracy(COST, name="accuracy"),
            cx.metrics.Precision(from_logits=True, class_id=1, name="precision"),
            cx.metrics.Recall(from_logits=True, class_id=1, name="recall"),
        ],
    )
    history = model.fit(x, y, sample_weight=SAMPLE_WEIGHT, batch_size=5, epochs=3,
                        shuffle=False, verbose=0)
    evaluated = model.evaluate(x, y, sample_weight=SAMPLE_WEIGHT, verbose=0, return_dict=True)
    return dict(model=model, x=x, y=y, history=history.history, evaluated=evaluated,
                weights=model.get_weights())


@pytest.mark.parametrize("name", ["ce_plain", "ce_cost_focal_ignore", "expected_cost_ignore",
                                  "binary_weighted_focal"])
def test_fit_evaluate_predict_save_load(name: str, tmp_path) -> None:
    result = fit_case(name)
    model, x, y = result["model"], result["x"], result["y"]
    losses = result["history"]["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    logits = np.asarray(model.predict(x, verbose=0), np.float64)
    np.testing.assert_allclose(logits, x @ result["weights"][0] + result["weights"][1],
                               rtol=1e-5, atol=1e-6)
    # evaluate() against the oracle on the trained model's own logits
    want = _oracle_on(name, logits)
    np.testing.assert_allclose(result["evaluated"]["loss"], want, rtol=1e-5)
    _check_metrics(result["evaluated"], y, logits)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.loss.get_config() == model.loss.get_config()
    again = loaded.evaluate(x, y, sample_weight=SAMPLE_WEIGHT, verbose=0, return_dict=True)
    for key, value in result["evaluated"].items():
        np.testing.assert_allclose(again[key], value, rtol=1e-6)
    out = os.environ.get("COSTXENT_FIT_OUT")
    if out:  # tests/test_backends.py compares these with TensorFlow's training
        np.savez(os.path.join(out, f"{BACKEND}-{name}.npz"), *result["weights"])


def _oracle_on(name: str, logits: np.ndarray) -> float:
    """The case's loss on other logits, reduced as Keras' default 'sum_over_batch_size'."""
    import oracle

    cls, kwargs, y, _, _ = CASES[name]
    if cls == "WeightedBinaryCrossentropy":
        per, _ = oracle.sigmoid_cross_entropy(
            y, logits, pos_weight=kwargs["pos_weight"], neg_weight=kwargs["neg_weight"],
            focal_gamma=kwargs["focal_gamma"], label_smoothing=kwargs["label_smoothing"])
        per = per.mean(-1)
    elif cls == "ExpectedCostLoss":
        per, _ = oracle.expected_cost(
            y, logits, np.asarray(kwargs["cost_matrix"]), ce_weight=kwargs["ce_weight"],
            label_smoothing=kwargs["label_smoothing"], ignore_class=kwargs["ignore_class"])
    else:
        cost = kwargs.get("cost_matrix")
        per, _ = oracle.softmax_cross_entropy(
            y, logits, cost_matrix=None if cost is None else np.asarray(cost),
            focal_gamma=kwargs.get("focal_gamma", 0.0), ignore_class=kwargs.get("ignore_class"))
    keep = np.ones(N, bool) if kwargs.get("ignore_class") is None else y != kwargs["ignore_class"]
    return float(np.sum(SAMPLE_WEIGHT * per * keep) / keep.sum())


def _check_metrics(evaluated: dict, y: np.ndarray, logits: np.ndarray) -> None:
    """The compiled metrics of :func:`fit_case` against NumPy on the trained logits."""
    if y.ndim == 2:  # multi-hot rows: the values are checked by the update_state tests
        assert all(np.isfinite(v) for v in evaluated.values()), evaluated
        return
    if np.any(y < 0):  # an id outside [0, C) with a nonzero weight is never hidden
        assert np.isnan(evaluated["cost"]) and np.isnan(evaluated["accuracy"])
        return
    weight = np.ones(N)  # compile(metrics=...) are unweighted in Keras (weighted_metrics are not)
    conf = _numpy_confusion(y, np.argmax(logits, -1), weight)
    np.testing.assert_allclose(evaluated["cost"], (conf * COST).sum() / conf.sum(), rtol=1e-5)
    worst, best = COST.max(1, keepdims=True), COST.min(1, keepdims=True)
    np.testing.assert_allclose(
        evaluated["accuracy"], (conf * (worst - COST)).sum() / (conf * (worst - best)).sum(),
        rtol=1e-5,
    )
    predicted = 1.0 / (1.0 + np.exp(-logits[:, 1])) > 0.5
    actual = y == 1
    tp = np.sum(weight * (predicted & actual))
    np.testing.assert_allclose(evaluated["precision"], tp / np.sum(weight * predicted), rtol=1e-5)
    np.testing.assert_allclose(evaluated["recall"], tp / np.sum(weight * actual), rtol=1e-5)
