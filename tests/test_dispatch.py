"""Dispatch, fallback and determinism of costxent.ops (DESIGN 2.5, 3, 4).

Which path runs (fused op, eager, traced and under XLA; the reference when disabled by
``COSTXENT_IMPLEMENTATION=reference``, or when the op library is broken or missing), that the
fallback warns once and still computes the right numbers, that the loss-only variant runs
where no gradient is recorded while ``tf.gradients`` still recomputes the right gradient,
and that the fused op is bitwise deterministic run to run and across intra-op thread counts.
Runs needing a fresh TensorFlow run in subprocesses, started together to save time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import costxent as cx
import oracle
from costxent import _library
from costxent import ops as cx_ops

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(cx.__file__).absolute().parent  # not resolved: a linked dev build stays itself
COST = np.array([[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [1.0, 3.0, 0.0]])
FUSED_TYPES = {"CostxentSoftmaxLoss", "CostxentSigmoidLoss"}
FAKE_TF_VERSION = "9.99.0"

# --------------------------------------------------------------------------------------
# Problems shared by the in-process tests and the subprocesses (which import this module
# after configuring TensorFlow, so nothing here may create a tensor at import time).


def _problem(c: int, n: int | None = None, dtype: Any = np.float32) -> dict[str, Any]:
    """Inputs for one class count. By default more rows than threads and than the 32-row
    block, and a row count that is not a multiple of 32, so shards and blocks split unevenly."""
    n = n if n is not None else 301 if c >= 100 else 3001
    rng = np.random.default_rng(c)
    return {
        "logits": (rng.normal(size=(n, c)) * 3).astype(dtype),
        "ids": rng.integers(0, c, size=n).astype(np.int32),
        "soft": rng.dirichlet(np.ones(c), size=n).astype(dtype),
        "multi": (rng.random((n, c)) < 0.2).astype(dtype),
        "cost": rng.random((c, c)) * 3,
        "class_weight": rng.random(c) + 0.5,
        "upstream": rng.uniform(0.5, 2.0, size=(n, c)).astype(dtype),
    }


FUNCTIONS: dict[str, Callable[[Any, dict[str, Any], tf.Tensor], tf.Tensor]] = {
    "softmax_cost_focal": lambda m, p, z: m.softmax_cross_entropy(
        p["ids"], z, cost_matrix=p["cost"], focal_gamma=0.5, label_smoothing=0.1
    ),
    "softmax_soft_class_weight": lambda m, p, z: m.softmax_cross_entropy(
        p["soft"], z, class_weight=p["class_weight"], focal_gamma=2.0
    ),
    "expected_cost": lambda m, p, z: m.expected_cost(p["ids"], z, p["cost"], ce_weight=0.3),
    "sigmoid": lambda m, p, z: m.sigmoid_cross_entropy(
        p["multi"], z, pos_weight=p["class_weight"], focal_gamma=0.5
    ),
}
ORACLES: dict[str, Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]]] = {
    "softmax_cost_focal": lambda p: oracle.softmax_cross_entropy(
        p["ids"], p["logits"], cost_matrix=p["cost"], focal_gamma=0.5, label_smoothing=0.1
    ),
    "softmax_soft_class_weight": lambda p: oracle.softmax_cross_entropy(
        p["soft"], p["logits"], class_weight=p["class_weight"], focal_gamma=2.0
    ),
    "expected_cost": lambda p: oracle.expected_cost(
        p["ids"], p["logits"], p["cost"], ce_weight=0.3
    ),
    "sigmoid": lambda p: oracle.sigmoid_cross_entropy(
        p["multi"], p["logits"], pos_weight=p["class_weight"], focal_gamma=0.5
    ),
}
CLASS_COUNTS = (2, 10, 33, 1000)


def _upstream(fn: str, p: dict[str, Any]) -> np.ndarray:
    """The upstream gradient: per element for the sigmoid loss, per row otherwise."""
    return p["upstream"] if fn == "sigmoid" else p["upstream"][:, 0]


def _oracle_loss_and_grad(fn: str, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's loss and gradient of ``sum(upstream * loss)``."""
    loss, grad = ORACLES[fn](p)
    upstream = _upstream(fn, p)
    return loss, grad * (upstream if fn == "sigmoid" else upstream[:, None])


