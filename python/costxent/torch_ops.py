"""The fused kernels as PyTorch operators (``torch.library`` custom ops), no TensorFlow.

Four operators in the ``costxent`` namespace call the core kernels through
``costxent._core`` (DLPack; CPU tensors, and CUDA tensors on the current stream where the
module is built with CUDA):

- ``costxent::softmax_loss`` / ``costxent::sigmoid_loss``: the per-example (per-element)
  loss, written by the loss-only kernel. Backward recomputes (DESIGN 3): it reads the logits
  once more and writes ``grad_loss_i * d loss_i / d logits`` once, the upstream gradient
  folded into the row pass.
- ``costxent::softmax_loss_reduced`` / ``costxent::sigmoid_loss_reduced``: a Keras reduction
  folded into the row pass, returning the scalar loss and its gradient; backward scales that
  gradient by the upstream scalar in place, and leaves it alone when the scalar is 1.

Each has a registered autograd formula and a fake (meta) kernel, so ``torch.compile`` traces
them without graph breaks. Gradients flow to the logits only: labels and weights are
constants. The functions below take the arguments of :mod:`costxent.ops`::

    loss = costxent.torch_ops.softmax_cross_entropy(labels, logits, cost_matrix=M)
    loss.mean().backward()
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import torch

from costxent import _checks, _library, _portable
from costxent._portable import SigmoidParams, SoftmaxParams

__all__ = [
    "expected_cost",
    "implementation",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
]


@functools.lru_cache(maxsize=None)
def _load_core() -> tuple[Any, Optional[str]]:
    # Through _library: a damaged _core warns and falls back instead of crashing the process.
    core, reason = _library.load_core()
    return (core, None) if core is not None else (None, reason)


def unavailable_reason() -> Optional[str]:
    """Why the fused torch ops cannot run here, or None when they can."""
    return _load_core()[1]


def implementation() -> str:
    """"fused-gpu" where a GPU is visible and the kernels have CUDA, "fused-cpu" where the
    fused torch ops run, else "reference: <why>" (then the ``keras.ops`` reference runs)."""
    core, reason = _load_core()
    if core is None:
        return f"reference: {reason}"
    if torch.cuda.is_available():
        if not core.has_cuda():
            return "reference: a GPU is visible but costxent._core was built without CUDA"
        return "fused-gpu"
    return "fused-cpu"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _in(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An input as the kernel reads it: detached (DLPack refuses tensors that require
    grad), row-major."""
    return None if t is None else t.detach().contiguous()


# ---------------------------------------------------------------------------------------
# Operators.


@torch.library.custom_op("costxent::softmax_loss", mutates_args=())
def _softmax_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: Optional[torch.Tensor],
    loss_kind: str,
    label_smoothing: float,
    focal_gamma: float,
    ce_weight: float,
    ignore_class: Optional[int],
) -> torch.Tensor:
    loss = logits.new_empty(logits.shape[:-1], dtype=_acc(logits.dtype))
    _load_core()[0].softmax_loss(
        _in(logits), _in(labels), _in(weights), loss_kind=loss_kind,
        label_smoothing=label_smoothing, focal_gamma=focal_gamma, ce_weight=ce_weight,
        ignore_class=ignore_class, loss=loss, compute_backprop=False, stream=_stream(logits),
    )
    return loss


@_softmax_loss.register_fake
def _(logits, labels, weights, loss_kind, label_smoothing, focal_gamma, ce_weight, ignore_class):
    return logits.new_empty(logits.shape[:-1], dtype=_acc(logits.dtype))


@torch.library.custom_op("costxent::softmax_loss_backward", mutates_args=())
def _softmax_loss_backward(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: Optional[torch.Tensor],
    loss_kind: str,
    label_smoothing: float,
    focal_gamma: float,
    ce_weight: float,
    ignore_class: Optional[int],
) -> torch.Tensor:
    backprop = torch.empty_like(logits, memory_format=torch.contiguous_format)
    scratch = logits.new_empty(logits.shape[:-1], dtype=_acc(logits.dtype))
    _load_core()[0].softmax_loss(
        _in(logits), _in(labels), _in(weights), loss_kind=loss_kind,
        label_smoothing=label_smoothing, focal_gamma=focal_gamma, ce_weight=ce_weight,
        ignore_class=ignore_class, row_scale=_in(grad_loss), loss=scratch, backprop=backprop,
        stream=_stream(logits),
    )
    return backprop


