"""Export: a model trained with costxent's losses exports with ``model.export`` and serves in
a fresh process that cannot import costxent (losses are not part of the inference graph);
a SavedModel whose graph holds the fused ops loads once ``import costxent`` has loaded the
op library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import costxent as cx

PACKAGE_ROOT = Path(cx.__file__).absolute().parent.parent
COST = np.array([[0, 1, 4], [2, 0, 1], [1, 3, 0]], np.float32)

SERVE = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.modules["costxent"] = None  # as if not installed: any import of it raises ImportError
import numpy as np, tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], served.serve(tf.constant(x)).numpy())
assert "_costxent_ops.so" not in open("/proc/self/maps").read()
"""

LOAD_WITH_OPS = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import costxent  # loads the op library, so the fused ops in the graph resolve
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
print(float(tf.reduce_sum(loaded.loss(tf.constant(np.load(sys.argv[2]))))))
"""


def _run(script: str, *args: str, pythonpath: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd="/")


def test_exported_model_serves_without_costxent(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=48)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer="sgd", jit_compile=True,
                  loss=cx.WeightedCategoricalCrossentropy(cost_matrix=COST, from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    export = tmp_path / "exported"
    model.export(str(export), verbose=False)
    graph = (export / "saved_model.pb").read_bytes()
    assert b"Costxent" not in graph  # the loss is not part of the inference graph

    np.save(tmp_path / "x.npy", x)
    out = _run(SERVE, str(export), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
               pythonpath="")
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_saved_model_with_fused_ops_loads_after_import(tmp_path: Path) -> None:
    class Loss(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def loss(self, z: tf.Tensor) -> tf.Tensor:
            ids = tf.zeros(tf.shape(z)[:1], tf.int32)
            return cx.ops.softmax_cross_entropy(ids, z, cost_matrix=COST)

    module = Loss()
    z = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    ops = {op.type for op in module.loss.get_concrete_function().graph.get_operations()}
    assert "CostxentSoftmaxLoss" in ops
    path = tmp_path / "with_ops"
    tf.saved_model.save(module, str(path))
    np.save(tmp_path / "z.npy", z)
    out = _run(LOAD_WITH_OPS, str(path), str(tmp_path / "z.npy"), pythonpath=str(PACKAGE_ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    want = cx.reference.softmax_cross_entropy(np.zeros(5, np.int32), z, cost_matrix=COST)
    np.testing.assert_allclose(float(out.stdout.strip().splitlines()[-1]),
                               float(tf.reduce_sum(want)), rtol=1e-6)
