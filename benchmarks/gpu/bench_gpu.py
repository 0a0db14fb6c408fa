"""Forward+gradient of the class-weighted softmax cross-entropy on one CUDA GPU, side by side:

  costxent   the fused kernel through costxent._core (loss and d loss / d logits, one pass)
  copy       a device-to-device copy of the logits: the bandwidth ceiling for the same bytes
  eager      the same maths as a PyTorch eager composite
  compile    that composite under torch.compile
  jax        the same maths as a JAX jit composite (XLA, what TensorFlow's jit_compile uses)

for C in {2, 10, 100, 1000, 32768, 131072}, float32 and bfloat16, N*C about 2^26 and 2^28.
Bandwidth counts the logits read once and the gradient written once (labels, weights and
the loss, at most a few percent, are not counted) for every competitor.

Timing (the device tool's METHOD.md): each competitor is warmed up, then timed in batches of
back-to-back calls, rotating between input sets when one set would fit in L2, between CUDA
events on PyTorch's stream (JAX runs on its own stream: host clock around the batch, after
block_until_ready); the figure is the median over batches of batch time / calls, with the
spread. A competitor that fails records its error and the run goes on.

Writes bench_gpu.json, bench_gpu.md and bench_gpu.png under --out. Loads _core without
importing costxent (set COSTXENT_CORE to the built _core*.so, as run.sh does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# JAX must not grab most of the GPU's memory up front: PyTorch shares the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils.dlpack  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from core_cases import load_core  # noqa: E402

CLASSES = (2, 10, 100, 1000, 32768, 131072)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SIZES = (26, 28)  # log2 of N * C
COMPETITORS = ("costxent", "copy", "eager", "compile", "jax")
# DESIGN 6: fraction of the copy bandwidth, and speed-ups over JAX jit and eager.
TARGET_COPY_FRACTION = {2: 0.60, 10: 0.60}
TARGET_COPY_FRACTION_DEFAULT = 0.85
TARGET_VS_JAX = 1.5
TARGET_VS_EAGER = 3.0


def log(message: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------
# The maths, as composites: loss_i = a[y_i] (lse_i - z_iy), grad = a[y_i] (softmax_i - e_y).


def torch_composite(z: torch.Tensor, y: torch.Tensor, a: torch.Tensor):
    zf = z.float()
    lse = torch.logsumexp(zf, dim=1)
    w = a[y]
    loss = w * (lse - zf.gather(1, y[:, None]).squeeze(1))
    grad = torch.exp(zf - lse[:, None])
    grad.scatter_add_(1, y[:, None], torch.full_like(w[:, None], -1.0))
    grad.mul_(w[:, None])
    return loss, grad.to(z.dtype)


def jax_composite_factory():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def composite(z, y, a):
        zf = z.astype(jnp.float32)
        m = jnp.max(zf, axis=1, keepdims=True)
        e = jnp.exp(zf - m)
        s = jnp.sum(e, axis=1, keepdims=True)
        lse = (m + jnp.log(s))[:, 0]
        w = a[y]
        loss = w * (lse - jnp.take_along_axis(zf, y[:, None], axis=1)[:, 0])
        onehot = jax.nn.one_hot(y, z.shape[1], dtype=jnp.float32)
        grad = w[:, None] * (e / s - onehot)
        return loss, grad.astype(z.dtype)

    return jax, composite


# ---------------------------------------------------------------------------------------
# Timing.


def time_batches(
    run: Callable[[int], Any],
    sets: int,
    *,
    sync: Callable[[], None],
    device_timer: bool,
    min_batch_s: float = 0.02,
    batches: int = 7,
) -> dict[str, Any]:
    """Median seconds per call of run(i) (i rotates over the input sets), and the spread."""
    for i in range(2 * sets):  # warm-up: compilation, allocator, caches
        run(i)
    sync()
    start = time.perf_counter()
    run(0)
    sync()
    single = max(time.perf_counter() - start, 1e-6)
    calls = max(sets, int(math.ceil(min_batch_s / single / sets)) * sets)
    per_call = []
    for _ in range(batches):
        if device_timer:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for i in range(calls):
                run(i)
            end.record()
            end.synchronize()
            seconds = begin.elapsed_time(end) / 1e3
        else:
            sync()
            t0 = time.perf_counter()
            for i in range(calls):
                run(i)
            sync()
            seconds = time.perf_counter() - t0
        per_call.append(seconds / calls)
    return {
        "seconds": statistics.median(per_call),
        "min_seconds": min(per_call),
        "max_seconds": max(per_call),
        "calls_per_batch": calls,
        "batches": batches,
    }


# ---------------------------------------------------------------------------------------
# One configuration.


class Config:
    def __init__(self, dtype: str, c: int, log2_size: int, l2_bytes: int):
        self.dtype, self.c = dtype, c
        self.n = max(1, (1 << log2_size) // c)
        self.elements = self.n * c
        self.logit_bytes = self.elements * DTYPES[dtype].itemsize
        self.bytes = 2 * self.logit_bytes  # logits read once, gradient written once
        # Enough input sets that one pass over all of them cannot live in L2.
        self.sets = min(4, max(1, math.ceil(3 * l2_bytes / self.bytes)))

    def key(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "C": self.c, "N": self.n, "elements": self.elements,
                "bytes_moved": self.bytes, "input_sets": self.sets}


def make_inputs(cfg: Config, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    sets = []
    for _ in range(cfg.sets):
        z = (torch.randn(cfg.n, cfg.c, device="cuda", generator=generator) * 3).to(DTYPES[cfg.dtype])
        y64 = torch.randint(0, cfg.c, (cfg.n,), device="cuda", generator=generator)
        sets.append({
            "logits": z,
            "labels32": y64.to(torch.int32),
            "labels64": y64,
            "loss": torch.empty(cfg.n, device="cuda"),
            "backprop": torch.empty_like(z),
        })
    weights = torch.rand(cfg.c, device="cuda", generator=generator) * 3.75 + 0.25
    for s in sets:
        s["weights"] = weights
    return sets


def measure(cfg: Config, core, compiled: Callable | None, jax_parts, budget_left: Callable[[], float]) -> dict[str, Any]:
    result: dict[str, Any] = {**cfg.key(), "competitors": {}}
    generator = torch.Generator(device="cuda").manual_seed(cfg.c * 131 + len(cfg.dtype))
    sets = make_inputs(cfg, generator)
    stream = torch.cuda.current_stream().cuda_stream
    torch_sync = torch.cuda.synchronize

    # DLPack capsules exported once: _core borrows a capsule without consuming it, so a
    # call costs microseconds of host time instead of five exports.
    capsules = [{k: torch.utils.dlpack.to_dlpack(s[k])
                 for k in ("logits", "labels32", "weights", "loss", "backprop")} for s in sets]

    def ours(i: int) -> None:
        s = capsules[i % cfg.sets]
        core.softmax_loss(s["logits"], s["labels32"], s["weights"],
                          loss=s["loss"], backprop=s["backprop"], stream=stream)

    copy_dst = [torch.empty_like(s["logits"]) for s in sets]

    def copy(i: int) -> None:
        copy_dst[i % cfg.sets].copy_(sets[i % cfg.sets]["logits"])

    def eager(i: int) -> None:
        s = sets[i % cfg.sets]
        torch_composite(s["logits"], s["labels64"], s["weights"])

    runs: dict[str, tuple[Callable[[int], Any], Callable[[], None], bool]] = {
        "costxent": (ours, torch_sync, True),
        "copy": (copy, torch_sync, True),
        "eager": (eager, torch_sync, True),
    }
    if compiled is not None:
        for s in sets:  # one graph per (dtype, C), shared by the sizes: N is dynamic
            torch._dynamo.mark_dynamic(s["logits"], 0)
            torch._dynamo.mark_dynamic(s["labels64"], 0)

        def compiled_run(i: int) -> None:
            s = sets[i % cfg.sets]
            compiled(s["logits"], s["labels64"], s["weights"])

        runs["compile"] = (compiled_run, torch_sync, True)
    failed: dict[str, str] = {}
    if jax_parts is not None:
        jax, composite = jax_parts
        try:
            torch_sync()  # JAX reads these tensors on its own stream
            jsets = [tuple(jax.dlpack.from_dlpack(s[k]) for k in ("logits", "labels32", "weights"))
                     for s in sets]
            last: list[Any] = [None]

            def jax_run(i: int) -> None:
                last[0] = composite(*jsets[i % cfg.sets])

            def jax_sync() -> None:
                if last[0] is not None:
                    jax.block_until_ready(last[0])

            runs["jax"] = (jax_run, jax_sync, False)
        except Exception as e:
            failed["jax"] = f"sharing the inputs with JAX: {type(e).__name__}: {e}"

    for name in COMPETITORS:
        if name not in runs:
            result["competitors"][name] = {"error": failed.get(name, "not available (see the notes)")}
            continue
        if budget_left() <= 0 and name in ("compile", "jax"):
            result["competitors"][name] = {"error": "skipped: the run's time budget is spent"}
            continue
        run, sync, device_timer = runs[name]
        try:
            t0 = time.perf_counter()
            timing = time_batches(run, cfg.sets, sync=sync, device_timer=device_timer)
            timing["wall_s"] = time.perf_counter() - t0
            timing["gb_per_s"] = cfg.bytes / timing["seconds"] / 1e9
            result["competitors"][name] = timing
        except Exception as e:  # one competitor failing must not stop the others
            result["competitors"][name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name} failed for {cfg.key()}: {e}\n{traceback.format_exc(limit=3)}")
        torch.cuda.synchronize()

    result["check"] = check_against_eager(core, sets[0], cfg)
    return result


def check_against_eager(core, s: dict[str, torch.Tensor], cfg: Config) -> dict[str, Any]:
    """‖ours - eager‖ / ‖eager‖ for the loss and the gradient on the first input set."""
    try:
        loss = torch.full_like(s["loss"], float("nan"))
        backprop = torch.full_like(s["backprop"], float("nan"))
        core.softmax_loss(s["logits"], s["labels32"], s["weights"],
                          loss=loss, backprop=backprop,
                          stream=torch.cuda.current_stream().cuda_stream)
        want_loss, want_grad = torch_composite(s["logits"], s["labels64"], s["weights"])
        rel = lambda got, want: float(torch.linalg.vector_norm((got.double() - want.double()).flatten())
                                      / torch.linalg.vector_norm(want.double().flatten()))
        return {"loss_rel_err": rel(loss, want_loss), "grad_rel_err": rel(backprop, want_grad),
                "all_finite": bool(torch.isfinite(loss).all() and torch.isfinite(backprop).all())}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------
# Reports.


def target_fraction(c: int) -> float:
    return TARGET_COPY_FRACTION.get(c, TARGET_COPY_FRACTION_DEFAULT)


def summarize(result: dict[str, Any]) -> None:
    comp = result["competitors"]
    ours = comp.get("costxent", {}).get("seconds")
    copy = comp.get("copy", {}).get("seconds")
    summary: dict[str, Any] = {}
    if ours and copy:
        summary["fraction_of_copy"] = copy / ours
    for name in ("eager", "compile", "jax"):
        theirs = comp.get(name, {}).get("seconds")
        if ours and theirs:
            summary[f"speedup_vs_{name}"] = theirs / ours
    checks = {}
    if "fraction_of_copy" in summary:
        checks["copy"] = summary["fraction_of_copy"] >= target_fraction(result["C"])
    if "speedup_vs_jax" in summary:
        checks["jax"] = summary["speedup_vs_jax"] >= TARGET_VS_JAX
    if "speedup_vs_eager" in summary:
        checks["eager"] = summary["speedup_vs_eager"] >= TARGET_VS_EAGER
    summary["targets_met"] = checks
    result["summary"] = summary


def markdown(report: dict[str, Any]) -> str:
    def gbs(r: dict[str, Any], name: str) -> str:
        c = r["competitors"].get(name, {})
        return f"{c['gb_per_s']:.0f}" if "gb_per_s" in c else "error"

    def ratio(r: dict[str, Any], key: str) -> str:
        v = r["summary"].get(key)
        return f"{v:.2f}x" if v is not None else "-"

    lines = [
        f"# costxent fused softmax cross-entropy: forward+gradient on {report['device']['name']}",
        "",
        "Class-weighted sparse cross-entropy, loss and d loss / d logits. GB/s counts the logits",
        "read once and the gradient written once for every competitor; copy is a device-to-device",
        "copy of the logits (the ceiling). Medians of batched calls; see bench_gpu.json for spreads.",
        f"Targets (DESIGN 6): >= {TARGET_COPY_FRACTION_DEFAULT:.0%} of copy for C >= 100, "
        f">= {TARGET_COPY_FRACTION[2]:.0%} for C = 2 and 10; >= {TARGET_VS_JAX}x JAX jit; "
        f">= {TARGET_VS_EAGER}x eager.",
        "",
        "| dtype | C | N | costxent GB/s | copy GB/s | % of copy | eager GB/s | compile GB/s "
        "| JAX GB/s | vs eager | vs compile | vs JAX | targets | max rel. err vs eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["results"]:
        s = r["summary"]
        frac = f"{s['fraction_of_copy']:.0%}" if "fraction_of_copy" in s else "-"
        met = s["targets_met"]
        targets = " ".join(f"{k}:{'ok' if v else 'MISS'}" for k, v in met.items()) or "-"
        chk = r.get("check", {})
        err = (f"{max(chk['loss_rel_err'], chk['grad_rel_err']):.1e}" if "grad_rel_err" in chk
               else chk.get("error", "-"))
        lines.append(
            f"| {r['dtype']} | {r['C']} | {r['N']} | {gbs(r, 'costxent')} | {gbs(r, 'copy')} | {frac} "
            f"| {gbs(r, 'eager')} | {gbs(r, 'compile')} | {gbs(r, 'jax')} | {ratio(r, 'speedup_vs_eager')} "
            f"| {ratio(r, 'speedup_vs_compile')} | {ratio(r, 'speedup_vs_jax')} | {targets} | {err} |"
        )
    errors = [
        f"- {r['dtype']} C={r['C']} N={r['N']} {name}: {c['error']}"
        for r in report["results"]
        for name, c in r["competitors"].items()
        if "error" in c
    ]
    if errors or report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]] + errors
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no plot: {e}"
    figure, axes = plt.subplots(1, len(DTYPES), figsize=(6.5 * len(DTYPES), 4.5), squeeze=False)
    for axis, dtype in zip(axes[0], DTYPES):
        for name, color in zip(COMPETITORS, ("C3", "k", "C0", "C1", "C2")):
            for log2_size, style in zip(SIZES, (":", "-")):
                points = [
                    (r["C"], r["competitors"][name]["gb_per_s"])
                    for r in report["results"]
                    if r["dtype"] == dtype and r["log2_size"] == log2_size
                    and "gb_per_s" in r["competitors"].get(name, {})
                ]
                if points:
                    xs, ys = zip(*sorted(points))
                    axis.plot(xs, ys, style, marker="o", color=color,
                              label=f"{name}, N*C=2^{log2_size}")
        axis.set_xscale("log")
        axis.set_xlabel("classes C")
        axis.set_ylabel("GB/s (logits read + gradient written)")
        axis.set_title(f"{dtype}, {report['device']['name']}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "build/gpu-bench")))
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="after this many seconds, skip torch.compile and JAX for the rest")
    parser.add_argument("--classes", type=int, nargs="*", default=list(CLASSES))
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="log2 of N*C")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    budget_left = lambda: args.budget_s - (time.perf_counter() - started)

    core = load_core()
    if not core.has_cuda():
        raise SystemExit("costxent._core was built without its CUDA kernels")
    props = torch.cuda.get_device_properties(0)
    l2_bytes = int(getattr(props, "L2_cache_size", 50 << 20))
    notes: list[str] = []
    report: dict[str, Any] = {
        "device": {"name": props.name, "multiprocessors": props.multi_processor_count,
                   "memory_bytes": props.total_memory, "l2_bytes": l2_bytes,
                   "capability": f"{props.major}.{props.minor}"},
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "numpy": np.__version__, "core": core.__file__},
        "notes": notes,
        "results": [],
    }

    compiled = None
    try:
        import torch._dynamo

        # One compiled graph per (dtype, C): the default limit of 8 would quietly fall
        # back to eager.
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
        compiled = torch.compile(torch_composite)
    except Exception as e:
        notes.append(f"torch.compile unavailable: {type(e).__name__}: {e}")
    jax_parts = None
    try:
        jax_parts = jax_composite_factory()
        report["software"]["jax"] = jax_parts[0].__version__
        report["software"]["jax_devices"] = [str(d) for d in jax_parts[0].devices()]
    except Exception as e:
        notes.append(f"JAX unavailable: {type(e).__name__}: {e}")

    # Sizes innermost: both sizes of a (dtype, C) share one torch.compile graph.
    for dtype in DTYPES:
        for c in args.classes:
            for log2_size in args.sizes:
                cfg = Config(dtype, c, log2_size, l2_bytes)
                log(f"{dtype} C={c} N={cfg.n} ({cfg.bytes / 1e9:.2f} GB moved per call, "
                    f"{cfg.sets} input set(s), {budget_left():.0f} s of budget left)")
                try:
                    result = measure(cfg, core, compiled, jax_parts, budget_left)
                except Exception as e:  # e.g. out of memory: record it and go on
                    result = {**cfg.key(), "competitors": {"costxent": {"error": f"{type(e).__name__}: {e}"}}}
                    log(traceback.format_exc())
                torch.cuda.empty_cache()  # the configuration's buffers are gone with measure()
                result["log2_size"] = log2_size
                summarize(result)
                report["results"].append(result)
                brief = {k: round(v["gb_per_s"]) for k, v in result["competitors"].items() if "gb_per_s" in v}
                log(f"  GB/s {brief}  {result['summary']}")

    report["wall_s"] = time.perf_counter() - started
    (args.out / "bench_gpu.json").write_text(json.dumps(report, indent=1))
    plot_error = plot(report, args.out / "bench_gpu.png")
    if plot_error:
        notes.append(plot_error)
    table = markdown(report)
    (args.out / "bench_gpu.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
