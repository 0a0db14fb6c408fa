"""Loading the fused TensorFlow op library, once, never failing the import.

If the library is missing, or was built for another TensorFlow (undefined symbols, ABI), a
single warning names the TensorFlow version it was built for, and ``costxent.ops`` falls
back to the pure-TF reference.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import tensorflow as tf

_LIBRARY_FILE = "_costxent_ops.so"
DISABLE_ENV = "COSTXENT_IMPLEMENTATION"


def _built_for() -> str:
    try:
        from costxent import _build_info
    except ImportError:
        return "an unknown TensorFlow (no build info: the package was not built)"
    return f"TensorFlow {_build_info.TF_VERSION}"


def built_with_cuda() -> bool:
    """Whether the installed op library contains the CUDA kernels."""
    try:
        from costxent import _build_info
    except ImportError:
        return False
    return bool(_build_info.WITH_CUDA)


@functools.lru_cache(maxsize=None)
def load() -> tuple[Optional[ModuleType], str]:
    """(op module or None, reason it is None)."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() == "reference":
        return None, f"disabled by {DISABLE_ENV}=reference"
    path = Path(__file__).with_name(_LIBRARY_FILE)
    if not path.exists():
        reason = f"the op library {path.name} is not installed (build with pip install .)"
    else:
        try:
            return tf.load_op_library(str(path)), ""
        except (tf.errors.NotFoundError, OSError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            reason = (
                f"the op library was built for {_built_for()} and does not load in "
                f"TensorFlow {tf.__version__}: {first_line}"
            )
    warnings.warn(
        f"costxent: {reason}; using the pure-TensorFlow reference implementation instead.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None, reason
