"""Forward+gradient of the class-weighted softmax cross-entropy on one CUDA GPU, side by side:

  costxent   the fused kernel through costxent._core (loss and d loss / d logits, one pass)
  copy       a device-to-device copy of the logits: the bandwidth ceiling
  eager      the same maths as a PyTorch eager composite
  jax        the same maths as a JAX jit composite (XLA, what TensorFlow's jit_compile uses)
  compile    the PyTorch composite under torch.compile, in a last pass, only if time is left

for C in {2, 10, 100, 1000, 32768, 131072}, float32 and bfloat16, N*C = 2^26 (every row),
then 2^28. GB/s counts the bytes a step must move (DESIGN 6): logits read, int32 labels read,
gradient written, float32 loss written, the same count for every competitor (the class
weights, C floats, stay in cache); the copy's GB/s counts its own bytes read and written.

Timing (the device tool's METHOD.md): each competitor is warmed up, then timed in batches of
back-to-back calls, rotating between input sets when one set would fit in L2 three times,
between CUDA events on PyTorch's stream (JAX runs on its own stream: host clock around the
batch, after block_until_ready); the figure is the median over batches of batch time / calls,
with the spread. Clocks are left as the card has them. A competitor that fails records its
error, appends it to $COSTXENT_FAILURES, and the run goes on.

bench_gpu.json and bench_gpu.md under --out are rewritten after every row, so a run killed at
its limit keeps what it measured. --deadline-s bounds the run: no row starts when the time
left is below what the last row took. --dry-run needs no GPU, PyTorch or JAX: it writes both
files with the planned rows and exits. Loads _core without importing costxent (set
COSTXENT_CORE to the built _core*.so, as run.sh does).
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "gpu"))
import regimes  # noqa: E402
from core_cases import load_core  # noqa: E402

CLASSES = (2, 10, 100, 1000, 32768, 131072)
DTYPES = ("float32", "bfloat16")
ITEMSIZE = {"float32": 4, "bfloat16": 2}
SIZES = (26, 28)  # log2 of N * C
COMPETITORS = ("costxent", "copy", "eager", "jax", "compile")
# DESIGN 6: fraction of the copy bandwidth by C, and speed-ups over JAX jit and eager.
TARGET_VS_JAX = 1.5
TARGET_VS_EAGER = 3.0
COMPILE_MIN_LEFT_S = 90.0  # torch.compile's first graph alone can take a minute


def target_fraction(c: int) -> float:
    return 0.85 if c >= 1000 else 0.70


def log(message: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def record_failure(message: str) -> None:
    path = os.environ.get("COSTXENT_FAILURES")
    if path:
        with open(path, "a") as f:
            f.write(f"BENCH {message}\n")


# ---------------------------------------------------------------------------------------
# One configuration.


class Config:
    def __init__(self, dtype: str, c: int, log2_size: int, l2_bytes: int):
        self.dtype, self.c, self.log2_size = dtype, c, log2_size
        self.n = max(1, (1 << log2_size) // c)
        self.elements = self.n * c
        self.logit_bytes = self.elements * ITEMSIZE[dtype]
        # DESIGN 6: logits read, labels (int32) read, gradient written, loss (float32) written.
        self.bytes = 2 * self.logit_bytes + 4 * self.n + 4 * self.n
        # Enough input sets that one pass over all of them cannot live in L2.
        self.sets = min(4, max(1, math.ceil(3 * l2_bytes / self.bytes)))

    def key(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "C": self.c, "N": self.n, "log2_size": self.log2_size,
                "elements": self.elements, "bytes_moved": self.bytes, "input_sets": self.sets}


def plan_of(core: Any, dtype: str, c: int) -> dict[str, Any]:
    """_core.launch_plan where it exists (the launcher's answer), else regimes.py's model."""
    if hasattr(core, "launch_plan"):
        try:
            raw = core.launch_plan(dtype, c)
            return {"source": "launch_plan", "plan": raw if isinstance(raw, dict) else repr(raw)}
        except Exception as e:  # reported, not fatal: the benchmark does not depend on it
            return {"source": "launch_plan", "error": f"{type(e).__name__}: {e}"}
    p = regimes.model_plan(dtype, c)
    return {"source": "model (no _core.launch_plan)", "plan": {"regime": p.regime, "threads": p.threads,
                                                              "cluster": p.cluster, "slots": p.slots}}


# ---------------------------------------------------------------------------------------
# The maths, as composites: loss_i = a[y_i] (lse_i - z_iy), grad = a[y_i] (softmax_i - e_y).


def torch_composite(z, y, a):
    """Tensor methods only, so that this module imports without PyTorch (--dry-run)."""
    zf = z.float()
    lse = zf.logsumexp(dim=1)
    w = a[y]
    loss = w * (lse - zf.gather(1, y[:, None]).squeeze(1))
    grad = (zf - lse[:, None]).exp()
    grad.scatter_add_(1, y[:, None], -w.new_ones(w.shape[0], 1))
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
    import torch

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


class Row:
    """One configuration's device buffers and competitors."""

    def __init__(self, cfg: Config, core: Any):
        import torch
        import torch.utils.dlpack

        self.cfg, self.core = cfg, core
        generator = torch.Generator(device="cuda").manual_seed(cfg.c * 131 + len(cfg.dtype))
        dtype = getattr(torch, cfg.dtype)
        self.sets = []
        for _ in range(cfg.sets):
            z = (torch.randn(cfg.n, cfg.c, device="cuda", generator=generator) * 3).to(dtype)
            y64 = torch.randint(0, cfg.c, (cfg.n,), device="cuda", generator=generator)
            self.sets.append({"logits": z, "labels32": y64.to(torch.int32), "labels64": y64,
                              "loss": torch.empty(cfg.n, device="cuda"), "backprop": torch.empty_like(z)})
        weights = torch.rand(cfg.c, device="cuda", generator=generator) * 3.75 + 0.25
        for s in self.sets:
            s["weights"] = weights
        # DLPack capsules exported once: _core borrows a capsule without consuming it, so a
        # call costs microseconds of host time instead of five exports.
        self.capsules = [{k: torch.utils.dlpack.to_dlpack(s[k])
                          for k in ("logits", "labels32", "weights", "loss", "backprop")} for s in self.sets]
        self.copy_dst = [torch.empty_like(s["logits"]) for s in self.sets]
        self.stream = torch.cuda.current_stream().cuda_stream
        self.torch = torch

    def runs(self, jax_parts, compiled) -> tuple[dict[str, tuple[Callable[[int], Any], Callable[[], None], bool]], dict[str, str]]:
        torch, sets, n = self.torch, self.sets, self.cfg.sets

        def ours(i: int) -> None:
            s = self.capsules[i % n]
            self.core.softmax_loss(s["logits"], s["labels32"], s["weights"],
                                   loss=s["loss"], backprop=s["backprop"], stream=self.stream)

        def copy(i: int) -> None:
            self.copy_dst[i % n].copy_(sets[i % n]["logits"])

        def eager(i: int) -> None:
            s = sets[i % n]
            torch_composite(s["logits"], s["labels64"], s["weights"])

        sync = torch.cuda.synchronize
        runs = {"costxent": (ours, sync, True), "copy": (copy, sync, True), "eager": (eager, sync, True)}
        failed: dict[str, str] = {}
        if jax_parts is not None:
            jax, composite = jax_parts
            try:
                sync()  # JAX reads these tensors on its own stream
                jsets = [tuple(jax.dlpack.from_dlpack(s[k]) for k in ("logits", "labels32", "weights"))
                         for s in sets]
                last: list[Any] = [None]

                def jax_run(i: int) -> None:
                    last[0] = composite(*jsets[i % n])

                def jax_sync() -> None:
                    if last[0] is not None:
                        jax.block_until_ready(last[0])

                runs["jax"] = (jax_run, jax_sync, False)
            except Exception as e:
                failed["jax"] = f"sharing the inputs with JAX: {type(e).__name__}: {e}"
        if compiled is not None:
            def compiled_run(i: int) -> None:
                s = sets[i % n]
                compiled(s["logits"], s["labels64"], s["weights"])

            runs["compile"] = (compiled_run, sync, True)
        return runs, failed

    def check_against_eager(self) -> dict[str, Any]:
        """‖ours - eager‖ / ‖eager‖ for the loss and the gradient on the first input set."""
        torch, s = self.torch, self.sets[0]
        try:
            loss = torch.full_like(s["loss"], float("nan"))
            backprop = torch.full_like(s["backprop"], float("nan"))
            self.core.softmax_loss(s["logits"], s["labels32"], s["weights"], loss=loss,
                                   backprop=backprop, stream=self.stream)
            want_loss, want_grad = torch_composite(s["logits"], s["labels64"], s["weights"])

            def rel(got, want) -> float:
                return float(torch.linalg.vector_norm((got.double() - want.double()).flatten())
                             / torch.linalg.vector_norm(want.double().flatten()))

            return {"loss_rel_err": rel(loss, want_loss), "grad_rel_err": rel(backprop, want_grad),
                    "all_finite": bool(torch.isfinite(loss).all() and torch.isfinite(backprop).all())}
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}