@torch.library.custom_op("costxent::sigmoid_loss", mutates_args=())
def _sigmoid_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: Optional[torch.Tensor],
    neg_weight: Optional[torch.Tensor],
    label_smoothing: float,
    focal_gamma: float,
) -> torch.Tensor:
    loss = logits.new_empty(logits.shape, dtype=_acc(logits.dtype))
    _load_core()[0].sigmoid_loss(
        _in(logits), _in(labels), _in(pos_weight), _in(neg_weight),
        label_smoothing=label_smoothing, focal_gamma=focal_gamma, loss=loss,
        compute_backprop=False, stream=_stream(logits),
    )
    return loss


@_sigmoid_loss.register_fake
def _(logits, labels, pos_weight, neg_weight, label_smoothing, focal_gamma):
    return logits.new_empty(logits.shape, dtype=_acc(logits.dtype))


@torch.library.custom_op("costxent::sigmoid_loss_backward", mutates_args=())
def _sigmoid_loss_backward(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: Optional[torch.Tensor],
    neg_weight: Optional[torch.Tensor],
    label_smoothing: float,
    focal_gamma: float,
) -> torch.Tensor:
    backprop = torch.empty_like(logits, memory_format=torch.contiguous_format)
    scratch = logits.new_empty(logits.shape, dtype=_acc(logits.dtype))
    _load_core()[0].sigmoid_loss(
        _in(logits), _in(labels), _in(pos_weight), _in(neg_weight),
        label_smoothing=label_smoothing, focal_gamma=focal_gamma,
        element_scale=_in(grad_loss), loss=scratch, backprop=backprop, stream=_stream(logits),
    )
    return backprop


