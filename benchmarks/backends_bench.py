"""Forward + backward of the cost-matrix softmax loss on the CPU under the running Keras
backend: the fused path against the backend's own composite (the ``keras.ops`` reference),
eager and compiled (``torch.compile`` / ``jax.jit``), side by side in one interleaved run.

    KERAS_BACKEND=torch python benchmarks/backends_bench.py [--classes 10 1000] [--rounds 5]
    KERAS_BACKEND=jax python benchmarks/backends_bench.py --out benchmarks/results

Prints one row per (C, variant): the median milliseconds and the ratio to the first variant
(the fused per-example call: eager on torch, jax.jit on JAX) and the Keras loss object (its
mean folded into the fused pass). --out also writes JSON, text and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import statistics
import time
from pathlib import Path
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
        keras_loss = WeightedCategoricalCrossentropy(cost_matrix=cost, from_logits=True)
        return {
            "fused eager": step(torch_ops.softmax_params_loss),
            "fused Keras loss eager": step(lambda a, b, p: keras_loss(a, b)),
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


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Each variant's time over the fused per-example call's, per C, as grouped bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return
    classes = sorted({r["classes"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ratios = [next(r["vs_first"] for r in rows if r["classes"] == c and r["variant"] == name)
                  for c in classes]
        ax.bar([x + k * width for x in range(len(classes))], ratios, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(classes))], [f"C = {c}" for c in classes])
    ax.set_yscale("log")
    ax.set_ylabel("time / first variant's time")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--total-elements", type=int, default=1 << 22)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None,
                        help="also write backends-<backend>.{json,txt,png} into this folder")
    args = parser.parse_args()
    import costxent

    backend = keras.backend.backend()
    framework = __import__("torch" if backend == "torch" else backend)
    header = (f"{_cpu_model()}, {os.cpu_count()} cores; Keras {keras.__version__} on "
              f"{backend} {framework.__version__}; costxent {costxent.implementation()}; "
              f"N*C = {args.total_elements}, float32, sparse labels, cost matrix; forward + "
              f"backward, median of {args.rounds} interleaved rounds")
    lines = [header]
    print(header)
    rows: list[dict[str, Any]] = []
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
            rows.append(dict(classes=c, variant=name, ms=ms, vs_first=ms / (base * 1e3)))
            line = f"{backend:6s} C={c:<6d} {name:26s} {ms:9.2f} ms  {ms / (base * 1e3):6.2f}x"
            lines.append(line)
            print(line)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"backends-{backend}"
        stem.with_suffix(".json").write_text(json.dumps(dict(header=header, rows=rows), indent=1))
        stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        _plot(rows, header, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
