"""The fused kernels under JAX, through ``jax.ffi``, no TensorFlow.

``costxent._core`` hands over the typed XLA FFI handlers that TensorFlow's XLA runs for the
fused ops (``cc/xla``), for the CPU ("Host") and, in CUDA builds, the GPU; they are
registered with JAX's XLA once, on first use, and called with ``jax.ffi.ffi_call``. Each
function has a ``jax.custom_vjp`` whose backward follows DESIGN 3:

- per-example losses (:func:`softmax_cross_entropy`, :func:`expected_cost`,
  :func:`sigmoid_cross_entropy`): the forward writes only the loss; the backward recomputes
  from the logits and writes ``g_i * d loss_i / d logits`` once, the upstream gradient ``g``
  folded into the row pass;
- the Keras reductions (:func:`reduced_params_loss`): one pass writes the scalar loss and
  its gradient; the backward multiplies that gradient by the upstream scalar, a multiply
  XLA removes when the scalar is the constant 1 (``jax.grad`` of the loss itself).

Gradients flow to the logits only: labels, weights and sample weights are constants, and a
derivative asked of one is a TypeError naming it. ``jax.jit`` and ``jax.vmap`` (one call per
mapped slice) work; forward-mode differentiation (``jax.jvp``) and second derivatives are not
defined for the fused kernels and raise JAX's error. The handlers need the XLA FFI API of
jax >= 0.9; with an older JAX the Keras losses take the ``keras.ops`` reference.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from costxent import _checks, _library, _portable
from costxent._portable import SigmoidParams, SoftmaxParams

__all__ = [
    "expected_cost",
    "implementation",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
]

# cc/xla/targets.h's Variant, cc/core/problem.h's SoftmaxLoss, cc/core/spec.h's Reduction.
_LOSS, _GRAD, _REDUCED = 0, 1, 2
_LOSS_KIND = {"cross_entropy": 0, "expected_cost": 1}
_REDUCTION = {"sum": 1, "sum_over_batch_size": 2, "mean_with_sample_weight": 3}
_SOFTMAX_TARGETS = ("costxent_softmax_loss", "costxent_softmax_loss_grad",
                    "costxent_softmax_loss_reduced")
_SIGMOID_TARGETS = ("costxent_sigmoid_loss", "costxent_sigmoid_loss_grad",
                    "costxent_sigmoid_loss_reduced")


def _jax_ffi_api_version() -> Optional[tuple[int, int]]:
    """The XLA FFI API version of the installed jaxlib, from the header it ships (the one its
    runtime implements), or None."""
    try:
        header = Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h"
        text = header.read_text()
    except (AttributeError, OSError):
        return None
    found = [re.search(rf"#define XLA_FFI_API_{part}\s+(\d+)", text)
             for part in ("MAJOR", "MINOR")]
    return None if None in found else (int(found[0].group(1)), int(found[1].group(1)))


@functools.lru_cache(maxsize=None)
def _registered() -> tuple[frozenset, Optional[str]]:
    """(the platforms whose handlers are registered with JAX, why none is), once."""
    core, reason = _library.load_core()
    if core is None:
        return frozenset(), reason
    if not hasattr(core, "xla_ffi_targets"):
        return frozenset(), "costxent._core was built without XLA's FFI headers"
    needed, found = core.xla_ffi_api_version(), _jax_ffi_api_version()
    if found is None or found[0] != needed[0] or found[1] < needed[1]:
        # Registering anyway would make JAX's CPU backend itself fail to start.
        return frozenset(), (
            f"JAX {jax.__version__} has XLA FFI API {'unknown' if found is None else found}; "
            f"costxent's handlers need {needed[0]}.{needed[1]} or newer (jax >= 0.9)"
        )
    platforms = core.xla_ffi_targets()
    try:
        for platform, targets in platforms.items():
            for name, capsule in targets.items():
                jax.ffi.register_ffi_target(name, capsule, platform=platform)
    except Exception as exc:  # an older JAX: no jax.ffi, or an XLA that refuses the handlers
        return frozenset(), (f"JAX {jax.__version__} does not take costxent's XLA FFI handlers "
                             f"({type(exc).__name__}: {exc})")
    return frozenset(p.lower() for p in platforms), None


def unavailable_reason() -> Optional[str]:
    """Why the fused JAX path cannot run on JAX's default device here, or None."""
    platforms, reason = _registered()
    if reason is not None:
        return reason
    backend = jax.default_backend()
    if backend == "gpu" and "cuda" not in platforms:
        return "JAX runs on a GPU but costxent._core was built without CUDA"
    if backend not in ("cpu", "gpu"):
        return f"no fused kernels for JAX's {backend} backend"
    return None