def _register_recompute(op: Any, backward_op: Any, num_tensors: int) -> None:
    """Autograd of a per-example op: backward runs ``backward_op`` on the upstream gradient
    and the op's first ``num_tensors`` inputs (the tensors), then its options."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:num_tensors])
        ctx.options = inputs[num_tensors:]

    def grad(ctx, grad_loss):
        backprop = backward_op(grad_loss, *ctx.saved_tensors, *ctx.options)
        return (backprop,) + (None,) * (num_tensors + len(ctx.options) - 1)

    op.register_autograd(grad, setup_context=setup)


_register_recompute(_softmax_loss, _softmax_loss_backward, 3)
_register_recompute(_sigmoid_loss, _sigmoid_loss_backward, 4)


@torch.library.custom_op("costxent::softmax_loss_reduced", mutates_args=())
def _softmax_loss_reduced(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: Optional[torch.Tensor],
    sample_weight: Optional[torch.Tensor],
    loss_kind: str,
    label_smoothing: float,
    focal_gamma: float,
    ce_weight: float,
    ignore_class: Optional[int],
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    backprop = torch.empty_like(logits, memory_format=torch.contiguous_format)
    loss, _ = _load_core()[0].softmax_loss(
        _in(logits), _in(labels), _in(weights), loss_kind=loss_kind,
        label_smoothing=label_smoothing, focal_gamma=focal_gamma, ce_weight=ce_weight,
        ignore_class=ignore_class, row_scale=_in(sample_weight), reduction=reduction,
        backprop=backprop, stream=_stream(logits),
    )
    return torch.tensor(loss, dtype=_acc(logits.dtype), device=logits.device), backprop


@torch.library.custom_op("costxent::sigmoid_loss_reduced", mutates_args=())
def _sigmoid_loss_reduced(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: Optional[torch.Tensor],
    neg_weight: Optional[torch.Tensor],
    sample_weight: Optional[torch.Tensor],
    label_smoothing: float,
    focal_gamma: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    backprop = torch.empty_like(logits, memory_format=torch.contiguous_format)
    loss, _ = _load_core()[0].sigmoid_loss(
        _in(logits), _in(labels), _in(pos_weight), _in(neg_weight),
        label_smoothing=label_smoothing, focal_gamma=focal_gamma,
        row_scale=_in(sample_weight), reduction=reduction, backprop=backprop,
        stream=_stream(logits),
    )
    return torch.tensor(loss, dtype=_acc(logits.dtype), device=logits.device), backprop


@torch.library.custom_op("costxent::scale_gradient_", mutates_args=("grad",))
def _scale_gradient_(grad: torch.Tensor, scale: torch.Tensor) -> None:
    # In place, and nothing written when scale is 1 (decided by the kernel, no host sync).
    grad = grad.detach()  # the same storage, exportable through DLPack
    _load_core()[0].scale_gradient(grad, scale.detach().reshape(1), out=grad, stream=_stream(grad))


@_scale_gradient_.register_fake
def _(grad, scale):
    return None


def _backward_fake(grad_loss, logits, *args):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _reduced_fake(logits, *args):
    return (
        logits.new_empty((), dtype=_acc(logits.dtype)),
        torch.empty_like(logits, memory_format=torch.contiguous_format),
    )


for _op in (_softmax_loss_backward, _sigmoid_loss_backward):
    _op.register_fake(_backward_fake)
for _op in (_softmax_loss_reduced, _sigmoid_loss_reduced):
    _op.register_fake(_reduced_fake)


def _reduced_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.num_inputs = len(inputs)
    # Nothing flows into the backprop output: no N x C tensor of zeros for its gradient.
    ctx.set_materialize_grads(False)


def _reduced_grad(ctx, grad_loss, grad_backprop):
    (backprop,) = ctx.saved_tensors
    _scale_gradient_(backprop, grad_loss.to(_acc(backprop.dtype)))
    return (backprop,) + (None,) * (ctx.num_inputs - 1)


_softmax_loss_reduced.register_autograd(_reduced_grad, setup_context=_reduced_setup)
_sigmoid_loss_reduced.register_autograd(_reduced_grad, setup_context=_reduced_setup)


# ---------------------------------------------------------------------------------------
# Arguments.


def _constant(values: Optional[np.ndarray], like: torch.Tensor) -> Optional[torch.Tensor]:
    if values is None:
        return None
    return torch.as_tensor(np.array(values), dtype=_acc(like.dtype), device=like.device)


def _checked(name: str, value: Any, nonnegative: bool) -> Any:
    """Weights checked now; while torch.compile traces, the kernel checks them as it runs
    (on the CPU; on CUDA a bad weight gives NaN rows), since a check on values would break
    the graph."""
    if torch.compiler.is_compiling():
        return value
    return _checks.checked_weights(name, value, nonnegative)


def _class_ids(labels: torch.Tensor) -> torch.Tensor:
    """int32/int64 class ids; a float id must be a whole number (NaN or 1.5 is an error)."""
    if labels.dtype in (torch.int32, torch.int64):
        return labels
    if labels.is_floating_point():
        whole = torch.isfinite(labels) & (labels == torch.round(labels))
        if not torch.compiler.is_compiling() and not bool(whole.all()):
            index = tuple(int(i) for i in torch.nonzero(~whole)[0])
            raise ValueError(
                f"labels must be whole class ids, got {labels[index].item()} at index {index}"
            )
        # Traced, a bad id becomes one the kernel reports as out of range (CPU) or NaN (CUDA).
        labels = torch.where(whole, labels, torch.full_like(labels, -(2.0**31)))
    return labels.to(torch.int64)


def _logits(logits: Any, minimum: int) -> tuple[torch.Tensor, int]:
    logits = torch.as_tensor(logits)
    dtype = str(logits.dtype).removeprefix("torch.")
    return logits, _checks.num_classes(dtype, tuple(logits.shape), minimum)


def _softmax_args(labels: Any, logits: Any, params: SoftmaxParams) -> tuple:
    logits, c = _logits(logits, 2)
    labels = torch.as_tensor(labels, device=logits.device)
    layout, weights, options = _portable.fused_softmax_constants(
        tuple(labels.shape), tuple(logits.shape), c, params)
    if layout == "sparse_squeeze":
        labels = labels.squeeze(-1)
    labels = labels.to(logits.dtype) if layout == "dense" else _class_ids(labels)
    return logits, labels, _constant(weights, logits), options


def _sigmoid_args(labels: Any, logits: Any, params: SigmoidParams) -> tuple:
    logits, c = _logits(logits, 1)
    labels = torch.as_tensor(labels, device=logits.device)
    if tuple(labels.shape) != tuple(logits.shape):
        raise ValueError(
            f"labels must have the logits' shape {list(logits.shape)}, got {list(labels.shape)}"
        )
    pos, neg = (_constant(w, logits) for w in _portable.sigmoid_weights(params, c))
    return logits, labels.to(logits.dtype), pos, neg, (params.label_smoothing, params.focal_gamma)


def _fused_here(logits: Any) -> bool:
    """CUDA tensors need the CUDA kernels; elsewhere the ``keras.ops`` reference runs."""
    return not (torch.is_tensor(logits) and logits.is_cuda and not _load_core()[0].has_cuda())


def softmax_params_loss(labels: Any, logits: Any, params: SoftmaxParams) -> torch.Tensor:
    """Per-example softmax loss of ``params`` (see :func:`softmax_cross_entropy`)."""
    if not _fused_here(logits):
        return _portable.softmax_loss(labels, logits, params)
    logits, labels, weights, options = _softmax_args(labels, logits, params)
    return _softmax_loss(logits, labels, weights, *options)


def sigmoid_params_loss(labels: Any, logits: Any, params: SigmoidParams) -> torch.Tensor:
    """Per-element sigmoid loss of ``params`` (see :func:`sigmoid_cross_entropy`)."""
    if not _fused_here(logits):
        return _portable.sigmoid_loss(labels, logits, params)
    logits, labels, pos, neg, options = _sigmoid_args(labels, logits, params)
    return _sigmoid_loss(logits, labels, pos, neg, *options)


def reduced_params_loss(
    labels: Any, logits: Any, params: Any, sample_weight: Any, reduction: str
) -> Optional[torch.Tensor]:
    """The Keras-reduced loss in one fused pass, or None where Keras' own reduction must run
    (no gradient recorded, a ``sample_weight`` that is not one weight per row, a scalar or
    empty batch).

    ``loss = sum_i s_i loss_i / D`` with ``D`` = 1 ('sum'), the non-ignored rows
    ('sum_over_batch_size') or their sum of ``s`` ('mean_with_sample_weight'); ``D = 0``
    gives 0. The sigmoid ``loss_i`` is the mean over the last axis.
    """
    if not (_fused_here(logits) and torch.is_grad_enabled() and logits.requires_grad):
        return None
    weight = None if sample_weight is None else torch.as_tensor(sample_weight, device=logits.device)
    squeeze = _checks.fused_reduction(
        tuple(logits.shape[:-1]), None if weight is None else tuple(weight.shape))
    if squeeze is None:
        return None
    if weight is not None:
        weight = (weight.squeeze(-1) if squeeze else weight).to(_acc(logits.dtype))
    if isinstance(params, SoftmaxParams):
        logits, labels, weights, options = _softmax_args(labels, logits, params)
        kind, smoothing, gamma, ce_weight, ignore_class = options
        loss, _ = _softmax_loss_reduced(
            logits, labels, weights, weight, kind, smoothing, gamma, ce_weight, ignore_class,
            reduction,
        )
        return loss
    logits, labels, pos, neg, (smoothing, gamma) = _sigmoid_args(labels, logits, params)
    loss, _ = _sigmoid_loss_reduced(logits, labels, pos, neg, weight, smoothing, gamma, reduction)
    return loss


# ---------------------------------------------------------------------------------------
# Functional API (the signatures of costxent.ops).


_api = _portable.functional_api(softmax_params_loss, sigmoid_params_loss, _checked, __name__)
softmax_cross_entropy = _api.softmax_cross_entropy
expected_cost = _api.expected_cost
sigmoid_cross_entropy = _api.sigmoid_cross_entropy
