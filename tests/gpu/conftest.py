"""tests/gpu: costxent._core's CUDA kernels, with PyTorch tensors as the device arrays.

Everything here is skipped unless a CUDA device is visible (through PyTorch or CuPy), PyTorch
can use it, and the _core extension was built with its CUDA kernels. _core is loaded
without importing costxent (whose __init__ needs TensorFlow): point COSTXENT_CORE at the
built _core*.so where it is not installed (benchmarks/gpu/run.sh does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: oracle.py, core_cases.py

import core_cases  # noqa: E402


def _visible_devices() -> int:
    count = 0
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        pass
    if count == 0:
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # no CuPy, or CuPy without a driver
            count = 0
    return count


def _unavailable() -> str | None:
    if _visible_devices() == 0:
        return "no CUDA device visible through PyTorch or CuPy"
    try:
        import torch
    except ImportError:
        return "tests/gpu use PyTorch for device arrays, and it is not installed"
    if not torch.cuda.is_available():
        return "PyTorch cannot use the CUDA device"
    try:
        core = core_cases.load_core()
    except ImportError as e:
        return str(e)
    if not core.has_cuda():
        return "costxent._core was built without its CUDA kernels"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).parents]
    if not mine:
        return
    reason = _unavailable()
    if reason is not None:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def core():
    return core_cases.load_core()
