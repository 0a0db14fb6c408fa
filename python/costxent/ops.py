"""Functional API: per-example losses computed by the fused kernel, gradient included.

Each function validates its arguments once (``costxent._args``), then runs the fused op
when the op library is loaded and the caller is not being compiled by XLA; otherwise it runs
``costxent.reference`` (which XLA fuses) and logs one line saying why. The fused op writes
``d loss / d logits`` in the same pass as the loss; its registered gradient only scales that
by the incoming gradient. Where no gradient can be taken (no tape recording, e.g. Keras'
``evaluate``), the loss-only variant skips writing the gradient.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import tensorflow as tf
from tensorflow.python.eager import record
from tensorflow.python.ops import control_flow_util

from costxent import _args, _library, reference
from costxent._args import WeightLike

_log = logging.getLogger("costxent")
_reasons_logged: set[str] = set()


def _in_xla_context() -> bool:
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


@functools.lru_cache(maxsize=None)
def _gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def _fallback_reason() -> Optional[str]:
    library, reason = _library.load()
    if library is None:
        return reason
    if _in_xla_context():
        return (
            "the caller is compiled by XLA (jit_compile=True), which cannot compile a custom "
            "op; XLA fuses the reference instead"
        )
    if _gpu_visible() and not _library.built_with_cuda():
        return "a GPU is visible but the op library was built without CUDA"
    return None


def implementation() -> str:
    """Which path a call made here would take: "fused-cpu", "fused-gpu" or "reference: <why>"."""
    reason = _fallback_reason()
    if reason is not None:
        return f"reference: {reason}"
    return "fused-gpu" if _gpu_visible() else "fused-cpu"


def _use_reference() -> bool:
    reason = _fallback_reason()
    if reason is None:
        return False
    if reason not in _reasons_logged:
        _reasons_logged.add(reason)
        _log.warning("costxent: using the pure-TF reference: %s", reason)
    return True


def _op_library():
    return _library.load()[0]


def _needs_backprop(logits: tf.Tensor) -> bool:
    """Whether a tape may differentiate this call; graph-mode tf.gradients is still served by
    the loss-only op's gradient, which recomputes."""
    return record.could_possibly_record() and record.should_record_backprop([logits])


def _options(label_smoothing: float, focal_gamma: float, ce_weight: float = 0.0) -> tf.Tensor:
    """The ops' float64 options input (a TF float attr would round them to float32)."""
    return tf.constant([label_smoothing, focal_gamma, ce_weight], tf.float64)


def _checks(x: Any, validate: bool):
    return tf.control_dependencies(_args.validation_ops(x) if validate else [])


def _fused_softmax(x: _args.SoftmaxInputs, loss_kind: str, validate: bool) -> tf.Tensor:
    weights = x.weights if x.weights is not None else tf.zeros([0], x.acc_dtype)
    with _checks(x, validate):
        loss, _ = _op_library().costxent_softmax_loss(
            x.logits,
            x.labels,
            weights,
            _options(x.label_smoothing, x.focal_gamma, x.ce_weight),
            loss_kind=loss_kind,
            weight_mode=x.weight_mode if loss_kind == "cross_entropy" else "cost",
            has_ignore_class=x.ignore_class is not None,
            ignore_class=x.ignore_class if x.ignore_class is not None else 0,
            compute_backprop=_needs_backprop(x.logits),
        )
    return x.restore(loss)


def softmax_cross_entropy(
    labels: Any,
    logits: Any,
    *,
    class_weight: WeightLike = None,
    cost_matrix: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    ignore_class: Optional[int] = None,
    validate: bool = False,
) -> tf.Tensor:
    """Per-example weighted (focal) softmax cross-entropy, fused (DESIGN 2.1).

    ``loss_i = w_i * sum_k ts_ik * phi(p_ik)``, ``p = softmax(logits)``,
    ``ts = (1 - eps) t + eps / C`` (eps = ``label_smoothing``),
    ``phi(p) = -(1 - p)^gamma log p`` (gamma = ``focal_gamma``), and ``w_i`` = 1,
    ``class_weight[y_i]``, or for a cost matrix ``M[true, predicted]`` the cost of the
    mistake actually made, ``M[y_i, argmax_j logits_ij]`` (never differentiated).

    Labels are sparse class ids (shape ``logits.shape[:-1]`` or ``[..., 1]``) or dense
    one-hot / soft rows (shape ``logits.shape``), told apart by shape. ``class_weight`` is a
    length-C sequence or a ``{class: weight}`` dict (missing classes weigh 1). Rows labelled
    ``ignore_class`` get loss 0 and no gradient. ``validate=True`` adds runtime checks of
    label ranges and weights on any device.

    Example: ``M = [[0, 1, 1], [2, 0, 5], [1, 1, 0]]`` makes a true class 1 predicted as
    class 2 cost 5 and predicted as class 0 cost 2.

    Returns float32 (float64 for float64 logits) of shape ``logits.shape[:-1]``.
    """
    if _use_reference():
        return reference.softmax_cross_entropy(
            labels,
            logits,
            class_weight=class_weight,
            cost_matrix=cost_matrix,
            label_smoothing=label_smoothing,
            focal_gamma=focal_gamma,
            ignore_class=ignore_class,
            validate=validate,
        )
    x = _args.softmax_inputs(
        labels,
        logits,
        class_weight=class_weight,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
        ignore_class=ignore_class,
    )
    return _fused_softmax(x, "cross_entropy", validate)


