"""Trains the distribution tests' tiny model and saves its weights (run as a subprocess by
test_distribute.py): ``python distribute_worker.py MODE JIT OUT [WORKER PORTS]``.

MODE ``single`` trains on one device; ``mirrored`` under MirroredStrategy over two logical
CPU devices; ``multiworker`` as worker WORKER of a MultiWorkerMirroredStrategy whose workers
listen on loopback PORTS (comma-separated). Every mode trains on the same global batches of 16,
so the weights must agree with single-device training.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main() -> None:
    mode, jit, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    if mode == "multiworker":
        worker, ports = int(sys.argv[4]), sys.argv[5].split(",")
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": worker},
        })
    import tensorflow as tf

    import costxent as cx  # before TensorFlow sets up its devices, so XLA sees the fused ops

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    import keras

    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=64).astype(np.int64)
    cost = np.array([[0, 1, 2, 3], [2, 0, 5, 1], [1, 1, 0, 2], [4, 1, 1, 0]], np.float32)
    global_batch = 16

    # Step s trains on elements [16 s, 16 s + 16) everywhere: the strategy splits each
    # global batch into consecutive per-replica halves (across workers rebatched before
    # DATA sharding).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch).with_options(options)

    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(4),
        ])
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    loss_fn = cx.WeightedCategoricalCrossentropy(cost_matrix=cost, from_logits=True)

    # Keras' model.fit cannot run MultiWorkerMirroredStrategy on a tf.data input here (its
    # symbolic build reduces the (x, y) tuple, which the collective strategy refuses), so
    # every mode runs the same loop: Keras' own loss scaling (the mean loss divided by the
    # replicas in sync), the gradient under XLA or not, Keras' optimizer summing replicas.
    seen = []

    @tf.function(jit_compile=jit)
    def gradients(x: tf.Tensor, y: tf.Tensor) -> list[tf.Tensor]:
        seen.append(cx.ops.implementation())
        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    @tf.function
    def train(batch: tuple[tf.Tensor, tf.Tensor]) -> None:
        def replica_step(x: tf.Tensor, y: tf.Tensor) -> None:
            optimizer.apply_gradients(zip(gradients(x, y), model.trainable_variables))

        strategy.run(replica_step, args=batch)

    batches = data if mode == "single" else strategy.experimental_distribute_dataset(data)
    for _ in range(2):
        for batch in batches:
            train(batch)
    expected = "fused-xla-cpu" if jit else "fused-cpu"
    assert seen and set(seen) == {expected}, seen
    np.savez(out, *model.get_weights())


if __name__ == "__main__":
    main()