def implementation() -> str:
    """"fused-gpu" or "fused-cpu" (JAX's default device) where the fused path runs, else
    "reference: <why>" (then the ``keras.ops`` reference runs)."""
    reason = unavailable_reason()
    if reason is not None:
        return f"reference: {reason}"
    return "fused-gpu" if jax.default_backend() == "gpu" else "fused-cpu"


def _acc(dtype: Any) -> Any:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _operand(values: Any, dtype: Any) -> Any:
    """An optional operand: the array in ``dtype``, or the empty [0] buffer the handlers
    read as absent."""
    return jnp.zeros((0,), dtype) if values is None else jnp.asarray(values, dtype)


def _outputs(variant: int, logits: Any, loss_shape: tuple) -> tuple:
    """(loss, backprop) result types; the one a variant does not write is an empty [0]."""
    acc, empty = _acc(logits.dtype), (0,)
    loss = {_LOSS: loss_shape, _GRAD: empty, _REDUCED: ()}[variant]
    backprop = empty if variant == _LOSS else logits.shape
    return jax.ShapeDtypeStruct(loss, acc), jax.ShapeDtypeStruct(backprop, logits.dtype)


def _target(names: tuple, variant: int) -> str:
    """The target of a variant, registered with JAX first (at trace time, once)."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"costxent's fused kernels cannot run under JAX here: {reason}")
    return names[variant]


def _reduction_code(reduction: Optional[str]) -> int:
    return 0 if reduction is None else _REDUCTION[reduction]


# The calls' options: softmax (loss_kind, label_smoothing, focal_gamma, ce_weight,
# ignore_class, reduction), sigmoid (label_smoothing, focal_gamma, reduction), reduction None
# for per-example calls. Weights were checked when the options were made, so the handlers do
# not scan them again (check_weights).


def _softmax_call(variant: int, options: tuple, logits: Any, labels: Any, weights: Any,
                  scale: Any) -> tuple:
    kind, smoothing, gamma, ce_weight, ignore_class, reduction = options
    call = jax.ffi.ffi_call(_target(_SOFTMAX_TARGETS, variant),
                            _outputs(variant, logits, logits.shape[:-1]),
                            vmap_method="sequential")
    acc = _acc(logits.dtype)
    return call(
        logits, labels, _operand(weights, acc), _operand(scale, acc),
        variant=np.int32(variant), loss_kind=np.int32(_LOSS_KIND[kind]),
        has_ignore_class=ignore_class is not None,
        ignore_class=np.int64(0 if ignore_class is None else ignore_class), check_weights=False,
        label_smoothing=np.float64(smoothing), focal_gamma=np.float64(gamma),
        ce_weight=np.float64(ce_weight), reduction=np.int32(_reduction_code(reduction)),
        scale=np.float64(1.0),
    )


def _sigmoid_call(variant: int, options: tuple, logits: Any, labels: Any, pos: Any, neg: Any,
                  scale: Any) -> tuple:
    smoothing, gamma, reduction = options
    call = jax.ffi.ffi_call(_target(_SIGMOID_TARGETS, variant),
                            _outputs(variant, logits, logits.shape), vmap_method="sequential")
    acc = _acc(logits.dtype)
    return call(
        logits, labels, _operand(pos, acc), _operand(neg, acc), _operand(scale, acc),
        variant=np.int32(variant), check_weights=False, label_smoothing=np.float64(smoothing),
        focal_gamma=np.float64(gamma), reduction=np.int32(_reduction_code(reduction)),
        scale=np.float64(1.0),
    )


# ---------------------------------------------------------------------------------------
# Differentiable calls: f(options, logits, *constants), differentiable in the logits only.


def _primal_values(logits: Any, constants: tuple, names: tuple) -> tuple[Any, tuple]:
    """The values a symbolic-zeros forward rule receives; a derivative asked of anything but
    the logits is an error, not a silent zero (DESIGN 3)."""
    def wrapped(x: Any) -> bool:
        return isinstance(x, jax.custom_derivatives.CustomVJPPrimal)

    def unwrap(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda p: p.value, tree, is_leaf=wrapped)

    for name, value in zip(names, constants):
        if any(p.perturbed for p in jax.tree_util.tree_leaves(value, is_leaf=wrapped)):
            raise TypeError(
                f"costxent's fused kernels differentiate the loss in the logits only, not in "
                f"{name}: take {name} as a constant (jax.lax.stop_gradient), or use the "
                "keras.ops reference (costxent._portable) for that derivative"
            )
    return unwrap(logits), tuple(unwrap(c) for c in constants)


def _per_example(call: Any, names: tuple) -> Any:
    """The per-example loss of ``call``: the forward writes the loss only; the backward
    recomputes from the logits, the upstream gradient folded into the row pass."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def loss(options: tuple, logits: Any, *constants: Any) -> Any:
        return call(_LOSS, options, logits, *constants, None)[0]

    def fwd(options, logits, *constants):
        logits, constants = _primal_values(logits, constants, names)
        return call(_LOSS, options, logits, *constants, None)[0], (logits, constants)

    def bwd(options, saved, grad_loss):
        logits, constants = saved
        backprop = call(_GRAD, options, logits, *constants, grad_loss)[1]
        return (backprop,) + (None,) * len(constants)

    loss.defvjp(fwd, bwd, symbolic_zeros=True)
    return loss