def expected_cost(
    labels: Any,
    logits: Any,
    cost_matrix: WeightLike,
    *,
    ce_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_class: Optional[int] = None,
    validate: bool = False,
) -> tf.Tensor:
    """Per-example expected cost plus weighted cross-entropy, fused (DESIGN 2.2).

    ``loss_i = sum_j c_ij p_ij + ce_weight * CE_i`` with ``c_i = M^T t_i`` (the row
    ``M[y_i, :]`` of the cost matrix ``M[true, predicted]`` for sparse labels) and ``CE_i``
    the label-smoothed cross-entropy. Negative costs are rewards. Gradient:
    ``p_ij (c_ij - E_i) + ce_weight (p_ij S_i - ts_ij)``, ``E_i = sum_j c_ij p_ij``.
    """
    if _use_reference():
        return reference.expected_cost(
            labels,
            logits,
            cost_matrix,
            ce_weight=ce_weight,
            label_smoothing=label_smoothing,
            ignore_class=ignore_class,
            validate=validate,
        )
    x = _args.softmax_inputs(
        labels,
        logits,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        ce_weight=ce_weight,
        ignore_class=ignore_class,
        expected_cost=True,
    )
    return _fused_softmax(x, "expected_cost", validate)


def sigmoid_cross_entropy(
    labels: Any,
    logits: Any,
    *,
    pos_weight: WeightLike = None,
    neg_weight: WeightLike = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    validate: bool = False,
) -> tf.Tensor:
    """Per-element weighted (focal) sigmoid cross-entropy, fused (DESIGN 2.3).

    With ``y = labels (1 - eps) + eps / 2``, ``s = sigmoid(logits)``:
    ``loss = (1 - pt)^gamma * -(a y log s + b (1 - y) log(1 - s))``,
    ``pt = y s + (1 - y)(1 - s)``; ``a = pos_weight``, ``b = neg_weight`` are scalars or
    per-class vectors (default 1). ``pos_weight=27`` on a 30-label problem with about one
    positive per example stops the model from predicting all zeros. With gamma = 0 and
    b = 1 this equals ``tf.nn.weighted_cross_entropy_with_logits``.
    Returns float32 (float64 for float64 logits) of the logits' shape.
    """
    if _use_reference():
        return reference.sigmoid_cross_entropy(
            labels,
            logits,
            pos_weight=pos_weight,
            neg_weight=neg_weight,
            label_smoothing=label_smoothing,
            focal_gamma=focal_gamma,
            validate=validate,
        )
    x = _args.sigmoid_inputs(
        labels,
        logits,
        pos_weight=pos_weight,
        neg_weight=neg_weight,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
    )
    with _checks(x, validate):
        loss, _ = _op_library().costxent_sigmoid_loss(
            x.logits,
            x.labels,
            x.pos_weight,
            x.neg_weight,
            _options(x.label_smoothing, x.focal_gamma),
            compute_backprop=_needs_backprop(x.logits),
        )
    return x.restore(loss)


def _backprop_of(op: tf.Operation, fused_op: Any) -> tf.Tensor:
    """The op's stored gradient, or a recomputation when it ran as the loss-only variant."""
    if op.get_attr("compute_backprop"):
        return op.outputs[1]
    attrs = {
        name: op.get_attr(name)
        for name in op.node_def.attr
        if name not in ("T", "Tlabels", "A", "compute_backprop")
    }
    return fused_op(*op.inputs, compute_backprop=True, **attrs)[1]


def _register_gradients() -> None:
    library = _op_library()
    if library is None:
        return

    @tf.RegisterGradient("CostxentSoftmaxLoss")
    def _softmax_loss_grad(op, grad_loss, _grad_backprop):
        backprop = _backprop_of(op, library.costxent_softmax_loss)
        return [library.costxent_scale_gradient(backprop, grad_loss), None, None, None]

    @tf.RegisterGradient("CostxentSigmoidLoss")
    def _sigmoid_loss_grad(op, grad_loss, _grad_backprop):
        backprop = _backprop_of(op, library.costxent_sigmoid_loss)
        return [library.costxent_scale_gradient(backprop, grad_loss), None, None, None, None]


_register_gradients()