def _loss_and_grad(module: Any, fn: str, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Loss and the gradient of ``sum(upstream * loss)`` w.r.t. the logits, on the CPU."""
    with tf.device("/CPU:0"):
        z = tf.constant(p["logits"])
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = FUNCTIONS[fn](module, p, z)
            total = tf.reduce_sum(loss * _upstream(fn, p))
        return loss.numpy(), tape.gradient(total, z).numpy()


def all_outputs() -> dict[str, np.ndarray]:
    """Every function at every class count: ``{"<fn>-<C>-loss": ..., "<fn>-<C>-grad": ...}``."""
    out = {}
    for c in CLASS_COUNTS:
        p = _problem(c)
        for fn in FUNCTIONS:
            out[f"{fn}-{c}-loss"], out[f"{fn}-{c}-grad"] = _loss_and_grad(cx_ops, fn, p)
    return out


def fused_op_types() -> list[str]:
    """The fused op types in the graph of one traced call of every function."""
    p = _problem(10, n=8)
    everything = tf.function(lambda z: [FUNCTIONS[fn](cx_ops, p, z) for fn in FUNCTIONS])
    graph = everything.get_concrete_function(tf.constant(p["logits"])).graph
    return sorted({op.type for op in graph.get_operations()} & FUSED_TYPES)


# --------------------------------------------------------------------------------------
# Subprocesses, all started together when the module starts.

_THREADS_SCRIPT = """
import sys, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({threads})
sys.path.insert(0, {tests!r})
import test_dispatch
np.savez({out!r}, **test_dispatch.all_outputs())
assert tf.config.threading.get_intra_op_parallelism_threads() == {threads}
"""

_IMPORT_SCRIPT = """
import json, sys, warnings, numpy as np, tensorflow as tf
sys.path.insert(0, {package_parent!r})
sys.path.insert(1, {tests!r})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import costxent as cx
    assert cx.__file__.startswith({package_parent!r}), cx.__file__
    import test_dispatch
    implementation = cx.ops.implementation()
    np.savez({out!r}, **test_dispatch.all_outputs())
    fused = test_dispatch.fused_op_types()
print(json.dumps({{
    "implementation": implementation,
    "fused_op_types": fused,
    "runtime_warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
}}))
"""


def _broken_package(root: Path) -> Path:
    """A copy of the costxent Python package whose op library is not a shared object and
    whose build info names another TensorFlow."""
    package = root / "costxent"
    package.mkdir(parents=True)
    for source in PACKAGE.glob("*.py"):
        shutil.copy(source, package / source.name)
    (package / "_costxent_ops.so").write_text("not an ELF file\n")
    (package / "_build_info.py").write_text(
        f'TF_VERSION = "{FAKE_TF_VERSION}"\nWITH_CUDA = False\nCUDA_ARCHS = ""\n'
    )
    return root


@pytest.fixture(scope="module", autouse=True)
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Any]]:
    """Start every subprocess when the module starts, so that they run alongside the
    in-process tests; yield ``result(name) -> (arrays, stdout)``, which waits for one."""
    root = tmp_path_factory.mktemp("dispatch")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("COSTXENT_IMPLEMENTATION", None)
    broken = _broken_package(root / "broken")
    jobs = {
        "threads1": (_THREADS_SCRIPT, {"threads": 1}, env),
        "threads2": (_THREADS_SCRIPT, {"threads": 2}, env),
        "disabled": (
            _IMPORT_SCRIPT,
            {"package_parent": str(PACKAGE.parent)},
            {**env, "COSTXENT_IMPLEMENTATION": "reference"},
        ),
        "broken": (
            _IMPORT_SCRIPT,
            {"package_parent": str(broken)},
            {**env, "PYTHONPATH": str(broken)},
        ),
    }
    procs = {}
    for name, (script, fields, job_env) in jobs.items():
        code = script.format(tests=str(TESTS), out=str(root / f"{name}.npz"), **fields)
        with open(root / f"{name}.out", "w") as out, open(root / f"{name}.err", "w") as err:
            procs[name] = subprocess.Popen(
                [sys.executable, "-c", code], env=job_env, stdout=out, stderr=err
            )

    def result(name: str) -> tuple[dict[str, np.ndarray], str]:
        """The subprocess' arrays and stdout; fails the test if it did not succeed."""
        returncode = procs[name].wait(timeout=300)
        assert returncode == 0, (root / f"{name}.err").read_text()[-4000:]
        with np.load(root / f"{name}.npz") as arrays:
            return dict(arrays), (root / f"{name}.out").read_text()

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def fused_outputs() -> dict[str, np.ndarray]:
    return all_outputs()


def _assert_close_to(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float = 2e-5
) -> None:
    assert got.keys() == want.keys()
    for key in want:
        scale = max(1.0, float(np.max(np.abs(want[key]), initial=0.0)))
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-6 * scale, err_msg=key)


# --------------------------------------------------------------------------------------
# Determinism.


