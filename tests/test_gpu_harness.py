"""The GPU harness without a GPU: the regime model behind tests/gpu's class counts, the
tolerances' spacing, and a dry run of benchmarks/gpu/run.sh (every file it returns, written
by the CPU-only paths). tests/gpu itself runs here against the perfect kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gpu"))

import core_cases  # noqa: E402
import regimes  # noqa: E402

RUN_FILES = {"build.log", "run.log", "failures.txt", "launch_plan.json", "bench_gpu.json",
             "bench_gpu.md", "ncu.csv", "sanitizer.log"}


# Closed forms of cuda_kernels.cu's launcher: V elements a vector, S vectors a block thread;
# a row of C elements spans ceil((C + V - 1) / V) vectors.
@pytest.mark.parametrize("dtype, v, s", [("float16", 8, 1), ("bfloat16", 8, 1), ("float32", 4, 2), ("float64", 2, 2)])
def test_regime_edges_match_the_launchers_closed_forms(dtype: str, v: int, s: int) -> None:
    largest = lambda vectors: (vectors - 1) * v + 1  # noqa: E731  (the largest C spanning them)
    warp_widths = [largest(w) for w in (1, 2, 4, 8, 16, 32)]
    block = largest(1024 * s)
    clusters = [largest(1024 * s * k) for k in (8, 9, 16)]
    want = set()
    for c in [w for w in warp_widths if w >= 2] + [block] + clusters:
        want.update((c, c + 1))
    assert regimes.edges(dtype) == sorted(want)
    assert regimes.model_plan(dtype, warp_widths[-1]).label == "warp32"
    assert regimes.model_plan(dtype, block).label == "block"
    assert regimes.model_plan(dtype, block + 1).label == "cluster2"
    assert regimes.model_plan(dtype, clusters[1]).label == "cluster9"
    assert regimes.model_plan(dtype, clusters[2]).label == "cluster16"
    assert regimes.model_plan(dtype, clusters[2] + 1).regime == "chunked"


def test_index_margin_of_a_chunked_row() -> None:
    # float32, C = 131070: 32769 vectors, chunks of 16 x 1024 threads x 2 slots = 32768
    # vectors: two chunks, the second reaching 65536 vectors = 262144 elements into the span.
    plan = regimes.model_plan("float32", 131070)
    assert (plan.regime, plan.threads, plan.cluster, plan.slots) == ("chunked", 1024, 16, 2)
    assert regimes.max_index_touched("float32", 131070, plan) == 262144


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_spacing_is_numpys(dtype: str) -> None:
    x = np.array([0.0, 1e-30, 6e-8, 1e-5, 0.3, 1.0, 1.5, 1000.0, -7.25], dtype=dtype)
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(core_cases.spacing(x.astype(np.float64), dtype),
                                  np.spacing(np.abs(x)).astype(np.float64))


def test_spacing_of_bfloat16() -> None:
    x = np.array([1e-40, 1e-5, 0.3, 1.0, 3.0, 1e30], dtype=ml_dtypes.bfloat16)
    up = (x.view(np.uint16) + 1).view(ml_dtypes.bfloat16)  # the next value above each
    np.testing.assert_array_equal(core_cases.spacing(x.astype(np.float64), "bfloat16"),
                                  up.astype(np.float64) - x.astype(np.float64))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_tolerance_is_one_rounding(dtype: str) -> None:
    want = core_cases.rng_for("tol", dtype).normal(size=1000) * np.logspace(-9, 2, 1000)
    once = core_cases.round_to(want, dtype)
    core_cases.assert_close("rounded once", once, want, dtype)
    off = once.copy()
    off[500] += 2 * core_cases.spacing(off[500], dtype)
    with pytest.raises(AssertionError, match="1 of 1000 elements off"):
        core_cases.assert_close("two spacings off", off, want, dtype)


def test_ignored_rows_with_nonfinite_logits_expect_zero() -> None:
    case = core_cases.softmax_case("ignore", "int32", "float32", 11, 2, core_cases.rng_for("ign"),
                                   nonfinite_rows=True)
    ignored = np.flatnonzero(case.labels == 1)
    assert 10 in ignored and np.isnan(case.logits[10]).any()
    assert (case.loss[ignored] == 0).all() and (case.grad[ignored] == 0).all()
    assert set(case.nan_rows) == {1, 2, 3} - set(ignored)


def test_run_sh_dry_run_writes_every_file(tmp_path: Path) -> None:
    core = core_cases.load_core()
    env = dict(os.environ, OUT=str(tmp_path), COSTXENT_CORE=core.__file__, PYTHON=sys.executable)
    env.pop("COSTXENT_GPU_HARNESS", None)
    proc = subprocess.run(["bash", "benchmarks/gpu/run.sh", "dry"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == RUN_FILES
    assert (tmp_path / "failures.txt").read_text() == ""
    assert "passed" in (tmp_path / "run.log").read_text()
    plan = json.loads((tmp_path / "launch_plan.json").read_text())
    for dtype in core_cases.DTYPES:
        assert plan["dtypes"][dtype]["edges"] == regimes.edges(dtype, regimes.planner(core))
    bench = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert bench["status"].startswith("dry-run")
    rows = bench["results"]
    assert len(rows) == 24 and {r["log2_size"] for r in rows[:12]} == {26}
    first = rows[0]  # float32, C = 2, N * C = 2^26
    assert first["bytes_moved"] == 2 * 4 * 2**26 + 8 * 2**25  # logits, gradient; labels, loss
    assert "| float32 | 2 | 33554432 |" in (tmp_path / "bench_gpu.md").read_text()


@pytest.mark.parametrize("fault", ["unwritten", "ulps", "ignored_nan"])
def test_the_suite_catches_an_imperfect_kernel(tmp_path: Path, fault: str) -> None:
    """tests/gpu fails, and appends the failure to $COSTXENT_FAILURES, when the perfect
    kernel is given a defect (harness.py's COSTXENT_PERFECT_FAULT)."""
    failures = tmp_path / "failures.txt"
    env = dict(os.environ, COSTXENT_GPU_HARNESS="perfect", COSTXENT_PERFECT_FAULT=fault,
               COSTXENT_FAILURES=str(failures))
    node = "tests/gpu/test_core_cuda.py::test_softmax_matches_oracle[ignore-int32-float16-2]"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert failures.read_text().startswith(f"FAILED {node} (call): AssertionError")
