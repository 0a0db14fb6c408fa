"""``python -m costxent demo | bench | info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence


def info() -> int:
    """Print versions, the active implementation, and a small worked cost-matrix example, on
    the running Keras backend (TensorFlow, JAX or PyTorch)."""
    import keras
    import numpy as np
    from keras import ops as kops

    import costxent as cx

    try:
        from costxent import _build_info

        built_for = f"TensorFlow {_build_info.TF_VERSION}, CUDA kernels: {_build_info.WITH_CUDA}"
    except ImportError:
        built_for = "not built"
    backend = keras.backend.backend()
    framework = __import__("torch" if backend == "torch" else backend)
    print(f"costxent {cx.__version__}")
    print(f"Keras {keras.__version__} on {backend} {framework.__version__}")
    print(f"libraries: built for {built_for}")
    print(f"implementation: {cx.implementation()}")

    # M[true, predicted]: a true 1 predicted as 2 costs 5, predicted as 0 costs 2.
    cost = np.array([[0.0, 1.0, 1.0], [2.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    logits = np.array([[3.0, 1.0, 0.0], [0.5, 0.0, 2.5], [2.0, 0.1, 0.1]], np.float32)
    labels = np.array([0, 1, 1])
    per_example = dict(from_logits=True, reduction=None)
    columns = [
        cx.WeightedCategoricalCrossentropy(**per_example)(labels, logits),
        cx.WeightedCategoricalCrossentropy(cost_matrix=cost, **per_example)(labels, logits),
        cx.ExpectedCostLoss(cost, **per_example)(labels, logits),
    ]
    plain, weighted, expected = (kops.convert_to_numpy(c) for c in columns)
    print("\nWorked example, cost matrix M[true, predicted]:")
    print(cost)
    print("row  true  predicted  M[true,pred]  cross-entropy  cost-weighted CE  expected cost")
    predicted = logits.argmax(axis=-1)
    for i in range(3):
        y, j = int(labels[i]), int(predicted[i])
        print(
            f"{i:3d}  {y:4d}  {j:9d}  {cost[y, j]:12.1f}  {plain[i]:13.4f}  "
            f"{weighted[i]:16.4f}  {expected[i]:13.4f}"
        )
    return 0


def bench_harness_dir() -> Optional[Path]:
    """The ``benchmarks/`` folder holding the CPU benchmark harness, or None.

    The harness is tooling, not part of the package, so wheels do not ship it: look in the
    source tree this package was loaded from (a checkout, an editable install or
    ``tools/dev_build.sh``, whose package links back into the tree), then in the current
    folder (an installed package run from a checkout's root).
    """
    source_root = Path(__file__).resolve().parents[2]
    for root in (source_root, Path.cwd()):
        if (root / "benchmarks" / "cpu_bench.py").is_file():
            return root / "benchmarks"
    return None


def bench(argv: Sequence[str]) -> int:
    """``python -m costxent bench``: run ``benchmarks/cpu_bench.py`` with ``argv``."""
    harness = bench_harness_dir()
    if harness is None:
        print(
            "python -m costxent bench runs benchmarks/cpu_bench.py from the costxent source "
            "tree, which installed wheels do not include: run it from the root of a checkout "
            "of the repository (or run `python benchmarks/cpu_bench.py` there).",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(harness))
    import cpu_bench

    return cpu_bench.main(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m costxent``."""
    parser = argparse.ArgumentParser(prog="python -m costxent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, active implementation and a worked example")
    sub.add_parser("demo", help="train on imbalanced digits with four losses", add_help=False)
    sub.add_parser("bench", help="benchmark the fused kernels against pure TF", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        return info()
    if args.command == "demo":
        from costxent import demo

        return demo.main(rest)
    return bench(rest)


if __name__ == "__main__":
    sys.exit(main())
