"""tf.distribute: MirroredStrategy over two logical CPU devices and MultiWorkerMirroredStrategy with two local workers on loopback give
the weights of single-device training on the same global batches, with and without
jit_compile. Every run is a fresh process (logical devices and TF_CONFIG must be set before
TensorFlow starts), all started together and bounded in time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import costxent as cx

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "distribute_worker.py"
PACKAGE_ROOT = Path(cx.__file__).absolute().parent.parent
TIMEOUT_S = 240


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


Trained = dict[tuple[str, bool], "list[np.ndarray] | str"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Every run's weights, or its output where it failed."""
    out = tmp_path_factory.mktemp("distribute")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), CUDA_VISIBLE_DEVICES="")
    runs: dict[tuple[str, bool], list[tuple[subprocess.Popen, Path]]] = {}
    # Taken in one call: ports released by separate calls can come back twice, and the two
    # multi-worker runs start side by side.
    free_ports = _free_ports(4)
    for jit in (False, True):
        flag = "1" if jit else "0"
        for mode in ("single", "mirrored"):
            path = out / f"{mode}-{flag}.npz"
            runs[(mode, jit)] = [(subprocess.Popen(
                [sys.executable, str(WORKER), mode, flag, str(path)], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT), path)]
        ports = ",".join(map(str, free_ports[2 * jit:2 * jit + 2]))
        paths = [out / f"multiworker-{flag}-{w}.npz" for w in (0, 1)]
        runs[("multiworker", jit)] = [
            (subprocess.Popen(
                [sys.executable, str(WORKER), "multiworker", flag, str(path), str(w), ports],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), path)
            for w, path in enumerate(paths)
        ]
    results: Trained = {}
    for key, procs in runs.items():
        weights = []
        for proc, path in procs:
            try:
                output, _ = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                results[key] = f"timed out after {TIMEOUT_S} s: " + output.decode(errors="replace")
                continue
            if proc.returncode != 0:
                results[key] = output.decode(errors="replace")
                continue
            weights.append(_weights(path))
        if key in results:
            continue
        for other in weights[1:]:  # every worker ends with the same weights
            for a, b in zip(weights[0], other):
                np.testing.assert_array_equal(a, b)
        results[key] = weights[0]
    return results


def _get(trained: Trained, key: tuple[str, bool]) -> list[np.ndarray]:
    result = trained[key]
    assert not isinstance(result, str), f"{key} failed:\n{result[-3000:]}"
    return result


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "jit_compile"])
@pytest.mark.parametrize("mode", ["mirrored", "multiworker"])
def test_distributed_training_matches_single_device(
    trained: Trained, mode: str, jit: bool
) -> None:
    for got, want in zip(_get(trained, (mode, jit)), _get(trained, ("single", jit))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_xla_and_tf_function_training_agree(trained: Trained) -> None:
    for a, b in zip(_get(trained, ("single", True)), _get(trained, ("single", False))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
