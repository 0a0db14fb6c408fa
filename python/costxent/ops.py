"""Functional API: losses computed by the fused kernel, gradient included.

Each function validates its arguments once (``costxent._args``), then runs the fused op when
the op library is loaded (eagerly, in ``tf.function``, and under XLA, where the op lowers to
a ``costxent_*`` custom call running the same kernels); otherwise it runs
``costxent.reference`` and logs one line saying why.

Gradients move the logits' bytes as few times as possible (DESIGN 3):

- the per-example functions run a loss-only op forward; their gradient op reads the logits
  once more and writes ``grad_loss_i * d loss_i / d logits`` once (recomputing is one read
  and one write less than storing the gradient forward and scaling it backward, and a
  half-precision gradient is rounded once);
- the Keras losses call ``reduced_loss``, whose op folds the Keras
  reduction, ``sample_weight`` and ``ignore_class`` into the row pass and writes the gradient
  of the scalar loss in that same pass; backward multiplies it by the upstream scalar in
  place, and not at all when that scalar is 1.

Gradients with respect to labels or weights, and higher-order or forward-mode gradients, are
taken from the reference (chosen at the call, where TensorFlow says whether a tape could ask
for them); inside a traced function the fused gradient ops say so in a clear error.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import tensorflow as tf
from tensorflow.python import pywrap_tfe
from tensorflow.python.eager import forwardprop_util, record
from tensorflow.python.ops import control_flow_util

from costxent import _args, _library, _xla, reference
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
    if _in_xla_context() and _xla.loaded_too_late():
        return (
            "the op library was loaded after XLA registered the ops it can compile (at "
            "TensorFlow's first tensor, device context or jit compilation), so XLA cannot "
            "compile the fused op; import costxent before creating any tensor, strategy or "
            "model to use it"
        )
    if _gpu_visible() and not _library.built_with_cuda():
        return "a GPU is visible but the op library was built without CUDA"
    return None


def _tape_watches(tensors: list) -> bool:
    """Whether a tape records a gradient with respect to any of these (None skipped)."""
    watchable = [t for t in tensors if t is not None and t.dtype.is_floating]
    return bool(watchable) and record.should_record_backprop(watchable)


def _gradient_reason(logits: tf.Tensor, extras: list) -> Optional[str]:
    """Why a gradient a tape could ask for here is one the fused op does not provide."""
    if _tape_watches(extras):
        return (
            "a gradient tape watches the labels or weights, which the fused op does not "
            "differentiate"
        )
    higher_order = pywrap_tfe.TFE_Py_TapeSetPossibleGradientTypes([logits]) == 2
    if higher_order or forwardprop_util.pack_tangents([logits]).tangents:
        return (
            "a higher-order or forward-mode gradient may be taken here (nested tapes or "
            "tf.autodiff.ForwardAccumulator); the fused op provides first-order gradients"
        )
    return None


def implementation() -> str:
    """Which path a call made here would take.

    "fused-cpu" / "fused-gpu" (the fused TF op), "fused-xla-cpu" / "fused-xla-gpu" (inside a
    function XLA compiles: the op's custom call), or "reference: <why>".
    """
    reason = _fallback_reason()
    if reason is not None:
        return f"reference: {reason}"
    device = "gpu" if _gpu_visible() else "cpu"
    return f"fused-xla-{device}" if _in_xla_context() else f"fused-{device}"


def _use_reference(x: Any) -> bool:
    reason = _fallback_reason() or _gradient_reason(x.logits, x.differentiable_extras)
    if reason is None:
        return False
    if reason not in _reasons_logged:
        _reasons_logged.add(reason)
        _log.warning("costxent: using the pure-TF reference: %s", reason)
    return True


def _op_library():
    return _library.load()[0]


def _may_differentiate(logits: tf.Tensor) -> bool:
    """Whether a tape records this call; where none does (Keras' evaluate), a reduced loss
    is computed by the loss-only op, which writes no gradient."""
    return record.could_possibly_record() and record.should_record_backprop([logits])


def _checks(x: Any, validate: bool):
    return tf.control_dependencies(_args.runtime_checks(x, validate) if validate else [])


def _softmax_args(x: _args.SoftmaxInputs) -> tuple[list, dict]:
    weights = x.weights if x.weights is not None else tf.zeros([0], x.acc_dtype)
    inputs = [
        x.logits,
        x.labels,
        weights,
        tf.constant(x.label_smoothing, tf.float64),
        tf.constant(x.focal_gamma, tf.float64),
        tf.constant(x.ce_weight, tf.float64),
    ]
    attrs = dict(
        loss_kind=x.loss_kind,
        has_ignore_class=x.ignore_class is not None,
        ignore_class=x.ignore_class if x.ignore_class is not None else 0,
        check_weights=not x.weights_checked,
    )
    return inputs, attrs


def _sigmoid_args(x: _args.SigmoidInputs) -> tuple[list, dict]:
    inputs = [
        x.logits,
        x.labels,
        x.pos_weight,
        x.neg_weight,
        tf.constant(x.label_smoothing, tf.float64),
        tf.constant(x.focal_gamma, tf.float64),
    ]
    return inputs, dict(check_weights=not x.weights_checked)


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
    Gradient: ``w_i (ts_ij g_ij - p_ij sum_k ts_ik g_ik)`` with ``g = p phi'(p)``
    (``w_i (p_ij S_i - ts_ij)`` for gamma = 0).

    Labels are sparse class ids (shape ``logits.shape[:-1]`` or ``[..., 1]``) or dense
    one-hot / soft rows (shape ``logits.shape``), told apart by shape. ``class_weight`` is a
    length-C sequence or a ``{class: weight}`` dict (missing classes weigh 1); weights must
    be finite and >= 0. Rows labelled ``ignore_class`` get loss 0 and no gradient.
    ``validate=True`` adds runtime checks of label ranges on any device (the CPU kernel
    always checks them).

    Example: ``M = [[0, 1, 1], [2, 0, 5], [1, 1, 0]]`` makes a true class 1 predicted as
    class 2 cost 5 and predicted as class 0 cost 2.

    Returns float32 (float64 for float64 logits) of shape ``logits.shape[:-1]``.
    """
    x = _args.softmax_inputs(
        labels,
        logits,
        class_weight=class_weight,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
        ignore_class=ignore_class,
    )
    return softmax_loss(x, validate)


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
    the label-smoothed cross-entropy; ``ce_weight >= 0``. Negative costs are rewards.
    Gradient: ``p_ij (c_ij - E_i) + ce_weight (p_ij S_i - ts_ij)``, ``E_i = sum_j c_ij p_ij``.
    """
    x = _args.softmax_inputs(
        labels,
        logits,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        ce_weight=ce_weight,
        ignore_class=ignore_class,
        expected_cost=True,
    )
    return softmax_loss(x, validate)


def softmax_loss(x: _args.SoftmaxInputs, validate: bool = False) -> tf.Tensor:
    """The per-example loss of validated softmax inputs (either loss kind), fused where
    possible: what ``softmax_cross_entropy`` and ``expected_cost`` run after validating."""
    if _use_reference(x):
        return reference.softmax_loss(x, validate)
    inputs, attrs = _softmax_args(x)
    with _checks(x, validate):
        return _op_library().costxent_softmax_loss(*inputs, **attrs).loss


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
    ``pt = y s + (1 - y)(1 - s)``, ``log s = -softplus(-z)``, ``log(1 - s) = -softplus(z)``;
    ``a = pos_weight``, ``b = neg_weight`` are scalars or per-class vectors (default 1,
    finite, >= 0). ``pos_weight=27`` on a 30-label problem with about one positive per
    example stops the model from predicting all zeros. With gamma = 0 and b = 1 this equals
    ``tf.nn.weighted_cross_entropy_with_logits``.
    Returns float32 (float64 for float64 logits) of the logits' shape.
    """
    x = _args.sigmoid_inputs(
        labels,
        logits,
        pos_weight=pos_weight,
        neg_weight=neg_weight,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
    )
    return sigmoid_loss(x, validate)


def sigmoid_loss(x: _args.SigmoidInputs, validate: bool = False) -> tf.Tensor:
    """The per-element loss of validated sigmoid inputs, fused where possible."""
    if _use_reference(x):
        return reference.sigmoid_loss(x, validate)
    inputs, attrs = _sigmoid_args(x)
    with _checks(x, validate):
        return _op_library().costxent_sigmoid_loss(*inputs, **attrs)


def _replica_scale() -> float:
    """Keras divides a mean loss by the replicas in sync (``scale_loss_for_distribution``)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return 1.0 / replicas if replicas > 1 else 1.0


def reduced_loss(
    x: _args.SoftmaxInputs | _args.SigmoidInputs, sample_weight: Optional[tf.Tensor], reduction: str
) -> Optional[tf.Tensor]:
    """The Keras-reduced loss of validated inputs in one fused pass, or None where the fused
    reduced op does not run or no gradient is recorded (the caller then reduces per-example
    losses as Keras does).

    ``loss = r * sum_i s_i loss_i / D``: ``s`` = ``sample_weight`` (leading shape or None),
    ``D`` = 1 ('sum'), the non-ignored rows ('sum_over_batch_size'), or the sum of ``s`` over
    them ('mean_with_sample_weight'); ``D = 0`` gives 0; ``r`` = 1 / replicas in sync for the
    mean reductions. For the sigmoid loss ``loss_i`` is the mean over the last axis
    (``keras.losses.BinaryCrossentropy``'s convention). Returns a scalar in the
    accumulation dtype.
    """
    # A tape on sample_weight needs d loss / d s_i = r loss_i / D, which the reduced op does
    # not give: the caller's reduction of per-example losses does.
    if _use_reference(x) or not _may_differentiate(x.logits) or _tape_watches([sample_weight]):
        return None
    library = _op_library()
    if isinstance(x, _args.SoftmaxInputs):
        inputs, attrs = _softmax_args(x)
        return _reduced(library.costxent_softmax_loss_reduced, inputs, attrs, x, sample_weight, reduction)
    inputs, attrs = _sigmoid_args(x)
    return _reduced(library.costxent_sigmoid_loss_reduced, inputs, attrs, x, sample_weight, reduction)


def _reduced(
    fused_op: Any, inputs: list, attrs: dict, x: Any, sample_weight: Any, reduction: str
) -> tf.Tensor:
    """Runs a reduced op; its gradient scales the stored backprop by the upstream scalar.

    A half-precision backprop was rounded once already, so scaling it would round twice
    (and a loss scale of 2^15 would only multiply what float16 had already flushed): for
    an upstream other than 1 it is computed again with the upstream in the kernel's scale.
    A custom gradient rather than a registered one: the backprop is an op output nobody
    else reads, and an eager tape would feed such an output a zeros gradient of [N, C].
    """
    weight = sample_weight if sample_weight is not None else tf.zeros([0], x.acc_dtype)
    scale = tf.constant(1.0 if reduction == "sum" else _replica_scale(), tf.float64)

    def run(logits: tf.Tensor, scale: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return fused_op(logits, *inputs[1:], weight, scale, reduction=reduction, **attrs)

    @tf.custom_gradient
    def loss_of(logits):
        loss, backprop = run(logits, scale)

        def grad(upstream):
            if logits.dtype.size > 2:
                return _op_library().costxent_scale_gradient(backprop, upstream)
            return tf.cond(
                tf.equal(upstream, 1),
                lambda: backprop,
                lambda: run(logits, scale * tf.cast(upstream, tf.float64))[1],
            )

        return loss, grad

    return loss_of(inputs[0])


_SOFTMAX_ATTRS = ("loss_kind", "has_ignore_class", "ignore_class", "check_weights")


def _attrs(op: Any, names: tuple) -> dict:
    # Eager gradients receive a _MockOp, which has get_attr but no node_def.
    return {name: op.get_attr(name) for name in names}


def _no_second_order(op: Any, *grads: Any) -> list:
    raise NotImplementedError(
        f"costxent: the gradient of {op.type} (a second-order or forward-mode gradient of a "
        "fused loss inside a traced function) is not provided by the fused op; compute that "
        "loss with costxent.reference, or outside tf.function, where costxent picks the "
        "reference itself"
    )


def _register_gradients() -> None:
    library = _op_library()
    if library is None:
        return

    @tf.RegisterGradient("CostxentSoftmaxLoss")
    def _softmax_loss_grad(op, grad_loss, _grad_row_state):
        # The row state is not differentiable; it lets the backward skip the forward's passes.
        inputs = list(op.inputs)
        backprop = library.costxent_softmax_loss_grad(
            *inputs, grad_loss, op.outputs[1], **_attrs(op, _SOFTMAX_ATTRS)
        )
        return [backprop] + [None] * (len(inputs) - 1)

    @tf.RegisterGradient("CostxentSigmoidLoss")
    def _sigmoid_loss_grad(op, grad_loss):
        inputs = list(op.inputs)
        backprop = library.costxent_sigmoid_loss_grad(
            *inputs, grad_loss, **_attrs(op, ("check_weights",))
        )
        return [backprop] + [None] * (len(inputs) - 1)

    for name in (
        "CostxentSoftmaxLossGrad",
        "CostxentSigmoidLossGrad",
        "CostxentSoftmaxLossReduced",
        "CostxentSigmoidLossReduced",
        "CostxentScaleGradient",
    ):
        tf.RegisterGradient(name)(_no_second_order)


_register_gradients()
