"""Loading the compiled parts of costxent, once each, never failing or crashing the import.

A shared object is checked before the dynamic loader sees it: a truncated one mapped by the
loader kills the process (SIGBUS), and a corrupt one may do anything. The build records each
library's size and SHA-256 in ``_build_info.FILES``; a file that is missing, not a regular
file, unreadable, of another size or with another hash is not loaded. The op library is also
not loaded into a TensorFlow of another minor version than the one it was built for (TF's C++
ABI changes between minor versions). Each problem gives one warning naming the file and what
is wrong, and ``costxent.ops`` falls back to the pure-TF reference.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import stat
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

_LIBRARY_FILE = "_costxent_ops.so"
_BUILD_INFO = "costxent._build_info"
DISABLE_ENV = "COSTXENT_IMPLEMENTATION"
_HASH_CHUNK = 1 << 20


def _build_info() -> Optional[ModuleType]:
    """The build record, or None when it is absent or unusable (a damaged file included)."""
    try:
        info = importlib.import_module(_BUILD_INFO)
    except Exception:  # a damaged record raises anything from SyntaxError to ValueError
        return None
    return info if isinstance(getattr(info, "TF_VERSION", None), str) else None


def _built_for() -> str:
    info = _build_info()
    if info is None:
        return "an unknown TensorFlow (no build info: the package was not built)"
    return f"TensorFlow {info.TF_VERSION}"


def built_with_cuda() -> bool:
    """Whether the installed op library contains the CUDA kernels."""
    info = _build_info()
    return bool(info is not None and getattr(info, "WITH_CUDA", False))


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(name: str) -> Optional[str]:
    """What is wrong with the package's compiled file ``name``, or None when it is the
    file the build recorded (same size, same SHA-256). Never raises."""
    path = Path(__file__).with_name(name)
    info = _build_info()
    records = getattr(info, "FILES", None) if info is not None else None
    if not isinstance(records, dict) or name not in records:
        return (
            f"the build recorded no size and SHA-256 for {name} (missing or damaged "
            "_build_info.py), so it cannot be checked"
        )
    try:
        expected_size, expected_hash = records[name]
    except (TypeError, ValueError):
        return f"the build record of {name} is damaged ({records[name]!r})"
    try:
        status = os.stat(path)  # follows links: a dangling one is a missing file
    except FileNotFoundError:
        return f"{name} is not installed (build with pip install .)"
    except OSError as err:
        return f"{name} cannot be inspected: {err.strerror or err}"
    if not stat.S_ISREG(status.st_mode):
        return f"{name} is {_file_kind(status.st_mode)}, not the library file"
    if status.st_size != expected_size:
        return (
            f"{name} is {status.st_size} bytes but the build recorded {expected_size} "
            "(truncated or replaced)"
        )
    try:
        actual_hash = _sha256(path)
    except OSError as err:
        return f"{name} cannot be read: {err.strerror or err}"
    if actual_hash != expected_hash:
        return f"{name} is corrupt (its SHA-256 differs from the one recorded at build time)"
    return None


def _warn(reason: str) -> None:
    warnings.warn(
        f"costxent: {reason}; using the pure-TensorFlow reference implementation instead.",
        RuntimeWarning,
        stacklevel=4,
    )


@functools.lru_cache(maxsize=None)
def load() -> tuple[Optional[ModuleType], str]:
    """(op module or None, reason it is None)."""
    import tensorflow as tf  # here, so that costxent._core users need no TensorFlow

    if os.environ.get(DISABLE_ENV, "").strip().lower() == "reference":
        return None, f"disabled by {DISABLE_ENV}=reference"
    info = _build_info()
    path = Path(__file__).with_name(_LIBRARY_FILE)
    if not path.exists():
        reason = f"the op library {_LIBRARY_FILE} is not installed (build with pip install .)"
    elif info is not None and _minor(info.TF_VERSION) != _minor(tf.__version__):
        reason = (
            f"the op library was built for TensorFlow {info.TF_VERSION} and does not load in "
            f"TensorFlow {tf.__version__} (TensorFlow's C++ ABI changes between minor "
            f"versions; install the costxent built for TensorFlow "
            f"{'.'.join(_minor(tf.__version__))})"
        )
    elif (problem := verify(_LIBRARY_FILE)) is not None:
        reason = f"the op library is not loaded: {problem}"
    else:
        try:
            return tf.load_op_library(str(path)), ""
        except (tf.errors.NotFoundError, OSError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            reason = (
                f"the op library was built for {_built_for()} and does not load in "
                f"TensorFlow {tf.__version__}: {first_line}"
            )
    _warn(reason)
    return None, reason


@functools.lru_cache(maxsize=None)
def load_core() -> tuple[Optional[ModuleType], str]:
    """(``costxent._core`` or None, reason it is None), checked like the op library."""
    info = _build_info()
    core_files = [n for n in getattr(info, "FILES", {}) or {} if n.startswith("_core.")]
    if not core_files:
        reason = "costxent._core is not installed (no build record names it)"
    elif (problem := verify(core_files[0])) is not None:
        reason = f"costxent._core is not loaded: {problem}"
    else:
        try:
            return importlib.import_module("costxent._core"), ""
        except ImportError as err:
            reason = f"costxent._core does not load: {err}"
    _warn(reason)
    return None, reason
