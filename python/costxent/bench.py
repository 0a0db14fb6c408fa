"""``python -m costxent bench``: the fused ops against pure-TF losses, side by side in one run.

For each case (loss mode, logits dtype, label kind, number of classes C at a fixed N*C) the
benchmark times the mean loss (forward) and the mean loss plus ``d loss / d logits`` through
``tf.GradientTape`` (forward+backward, what a Keras training step pays), each in a
``tf.function``, for these competitors:

- ``fused``: ``costxent.ops`` (the fused kernel),
- ``reference``: ``costxent.reference`` (pure TF ops + autodiff),
- ``reference-xla``: the same under ``tf.function(jit_compile=True)``,
- ``tf.nn``: TensorFlow's own unweighted ``tf.nn.sparse_softmax_cross_entropy_with_logits``
  / ``softmax_cross_entropy_with_logits`` (``weighted_cross_entropy_with_logits`` for the
  sigmoid rows) - the fastest thing TF has, even though it cannot weight,
- ``web``: the cost-matrix loss as users copy it from the web (softmax, argmax of the
  prediction, ``gather_nd`` of ``M[true, predicted]``, times Keras' categorical
  cross-entropy on the probabilities), in the cost-matrix mode only,

and the memory floor: the bytes the fused op cannot avoid moving (logits read once, dense
labels read once, the gradient written once) at the bandwidth of a NumPy copy
(``np.copyto`` of the logits' bytes; a device-to-device copy on a GPU) timed in the same run.
Calls are interleaved round-robin, after warm-up (which traces and compiles every function),
and medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

import costxent as cx
from costxent import bench_plot

MODES = ("plain", "class-weight", "cost-matrix", "focal", "expected-cost", "sigmoid")
DTYPES = ("float32", "bfloat16", "float16", "float64")
LABEL_KINDS = ("sparse", "dense")
ALL_CLASSES = (2, 10, 100, 1000, 10000)
FOCAL_GAMMA = 2.0
CE_WEIGHT = 0.1
# The 30-label problem of issue 4: about one positive per example needs pos_weight ~ 27.
POS_WEIGHT = 27.0
SIGMOID_LABELS = "multi-hot"

COMPETITORS = {
    "fused": "costxent.ops (fused)",
    "reference": "costxent.reference (tf.function)",
    "reference-xla": "costxent.reference (XLA)",
    "tf.nn": "TF's own tf.nn op (softmax: unweighted)",
    "web": "web cost-matrix loss (argmax + gather_nd + Keras CE)",
}
PASSES = {"fwd_bwd": "fwd+bwd", "fwd": "fwd"}

GridSpec = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[int, ...]]
# (modes, dtypes, label kinds, classes) blocks; about 6-8 minutes on 2 cores at N*C = 2^24.
DEFAULT_GRID: tuple[GridSpec, ...] = (
    (("plain", "cost-matrix"), ("float32",), ("sparse",), ALL_CLASSES),
    (("class-weight", "focal", "expected-cost"), ("float32",), ("sparse",), (10, 1000)),
    (("plain", "cost-matrix"), ("float32",), ("dense",), (10, 1000)),
    (("plain", "cost-matrix"), ("bfloat16",), ("sparse",), (10, 1000)),
    (("sigmoid",), ("float32", "bfloat16"), (SIGMOID_LABELS,), (32,)),
)
QUICK_GRID: tuple[GridSpec, ...] = (
    (("plain",), ("float32",), ("sparse",), (10,)),
    (("cost-matrix",), ("float32",), ("dense",), (100,)),
    (("sigmoid",), ("float32",), (SIGMOID_LABELS,), (32,)),
)
DEFAULT_TOTAL = 2**24
QUICK_TOTAL = 2**16

# DESIGN 6 (CPU) and issue 4: (competitor, required speed-up of fused over it). The floor
# target is separate: fused within FLOOR_FACTOR of the memory floor.
CPU_SOFTMAX_TARGETS = (("reference", 5.0), ("reference-xla", 3.0), ("tf.nn", 2.0))
CPU_SIGMOID_TARGETS = (("tf.nn", 3.0),)
FLOOR_FACTOR = 2.0
TARGET_MODES = ("plain", "cost-matrix")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked configuration: logits of shape [total_elements // classes, classes]."""

    mode: str
    dtype: str
    labels: str
    classes: int
    total_elements: int

    @property
    def rows(self) -> int:
        """N, the number of examples."""
        return self.total_elements // self.classes

    @property
    def softmax(self) -> bool:
        """Whether this is a softmax loss (else the element-wise sigmoid loss)."""
        return self.mode != "sigmoid"

    def describe(self) -> str:
        """A short human-readable name, e.g. ``cost-matrix float32 sparse C=1000``."""
        return f"{self.mode} {self.dtype} {self.labels} C={self.classes}"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Device-resident inputs shared by every competitor of a case."""

    labels: tf.Tensor
    logits: tf.Tensor
    weights: tf.Tensor
    logits_bytes: int
    floor_bytes: dict[str, int]


def expand_grid(spec: Sequence[GridSpec], total_elements: int) -> list[Case]:
    """The cases of a grid; sigmoid cases always have multi-hot labels, so their label kind
    collapses to one."""
    cases: list[Case] = []
    for modes, dtypes, label_kinds, classes in spec:
        for mode, dtype, kind, c in itertools.product(modes, dtypes, label_kinds, classes):
            case = Case(
                mode, dtype, SIGMOID_LABELS if mode == "sigmoid" else kind, c, total_elements
            )
            if case not in cases:
                cases.append(case)
    return cases


def make_inputs(case: Case) -> Inputs:
    """Deterministic random inputs for a case, created on the current device scope."""
    n, c = case.rows, case.classes
    dtype = tf.as_dtype(case.dtype)
    logits = tf.cast(2.0 * tf.random.stateless_normal([n, c], seed=(1, 2)), dtype)
    ids = tf.random.stateless_uniform([n], seed=(3, 4), maxval=c, dtype=tf.int32)
    logits_bytes = n * c * dtype.size
    if case.mode == "sigmoid":
        labels = tf.cast(tf.random.stateless_uniform([n, c], seed=(5, 6)) < 1.0 / c, dtype)
    elif case.labels == "dense":
        labels = tf.one_hot(ids, c, dtype=dtype)
    else:
        labels = ids
    # Sparse class ids (4 bytes a row) are not counted, as in DESIGN 6; dense and multi-hot
    # labels are a second read as large as the logits.
    label_bytes = 0 if case.labels == "sparse" else logits_bytes
    acc = tf.float64 if dtype == tf.float64 else tf.float32
    if case.mode == "class-weight":
        weights = tf.random.stateless_uniform([c], seed=(7, 8), minval=0.5, maxval=2.0, dtype=acc)
    elif case.mode in ("cost-matrix", "expected-cost"):
        off_diagonal = 1.0 - tf.eye(c, dtype=acc)
        weights = off_diagonal * tf.random.stateless_uniform(
            [c, c], seed=(9, 10), minval=1.0, maxval=5.0, dtype=acc
        )
    elif case.mode == "sigmoid":
        weights = tf.constant(POS_WEIGHT, acc)
    else:
        weights = tf.zeros([0], acc)
    return Inputs(
        labels=labels,
        logits=logits,
        weights=weights,
        logits_bytes=logits_bytes,
        floor_bytes={
            "fwd_bwd": logits_bytes + label_bytes + logits_bytes,
            "fwd": logits_bytes + label_bytes,
        },
    )


LossFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def _costxent_loss(module: Any, mode: str) -> LossFn:
    """The mode's loss from ``costxent.ops`` or ``costxent.reference`` (same signatures)."""
    if mode == "plain":
        return lambda y, z, w: module.softmax_cross_entropy(y, z)
    if mode == "class-weight":
        return lambda y, z, w: module.softmax_cross_entropy(y, z, class_weight=w)
    if mode == "cost-matrix":
        return lambda y, z, w: module.softmax_cross_entropy(y, z, cost_matrix=w)
    if mode == "focal":
        return lambda y, z, w: module.softmax_cross_entropy(y, z, focal_gamma=FOCAL_GAMMA)
    if mode == "expected-cost":
        return lambda y, z, w: module.expected_cost(y, z, w, ce_weight=CE_WEIGHT)
    return lambda y, z, w: module.sigmoid_cross_entropy(y, z, pos_weight=w)