def time_competitors(row: Row, names: tuple[str, ...], runs, failed, result: dict[str, Any]) -> None:
    cfg = row.cfg
    for name in names:
        if name not in runs:
            result["competitors"][name] = {"error": failed.get(name, "not available (see the notes)")}
            continue
        run, sync, device_timer = runs[name]
        try:
            t0 = time.perf_counter()
            timing = time_batches(run, cfg.sets, sync=sync, device_timer=device_timer)
            timing["wall_s"] = time.perf_counter() - t0
            timing["gb_per_s"] = cfg.bytes / timing["seconds"] / 1e9
            if name == "copy":  # the copy's own bytes: the logits read and written
                timing["gb_per_s"] = 2 * cfg.logit_bytes / timing["seconds"] / 1e9
            result["competitors"][name] = timing
        except Exception as e:  # one competitor failing must not stop the others
            result["competitors"][name] = {"error": f"{type(e).__name__}: {e}"}
            record_failure(f"{name} {cfg.key()}: {type(e).__name__}: {e}")
            log(f"{name} failed for {cfg.key()}: {e}\n{traceback.format_exc(limit=3)}")
        row.torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------
# Reports.


def summarize(result: dict[str, Any]) -> None:
    comp = result["competitors"]
    ours = comp.get("costxent", {}).get("gb_per_s")
    summary: dict[str, Any] = {}
    if ours and comp.get("copy", {}).get("gb_per_s"):
        summary["fraction_of_copy"] = ours / comp["copy"]["gb_per_s"]
    for name in ("eager", "compile", "jax"):
        theirs = comp.get(name, {}).get("seconds")
        if ours and theirs:
            summary[f"speedup_vs_{name}"] = theirs / comp["costxent"]["seconds"]
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
        c = r.get("competitors", {}).get(name, {})
        return f"{c['gb_per_s']:.0f}" if "gb_per_s" in c else ("-" if not c else "error")

    def ratio(r: dict[str, Any], key: str) -> str:
        v = r.get("summary", {}).get(key)
        return f"{v:.2f}x" if v is not None else "-"

    lines = [
        f"# costxent fused softmax cross-entropy: forward+gradient on {report['device'].get('name', '-')}",
        "",
        f"Status: {report['status']}. Class-weighted sparse cross-entropy, loss and d loss / d logits.",
        "GB/s counts logits read, int32 labels read, gradient written and float32 loss written",
        "(DESIGN 6) for every competitor; copy is a device-to-device copy of the logits, its own",
        "bytes read and written (the ceiling). Medians of batched calls; bench_gpu.json has spreads.",
        f"Targets (DESIGN 6): >= 85% of copy for C >= 1000, >= 70% below; >= {TARGET_VS_JAX}x JAX jit; "
        f">= {TARGET_VS_EAGER}x eager.",
        "",
        "| dtype | C | N | regime | costxent GB/s | copy GB/s | % of copy | eager GB/s | JAX GB/s "
        "| compile GB/s | vs eager | vs JAX | vs compile | targets | max rel. err vs eager |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["results"]:
        s = r.get("summary", {})
        frac = f"{s['fraction_of_copy']:.0%}" if "fraction_of_copy" in s else "-"
        targets = " ".join(f"{k}:{'ok' if v else 'MISS'}" for k, v in s.get("targets_met", {}).items()) or "-"
        chk = r.get("check", {})
        err = (f"{max(chk['loss_rel_err'], chk['grad_rel_err']):.1e}" if "grad_rel_err" in chk
               else chk.get("error", "-"))
        plan = r.get("launch_plan", {}).get("plan", {})
        regime = (" ".join(f"{k}={v}" for k, v in plan.items() if k in ("regime", "threads", "cluster"))
                  if isinstance(plan, dict) else str(plan))
        lines.append(
            f"| {r['dtype']} | {r['C']} | {r['N']} | {regime} | {gbs(r, 'costxent')} | {gbs(r, 'copy')} "
            f"| {frac} | {gbs(r, 'eager')} | {gbs(r, 'jax')} | {gbs(r, 'compile')} "
            f"| {ratio(r, 'speedup_vs_eager')} | {ratio(r, 'speedup_vs_jax')} "
            f"| {ratio(r, 'speedup_vs_compile')} | {targets} | {err} |"
        )
    errors = [
        f"- {r['dtype']} C={r['C']} N={r['N']} {name}: {c['error']}"
        for r in report["results"]
        for name, c in r.get("competitors", {}).items()
        if "error" in c
    ]
    if errors or report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]] + errors
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    """bench_gpu.json and bench_gpu.md, each replaced whole (never left half-written)."""
    as_json = json.dumps(report, indent=1, default=repr)  # a launch plan may hold other types
    for name, text in (("bench_gpu.json", as_json), ("bench_gpu.md", markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


# ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "build/gpu-bench")))
    parser.add_argument("--deadline-s", type=float, default=240.0,
                        help="seconds from the start after which no row (or torch.compile pass) starts")
    parser.add_argument("--classes", type=int, nargs="*", default=list(CLASSES))
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="log2 of N*C")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: write the planned rows and the reports, measure nothing")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    left = lambda: args.deadline_s - (time.perf_counter() - started)  # noqa: E731

    core = load_core()
    notes: list[str] = []
    report: dict[str, Any] = {"status": "running", "device": {}, "notes": notes, "results": [],
                              "software": {"python": platform.python_version(), "core": core.__file__}}
    # Every (dtype, C) at the first size before any at the next: a run cut short has them all.
    configs = [(dtype, c, size) for size in args.sizes for dtype in DTYPES for c in args.classes]
    if args.dry_run:
        report["status"] = "dry-run: nothing measured"
        l2 = 50 << 20
        for dtype, c, size in configs:
            report["results"].append({**Config(dtype, c, size, l2).key(), "launch_plan": plan_of(core, dtype, c)})
        write_report(report, args.out)
        log(f"dry run: {len(configs)} rows planned, reports in {args.out}")
        return 0

    import numpy as np
    import torch

    if not core.has_cuda():
        raise SystemExit("costxent._core was built without its CUDA kernels")
    props = torch.cuda.get_device_properties(0)
    l2_bytes = int(getattr(props, "L2_cache_size", 50 << 20))
    report["device"] = {"name": props.name, "multiprocessors": props.multi_processor_count,
                        "memory_bytes": props.total_memory, "l2_bytes": l2_bytes,
                        "capability": f"{props.major}.{props.minor}"}
    report["software"].update(torch=torch.__version__, cuda=torch.version.cuda, numpy=np.__version__)
    jax_parts = None
    try:
        jax_parts = jax_composite_factory()
        report["software"]["jax"] = jax_parts[0].__version__
        report["software"]["jax_devices"] = [str(d) for d in jax_parts[0].devices()]
    except Exception as e:
        notes.append(f"JAX unavailable: {type(e).__name__}: {e}")
        record_failure(f"JAX unavailable: {type(e).__name__}: {e}")

    last_row_s = 0.0
    for dtype, c, size in configs:
        if left() < last_row_s:
            notes.append(f"deadline: rows from {dtype} C={c} 2^{size} on were not run")
            break
        cfg = Config(dtype, c, size, l2_bytes)
        t0 = time.perf_counter()
        log(f"{dtype} C={c} N={cfg.n} ({cfg.bytes / 1e9:.2f} GB a step, {cfg.sets} input set(s), "
            f"{left():.0f} s left)")
        result: dict[str, Any] = {**cfg.key(), "competitors": {}, "launch_plan": plan_of(core, dtype, c)}
        try:
            row = Row(cfg, core)
            runs, failed = row.runs(jax_parts, None)
            time_competitors(row, COMPETITORS[:-1], runs, failed, result)
            result["check"] = row.check_against_eager()
            del row
        except Exception as e:  # e.g. out of memory: record it and go on
            result["competitors"]["costxent"] = {"error": f"{type(e).__name__}: {e}"}
            record_failure(f"row {cfg.key()}: {type(e).__name__}: {e}")
            log(traceback.format_exc())
        torch.cuda.empty_cache()
        summarize(result)
        report["results"].append(result)
        write_report(report, args.out)
        last_row_s = time.perf_counter() - t0
        brief = {k: round(v["gb_per_s"]) for k, v in result["competitors"].items() if "gb_per_s" in v}
        log(f"  GB/s {brief}  {result['summary']}  ({last_row_s:.1f} s)")

    # torch.compile last, over the rows measured, while time is left.
    if left() < COMPILE_MIN_LEFT_S:
        notes.append(f"torch.compile not run: {max(left(), 0):.0f} s left, it needs {COMPILE_MIN_LEFT_S:.0f}")
    else:
        try:
            import torch._dynamo

            # One graph per (dtype, C) and size: the default limit of 8 would fall back to eager.
            for knob in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, 256)
            compiled = torch.compile(torch_composite)
        except Exception as e:
            compiled = None
            notes.append(f"torch.compile unavailable: {type(e).__name__}: {e}")
        for result in report["results"] if compiled is not None else []:
            if left() < last_row_s:
                notes.append(f"deadline: torch.compile stopped before {result['dtype']} C={result['C']}")
                break
            t0 = time.perf_counter()
            try:
                row = Row(Config(result["dtype"], result["C"], result["log2_size"], l2_bytes), core)
                runs, failed = row.runs(None, compiled)
                time_competitors(row, ("compile",), runs, failed, result)
                del row
            except Exception as e:
                result["competitors"]["compile"] = {"error": f"{type(e).__name__}: {e}"}
            torch.cuda.empty_cache()
            summarize(result)
            write_report(report, args.out)
            last_row_s = max(last_row_s, time.perf_counter() - t0)

    report["status"] = "complete"
    report["wall_s"] = time.perf_counter() - started
    write_report(report, args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
