"""Forward + backward of the cost-matrix softmax loss on the CPU under the running Keras
backend: the fused path against the backend's own composite (the ``keras.ops`` reference),
eager and compiled (``torch.compile`` / ``jax.jit``), side by side in one interleaved run.

    KERAS_BACKEND=torch python benchmarks/backends_bench.py [--classes 10 1000] [--rounds 5]
    KERAS_BACKEND=jax python benchmarks/backends_bench.py

Prints one row per (C, variant): the median milliseconds and the ratio to the fused eager
call; on JAX also the Keras loss object (its mean folded into the fused pass).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import keras
import numpy as np

from costxent import _portable
from costxent._checks import checked_weights
from costxent.losses import WeightedCategoricalCrossentropy


def _variants(labels: np.ndarray, logits: np.ndarray, cost: Any) -> dict[str, Callable[[], Any]]:
    """name -> a call that runs forward + backward once and waits for the result."""
    params = _portable.SoftmaxParams(cost_matrix=cost)
    if keras.backend.backend() == "torch":
        import torch

        from costxent import torch_ops

        y, z = torch.as_tensor(labels), torch.as_tensor(logits)

        def step(loss_fn: Callable) -> Callable[[], Any]:
            def run() -> Any:
                x = z.detach().requires_grad_()
                loss_fn(y, x, params).sum().backward()
                return x.grad

            return run

        fused = torch.compile(lambda a, b, p: torch_ops.softmax_params_loss(a, b, p))
        composite = torch.compile(lambda a, b, p: _portable.softmax_loss(a, b, p))
        return {
            "fused eager": step(torch_ops.softmax_params_loss),
            "fused torch.compile": step(fused),
            "composite eager": step(_portable.softmax_loss),
            "composite torch.compile": step(composite),
        }
    import jax

    from costxent import jax_ops

    y, z = jax.numpy.asarray(labels), jax.numpy.asarray(logits)
    keras_loss = WeightedCategoricalCrossentropy(cost_matrix=cost, from_logits=True)

    def step(loss_fn: Callable) -> Callable[[], Any]:
        grad = jax.jit(jax.grad(lambda z, y: loss_fn(y, z)))
        return lambda: grad(z, y).block_until_ready()

    return {
        "fused jax.jit": step(lambda y, z: jax_ops.softmax_params_loss(y, z, params).sum()),
        "fused Keras loss jax.jit": step(keras_loss),
        "composite jax.jit": step(lambda y, z: _portable.softmax_loss(y, z, params).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--total-elements", type=int, default=1 << 22)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for c in args.classes:
        n = args.total_elements // c
        logits = rng.normal(size=(n, c)).astype(np.float32)
        labels = rng.integers(0, c, size=n)
        cost = checked_weights("cost_matrix", rng.uniform(0.5, 2.0, size=(c, c)), True)
        variants = _variants(labels, logits, cost)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up: compilation
            run()
        for _ in range(args.rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(next(iter(times.values())))
        for name, values in times.items():
            ms = statistics.median(values) * 1e3
            print(f"{keras.backend.backend():6s} C={c:<6d} {name:26s} {ms:9.2f} ms"
                  f"  {ms / (base * 1e3):6.2f}x")


if __name__ == "__main__":
    main()