@pytest.mark.parametrize("c", CLASS_COUNTS)
@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_fused_op_is_bitwise_deterministic_over_runs(fn: str, c: int) -> None:
    p = _problem(c)
    first_loss, first_grad = _loss_and_grad(cx_ops, fn, p)
    for _ in range(4):
        loss, grad = _loss_and_grad(cx_ops, fn, p)
        np.testing.assert_array_equal(loss, first_loss)
        np.testing.assert_array_equal(grad, first_grad)
    # ... and deterministically right: the same numbers as the reference path.
    ref_loss, ref_grad = _loss_and_grad(cx.reference, fn, p)
    np.testing.assert_allclose(first_loss, ref_loss, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(first_grad, ref_grad, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_op_is_bitwise_identical_across_intra_op_thread_counts(
    spawned: Callable[[str], Any], fused_outputs: dict[str, np.ndarray], threads: int
) -> None:
    arrays, _ = spawned(f"threads{threads}")
    assert arrays.keys() == fused_outputs.keys()
    for key, want in fused_outputs.items():
        np.testing.assert_array_equal(arrays[key], want, err_msg=key)


# --------------------------------------------------------------------------------------
# Which implementation runs.


def test_implementation_is_fused_cpu_and_traces_the_fused_ops() -> None:
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible; tests/gpu covers the fused-gpu dispatch")
    assert cx.ops.implementation() == "fused-cpu"
    assert fused_op_types() == sorted(FUSED_TYPES)


def test_environment_variable_disables_the_fused_op(
    spawned: Callable[[str], Any], fused_outputs: dict[str, np.ndarray]
) -> None:
    arrays, stdout = spawned("disabled")
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["implementation"] == "reference: disabled by COSTXENT_IMPLEMENTATION=reference"
    assert report["fused_op_types"] == []
    assert report["runtime_warnings"] == []  # a deliberate choice is not a warning
    _assert_close_to(arrays, fused_outputs)


def test_import_with_a_broken_op_library_warns_once_and_falls_back(
    spawned: Callable[[str], Any], fused_outputs: dict[str, np.ndarray]
) -> None:
    arrays, stdout = spawned("broken")
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["implementation"].startswith(
        f"reference: the op library was built for TensorFlow {FAKE_TF_VERSION}"
    )
    assert report["fused_op_types"] == []
    assert len(report["runtime_warnings"]) == 1, report["runtime_warnings"]
    message = report["runtime_warnings"][0]
    assert f"built for TensorFlow {FAKE_TF_VERSION}" in message
    assert f"TensorFlow {tf.__version__}" in message
    _assert_close_to(arrays, fused_outputs)


@pytest.fixture
def broken_library(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point the loader at a non-ELF file (or at nothing) and at build info naming another
    TensorFlow; restore the real library afterwards."""
    if request.param == "garbage":
        (tmp_path / _library._LIBRARY_FILE).write_bytes(b"\x7fNOT an ELF shared object\n")
    monkeypatch.setattr(_library, "__file__", str(tmp_path / "_library.py"))
    fake_info = types.ModuleType("costxent._build_info")
    fake_info.TF_VERSION, fake_info.WITH_CUDA, fake_info.CUDA_ARCHS = FAKE_TF_VERSION, False, ""
    monkeypatch.setitem(sys.modules, "costxent._build_info", fake_info)
    monkeypatch.setattr(cx, "_build_info", fake_info, raising=False)
    _library.load.cache_clear()
    yield request.param
    monkeypatch.undo()
    _library.load.cache_clear()
    assert cx.ops.implementation().startswith("fused") or tf.config.list_physical_devices("GPU")


@pytest.mark.parametrize("broken_library", ["garbage", "missing"], indirect=True)
def test_broken_op_library_warns_once_and_falls_back(
    broken_library: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = _problem(10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cx.ops.implementation()
        results = {fn: _loss_and_grad(cx_ops, fn, p) for fn in FUNCTIONS}
        second = cx.ops.implementation()
    runtime = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(runtime) == 1, runtime
    if broken_library == "garbage":
        assert f"built for TensorFlow {FAKE_TF_VERSION}" in runtime[0]
        assert f"does not load in TensorFlow {tf.__version__}" in runtime[0]
    else:
        assert f"{_library._LIBRARY_FILE} is not installed" in runtime[0]
    assert first == second and first.startswith("reference: ")
    assert first[len("reference: ") :] in runtime[0]
    reasons = [
        r for r in caplog.records if r.name == "costxent" and "pure-TF reference" in r.message
    ]
    assert len(reasons) == 1, [r.message for r in reasons]
    assert fused_op_types() == []
    for fn, (loss, grad) in results.items():
        want_loss, want_grad = _loss_and_grad(cx.reference, fn, p)
        np.testing.assert_array_equal(loss, want_loss)
        np.testing.assert_array_equal(grad, want_grad)
    want_loss, want_grad = _oracle_loss_and_grad("expected_cost", p)
    np.testing.assert_allclose(results["expected_cost"][0], want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results["expected_cost"][1], want_grad, rtol=1e-5, atol=1e-5)


def test_xla_runs_the_fused_op_and_matches_the_eager_fused_result() -> None:
    p = _problem(33)
    z = tf.constant(p["logits"])
    outside = cx.ops.implementation()
    seen = []

    @tf.function(jit_compile=True)
    def compiled(z: tf.Tensor) -> tuple[tf.Tensor, ...]:
        seen.append(cx.ops.implementation())
        with tf.GradientTape() as tape:
            tape.watch(z)
            losses = [FUNCTIONS[fn](cx_ops, p, z) for fn in FUNCTIONS]
            total = sum(tf.reduce_sum(loss) for loss in losses)
        return (*losses, tape.gradient(total, z))

    got = compiled(z)
    assert seen == ["fused-xla-cpu"], seen
    graph = compiled.get_concrete_function(z).graph
    assert {op.type for op in graph.get_operations()} >= FUSED_TYPES
    with tf.GradientTape() as tape:
        tape.watch(z)
        eager = [FUNCTIONS[fn](cx_ops, p, z) for fn in FUNCTIONS]
        total = sum(tf.reduce_sum(loss) for loss in eager)
    eager.append(tape.gradient(total, z))
    for g, e in zip(got, eager):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5)
    assert cx.ops.implementation() == outside  # nothing leaks out of XLA


# --------------------------------------------------------------------------------------
# Which fused op runs where: loss-only forward, recomputed gradient, reduced Keras losses.

def _op_types(graph: tf.Graph) -> list[str]:
    return sorted(op.type for op in graph.get_operations() if op.type.startswith("Costxent"))


@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_loss_only_forward_and_recomputed_gradient(fn: str) -> None:
    p = _problem(10, n=40, dtype=np.float64)
    z = tf.constant(p["logits"])
    upstream = _upstream(fn, p)
    loss_type = "CostxentSigmoidLoss" if fn == "sigmoid" else "CostxentSoftmaxLoss"

    untaped = tf.function(lambda z: FUNCTIONS[fn](cx_ops, p, z))
    assert _op_types(untaped.get_concrete_function(z).graph) == [loss_type]

    @tf.function
    def taped(z: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = tf.reduce_sum(FUNCTIONS[fn](cx_ops, p, z) * upstream)
        return tape.gradient(total, z)

    # The forward writes no gradient; the backward reads the logits once and writes it once.
    assert _op_types(taped.get_concrete_function(z).graph) == [loss_type, loss_type + "Grad"]

    @tf.function
    def graph_gradients(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss = FUNCTIONS[fn](cx_ops, p, z)
        return loss, tf.gradients(loss * upstream, z)[0]

    loss, grad = graph_gradients(z)
    want_loss, want_grad = _oracle_loss_and_grad(fn, p)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(taped(z), grad, rtol=1e-12, atol=1e-14)


class _RecordingLibrary:
    """The op library, recording the name of every fused loss op it builds."""

    def __init__(self, library: Any) -> None:
        self._library = library
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        op = getattr(self._library, name)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return op(*args, **kwargs)

        return recorded


@pytest.mark.parametrize("kind", ["categorical", "binary"])
def test_keras_fit_uses_the_reduced_op_and_evaluate_the_loss_only_op(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _RecordingLibrary(cx_ops._op_library())
    monkeypatch.setattr(cx_ops, "_op_library", lambda: recorder)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    if kind == "categorical":
        y = rng.integers(0, 3, size=100)
        loss = cx.WeightedCategoricalCrossentropy(cost_matrix=COST, from_logits=True)
        expected = lambda z: oracle.softmax_cross_entropy(y, z, cost_matrix=COST)[0]  # noqa: E731
        name = "softmax"
    else:
        y = (rng.random((100, 3)) < 0.3).astype(np.float32)
        loss = cx.WeightedBinaryCrossentropy(pos_weight=[2.0, 1.0, 0.5], from_logits=True)
        expected = lambda z: np.mean(  # noqa: E731
            oracle.sigmoid_cross_entropy(y, z, pos_weight=[2.0, 1.0, 0.5])[0], axis=-1
        )
        name = "sigmoid"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=loss, jit_compile=False)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert f"costxent_{name}_loss_reduced" in recorder.calls
    assert f"costxent_{name}_loss" not in recorder.calls
    recorder.calls.clear()
    logits = model.predict(x, verbose=0).astype(np.float64)
    want = float(np.mean(expected(logits)))
    # Two evaluations with different batch sizes (a partial last batch each time).
    for batch_size in (32, 64):
        got = model.evaluate(x, y, batch_size=batch_size, verbose=0)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert recorder.calls and set(recorder.calls) == {f"costxent_{name}_loss"}
