"""The backend suite (tests/backends) under JAX and PyTorch, one subprocess each, and
costxent without TensorFlow.

Keras reads KERAS_BACKEND once, at import, so each backend needs its own process. A backend
whose framework is not installed is skipped. Training results of each backend are compared
with TensorFlow's, computed here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "backends"))

FIT_CASES = ["ce_plain", "ce_cost_focal_ignore", "expected_cost_ignore", "binary_weighted_focal"]


def _env(backend: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": backend, **extra}
    # the package under test: the same one this process imported
    import costxent

    package_root = str(Path(costxent.__file__).parent.parent)  # not resolved: dev builds link
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    return env


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
def test_suite_on_backend(backend: str, module: str, tmp_path: Path) -> None:
    _require(module)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "backends"), "-q", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning"],
        env=_env(backend, COSTXENT_FIT_OUT=str(tmp_path)),
        capture_output=True, text=True, timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout

    # the same training under TensorFlow (this process) ends with the same weights
    import test_portable_suite

    for name in FIT_CASES:
        want = test_portable_suite.fit_case(name)["weights"]
        got = np.load(tmp_path / f"{backend}-{name}.npz")
        for k, w in enumerate(want):
            np.testing.assert_allclose(got[f"arr_{k}"], w, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{backend} {name} weight {k}")


_NO_TENSORFLOW = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, sys

    class Blocked(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError(f"{spec.name} is blocked for this test")

        def exec_module(self, module):
            pass

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        # A spec without an origin: libraries that only probe for TensorFlow with find_spec
        # (torch._dynamo does) see no installed files; importing it fails.
        def find_spec(self, name, path, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, Blocked())
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    import costxent as cx

    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=[[0, 1], [5, 0]], from_logits=True)
    value = float(loss(np.array([1, 0]), np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)))
    metric = cx.metrics.MisclassificationCost([[0, 1], [5, 0]])
    metric.update_state(np.array([1, 0]), np.array([[0.9, 0.1], [0.2, 0.8]], np.float32))
    print(cx.implementation())
    print(value, float(metric.result()))
    assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
    try:
        cx.ops
    except ImportError as exc:
        print("ops:", exc)
    """
)


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
def test_import_without_tensorflow(backend: str, module: str) -> None:
    _require(module)
    run = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW], env=_env(backend),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    implementation, values, ops = run.stdout.strip().splitlines()[-3:]
    # where the core module is built, both backends run the fused kernels
    built = importlib.util.find_spec("costxent._core") is not None
    assert implementation.startswith("fused-" if built else "reference: "), implementation
    # labels [1, 0], logits [[2, 0], [0, 1]]: both predictions wrong, costing M[1, 0] = 5
    # and M[0, 1] = 1 times their cross-entropies log(1 + e^2) and log(1 + e)
    loss, cost = (float(v) for v in values.split())
    np.testing.assert_allclose(loss, (5 * np.log1p(np.exp(2.0)) + np.log1p(np.e)) / 2, rtol=1e-6)
    np.testing.assert_allclose(cost, (5 + 1) / 2, rtol=1e-6)
    assert ops.startswith("ops:") and "tensorflow" in ops


_JAX_FIRST_USE = textwrap.dedent(
    """
    import jax, numpy as np
    from costxent import jax_ops

    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
    loss, grad = jax.value_and_grad(
        lambda z: jax_ops.softmax_cross_entropy(np.array([1, 2]), z).sum())(z)
    print(float(loss), *np.asarray(grad).ravel())
    """
)


def test_jax_ops_register_their_kernels_on_first_use() -> None:
    """The functional JAX API works as the first thing a program calls (no Keras loss, no
    implementation() before it to register the FFI targets)."""
    _require("jax")
    run = subprocess.run([sys.executable, "-c", _JAX_FIRST_USE], env=_env("jax"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    values = np.array([float(v) for v in run.stdout.split()[-7:]])
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    onehot = np.eye(3)[[1, 2]]
    np.testing.assert_allclose(values[0], -np.log(p[onehot == 1]).sum(), rtol=1e-6)
    np.testing.assert_allclose(values[1:], (p - onehot).ravel(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend, module", [("tensorflow", "tensorflow"), ("jax", "jax"),
                                             ("torch", "torch")])
def test_info_runs_on_every_backend(backend: str, module: str) -> None:
    _require(module)
    run = subprocess.run([sys.executable, "-m", "costxent", "info"], env=_env(backend),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"on {backend} " in run.stdout
    implementation = next(l for l in run.stdout.splitlines() if l.startswith("implementation:"))
    assert implementation.split(": ", 1)[1].startswith(("fused-", "reference: "))
    # row 1: true class 1, logits [0.5, 0, 2.5] predict 2 at cost M[1, 2] = 5
    z = np.array([0.5, 0.0, 2.5])
    ce = np.log(np.exp(z).sum()) - z[1]
    p = np.exp(z) / np.exp(z).sum()
    row = next(l for l in run.stdout.splitlines() if l.startswith("  1     1"))
    np.testing.assert_allclose([float(v) for v in row.split()[-3:]],
                               [ce, 5 * ce, 2 * p[0] + 5 * p[2]], atol=6e-5)
