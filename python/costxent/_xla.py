"""Whether XLA can compile the fused ops in this process.

XLA registers its compilation kernels once, when TensorFlow first sets up its devices (the
first tensor, strategy or jit compilation of the process; importing TensorFlow or Keras does
not), from the op libraries loaded by then. An op library loaded later (``import costxent``
after a tensor was created) has no XLA kernels, and XLA would reject every graph holding a
fused op. TensorFlow's kernel registry tells the two cases apart: once XLA
has registered, a built-in op such as ``AddV2`` has ``XLA_*`` kernels, and ours have them
too only if our library was loaded before.
"""

from __future__ import annotations

import functools

from tensorflow.python.framework import kernels

_PROBE_OP = "AddV2"
_OUR_OP = "CostxentSoftmaxLoss"


def _xla_kernel_devices(op: str) -> frozenset[str]:
    return frozenset(
        k.device_type
        for k in kernels.get_registered_kernels_for_op(op).kernel
        if k.device_type.startswith("XLA_")
    )


@functools.lru_cache(maxsize=1)
def _registered_late() -> bool:
    return not _xla_kernel_devices(_OUR_OP)


def loaded_too_late() -> bool:
    """True when XLA registered its kernels before the op library was loaded.

    Before XLA registers anything the answer is False (it will register ours with the rest);
    after, it never changes, so it is then computed once.
    """
    if not _xla_kernel_devices(_PROBE_OP):
        return False
    return _registered_late()
