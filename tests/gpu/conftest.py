"""tests/gpu: costxent._core's CUDA kernels against the float64 oracle where a CUDA device is
visible (PyTorch tensors as device arrays), else the same tests against the perfect kernel
of harness.py, at small sizes, so that the harness is tested by every run of the suite.

_core is loaded without importing costxent (whose __init__ needs TensorFlow): point
COSTXENT_CORE at the built _core*.so where it is not installed (benchmarks/gpu/run.sh does).
Markers: `smoke` (one case per launch regime and dtype, run first on a device) and
`real_kernel` (tests of the binding or the device themselves, skipped in perfect mode).
With $COSTXENT_FAILURES set, every failure is appended to that file as it happens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: oracle.py, core_cases.py
sys.path.insert(0, str(HERE))  # harness.py, regimes.py

import harness  # noqa: E402

_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    config.addinivalue_line("markers", "smoke: one case per CUDA launch regime and dtype")
    config.addinivalue_line("markers", "real_kernel: needs the real CUDA kernels and device")


def pytest_report_header(config: pytest.Config) -> str:
    if harness.PERFECT:
        return f"tests/gpu: perfect-kernel mode ({harness.WHY_NOT_CUDA})"
    return "tests/gpu: the CUDA kernels of " + str(harness.core_cases.load_core().__file__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not harness.PERFECT:
        return
    skip = pytest.mark.skip(reason=f"needs the CUDA kernels ({harness.WHY_NOT_CUDA})")
    for item in items:
        if HERE in Path(str(item.path)).parents and item.get_closest_marker("real_kernel"):
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("COSTXENT_FAILURES")
    if not path or not report.failed or (_config is not None and hasattr(_config, "workerinput")):
        return  # pytest-xdist workers forward their reports to the controller, which writes
    crash = getattr(report.longrepr, "reprcrash", None)
    lines = str(report.longrepr).splitlines() or [""]
    message = crash.message if crash is not None else lines[-1]
    with open(path, "a") as f:
        f.write(f"FAILED {report.nodeid} ({report.when}): {message[:500]}\n")


@pytest.fixture(scope="session")
def core():
    return harness.core()


@pytest.fixture(scope="session")
def arrays():
    return harness.backend()