def _scaled(backprop: Any, grad_loss: Any) -> Any:
    # In the accumulation dtype and rounded once; XLA drops the multiply (and the casts) when
    # the upstream scalar is the constant 1.
    return (backprop.astype(grad_loss.dtype) * grad_loss).astype(backprop.dtype)


def _reduced(call: Any, names: tuple) -> Any:
    """The Keras-reduced loss of ``call`` (its last constant the sample weights): one pass
    writes the scalar and its gradient, which the backward scales by the upstream scalar.
    Outside differentiation the gradient is written too (XLA keeps every result of a custom
    call): one extra write of the logits' size, in evaluation only."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def loss(options: tuple, logits: Any, *constants: Any) -> Any:
        return call(_REDUCED, options, logits, *constants)[0]

    def fwd(options, logits, *constants):
        logits, constants = _primal_values(logits, constants, names)
        return call(_REDUCED, options, logits, *constants)

    def bwd(options, backprop, grad_loss):
        return (_scaled(backprop, grad_loss),) + (None,) * len(names)

    loss.defvjp(fwd, bwd, symbolic_zeros=True)
    return loss


_softmax_loss = _per_example(_softmax_call, ("labels", "weights"))
_sigmoid_loss = _per_example(_sigmoid_call, ("labels", "pos_weight", "neg_weight"))
_softmax_reduced = _reduced(_softmax_call, ("labels", "weights", "sample_weight"))
_sigmoid_reduced = _reduced(_sigmoid_call, ("labels", "pos_weight", "neg_weight",
                                            "sample_weight"))


# ---------------------------------------------------------------------------------------
# Arguments.


def _class_ids(labels: Any) -> Any:
    """int32/int64 class ids; a float id must be a whole number (NaN or 1.5 is an error)."""
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        return labels if labels.dtype in (jnp.int32, jnp.int64) else labels.astype(jnp.int32)
    whole = jnp.isfinite(labels) & (labels == jnp.round(labels))
    try:
        all_whole = bool(whole.all())
    except jax.errors.ConcretizationTypeError:  # traced: the kernel sees the bad ids
        all_whole = True
    if not all_whole:
        index = tuple(int(i) for i in np.argwhere(~np.asarray(whole))[0])
        raise ValueError(
            f"labels must be whole class ids, got {float(labels[index])} at index {index}"
        )
    # Traced, a bad id becomes one the kernel reports as out of range (CPU) or NaN (CUDA).
    return jnp.where(whole, labels, -(2.0**31)).astype(jnp.int32)


def _logits(logits: Any, minimum: int) -> tuple[Any, int]:
    logits = jnp.asarray(logits)
    return logits, _checks.num_classes(logits.dtype.name, tuple(logits.shape), minimum)


def _narrowed(labels: Any) -> Any:
    """Labels as JAX takes them: without x64, 64-bit integers become int32, so an id beyond
    int32 (which would wrap to a valid class) is reported here, while its value is known."""
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.size and (
        not jax.config.jax_enable_x64
    ):
        info = np.iinfo(np.int32)
        wide = (labels < info.min) | (labels > info.max)
        if wide.any():
            index = tuple(int(i) for i in np.argwhere(wide)[0])
            raise ValueError(
                f"labels{list(index)} = {labels[index]} is outside the valid class range (JAX "
                "without x64 holds class ids as int32)"
            )
    return jnp.asarray(labels)


def _softmax_args(labels: Any, logits: Any, params: SoftmaxParams) -> tuple:
    logits, c = _logits(logits, 2)
    labels = _narrowed(labels)
    layout, weights, options = _portable.fused_softmax_constants(
        tuple(labels.shape), tuple(logits.shape), c, params)
    if layout == "sparse_squeeze":
        labels = labels.squeeze(-1)
    labels = labels.astype(logits.dtype) if layout == "dense" else _class_ids(labels)
    return logits, labels, weights, options


def _sigmoid_args(labels: Any, logits: Any, params: SigmoidParams) -> tuple:
    logits, c = _logits(logits, 1)
    labels = jnp.asarray(labels)
    if tuple(labels.shape) != tuple(logits.shape):
        raise ValueError(
            f"labels must have the logits' shape {list(logits.shape)}, got {list(labels.shape)}"
        )
    pos, neg = _portable.sigmoid_weights(params, c)
    return logits, labels.astype(logits.dtype), pos, neg, (params.label_smoothing,
                                                           params.focal_gamma)


def softmax_params_loss(labels: Any, logits: Any, params: SoftmaxParams) -> jax.Array:
    """Per-example softmax loss of ``params`` (see :func:`softmax_cross_entropy`)."""
    logits, labels, weights, options = _softmax_args(labels, logits, params)
    return _softmax_loss(options + (None,), logits, labels, weights)


def sigmoid_params_loss(labels: Any, logits: Any, params: SigmoidParams) -> jax.Array:
    """Per-element sigmoid loss of ``params`` (see :func:`sigmoid_cross_entropy`)."""
    logits, labels, pos, neg, options = _sigmoid_args(labels, logits, params)
    return _sigmoid_loss(options + (None,), logits, labels, pos, neg)


def reduced_params_loss(
    labels: Any, logits: Any, params: Any, sample_weight: Any, reduction: str
) -> Optional[jax.Array]:
    """The Keras-reduced loss in one fused pass, or None where Keras' own reduction must run
    (a ``sample_weight`` that is not one weight per row, a scalar or empty batch).

    ``loss = sum_i s_i loss_i / D`` with ``D`` = 1 ('sum'), the non-ignored rows
    ('sum_over_batch_size') or their sum of ``s`` ('mean_with_sample_weight'); ``D = 0``
    gives 0. The sigmoid ``loss_i`` is the mean over the last axis.
    """
    logits = jnp.asarray(logits)
    weight = None if sample_weight is None else jnp.asarray(sample_weight)
    squeeze = _checks.fused_reduction(
        tuple(logits.shape[:-1]), None if weight is None else tuple(weight.shape))
    if squeeze is None:
        return None
    if weight is not None:
        weight = (weight.squeeze(-1) if squeeze else weight).astype(_acc(logits.dtype))
    if isinstance(params, SoftmaxParams):
        logits, labels, weights, options = _softmax_args(labels, logits, params)
        return _softmax_reduced(options + (reduction,), logits, labels, weights, weight)
    logits, labels, pos, neg, options = _sigmoid_args(labels, logits, params)
    return _sigmoid_reduced(options + (reduction,), logits, labels, pos, neg, weight)


# ---------------------------------------------------------------------------------------
# Functional API (the signatures of costxent.ops).


def _checked(name: str, value: Any, nonnegative: bool) -> Any:
    try:
        return _checks.checked_weights(name, value, nonnegative)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            f"{name} must be a constant (a NumPy array, list or dict), got a traced JAX array: "
            "the fused kernels take weights as constants"
        ) from None


_api = _portable.functional_api(softmax_params_loss, sigmoid_params_loss, _checked, __name__)
softmax_cross_entropy = _api.softmax_cross_entropy
expected_cost = _api.expected_cost
sigmoid_cross_entropy = _api.sigmoid_cross_entropy
