"""The one validation of a loss call (cc/core/spec.cc), rule by rule, through costxent._core.

Each bad input raises the exact error type (TypeError for a wrong dtype, ValueError for
anything else) with a message naming the argument, what was expected and what was given.
The same inputs through the Python layer (costxent.ops and costxent.reference) raise the same
error type naming the same argument, where the Python layer has that rule; the wording there
is its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import core_cases

try:
    _core = core_cases.load_core()
except ImportError as exc:  # built without the extension: nothing to test here
    pytest.skip(f"costxent._core is not built: {exc}", allow_module_level=True)

F32 = np.float32


def zeros(shape: Any, dtype: Any = F32) -> np.ndarray:
    return np.zeros(shape, dtype)


def with_value(a: np.ndarray, index: Any, value: float) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


@dataclass
class Rule:
    """One bad call: _core.<function>(**base, **core) must raise `error` with exactly
    `message`. python: keyword arguments of the same call in the Python layer, where it has
    the rule ("function" picks the function, labels and logits come from the core call),
    naming `argument`; None where the Python layer has no such rule, with `why`."""

    id: str
    function: str
    core: dict[str, Any]
    error: type[Exception]
    message: str
    argument: str
    python: dict[str, Any] | None = None
    why: str = ""
    base: dict[str, Any] = field(default_factory=dict)


SOFTMAX_BASE = {"logits": zeros((4, 3)), "labels": zeros(4, np.int32)}
SIGMOID_BASE = {"logits": zeros((3, 4)), "labels": zeros((3, 4))}
CE = {"function": "softmax_cross_entropy"}
EC = {"function": "expected_cost"}
SIG = {"function": "sigmoid_cross_entropy"}
CASTS = "the Python layer casts to the kernels' dtypes, as Keras does"
RUN_TIME = "the Python layer checks label values at run time (validate=True)"
NO_ARG = "the Python function has no such argument"
ROW_RULE = "row_scale / element_scale are the ops' own inputs, not Python arguments"
SCALE_TEXT = "(the upstream gradient or sample_weight)"
ACCENT = "(it multiplies a cross-entropy: a negative weight turns the loss into gradient ascent)"

RULES = [
    # Logits.
    Rule("logits int", "softmax", {"logits": zeros((4, 3), np.int32)}, TypeError,
         "logits must be float16, bfloat16, float32 or float64, got dtype int32", "logits", CE),
    Rule("logits uint8", "softmax", {"logits": zeros((4, 3), np.uint8)}, TypeError,
         "logits must be float16, bfloat16, float32 or float64, got an unsupported dtype", "logits", CE),
    Rule("logits rank 0", "softmax", {"logits": zeros(())}, ValueError,
         "logits must have a class axis (rank >= 1), got shape []", "logits", CE),
    Rule("one class", "softmax", {"logits": zeros((4, 1))}, ValueError,
         "logits must have at least 2 classes on the last axis, got shape [4, 1] (C = 1)", "logits", CE),
    Rule("classes beyond 32-bit indices", "softmax",
         {"logits": zeros((0, 2**31 - 63)), "labels": zeros(0, np.int32)}, ValueError,
         "logits must have at most 2147483583 classes on the last axis, got shape [0, 2147483585] "
         "(C = 2147483585)", "logits", why="the Python layer leaves the class limit to the kernels"),
    # Options.
    Rule("smoothing above 1", "softmax", {"label_smoothing": 1.5}, ValueError,
         "label_smoothing must be a finite number in [0, 1], got 1.5", "label_smoothing",
         {**CE, "label_smoothing": 1.5}),
    Rule("smoothing nan", "softmax", {"label_smoothing": float("nan")}, ValueError,
         "label_smoothing must be a finite number in [0, 1], got nan", "label_smoothing",
         {**CE, "label_smoothing": float("nan")}),
    Rule("negative gamma", "softmax", {"focal_gamma": -1.0}, ValueError,
         "focal_gamma must be a finite number >= 0, got -1", "focal_gamma", {**CE, "focal_gamma": -1.0}),
    Rule("infinite gamma", "softmax", {"focal_gamma": float("inf")}, ValueError,
         "focal_gamma must be a finite number >= 0, got inf", "focal_gamma",
         {**CE, "focal_gamma": float("inf")}),
    Rule("negative ce_weight", "softmax",
         {"loss_kind": "expected_cost", "weights": np.ones((3, 3), F32), "ce_weight": -0.5}, ValueError,
         "ce_weight must be a finite number >= 0, got -0.5", "ce_weight",
         {**EC, "cost_matrix": np.ones((3, 3)), "ce_weight": -0.5}),
    Rule("infinite ce_weight", "softmax",
         {"loss_kind": "expected_cost", "weights": np.ones((3, 3), F32), "ce_weight": float("inf")}, ValueError,
         "ce_weight must be a finite number >= 0, got inf", "ce_weight",
         {**EC, "cost_matrix": np.ones((3, 3)), "ce_weight": float("inf")}),
    Rule("focal expected cost", "softmax",
         {"loss_kind": "expected_cost", "weights": np.ones((3, 3), F32), "focal_gamma": 2.0}, ValueError,
         "focal_gamma applies to the cross-entropy only (expected_cost has no focal term), got focal_gamma = 2",
         "focal_gamma", why=NO_ARG),
    Rule("ce_weight with cross-entropy", "softmax", {"ce_weight": 0.5}, ValueError,
         "ce_weight applies to expected_cost only (the weight of its added cross-entropy), got "
         "ce_weight = 0.5 for the cross-entropy", "ce_weight", why=NO_ARG),
    # Labels.
    Rule("sparse labels of another length", "softmax", {"labels": zeros(3, np.int32)}, ValueError,
         "labels must have shape [4] or [4, 1] (sparse int32 class ids: the logits' leading shape), "
         "got shape [3]", "labels", CE),
    Rule("leading shapes re-paired", "softmax",
         {"logits": zeros((2, 3, 5)), "labels": zeros((3, 2), np.int64)}, ValueError,
         "labels must have shape [2, 3] or [2, 3, 1] (sparse int64 class ids: the logits' leading "
         "shape), got shape [3, 2]", "labels", CE),
    Rule("integer labels of the logits' shape", "softmax", {"labels": zeros((4, 3), np.int32)}, ValueError,
         "labels must have shape [4] or [4, 1] (sparse int32 class ids: the logits' leading shape), "
         "got shape [4, 3]; dense labels of that shape must have the logits' dtype float32", "labels",
         why=CASTS),
    Rule("dense labels of another shape", "softmax", {"labels": zeros((4, 2))}, ValueError,
         "labels must have shape [4, 3] (dense one-hot or soft rows: the logits' shape), got shape [4, 2]",
         "labels", CE),
    Rule("dense labels of another dtype", "softmax", {"labels": zeros((4, 3), np.float64)}, TypeError,
         "labels must be int32 or int64 (sparse class ids) or float32 like the logits (dense one-hot "
         "or soft rows), got dtype float64", "labels", why=CASTS),
    Rule("int16 labels", "softmax", {"labels": zeros(4, np.int16)}, TypeError,
         "labels must be int32 or int64 (sparse class ids) or float32 like the logits (dense one-hot "
         "or soft rows), got an unsupported dtype", "labels", why=CASTS),
    Rule("ignore_class with dense labels", "softmax", {"labels": zeros((4, 3)), "ignore_class": 0}, ValueError,
         "ignore_class needs sparse labels (int32 or int64 class ids of shape [4]), got dense labels "
         "of shape [4, 3]", "ignore_class", {**CE, "ignore_class": 0}),
    Rule("float ignore_class", "softmax", {"ignore_class": 1.0}, TypeError,
         "ignore_class must be an int or None, got float", "ignore_class", {**CE, "ignore_class": 1.0}),
    # Weights: the mode from the rank, the shape from C, the dtype from the logits.
    Rule("class weights of another length", "softmax", {"weights": np.ones(4, F32)}, ValueError,
         "class_weight must have shape [3] (one weight per class), got shape [4]", "class_weight",
         {**CE, "class_weight": np.ones(4)}),
    Rule("cost matrix not C x C", "softmax", {"weights": np.ones((3, 4), F32)}, ValueError,
         "cost_matrix must have shape [3, 3] (C x C, M[true, predicted]), got shape [3, 4]", "cost_matrix",
         {**CE, "cost_matrix": np.ones((3, 4))}),
    Rule("weights of rank 3", "softmax", {"weights": np.ones((3, 3, 1), F32)}, ValueError,
         "weights must be a class_weight of shape [3] or a cost_matrix of shape [3, 3] "
         "(M[true, predicted]), got shape [3, 3, 1]", "cost_matrix",
         {**CE, "cost_matrix": np.ones((3, 3, 1))}),
    Rule("scalar weights", "softmax", {"weights": np.array(2.0, F32)}, ValueError,
         "weights must be a class_weight of shape [3] or a cost_matrix of shape [3, 3] "
         "(M[true, predicted]), got shape []", "class_weight", {**CE, "class_weight": 2.0}),
    Rule("expected cost without a matrix", "softmax", {"loss_kind": "expected_cost"}, ValueError,
         "expected_cost requires a cost_matrix of shape [3, 3] (M[true, predicted]), got none",
         "cost_matrix", {**EC, "cost_matrix": None}),
    Rule("expected cost with class weights", "softmax",
         {"loss_kind": "expected_cost", "weights": np.ones(3, F32)}, ValueError,
         "cost_matrix must have shape [3, 3] (C x C, M[true, predicted]; expected_cost takes no "
         "class_weight), got shape [3]", "cost_matrix", {**EC, "cost_matrix": np.ones(3)}),
    Rule("float64 weights for float32 logits", "softmax", {"weights": np.ones(3)}, TypeError,
         "class_weight must have dtype float32 (the accumulation dtype of float32 logits), got dtype "
         "float64", "class_weight", why=CASTS),
    Rule("float32 matrix for float64 logits", "softmax",
         {"logits": zeros((4, 3), np.float64), "weights": np.ones((3, 3), F32)}, TypeError,
         "cost_matrix must have dtype float64 (the accumulation dtype of float64 logits), got dtype "
         "float32", "cost_matrix", why=CASTS),
    Rule("non-finite class weight", "softmax", {"weights": np.array([1, np.inf, 1], F32)}, ValueError,
         "class_weight must be finite, got inf at flat index 1", "class_weight",
         {**CE, "class_weight": [1, np.inf, 1]}),
    Rule("non-finite cost", "softmax", {"weights": with_value(np.ones((3, 3), F32), (1, 2), np.nan)}, ValueError,
         "cost_matrix must be finite, got nan at flat index 5 (M[1, 2])", "cost_matrix",
         {**CE, "cost_matrix": with_value(np.ones((3, 3)), (1, 2), np.nan)}),
    Rule("non-finite expected cost", "softmax",
         {"loss_kind": "expected_cost", "weights": with_value(-np.ones((3, 3), F32), (0, 0), -np.inf)},
         ValueError, "cost_matrix must be finite, got -inf at flat index 0 (M[0, 0])", "cost_matrix",
         {**EC, "cost_matrix": with_value(-np.ones((3, 3)), (0, 0), -np.inf)}),
    Rule("negative class weight", "softmax", {"weights": np.array([1, -1, 1], F32)}, ValueError,
         f"class_weight must be >= 0 {ACCENT}, got -1 at flat index 1", "class_weight",
         {**CE, "class_weight": [1, -1, 1]}),
    Rule("negative cost in a cross-entropy", "softmax",
         {"weights": with_value(np.ones((3, 3), F32), (1, 0), -0.5)}, ValueError,
         f"cost_matrix must be >= 0 {ACCENT}, got -0.5 at flat index 3 (M[1, 0])", "cost_matrix",
         {**CE, "cost_matrix": with_value(np.ones((3, 3)), (1, 0), -0.5)}),
    # Row scale (upstream gradient / sample_weight).
    Rule("row_scale of another shape", "softmax", {"row_scale": np.ones((4, 1), F32)}, ValueError,
         f"row_scale {SCALE_TEXT} must have shape [4] (the logits' leading shape), got shape [4, 1]",
         "row_scale", why=ROW_RULE),
    Rule("row_scale of the logits' dtype", "softmax",
         {"logits": zeros((4, 3), np.float16), "row_scale": np.ones(4, np.float16)}, TypeError,
         f"row_scale {SCALE_TEXT} must have dtype float32 (the accumulation dtype of float16 logits), "
         "got dtype float16", "row_scale", why=ROW_RULE),
    # Label values, found by the CPU kernel.
    Rule("label out of range", "softmax",
         {"logits": zeros((6, 4)), "labels": np.array([0, 1, 2, 4, 0, 1], np.int32)}, ValueError,
         "labels[3] = 4 is outside the valid class range [0, 4)", "labels", why=RUN_TIME),
    Rule("label out of range, ignore_class set", "softmax",
         {"logits": zeros((6, 4)), "labels": np.array([0, -1, 2, 3, 2, 1], np.int64), "ignore_class": 2},
         ValueError, "labels[1] = -1 is outside the valid class range [0, 4) and is not ignore_class 2",
         "labels", why=RUN_TIME),
    Rule("label out of range, leading shape", "softmax",
         {"logits": zeros((2, 3, 4)), "labels": with_value(zeros((2, 3), np.int32), (1, 2), 9)}, ValueError,
         "labels[1, 2] = 9 is outside the valid class range [0, 4)", "labels", why=RUN_TIME),
    Rule("label out of range, [..., 1] labels", "softmax",
         {"logits": zeros((2, 3, 4)), "labels": with_value(zeros((2, 3, 1), np.int64), (0, 1, 0), -3)},
         ValueError, "labels[0, 1, 0] = -3 is outside the valid class range [0, 4)", "labels", why=RUN_TIME),
    # Sigmoid.
    Rule("sigmoid int logits", "sigmoid", {"logits": zeros((3, 4), np.int64)}, TypeError,
         "logits must be float16, bfloat16, float32 or float64, got dtype int64", "logits", SIG),
    Rule("sigmoid without classes", "sigmoid", {"logits": zeros((3, 0)), "labels": zeros((3, 0))}, ValueError,
         "logits must have at least 1 class on the last axis, got shape [3, 0] (C = 0)", "logits", SIG),
    Rule("sigmoid labels of another dtype", "sigmoid", {"labels": zeros((3, 4), np.float64)}, TypeError,
         "labels must have the logits' dtype float32, got dtype float64", "labels", why=CASTS),
    Rule("sigmoid labels of another shape", "sigmoid", {"labels": zeros((3, 5))}, ValueError,
         "labels must have the logits' shape [3, 4], got shape [3, 5]", "labels", SIG),
    Rule("pos_weight of another length", "sigmoid", {"pos_weight": np.ones(3, F32)}, ValueError,
         "pos_weight must be a scalar (shape [1]) or have shape [4] (one weight per class), got shape [3]",
         "pos_weight", {**SIG, "pos_weight": np.ones(3)}),
    Rule("pos_weight float64", "sigmoid", {"pos_weight": np.ones(4)}, TypeError,
         "pos_weight must have dtype float32 (the accumulation dtype of float32 logits), got dtype float64",
         "pos_weight", why=CASTS),
    Rule("non-finite neg_weight", "sigmoid", {"neg_weight": np.array([np.nan], F32)}, ValueError,
         "neg_weight must be finite, got nan at flat index 0", "neg_weight", {**SIG, "neg_weight": [np.nan]}),
    Rule("negative pos_weight", "sigmoid", {"pos_weight": -2.0}, ValueError,
         f"pos_weight must be >= 0 {ACCENT}, got -2 at flat index 0", "pos_weight", {**SIG, "pos_weight": -2.0}),
    Rule("negative neg_weight", "sigmoid", {"neg_weight": np.array([1, 1, -0.25, 1], F32)}, ValueError,
         f"neg_weight must be >= 0 {ACCENT}, got -0.25 at flat index 2", "neg_weight",
         {**SIG, "neg_weight": [1, 1, -0.25, 1]}),
    Rule("sigmoid smoothing below 0", "sigmoid", {"label_smoothing": -0.1}, ValueError,
         "label_smoothing must be a finite number in [0, 1], got -0.1", "label_smoothing",
         {**SIG, "label_smoothing": -0.1}),
    Rule("sigmoid gamma nan", "sigmoid", {"focal_gamma": float("nan")}, ValueError,
         "focal_gamma must be a finite number >= 0, got nan", "focal_gamma", {**SIG, "focal_gamma": float("nan")}),
    Rule("element_scale of another shape", "sigmoid", {"element_scale": np.ones(3, F32)}, ValueError,
         "element_scale (the upstream gradient) must have shape [3, 4] (the logits' shape), got shape [3]",
         "element_scale", why=ROW_RULE),
    Rule("sigmoid row_scale of another shape", "sigmoid", {"row_scale": np.ones(4, F32)}, ValueError,
         "row_scale (sample_weight) must have shape [3] (the logits' leading shape), got shape [4]",
         "row_scale", why=ROW_RULE),
    Rule("sigmoid row_scale float64", "sigmoid", {"row_scale": np.ones(3)}, TypeError,
         "row_scale (sample_weight) must have dtype float32 (the accumulation dtype of float32 logits), "
         "got dtype float64", "row_scale", why=ROW_RULE),
    Rule("sigmoid label outside [0, 1]", "sigmoid", {"labels": with_value(zeros((3, 4)), (2, 1), 1.5)}, ValueError,
         "labels[2, 1] = 1.5 is outside [0, 1]", "labels", why=RUN_TIME),
]

BASES = {"softmax": SOFTMAX_BASE, "sigmoid": SIGMOID_BASE}


def core_call(rule: Rule) -> None:
    args = {**BASES[rule.function], **rule.core}
    getattr(_core, f"{rule.function}_loss")(**args)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_core_raises(rule: Rule) -> None:
    assert rule.argument in rule.message
    with pytest.raises(rule.error, match=f"^{re.escape(rule.message)}$"):
        core_call(rule)


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("rule", [r for r in RULES if r.why != RUN_TIME], ids=lambda r: r.id)
def test_reduced_calls_validate_alike(rule: Rule, reduction: str) -> None:
    if reduction != "none" and "element_scale" in rule.core:
        pytest.skip("element_scale is refused with any reduction (tested below)")
    with pytest.raises(rule.error, match=f"^{re.escape(rule.message)}$"):
        args = {**BASES[rule.function], **rule.core, "reduction": reduction}
        getattr(_core, f"{rule.function}_loss")(**args)


def test_element_scale_with_a_reduction_is_refused() -> None:
    args = {**BASES["sigmoid"], "reduction": "sum"}
    args["element_scale"] = np.ones_like(args["logits"], dtype=np.float32)
    with pytest.raises(ValueError, match="element_scale .* cannot be combined with a reduction"):
        _core.sigmoid_loss(**args)


def test_every_rule_without_python_counterpart_says_why() -> None:
    assert all((r.python is None) == bool(r.why) for r in RULES)


# ---------------------------------------------------------------------------------------
# The Python layer: the same error type naming the same argument.

AGREEING = [r for r in RULES if r.python is not None]


@pytest.fixture(scope="module")
def python_layers() -> dict[str, Any]:
    pytest.importorskip("tensorflow")
    from costxent import ops, reference

    return {"ops": ops, "reference": reference}


@pytest.mark.parametrize("layer", ["ops", "reference"])
@pytest.mark.parametrize("rule", AGREEING, ids=[r.id for r in AGREEING])
def test_python_layer_agrees(rule: Rule, layer: str, python_layers: dict[str, Any]) -> None:
    args = {**BASES[rule.function], **rule.core}
    kwargs = dict(rule.python)
    function = getattr(python_layers[layer], kwargs.pop("function"))
    positional = [args["labels"], args["logits"]]
    if "cost_matrix" in kwargs and function.__name__ == "expected_cost":
        positional.append(kwargs.pop("cost_matrix"))
    with pytest.raises(rule.error) as raised:
        function(*positional, **kwargs)
    assert rule.argument in str(raised.value)


# ---------------------------------------------------------------------------------------
# Modes derived once: the weight mode from the weights' rank, sparse or dense from the labels.


def test_empty_weights_mean_none() -> None:
    logits = core_cases.rng_for("empty-weights").normal(size=(5, 3)).astype(F32)
    labels = np.array([0, 1, 2, 1, 0], np.int32)
    want = _core.softmax_loss(logits, labels)
    got = _core.softmax_loss(logits, labels, np.zeros(0, F32))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_weight_mode_follows_rank() -> None:
    rng = core_cases.rng_for("weight-rank")
    logits = rng.normal(size=(6, 3)).astype(F32)
    labels = np.array([0, 1, 2, 1, 0, 2], np.int32)
    a = np.array([0.5, 2.0, 3.0], F32)
    by_class, _ = _core.softmax_loss(logits, labels, a)
    plain, _ = _core.softmax_loss(logits, labels)
    np.testing.assert_allclose(by_class, plain * a[labels], rtol=1e-6)
    # A cost matrix whose every column is `a` gives the same weight a[y] whatever is predicted.
    by_cost, _ = _core.softmax_loss(logits, labels, np.repeat(a[:, None], 3, axis=1))
    np.testing.assert_allclose(by_cost, by_class, rtol=1e-6)