def _tf_nn_loss(case: Case) -> LossFn:
    if case.mode == "sigmoid":
        return lambda y, z, w: tf.nn.weighted_cross_entropy_with_logits(
            y, z, tf.cast(w, z.dtype)
        )
    if case.labels == "sparse":
        return lambda y, z, w: tf.nn.sparse_softmax_cross_entropy_with_logits(y, z)
    return lambda y, z, w: tf.nn.softmax_cross_entropy_with_logits(y, z)


def _web_cost_matrix_loss(case: Case) -> LossFn:
    """The widely copied cost-matrix loss: CE on softmax probabilities times M[true, pred]."""

    def loss(y: tf.Tensor, z: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        probs = tf.nn.softmax(z)
        predicted = tf.argmax(probs, axis=-1, output_type=tf.int32)
        if case.labels == "sparse":
            true = y
            ce = keras.losses.sparse_categorical_crossentropy(y, probs)
        else:
            true = tf.argmax(y, axis=-1, output_type=tf.int32)
            ce = keras.losses.categorical_crossentropy(y, probs)
        mistake_cost = tf.gather_nd(w, tf.stack([true, predicted], axis=-1))
        return ce * tf.cast(mistake_cost, ce.dtype)

    return loss


def competitors(case: Case) -> dict[str, tuple[LossFn, bool]]:
    """name -> (per-example loss, whether to compile it with XLA)."""
    out = {
        "fused": (_costxent_loss(cx.ops, case.mode), False),
        "reference": (_costxent_loss(cx.reference, case.mode), False),
        "reference-xla": (_costxent_loss(cx.reference, case.mode), True),
        "tf.nn": (_tf_nn_loss(case), False),
    }
    if case.mode == "cost-matrix":
        out["web"] = (_web_cost_matrix_loss(case), False)
    return out


def _compile(loss: LossFn, jit: bool) -> dict[str, Callable]:
    """The forward and forward+backward tf.functions of a loss, reduced like Keras'
    ``sum_over_batch_size`` (the mean)."""

    def forward(y: tf.Tensor, z: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.cast(loss(y, z, w), tf.float32))

    def forward_backward(y: tf.Tensor, z: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            mean = forward(y, z, w)
        return mean, tape.gradient(mean, z)

    return {
        "fwd_bwd": tf.function(forward_backward, jit_compile=jit),
        "fwd": tf.function(forward, jit_compile=jit),
    }


def _call(fn: Callable, inputs: Inputs, on_gpu: bool) -> Callable[[], None]:
    """A call that returns only once every output (the gradient included) is computed.

    On the CPU a tf.function call returns materialised outputs; on a GPU the kernels are only
    queued, so the host waits for the device.
    """

    def call() -> None:
        fn(inputs.labels, inputs.logits, inputs.weights)
        if on_gpu:
            tf.experimental.sync_devices()

    return call


def _copy_call(inputs: Inputs, on_gpu: bool) -> Callable[[], None]:
    """The floor's copy of the logits' bytes: np.copyto on the CPU, a device copy on a GPU."""
    if on_gpu:
        device_copy = tf.function(lambda z: tf.raw_ops.DeepCopy(x=z))
        return _call(lambda y, z, w: device_copy(z), inputs, on_gpu)
    # np.full touches every page, so no zero-page or first-touch effects reach the timings.
    source = np.full(inputs.logits_bytes, 1, np.uint8)
    target = np.empty_like(source)
    return lambda: np.copyto(target, source)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How often each call runs: ``warmup`` untimed calls (tracing and compiling), then timed
    round-robin rounds, ``repeats`` of them, or fewer (never under ``MIN_ROUNDS``) once the
    timed rounds of a case have taken ``budget_s`` seconds, so that the slow cases (C = 2,
    N = 2^23) do not dominate the run."""

    repeats: int
    warmup: int
    budget_s: float

    MIN_ROUNDS = 3


def interleave(calls: dict[str, Callable[[], None]], schedule: Schedule) -> dict[str, list[float]]:
    """Milliseconds of each call, every round calling each once. Each round starts at the
    next competitor, so none always runs after the same one."""
    for call in calls.values():
        for _ in range(schedule.warmup):
            call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for round_index in range(schedule.repeats):
        if (
            round_index >= Schedule.MIN_ROUNDS
            and time.perf_counter() - start > schedule.budget_s
        ):
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def run_case(case: Case, device: str, schedule: Schedule) -> dict[str, Any]:
    """Benchmark one case on ``device`` ("cpu" or "gpu"); raw timings, medians and ratios."""
    on_gpu = device == "gpu"
    with tf.device("/GPU:0" if on_gpu else "/CPU:0"):
        inputs = make_inputs(case)
        calls: dict[str, Callable[[], None]] = {"copy": _copy_call(inputs, on_gpu)}
        for name, (loss, jit) in competitors(case).items():
            for pass_name, fn in _compile(loss, jit).items():
                calls[f"{name}/{pass_name}"] = _call(fn, inputs, on_gpu)
        raw = interleave(calls, schedule)

    copy_times = raw.pop("copy")
    copy_ms = statistics.median(copy_times)
    # A copy reads and writes logits_bytes: 2 * logits_bytes moved in copy_ms.
    bandwidth = 2 * inputs.logits_bytes / (copy_ms * 1e-3)
    timings: dict[str, dict[str, list[float]]] = {}
    for key, values in raw.items():
        name, pass_name = key.split("/")
        timings.setdefault(name, {})[pass_name] = values
    medians = {
        name: {p: statistics.median(v) for p, v in passes.items()}
        for name, passes in timings.items()
    }
    floor_ms = {p: 1e3 * b / bandwidth for p, b in inputs.floor_bytes.items()}
    fused = medians["fused"]
    return {
        "mode": case.mode,
        "dtype": case.dtype,
        "labels": case.labels,
        "classes": case.classes,
        "rows": case.rows,
        "total_elements": case.rows * case.classes,
        "floor": {
            "copy_bytes": inputs.logits_bytes,
            "copy_times_ms": copy_times,
            "copy_median_ms": copy_ms,
            "bandwidth_gb_s": bandwidth / 1e9,
            "bytes": inputs.floor_bytes,
            "ms": floor_ms,
        },
        "timings_ms": timings,
        "median_ms": medians,
        "ratio_to_fused": {
            name: {p: m / fused[p] for p, m in passes.items()}
            for name, passes in medians.items()
            if name != "fused"
        },
        "fused_over_floor": {p: fused[p] / floor_ms[p] for p in fused},
    }


def evaluate_targets(device: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CPU targets of DESIGN 6 (float32 sparse plain and cost-matrix rows, every C) and
    issue 4 (float32 sigmoid rows), forward+backward, each marked met or missed."""
    if device != "cpu":
        return []
    targets = []
    for result in results:
        if result["dtype"] != "float32":
            continue
        if result["mode"] == "sigmoid":
            speedups = CPU_SIGMOID_TARGETS
        elif result["mode"] in TARGET_MODES and result["labels"] == "sparse":
            speedups = CPU_SOFTMAX_TARGETS
        else:
            continue
        for competitor, required in speedups:
            value = result["ratio_to_fused"][competitor]["fwd_bwd"]
            targets.append(
                {
                    "case": result["case"],
                    "target": f"fused >= {required:g}x faster than {competitor}",
                    "value": value,
                    "required": required,
                    "met": value >= required,
                    # How far off: the factor the fused op still has to gain.
                    "shortfall": max(1.0, required / value),
                }
            )
        if result["mode"] != "sigmoid":
            value = result["fused_over_floor"]["fwd_bwd"]
            targets.append(
                {
                    "case": result["case"],
                    "target": f"fused within {FLOOR_FACTOR:g}x of the memory floor",
                    "value": value,
                    "required": FLOOR_FACTOR,
                    "met": value <= FLOOR_FACTOR,
                    "shortfall": max(1.0, value / FLOOR_FACTOR),
                }
            )
    return targets


def _format_ms(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def format_report(report: dict[str, Any]) -> str:
    """The stdout table: milliseconds (median), each competitor's time over the fused op's,
    the fused op's time over the memory floor, then the targets."""
    results = report["cases"]
    others = [name for name in COMPETITORS if name != "fused" and any(
        name in result["median_ms"] for result in results
    )]
    rows = [["case", "N", "runs", "pass", "floor ms", "fused ms", "fused/floor"] + [
        f"{name} ms (x fused)" for name in others
    ]]
    for result in results:
        for pass_name, pass_label in PASSES.items():
            fused = result["median_ms"]["fused"][pass_name]
            row = [
                result["case"],
                str(result["rows"]),
                str(len(result["timings_ms"]["fused"][pass_name])),
                pass_label,
                _format_ms(result["floor"]["ms"][pass_name]),
                _format_ms(fused),
                f"{result['fused_over_floor'][pass_name]:.2f}x",
            ]
            for name in others:
                median = result["median_ms"].get(name, {}).get(pass_name)
                row.append(
                    "-" if median is None else f"{_format_ms(median)} ({median / fused:.2f}x)"
                )
            rows.append(row)
    machine = report["machine"]
    lines = [
        f"costxent bench on {report['device']}: {machine['cpu_model']}, "
        f"{machine['cpus_usable']} cores, TensorFlow {machine['tensorflow']}, "
        f"{machine['implementation']}; medians of the runs counted",
        _text_table(rows),
    ]
    if report["targets"]:
        target_rows = [["case", "target (fwd+bwd)", "measured", "status"]]
        for target in report["targets"]:
            status = "met" if target["met"] else f"MISSED by {target['shortfall']:.2f}x"
            target_rows.append(
                [target["case"], target["target"], f"{target['value']:.2f}x", status]
            )
        met = sum(target["met"] for target in report["targets"])
        lines += ["", f"targets: {met} of {len(report['targets'])} met", _text_table(target_rows)]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> Optional[str]:
    """A git query about the source tree this module runs from; None when installed
    elsewhere (a site-packages inside some other repository must not be reported)."""
    package = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=package, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        if Path(top).resolve() / "python" / "costxent" != package:
            return None
        return subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_description(device: str) -> dict[str, Any]:
    """Where and on what the numbers were measured."""
    gpus = tf.config.list_physical_devices("GPU")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        # Other work on the machine skews absolute times more than the interleaved ratios.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "costxent": cx.__version__,
        "implementation": cx.ops.implementation(),
        "gpu": tf.config.experimental.get_device_details(gpus[0]).get("device_name")
        if device == "gpu" else None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_device(
    cases: Sequence[Case], device: str, schedule: Schedule, total_elements: int
) -> dict[str, Any]:
    """Benchmark every case on one device; the report written as JSON."""
    start = time.perf_counter()
    implementation = cx.ops.implementation()
    if not implementation.startswith("fused"):
        _progress(f"warning: the 'fused' rows run the fallback, {implementation}")
    results = []
    for index, case in enumerate(cases, 1):
        _progress(f"[{device} {index}/{len(cases)}] {case.describe()}, N={case.rows} ...")
        case_start = time.perf_counter()
        result = {"case": case.describe(), **run_case(case, device, schedule)}
        result["elapsed_s"] = time.perf_counter() - case_start
        results.append(result)
        _progress(
            f"    fused fwd+bwd {_format_ms(result['median_ms']['fused']['fwd_bwd'])} ms = "
            f"{result['fused_over_floor']['fwd_bwd']:.2f}x floor, reference "
            f"{result['ratio_to_fused']['reference']['fwd_bwd']:.2f}x fused "
            f"({result['elapsed_s']:.1f} s)"
        )
    return {
        "device": device,
        "machine": machine_description(device),
        "settings": {
            **dataclasses.asdict(schedule),
            "total_elements": total_elements,
            "focal_gamma": FOCAL_GAMMA,
            "ce_weight": CE_WEIGHT,
            "pos_weight": POS_WEIGHT,
            "floor": "bytes of logits read + dense labels read + gradient written (fwd_bwd), "
            "logits + dense labels read (fwd), at the bandwidth of a copy of the logits' bytes "
            "(np.copyto on the CPU, a device copy on a GPU); sparse ids are not counted",
        },
        "competitors": COMPETITORS,
        "passes": PASSES,
        "cases": results,
        "targets": evaluate_targets(device, results),
        "elapsed_s": time.perf_counter() - start,
    }


def _describe_grid(spec: Sequence[GridSpec]) -> str:
    return "\n".join(
        f"  {', '.join(modes)} | {', '.join(dtypes)} | {', '.join(kinds)} | C = "
        + " ".join(str(c) for c in classes)
        for modes, dtypes, kinds, classes in spec
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m costxent bench",
        description=(
            "Time the fused costxent ops against pure-TF losses (forward and forward+backward,"
            " interleaved, medians) and against the memory floor. Prints a table (progress on"
            " stderr) and writes bench-<device>.json and bench-<device>.png to --out."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"default grid (mode | dtype | labels | classes), N*C = 2^24 each, under 10\n"
            f"minutes on 2 CPU cores:\n{_describe_grid(DEFAULT_GRID)}\n"
            f"--quick grid, N*C = 2^16, 3 repeats, under a minute:\n{_describe_grid(QUICK_GRID)}\n"
            "Any of --modes/--dtypes/--labels/--classes replaces the grid by the cross product of\n"
            "the lists given, the others defaulting to: plain cost-matrix | float32 | sparse |\n"
            f"{' '.join(map(str, ALL_CLASSES))}. focal uses gamma={FOCAL_GAMMA:g}, expected-cost "
            f"ce_weight={CE_WEIGHT:g}; sigmoid\n"
            f"(pos_weight={POS_WEIGHT:g}, multi-hot labels, about one positive per row) ignores "
            "--labels.\n"
            "The memory floor is the time to read the logits (and dense labels) once and write\n"
            "the gradient once at the bandwidth of a copy of the logits' bytes measured in the\n"
            "same run; forward-only reads only. Ratios are competitor time / fused time.\n"
            "Targets (CPU, fwd+bwd, float32): fused >= 5x faster than reference, >= 3x than\n"
            "reference-xla, >= 2x than tf.nn, within 2x of the floor (DESIGN 6); sigmoid >= 3x\n"
            "faster than tf.nn.weighted_cross_entropy_with_logits (issue 4)."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="the tiny grid (tests, CI)")
    parser.add_argument(
        "--total-elements", type=int, metavar="N*C",
        help=f"elements of the logits per case (default {DEFAULT_TOTAL}; {QUICK_TOTAL} "
        "with --quick)",
    )
    parser.add_argument("--classes", type=int, nargs="+", metavar="C", help="class counts")
    for option, choices, metavar in (
        ("--dtypes", DTYPES, "DTYPE"),
        ("--labels", LABEL_KINDS, "KIND"),
        ("--modes", MODES, "MODE"),
    ):
        parser.add_argument(
            option, nargs="+", choices=choices, metavar=metavar, help=", ".join(choices)
        )
    parser.add_argument(
        "--device", choices=("cpu", "gpu", "all"), default="all",
        help="all (default): the CPU, and the GPU too when TensorFlow sees one",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds per case, at most (default 7; 3 with --quick)"
    )
    parser.add_argument(
        "--time-budget", type=float, default=12.0, metavar="SECONDS",
        help=f"stop timing a case after this long once {Schedule.MIN_ROUNDS} rounds have run "
        "(default 12)",
    )
    parser.add_argument(
        "--warmup", type=int,
        help="untimed calls per function first, tracing and compiling (default 1)",
    )
    parser.add_argument(
        "--out", type=Path,
        help="output folder (default benchmarks/results/ when run from the repository root, "
        "else the current folder)",
    )
    return parser


def _default_out_dir() -> Path:
    in_repo = Path("benchmarks").is_dir() and Path("python", "costxent").is_dir()
    return Path("benchmarks", "results") if in_repo else Path(".")


def _or_default(value: Optional[int], default: int) -> int:
    return default if value is None else value


def _grid(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Case]:
    total = _or_default(args.total_elements, QUICK_TOTAL if args.quick else DEFAULT_TOTAL)
    custom = (args.modes, args.dtypes, args.labels, args.classes)
    if any(custom):
        spec: Sequence[GridSpec] = ((
            tuple(args.modes or ("plain", "cost-matrix")),
            tuple(args.dtypes or ("float32",)),
            tuple(args.labels or ("sparse",)),
            tuple(args.classes or ALL_CLASSES),
        ),)
    else:
        spec = QUICK_GRID if args.quick else DEFAULT_GRID
    cases = expand_grid(spec, total)
    for case in cases:
        if case.classes < (2 if case.softmax else 1) or case.classes > total:
            parser.error(
                f"{case.describe()}: C must be in [{2 if case.softmax else 1}, "
                f"--total-elements = {total}]"
            )
    return cases


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; print the table, write the JSON and PNG. Returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    cases = _grid(args, parser)
    schedule = Schedule(
        repeats=_or_default(args.repeats, 3 if args.quick else 7),
        warmup=_or_default(args.warmup, 1),
        budget_s=args.time_budget,
    )
    if schedule.repeats < 1 or schedule.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1 (warm-up traces and compiles)")
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if args.device == "gpu" and not has_gpu:
        parser.error("--device gpu: TensorFlow sees no GPU")
    devices = {"cpu": ["cpu"], "gpu": ["gpu"], "all": ["cpu"] + (["gpu"] if has_gpu else [])}
    out_dir = args.out or _default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every case builds fresh tf.functions from the same Python code, which TF would report
    # as excessive retracing on each case; that is by design here.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        for device in devices[args.device]:
            report = run_device(cases, device, schedule, cases[0].total_elements)
            stem = out_dir / (f"bench-{device}" + ("-quick" if args.quick else ""))
            png = bench_plot.plot(report, stem.with_suffix(".png"))
            report["plot"] = None if png is None else png.name
            stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
            print(format_report(report), flush=True)
            _progress(
                f"wrote {stem.with_suffix('.json')}"
                + ("" if png is None else f" and {png}")
                + f" ({report['elapsed_s']:.0f} s)"
            )
    finally:
        logger.setLevel(level)
    return 0
