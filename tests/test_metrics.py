"""costxent.metrics against scikit-learn, NumPy and hand-computed confusion matrices."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score

from costxent import decision, metrics

# The worked example of DESIGN.md: a true B (1) predicted as C (2) costs 5, as A (0) costs 1.
COST_3 = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 5.0], [1.0, 1.0, 0.0]])


def _random_batch(seed: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)).astype(np.float32) * 2 + 2 * np.eye(c)[labels]
    sample_weight = rng.uniform(0.1, 3.0, size=n).astype(np.float32)
    return labels, logits, sample_weight


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_worked_example_by_hand() -> None:
    y_true = [1, 1, 0, 2]
    y_pred = np.eye(3)[[2, 0, 0, 2]]  # B->C (5), B->A (1), A->A (0), C->C (0)
    cost = metrics.MisclassificationCost(COST_3)
    cost.update_state(y_true, y_pred)
    np.testing.assert_array_equal(cost.confusion_matrix, [[1, 0, 0], [1, 0, 1], [0, 0, 1]])
    assert float(cost.result()) == pytest.approx(6.0 / 4.0)

    # stake (max - min of the true row): A 1, B 5, B 5, C 1 = 12; credit: 0, 4, 1, 1 = 6.
    accuracy = metrics.CostWeightedAccuracy(COST_3)
    accuracy.update_state(y_true, y_pred)
    assert float(accuracy.result()) == pytest.approx(6.0 / 12.0)


@pytest.mark.parametrize("c", [2, 3, 7])
def test_confusion_matrix_and_cost_match_scikit_learn(c: int) -> None:
    labels, logits, sample_weight = _random_batch(c, 500, c)
    cost = np.random.default_rng(c).uniform(0.0, 4.0, size=(c, c))
    predicted = logits.argmax(axis=1)
    expected_conf = confusion_matrix(
        labels, predicted, labels=np.arange(c), sample_weight=sample_weight
    )
    expected_cost = np.sum(sample_weight * cost[labels, predicted]) / sample_weight.sum()

    metric = metrics.MisclassificationCost(cost, from_logits=True)
    metric.update_state(labels, logits, sample_weight=sample_weight)
    np.testing.assert_allclose(metric.confusion_matrix, expected_conf, rtol=1e-5)
    assert float(metric.result()) == pytest.approx(expected_cost, rel=1e-5)


def test_sparse_and_dense_labels_agree() -> None:
    labels, logits, sample_weight = _random_batch(0, 300, 3)
    results = []
    for y_true in (labels, labels[:, None], labels.astype(np.float32), np.eye(3)[labels]):
        metric = metrics.MisclassificationCost(
            COST_3, decision="min_expected_cost", from_logits=True
        )
        metric.update_state(y_true, logits, sample_weight=sample_weight)
        results.append(metric.confusion_matrix.numpy())
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_streaming_and_reset() -> None:
    labels, logits, sample_weight = _random_batch(1, 400, 3)
    whole = metrics.MisclassificationCost(COST_3)
    whole.update_state(labels, logits, sample_weight)
    streamed = metrics.MisclassificationCost(COST_3)
    for part in np.array_split(np.arange(400), 7):
        streamed.update_state(labels[part], logits[part], sample_weight[part])
    np.testing.assert_allclose(streamed.confusion_matrix, whole.confusion_matrix, rtol=1e-5)
    assert float(streamed.result()) == pytest.approx(float(whole.result()), rel=1e-5)
    streamed.reset_state()
    assert float(streamed.result()) == 0.0
    assert not np.any(streamed.confusion_matrix.numpy())


def test_min_expected_cost_decision_matches_decision_module() -> None:
    labels, logits, _ = _random_batch(2, 500, 3)
    probs = _softmax(logits.astype(np.float64))
    predicted = decision.min_expected_cost(probs, COST_3)
    assert np.any(predicted != probs.argmax(axis=1))  # the two decisions really differ here
    expected = confusion_matrix(labels, predicted, labels=np.arange(3))

    from_logits = metrics.MisclassificationCost(
        COST_3, from_logits=True, decision="min_expected_cost"
    )
    from_logits.update_state(labels, logits)
    np.testing.assert_array_equal(from_logits.confusion_matrix, expected)

    from_probs = metrics.MisclassificationCost(COST_3, decision="min_expected_cost")
    from_probs.update_state(labels, probs.astype(np.float32))
    np.testing.assert_array_equal(from_probs.confusion_matrix, expected)
    # The Bayes decision is cheaper than argmax on average when probabilities are right.
    argmax = metrics.MisclassificationCost(COST_3)
    argmax.update_state(labels, probs)
    assert float(from_probs.result()) < float(argmax.result())


def test_leading_dimensions_and_sample_weight_shapes() -> None:
    labels, logits, sample_weight = _random_batch(3, 24, 3)
    flat = metrics.MisclassificationCost(COST_3)
    flat.update_state(labels, logits, sample_weight)
    for weight in (sample_weight.reshape(4, 6), sample_weight.reshape(4, 6, 1)):
        nested = metrics.MisclassificationCost(COST_3)
        nested.update_state(labels.reshape(4, 6), logits.reshape(4, 6, 3), weight)
        np.testing.assert_allclose(nested.confusion_matrix, flat.confusion_matrix, rtol=1e-6)
    scalar = metrics.MisclassificationCost(COST_3)
    scalar.update_state(labels, logits, 2.0)
    assert float(tf.reduce_sum(scalar.confusion_matrix)) == pytest.approx(48.0)


def test_soft_labels_spread_over_true_classes() -> None:
    metric = metrics.MisclassificationCost(COST_3)
    metric.update_state([[0.0, 0.75, 0.25]], [[0.1, 0.2, 0.7]])  # predicted C
    np.testing.assert_allclose(metric.confusion_matrix, [[0, 0, 0], [0, 0, 0.75], [0, 0, 0.25]])
    assert float(metric.result()) == pytest.approx(0.75 * 5.0)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([0, 3], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]),  # label out of range
        ([0, -1], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]),
        ([0, 1], [[0.5, 0.3, 0.2], [np.nan, 0.1, 0.8]]),  # NaN prediction
        ([0, 1], [[0.5, 0.3, 0.2], [np.inf, 0.1, 0.8]]),
        ([[1, 0, 0], [np.nan, 1, 0]], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]),  # NaN dense label
    ],
)
def test_bad_rows_make_the_result_nan(y_true, y_pred) -> None:
    for metric in (metrics.MisclassificationCost(COST_3), metrics.CostWeightedAccuracy(COST_3)):
        metric.update_state(np.array(y_true, np.float32), np.array(y_pred, np.float32))
        assert np.isnan(float(metric.result())), metric.name


def test_masked_bad_rows_are_ignored() -> None:
    metric = metrics.MisclassificationCost(COST_3)
    metric.update_state(
        np.array([1.0, -1.0, 2.0]),
        np.array([[0.1, 0.1, 0.8], [np.nan, 0.0, 0.0], [0.1, 0.1, 0.8]], np.float32),
        sample_weight=[1.0, 0.0, 1.0],
    )
    np.testing.assert_array_equal(metric.confusion_matrix, [[0, 0, 0], [0, 0, 1], [0, 0, 1]])
    assert float(metric.result()) == pytest.approx(2.5)


def test_nan_sample_weight_is_not_hidden() -> None:
    metric = metrics.MisclassificationCost(COST_3)
    metric.update_state([0, 1], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], sample_weight=[1.0, np.nan])
    assert np.isnan(float(metric.result()))


@pytest.mark.parametrize("c", [2, 5])
def test_cost_weighted_accuracy_is_accuracy_for_zero_one_costs(c: int) -> None:
    labels, logits, sample_weight = _random_batch(c + 10, 300, c)
    metric = metrics.CostWeightedAccuracy(1.0 - np.eye(c))
    metric.update_state(labels, logits, sample_weight)
    expected = accuracy_score(labels, logits.argmax(axis=1), sample_weight=sample_weight)
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def test_cost_weighted_accuracy_definition_with_rewards() -> None:
    labels, logits, sample_weight = _random_batch(4, 300, 2)
    cost = np.array([[0.0, 1.0], [0.0, -3.0]])  # FP costs 1, TP earns 3
    predicted = logits.argmax(axis=1)
    hi, lo = cost.max(axis=1), cost.min(axis=1)
    expected = np.sum(sample_weight * (hi[labels] - cost[labels, predicted])) / np.sum(
        sample_weight * (hi[labels] - lo[labels])
    )
    metric = metrics.CostWeightedAccuracy(cost)
    metric.update_state(labels, logits, sample_weight)
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("threshold", [0.5, 0.85])
def test_precision_recall_from_logits_match_scikit_learn(threshold: float) -> None:
    rng = np.random.default_rng(5)
    labels = (rng.uniform(size=400) < 0.3).astype(np.float32)
    logits = (rng.normal(size=400) + 2.0 * labels - 1.0).astype(np.float32)
    predicted = _sigmoid(logits.astype(np.float64)) > threshold

    for cls, reference in ((metrics.Precision, precision_score), (metrics.Recall, recall_score)):
        for from_logits, scores in ((True, logits), (False, _sigmoid(logits))):
            metric = cls(thresholds=threshold, from_logits=from_logits)
            metric.update_state(labels[:, None], scores[:, None])
            assert float(metric.result()) == pytest.approx(reference(labels, predicted), abs=1e-6)


def test_precision_recall_sparse_labels_with_class_id() -> None:
    labels, logits, _ = _random_batch(6, 300, 4)
    probs = _softmax(logits)
    for cls, reference in ((metrics.Precision, precision_score), (metrics.Recall, recall_score)):
        sparse = cls(class_id=2)
        sparse.update_state(labels, probs)
        dense = cls(class_id=2)
        dense.update_state(np.eye(4)[labels], probs)
        expected = reference(labels == 2, probs[:, 2] > 0.5)
        assert float(sparse.result()) == pytest.approx(expected, abs=1e-6)
        assert float(dense.result()) == pytest.approx(expected, abs=1e-6)


def _all_metrics() -> list[keras.metrics.Metric]:
    return [
        metrics.MisclassificationCost(
            COST_3, from_logits=True, decision="min_expected_cost", name="cost"
        ),
        metrics.CostWeightedAccuracy(COST_3, from_logits=True, name="cwa"),
        metrics.Precision(from_logits=True, thresholds=0.7, class_id=1, name="p"),
        metrics.Recall(from_logits=True, thresholds=[0.3, 0.7], class_id=1, name="r"),
    ]


def test_config_round_trip() -> None:
    labels, logits, _ = _random_batch(7, 100, 3)
    for metric in _all_metrics():
        config = metric.get_config()
        clone = type(metric).from_config(config)
        assert clone.get_config() == config
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(revived) is type(metric) and revived.get_config() == config
        for m in (metric, revived):
            m.update_state(labels, logits)
        np.testing.assert_allclose(revived.result(), metric.result())


def test_compile_fit_save_and_load_without_custom_objects(tmp_path) -> None:
    labels, logits, _ = _random_batch(8, 64, 3)
    x = logits.astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_all_metrics(),
    )
    model.fit(x, labels, epochs=1, batch_size=16, verbose=0)
    before = model.evaluate(x, labels, verbose=0, return_dict=True)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = loaded.evaluate(x, labels, verbose=0, return_dict=True)
    assert set(after) == set(before) >= {"cost", "cwa", "p", "r"}
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-6), key

    compiled = {m.name: m for m in loaded.metrics[1].metrics}
    assert isinstance(compiled["cost"], metrics.MisclassificationCost)
    assert compiled["cost"].decision == "min_expected_cost"
    np.testing.assert_array_equal(compiled["cost"].cost_matrix, COST_3)


def test_compile_with_one_hot_labels() -> None:
    labels, logits, _ = _random_batch(9, 64, 3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(
        loss="categorical_crossentropy",
        metrics=[metrics.MisclassificationCost(COST_3, name="cost")],
    )
    one_hot = model.evaluate(logits, np.eye(3)[labels], verbose=0, return_dict=True)
    sparse_model = keras.models.clone_model(model)
    sparse_model.set_weights(model.get_weights())
    sparse_model.compile(
        loss="sparse_categorical_crossentropy",
        metrics=[metrics.MisclassificationCost(COST_3, name="cost")],
    )
    sparse = sparse_model.evaluate(logits, labels, verbose=0, return_dict=True)
    assert one_hot["cost"] == pytest.approx(sparse["cost"])


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: metrics.MisclassificationCost(COST_3, decision="max"),
            ValueError,
            r"decision must be one of \('argmax', 'min_expected_cost'\); got 'max'",
        ),
        (
            lambda: metrics.MisclassificationCost([[0, 1]]),
            ValueError,
            r"cost_matrix must be a square C x C matrix; got shape \(1, 2\)",
        ),
        (
            lambda: metrics.MisclassificationCost([[0, np.inf], [1, 0]]),
            ValueError,
            r"cost_matrix must be finite",
        ),
        (
            lambda: metrics.CostWeightedAccuracy(np.ones((3, 3))),
            ValueError,
            r"at least one row with different costs",
        ),
    ],
)
def test_constructor_errors(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


def test_update_shape_errors() -> None:
    metric = metrics.MisclassificationCost(COST_3)
    with pytest.raises(ValueError, match=r"y_pred must have shape \[..., 3\] .* got \(2, 4\)"):
        metric.update_state([0, 1], np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(dense one-hot or soft\); got shape \(2, 2\)"):
        metric.update_state(np.zeros((2, 2)), np.zeros((2, 3)))


def test_metrics_compile_under_xla() -> None:
    labels, logits, _ = _random_batch(10, 64, 3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_all_metrics(),
        jit_compile=True,
    )
    assert model.jit_compile
    model.fit(logits, labels, epochs=1, batch_size=16, verbose=0)
    logged = model.evaluate(logits, labels, verbose=0, return_dict=True)
    assert all(np.all(np.isfinite(v)) for v in logged.values()), logged
    bad = labels.copy()
    bad[0] = 7  # out of range: XLA drops assertions, the metric still refuses to hide it
    assert np.isnan(model.evaluate(logits, bad, verbose=0, return_dict=True)["cost"])
