"""Fixed sets of softmax launches for the device script's tools (run.sh), and the launch plan.

  python launches.py plan OUT.json   the launch plan of every dtype at the regime edges and
                                     the benchmark's C (from _core.launch_plan where it
                                     exists, else tests/gpu/regimes.py's model); no GPU needed
  python launches.py regimes         one small launch per mode kind, dtype and regime (the
                                     smallest C of each), under compute-sanitizer memcheck and
                                     racecheck: a few rows each, a cost matrix only where small
  python launches.py shapes          12 launches at N*C = 2^24: float32 and bfloat16 at the
                                     benchmark's C, for Nsight Compute (bytes, instructions,
                                     occupancy)

The launch scripts print only to stderr (ncu writes its CSV to stdout) and exit non-zero if a
launch fails or an output is not finite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "gpu"))
import regimes  # noqa: E402
from core_cases import DTYPES, load_core  # noqa: E402

BENCH_CLASSES = (2, 10, 100, 1000, 32768, 131072)


def say(message: str) -> None:
    print(f"[launches] {message}", file=sys.stderr, flush=True)


def regime_classes(dtype: str, plan) -> dict[str, int]:
    """The smallest C of each regime of dtype, by regime name."""
    smallest: dict[str, int] = {}
    for c in [2, *regimes.edges(dtype, plan)]:
        smallest.setdefault(regimes.regime_key(plan(dtype, c)), c)
    return smallest


def write_plan(core, path: Path) -> None:
    plan = regimes.planner(core)
    source = "launch_plan" if hasattr(core, "launch_plan") else "model (_core has no launch_plan)"
    report = {"source": source, "dtypes": {}}
    for dtype in DTYPES:
        edges = regimes.edges(dtype, plan)
        rows = []
        for c in sorted({2, *edges, *BENCH_CLASSES}):
            p, m = plan(dtype, c), regimes.model_plan(dtype, c)
            row = {"C": c, "regime": regimes.regime_key(p), "plan": p.__dict__}
            if hasattr(core, "launch_plan"):
                row["raw"] = repr(core.launch_plan(dtype, c))
                row["model"] = m.__dict__
            rows.append(row)
        report["dtypes"][dtype] = {"edges": edges, "rows": rows}
    path.write_text(json.dumps(report, indent=1))
    say(f"launch plan ({source}) in {path}")


def launch(core, torch, mode: str, dtype: str, n: int, c: int) -> bool:
    """One softmax launch of `mode` (plain sparse, focal soft, expected cost); True if its
    outputs are finite."""
    g = torch.Generator(device="cuda").manual_seed(c)
    z = (torch.randn(n, c, device="cuda", generator=g) * 3).to(getattr(torch, dtype))
    acc = torch.float64 if dtype == "float64" else torch.float32
    kwargs = {}
    weights = None
    if mode == "plain":
        labels = torch.randint(0, c, (n,), device="cuda", generator=g, dtype=torch.int32)
    elif mode == "focal":
        labels = torch.softmax(torch.randn(n, c, device="cuda", generator=g), 1).to(z.dtype)
        kwargs = {"focal_gamma": 2.0, "label_smoothing": 0.1}
    else:
        labels = torch.randint(0, c, (n,), device="cuda", generator=g, dtype=torch.int64)
        weights = torch.rand(c, c, device="cuda", generator=g, dtype=acc)
        kwargs = {"loss_kind": "expected_cost", "ce_weight": 0.2}
    loss = torch.full((n,), float("nan"), device="cuda", dtype=acc)
    backprop = torch.full_like(z, float("nan"))
    core.softmax_loss(z, labels, weights, **kwargs, loss=loss, backprop=backprop,
                      stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return bool(torch.isfinite(loss).all() and torch.isfinite(backprop).all())


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("plan", "regimes", "shapes"):
        say(__doc__)
        return 2
    core = load_core()
    if sys.argv[1] == "plan":
        write_plan(core, Path(sys.argv[2]))
        return 0
    import torch

    bad = 0
    if sys.argv[1] == "regimes":
        plan = regimes.planner(core)
        for dtype in DTYPES:
            for name, c in regime_classes(dtype, plan).items():
                for mode in ("plain", "focal", "expected") if c <= 1024 else ("plain", "focal"):
                    ok = launch(core, torch, mode, dtype, 5 if c < 32768 else 2, c)
                    say(f"{dtype} C={c} ({name}) {mode}: {'ok' if ok else 'NOT FINITE'}")
                    bad += not ok
    else:
        for dtype in ("float32", "bfloat16"):
            for c in BENCH_CLASSES:
                ok = launch(core, torch, "plain", dtype, max(1, (1 << 24) // c), c)
                say(f"{dtype} C={c}: {'ok' if ok else 'NOT FINITE'}")
                bad += not ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
