"""The CPU benchmark of DESIGN 6: costxent's losses as users run them, against the reference.

Run it as ``python -m costxent bench [options]`` (which finds this file in the source tree) or
as ``python benchmarks/cpu_bench.py [options]`` with ``costxent`` importable; ``--help`` lists
the options and the grid.

Every case (loss mode, logits dtype, sparse or dense labels, C classes at N*C = 2^24) times
forward + backward (``tape.gradient`` of the loss with respect to the logits), each in a
``tf.function``, of:

- ``keras``: the costxent Keras loss object with its default reduction, as a user runs it
  (``cx.WeightedCategoricalCrossentropy(..., from_logits=True)``, ``cx.ExpectedCostLoss``,
  ``cx.WeightedBinaryCrossentropy``), the headline row;
- ``keras-xla``: the same loss under ``tf.function(jit_compile=True)``;
- ``per-example``: the functional ``cx.ops`` loss, per example, with a random upstream
  gradient (``tape.gradient(loss, logits, output_gradients=g)``);
- their references, under XLA and in a plain ``tf.function``: ``costxent.reference`` in a
  Keras loss with the same default reduction (per example for ``per-example``); for the
  sigmoid loss, ``tf.nn.weighted_cross_entropy_with_logits`` in such a Keras loss.

and the copies that set the memory floor (``floor_copies``). After the cases, a Keras training
step (``train_on_batch`` of a small MLP with C = 10 and 1000 logits, ``FIT_*``) with
``jit_compile`` True (the loss as its XLA custom call) vs False (the fused TF op). All of a case's calls run
round-robin, interleaved, after one untimed warm-up call each (tracing, XLA compilation);
each ratio is of medians. The JSON report is rewritten after every case, so a run that is
killed still leaves its data.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import gc
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
import cpu_bench_plot

SCHEMA = "costxent-cpu-bench/2"
MODES = ("plain", "class-weight", "cost-matrix", "focal", "expected-cost", "sigmoid")
DEFAULT_MODES = ("plain", "class-weight", "cost-matrix", "expected-cost", "sigmoid")
SOFTMAX_MODES = ("plain", "class-weight", "cost-matrix", "focal", "expected-cost")
DTYPES = ("float32", "bfloat16", "float16", "float64")
LABEL_KINDS = ("sparse", "dense")
MULTI_HOT = "multi-hot"
ALL_CLASSES = (2, 3, 10, 30, 100, 1000, 10000)
DEFAULT_TOTAL = 2**24
# The 30-label problem of DESIGN 6: about one positive per row needs pos_weight ~ 27.
SIGMOID_CLASSES = 30
POS_WEIGHT = 27.0
FOCAL_GAMMA = 2.0
CE_WEIGHT = 0.1
# Every traced function embeds the Keras loss' cost matrix as a constant: at C = 10000
# (4e8 bytes) one warm-up call took 40-90 s and the process 22 GB of this 23 GB machine.
MAX_COST_MATRIX_ELEMENTS = 2**24
COST_MODES = ("cost-matrix", "expected-cost")

# A Keras training step (model.fit's step function, one train_on_batch per call) of a small
# MLP with C logits, jit_compile True vs False: the fused op as its XLA custom call against
# the fused TF op, with the rest of a real step around it. Each class count gets its own
# small time budget, so these rows run whatever --budget leaves.
FIT_CLASSES = (10, 1000)
FIT_BATCH = 512
FIT_FEATURES = 128
FIT_HIDDEN = 256
FIT_BUDGET_S = 20.0

DEFAULT_BUDGET_S = 660.0
DEFAULT_REPEATS = 7
MIN_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class ModeGrid:
    """The dtypes, label kinds and class counts a mode runs with when no flag overrides them."""

    dtypes: tuple[str, ...]
    labels: tuple[str, ...]
    classes: tuple[int, ...]


_FULL = ModeGrid(("float32", "bfloat16"), LABEL_KINDS, ALL_CLASSES)
MODE_GRIDS = {
    "plain": _FULL,
    "class-weight": _FULL,
    "cost-matrix": _FULL,
    "focal": _FULL,
    "expected-cost": ModeGrid(("float32",), ("sparse",), ALL_CLASSES),
    "sigmoid": ModeGrid(("float32", "bfloat16"), (MULTI_HOT,), (SIGMOID_CLASSES,)),
}

FUNCTIONS = {
    "keras": "costxent Keras loss (default reduction), tf.function",
    "keras-xla": "costxent Keras loss (default reduction), tf.function(jit_compile=True)",
    "per-example": "cx.ops per-example loss, upstream gradient g != 1, tf.function",
    "ref-keras-xla": "reference in a Keras loss (default reduction), jit_compile=True",
    "ref-keras": "reference in a Keras loss (default reduction), tf.function",
    "ref-per-example-xla": "reference per-example loss, upstream gradient g, jit_compile=True",
    "ref-per-example": "reference per-example loss, upstream gradient g, tf.function",
}
# Each reported row: (subject, its reference under XLA, its reference in a plain tf.function).
ROWS = (
    ("keras", "ref-keras-xla", "ref-keras"),
    ("keras-xla", "ref-keras-xla", "ref-keras"),
    ("per-example", "ref-per-example-xla", "ref-per-example"),
)
COPY_METHODS = {
    "numpy-threads": "np.copyto of one slice per core, on a thread per core",
    "tf-deepcopy": "tf.raw_ops.DeepCopy in a tf.function (TF's intra-op thread pool)",
    "numpy-1-thread": "one np.copyto on one thread (shown for comparison, never the floor)",
}
ALL_CORE_COPIES = ("numpy-threads", "tf-deepcopy")


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: logits of shape [total_elements // classes, classes]."""

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
    def name(self) -> str:
        """E.g. ``cost-matrix float32 sparse C=1000``."""
        return f"{self.mode} {self.dtype} {self.labels} C={self.classes}"

    def skip_reason(self) -> Optional[str]:
        """Why this case cannot run here, or None."""
        if self.mode in COST_MODES and self.classes**2 > MAX_COST_MATRIX_ELEMENTS:
            return (
                f"a {self.classes} x {self.classes} cost matrix: every traced function embeds "
                "it as a constant, so tracing and compiling take minutes and more memory "
                "than this machine has"
            )
        return None


def expand_grid(
    total_elements: int,
    modes: Sequence[str] = DEFAULT_MODES,
    dtypes: Optional[Sequence[str]] = None,
    labels: Optional[Sequence[str]] = None,
    classes: Optional[Sequence[int]] = None,
) -> list[Case]:
    """The cases of a run. A flag left as None takes each mode's default (``MODE_GRIDS``);
    the sigmoid loss always has multi-hot labels and C = 30, so ``labels`` and ``classes``
    apply to the softmax modes only.

    Ordered float32 first, then sparse (and the sigmoid's multi-hot) before dense, so a run
    cut short by its budget has measured every mode in float32.
    """
    cases = []
    for mode in modes:
        grid = MODE_GRIDS[mode]
        softmax = mode in SOFTMAX_MODES
        for dtype, kind, c in itertools.product(
            dtypes or grid.dtypes,
            (labels or grid.labels) if softmax else grid.labels,
            (classes or grid.classes) if softmax else grid.classes,
        ):
            cases.append(Case(mode, dtype, kind, c, total_elements))
    label_rank = {"sparse": 0, MULTI_HOT: 0, "dense": 1}
    return sorted(
        dict.fromkeys(cases),
        key=lambda case: (
            DTYPES.index(case.dtype),
            label_rank[case.labels],
            MODES.index(case.mode),
            case.classes,
        ),
    )


@dataclasses.dataclass(frozen=True)
class Inputs:
    """A case's tensors (on the CPU) and the weights its losses are built with."""

    labels: tf.Tensor
    logits: tf.Tensor
    upstream: tf.Tensor
    weights: Optional[np.ndarray]
    bytes: dict[str, int]


def make_inputs(case: Case) -> Inputs:
    """Deterministic random inputs; the weights are NumPy arrays, as a user passes them."""
    n, c = case.rows, case.classes
    dtype = tf.as_dtype(case.dtype)
    acc = tf.float64 if dtype == tf.float64 else tf.float32
    logits = tf.cast(2.0 * tf.random.stateless_normal([n, c], seed=(1, 2)), dtype)
    ids = tf.random.stateless_uniform([n], seed=(3, 4), maxval=c, dtype=tf.int32)
    if case.mode == "sigmoid":
        labels = tf.cast(tf.random.stateless_uniform([n, c], seed=(5, 6)) < 1.0 / c, dtype)
    elif case.labels == "dense":
        labels = tf.one_hot(ids, c, dtype=dtype)
    else:
        labels = ids
    upstream = tf.random.stateless_uniform([n], seed=(7, 8), minval=0.5, maxval=1.5, dtype=acc)
    rng = np.random.default_rng(9)
    weights: Optional[np.ndarray] = None
    if case.mode == "class-weight":
        weights = rng.uniform(0.5, 2.0, c).astype(np.float32)
    elif case.mode in COST_MODES:
        weights = rng.uniform(1.0, 5.0, (c, c)).astype(np.float32)
        np.fill_diagonal(weights, 0.0)
    logits_bytes = n * c * dtype.size
    return Inputs(
        labels=labels,
        logits=logits,
        upstream=upstream,
        weights=weights,
        bytes={
            "logits": logits_bytes,
            "labels": int(np.prod(labels.shape)) * labels.dtype.size,
            "gradient": logits_bytes,
            "loss": n * acc.size,
        },
    )


def floor_bytes(inputs: Inputs, per_example: bool) -> int:
    """A step's unavoidable bytes (DESIGN 6): logits and labels read once, the gradient
    written once, and for per-example outputs the loss [N] written once. The weights are
    not counted: a class-weight vector stays in cache, and only one entry of a cost
    matrix is read per row."""
    b = inputs.bytes
    return b["logits"] + b["labels"] + b["gradient"] + (b["loss"] if per_example else 0)


class _ReferenceLoss(keras.losses.Loss):
    """A Keras loss whose per-example values come from a reference function: the reference
    composed with Keras' own default reduction, as a user would write it."""

    def __init__(self, per_example: Callable[[Any, Any], Any]) -> None:
        super().__init__(name="reference")
        self._per_example = per_example

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss, reduced by ``keras.losses.Loss.__call__``."""
        return self._per_example(y_true, y_pred)


PerExample = Callable[[Any, Any], Any]


def _softmax_options(case: Case, weights: Optional[np.ndarray]) -> dict[str, Any]:
    """The keyword arguments of the weighted softmax loss (functional or Keras) for a mode."""
    return {
        "plain": {},
        "class-weight": {"class_weight": weights},
        "cost-matrix": {"cost_matrix": weights},
        "focal": {"focal_gamma": FOCAL_GAMMA},
    }[case.mode]


def _per_example_loss(module: Any, case: Case, weights: Optional[np.ndarray]) -> PerExample:
    """A softmax mode's per-example loss from ``costxent.ops`` or ``costxent.reference``."""
    if case.mode == "expected-cost":
        return lambda y, z: module.expected_cost(y, z, weights, ce_weight=CE_WEIGHT)
    options = _softmax_options(case, weights)
    return lambda y, z: module.softmax_cross_entropy(y, z, **options)


def _keras_loss(case: Case, weights: Optional[np.ndarray]) -> keras.losses.Loss:
    """The costxent Keras loss object a user builds for this mode."""
    if case.mode == "expected-cost":
        return cx.ExpectedCostLoss(weights, ce_weight=CE_WEIGHT, from_logits=True)
    if case.mode == "sigmoid":
        return cx.WeightedBinaryCrossentropy(pos_weight=POS_WEIGHT, from_logits=True)
    return cx.WeightedCategoricalCrossentropy(from_logits=True, **_softmax_options(case, weights))


def _reference_keras_loss(case: Case, weights: Optional[np.ndarray]) -> keras.losses.Loss:
    """The reference of the Keras loss: TF's own weighted sigmoid op (averaged over the last
    axis, as ``WeightedBinaryCrossentropy`` does), else ``costxent.reference``."""
    if case.mode == "sigmoid":
        return _ReferenceLoss(
            lambda y, z: tf.reduce_mean(
                tf.nn.weighted_cross_entropy_with_logits(y, z, POS_WEIGHT), axis=-1
            )
        )
    return _ReferenceLoss(_per_example_loss(cx.reference, case, weights))


def reference_name(case: Case) -> str:
    """What the ``ref-*`` functions of a case compute."""
    if case.mode == "sigmoid":
        return "tf.nn.weighted_cross_entropy_with_logits"
    return "costxent.reference"


Implementations = dict[str, str]


def _loss_step(
    loss: keras.losses.Loss, jit: bool, record: Optional[Callable[[], None]]
) -> Callable[..., Any]:
    """Forward + backward of a Keras loss: its scalar and d loss / d logits."""

    def step(labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if record is not None:
            record()
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(labels, logits)
        return value, tape.gradient(value, logits)

    return tf.function(step, jit_compile=jit)


def _per_example_step(
    fn: PerExample, jit: bool, record: Optional[Callable[[], None]]
) -> Callable[..., Any]:
    """Forward + backward of a per-example loss under an upstream gradient ``g`` [N]."""

    def step(
        labels: tf.Tensor, logits: tf.Tensor, upstream: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        if record is not None:
            record()
        with tf.GradientTape() as tape:
            tape.watch(logits)
            losses = fn(labels, logits)
        return losses, tape.gradient(losses, logits, output_gradients=upstream)

    return tf.function(step, jit_compile=jit)


def case_functions(
    case: Case, inputs: Inputs, implementations: Implementations
) -> dict[str, Callable[[], None]]:
    """The timed calls of a case, by ``FUNCTIONS`` name. The costxent subjects note in
    ``implementations``, while being traced, which path ``cx.ops`` takes there."""

    def recorder(name: str) -> Callable[[], None]:
        def record() -> None:
            implementations[name] = cx.ops.implementation()

        return record

    keras_loss = _keras_loss(case, inputs.weights)
    reference = _reference_keras_loss(case, inputs.weights)
    steps = {
        "keras": _loss_step(keras_loss, False, recorder("keras")),
        "keras-xla": _loss_step(keras_loss, True, recorder("keras-xla")),
        "ref-keras-xla": _loss_step(reference, True, None),
        "ref-keras": _loss_step(reference, False, None),
    }
    pair = (inputs.labels, inputs.logits)
    calls = {name: _bind(step, pair) for name, step in steps.items()}
    if case.mode != "sigmoid":
        fused = _per_example_loss(cx.ops, case, inputs.weights)
        ref = _per_example_loss(cx.reference, case, inputs.weights)
        triple = (inputs.labels, inputs.logits, inputs.upstream)
        calls["per-example"] = _bind(
            _per_example_step(fused, False, recorder("per-example")), triple
        )
        calls["ref-per-example-xla"] = _bind(_per_example_step(ref, True, None), triple)
        calls["ref-per-example"] = _bind(_per_example_step(ref, False, None), triple)
    return calls


def _bind(fn: Callable, args: tuple) -> Callable[[], None]:
    """A timed call. On the CPU a tf.function returns only once its outputs (the gradient
    included) exist, so no synchronisation is needed."""

    def call() -> None:
        fn(*args)

    return call


def fit_step_calls(classes: int) -> tuple[dict[str, Callable[[], None]], Implementations]:
    """One Keras training step of the small MLP per call, by jit_compile ("fit-xla": True,
    "fit": False), with the costxent loss at its default reduction (sum_over_batch_size),
    and the path ``cx.ops`` took in each step as traced."""
    rng = np.random.default_rng(classes)
    x = rng.normal(size=(FIT_BATCH, FIT_FEATURES)).astype(np.float32)
    y = rng.integers(0, classes, size=FIT_BATCH)
    calls: dict[str, Callable[[], None]] = {}
    implementations: Implementations = {}
    for name, jit in (("fit-xla", True), ("fit", False)):

        class Recorded(cx.WeightedCategoricalCrossentropy):
            def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None,
                         _name: str = name) -> Any:
                implementations[_name] = cx.ops.implementation()
                return super().__call__(y_true, y_pred, sample_weight)

        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((FIT_FEATURES,)),
            keras.layers.Dense(FIT_HIDDEN, activation="relu"),
            keras.layers.Dense(classes),
        ])
        model.compile(optimizer="sgd", loss=Recorded(from_logits=True), jit_compile=jit)
        calls[name] = lambda model=model: model.train_on_batch(x, y)
    return calls, implementations


def run_fit(classes: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """The model.fit-step rows: per class count, both steps interleaved within
    ``FIT_BUDGET_S``; ``tf_function_over_xla`` > 1 means the jit-compiled step is faster."""
    rows = []
    for c in classes:
        calls, implementations = fit_step_calls(c)
        budget = Budget(FIT_BUDGET_S)
        raw = interleave(calls, repeats, budget.clock() + FIT_BUDGET_S, budget)
        medians = {name: statistics.median(values) for name, values in raw.items()}
        rows.append({
            "classes": c,
            "batch": FIT_BATCH,
            "features": FIT_FEATURES,
            "hidden": FIT_HIDDEN,
            "implementation": implementations,
            "timings_ms": raw,
            "median_ms": medians,
            "tf_function_over_xla": medians["fit"] / medians["fit-xla"],
        })
    return rows


def split(
    target: np.ndarray, source: np.ndarray, parts: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``parts`` contiguous (target, source) slice pairs that together cover both arrays."""
    bounds = [len(source) * i // parts for i in range(parts + 1)]
    return [(target[a:b], source[a:b]) for a, b in zip(bounds, bounds[1:])]


def floor_copies(
    nbytes: int, executor: concurrent.futures.ThreadPoolExecutor, threads: int
) -> dict[str, Callable[[], None]]:
    """Copies of ``nbytes`` bytes, by ``COPY_METHODS`` name: each reads and writes as many
    bytes as a step's floor moves. Sources are filled and targets pre-touched so no
    first-touch page faults reach the timings."""
    source = np.full(nbytes, 1, np.uint8)
    target = np.full(nbytes, 2, np.uint8)
    slices = split(target, source, threads)

    def numpy_threads() -> None:
        # np.copyto releases the GIL, so the slices copy in parallel.
        for future in [executor.submit(np.copyto, dst, src) for dst, src in slices]:
            future.result()

    tensor = tf.constant(source)
    deep_copy = tf.function(lambda x: tf.raw_ops.DeepCopy(x=x))
    return {
        "numpy-threads": numpy_threads,
        "tf-deepcopy": _bind(deep_copy, (tensor,)),
        "numpy-1-thread": lambda: np.copyto(target, source),
    }


class Budget:
    """The run's time budget, spent case by case.

    Each case may use an equal share of what is left (``case_deadline``); its rounds stop
    there once ``MIN_ROUNDS`` have run, so cheap cases leave time to the expensive ones.
    Once the whole budget is spent the case in progress stops after its current round
    and no further case starts.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = seconds
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.start

    def exhausted(self) -> bool:
        """Whether the whole budget is spent."""
        return self.elapsed() >= self.seconds

    def case_deadline(self, cases_left: int) -> float:
        """The clock value at which the next case should stop timing."""
        now = self.clock()
        return now + max(0.0, self.seconds - (now - self.start)) / max(1, cases_left)


def interleave(
    calls: dict[str, Callable[[], None]],
    repeats: int,
    deadline: float,
    budget: Budget,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Milliseconds of each call: ``warmup`` untimed calls each, then rounds that call each
    once, every round starting one call later so none always follows the same one.

    Rounds stop after ``repeats``, at ``deadline`` once ``MIN_ROUNDS`` have run, or when
    ``budget`` is exhausted once one has run.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = budget.clock
    for round_index in range(repeats):
        if round_index >= 1 and budget.exhausted():
            break
        if round_index >= MIN_ROUNDS and clock() >= deadline:
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            begin = clock()
            calls[name]()
            times[name].append(1e3 * (clock() - begin))
    return times


def _ratio_target(name: str, value: float, required: float, at_most: bool) -> dict[str, Any]:
    met = value <= required if at_most else value >= required
    return {
        "target": f"{name} {'<=' if at_most else '>='} {required:g}",
        "value": value,
        "required": required,
        "at_most": at_most,
        "met": met,
    }


def design_targets(case: Case, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The DESIGN 6 CPU targets that apply to one row (float32 and bfloat16 only)."""
    if case.dtype not in ("float32", "bfloat16"):
        return []
    subject = row["subject"]
    floor, xla, tf_ratio = row["time_over_floor"], row["ref_xla_over_time"], row["ref_over_time"]
    if subject == "keras":
        if case.mode == "sigmoid":
            return [
                _ratio_target("time/floor", floor, 2.0, True),
                _ratio_target("tf.nn-XLA/time", xla, 3.0, False),
            ]
        return [
            _ratio_target("time/floor", floor, 1.25 if case.classes >= 100 else 2.0, True),
            _ratio_target("ref-XLA/time", xla, 3.0, False),
            _ratio_target("ref-tf.function/time", tf_ratio, 5.0, False),
        ]
    if subject == "keras-xla":
        return [_ratio_target("ref-XLA/time", xla, 2.0, False)]
    if subject == "per-example" and case.classes >= 100:
        return [_ratio_target("time/floor", floor, 2.0, True)]
    return []


def summarize_case(
    case: Case,
    inputs: Inputs,
    raw: dict[str, list[float]],
    copy_bytes: int,
    threads: int,
    implementations: Implementations,
) -> dict[str, Any]:
    """The JSON record of a case: raw times, medians, the floor, the rows and their targets."""
    medians = {name: statistics.median(values) for name, values in raw.items()}
    copy_threads = {
        "numpy-threads": threads,
        # 0 means TF sizes its intra-op pool to the machine.
        "tf-deepcopy": tf.config.threading.get_intra_op_parallelism_threads() or threads,
        "numpy-1-thread": 1,
    }
    methods = {}
    for method in COPY_METHODS:
        ms = medians.pop(f"copy/{method}")
        methods[method] = {
            "threads": copy_threads[method],
            "all_cores": method in ALL_CORE_COPIES,
            "times_ms": raw[f"copy/{method}"],
            "median_ms": ms,
            # A copy reads and writes copy_bytes.
            "bandwidth_gb_s": 2 * copy_bytes / (ms * 1e-3) / 1e9,
        }
    best = max(ALL_CORE_COPIES, key=lambda method: methods[method]["bandwidth_gb_s"])
    bandwidth = methods[best]["bandwidth_gb_s"]
    rows = []
    for subject, ref_xla, ref_tf in ROWS:
        if subject not in medians:
            continue
        nbytes = floor_bytes(inputs, subject == "per-example")
        floor_ms = 1e3 * nbytes / (bandwidth * 1e9)
        ms = medians[subject]
        row = {
            "subject": subject,
            "implementation": implementations.get(subject),
            "median_ms": ms,
            "floor_bytes": nbytes,
            "floor_ms": floor_ms,
            "references": {"xla": ref_xla, "tf.function": ref_tf},
            "time_over_floor": ms / floor_ms,
            "ref_xla_over_time": medians[ref_xla] / ms,
            "ref_over_time": medians[ref_tf] / ms,
        }
        row["targets"] = design_targets(case, row)
        rows.append(row)
    return {
        "case": case.name,
        "mode": case.mode,
        "dtype": case.dtype,
        "labels": case.labels,
        "classes": case.classes,
        "n": case.rows,
        "total_elements": case.rows * case.classes,
        "reference": reference_name(case),
        "rounds": len(raw["copy/numpy-threads"]),
        "bytes": inputs.bytes,
        "floor": {
            "copy_bytes": copy_bytes,
            "methods": methods,
            "method": best,
            "threads": threads,
            "bandwidth_gb_s": bandwidth,
            # Only other work competing for the cores makes one thread outrun all of them.
            "one_thread_faster": methods["numpy-1-thread"]["bandwidth_gb_s"] > bandwidth,
        },
        "timings_ms": {name: raw[name] for name in medians},
        "median_ms": medians,
        "results": rows,
    }


def run_case(
    case: Case,
    repeats: int,
    deadline: float,
    budget: Budget,
    executor: concurrent.futures.ThreadPoolExecutor,
    threads: int,
) -> dict[str, Any]:
    """Build, warm up and time one case on the CPU."""
    with tf.device("/CPU:0"):
        inputs = make_inputs(case)
        implementations: Implementations = {}
        calls = case_functions(case, inputs, implementations)
        copy_bytes = floor_bytes(inputs, per_example=False) // 2
        for method, call in floor_copies(copy_bytes, executor, threads).items():
            calls[f"copy/{method}"] = call
        raw = interleave(calls, repeats, deadline, budget)
    return summarize_case(case, inputs, raw, copy_bytes, threads, implementations)


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _simd_flags() -> list[str]:
    """The CPU's vector extensions that matter to the kernels, from /proc/cpuinfo."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def _instruction_set() -> Optional[str]:
    """The ISA the CPU kernels dispatched to, as ``costxent._core`` reports it."""
    try:
        from costxent import _core
    except ImportError:
        return None
    return str(_core.cpu_instruction_set())


def _git(*args: str) -> Optional[str]:
    """A git query about the tree this harness lives in; None outside a git checkout."""
    try:
        return subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_description() -> dict[str, Any]:
    """Where and on what the numbers were measured."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": usable_cores(),
        "cpu_simd_flags": _simd_flags(),
        "instruction_set": _instruction_set(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "all",
        # Other work on the machine skews absolute times more than the interleaved ratios.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "costxent": cx.__version__,
        "implementation": cx.ops.implementation(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def _format_ms(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def _format_target(target: dict[str, Any]) -> str:
    status = "met" if target["met"] else "MISSED"
    return f"{target['target']}: {status} ({target['value']:.2f})"


def _short_implementation(implementation: Optional[str]) -> str:
    if implementation is None:
        return "-"
    return "reference" if implementation.startswith("reference") else implementation


def all_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of every row of the report."""
    return [
        target for case in report["cases"] for row in case["results"] for target in row["targets"]
    ]


def format_report(report: dict[str, Any]) -> str:
    """The text table: per case and row, milliseconds (median), the floor, the ratios and
    the DESIGN 6 targets; then skipped cases and the count of targets met."""
    machine = report["machine"]
    lines = [
        f"costxent CPU benchmark, {machine['date']}: {machine['cpu_model']}, "
        f"{machine['cores_usable']} of {machine['cpu_count']} cores usable, "
        f"kernels' ISA {machine['instruction_set']} (CPU: "
        f"{' '.join(machine['cpu_simd_flags']) or '-'}), TensorFlow {machine['tensorflow']}, "
        f"Keras {machine['keras']}, {machine['implementation']}",
        f"N*C = {report['settings']['total_elements']}; median of the rounds after one "
        "warm-up call each, every call interleaved; status: " + report["status"],
    ]
    cases = report["cases"]
    if cases:
        all_core = [case["floor"]["bandwidth_gb_s"] for case in cases]
        one = [case["floor"]["methods"]["numpy-1-thread"]["bandwidth_gb_s"] for case in cases]
        winners = {m: sum(case["floor"]["method"] == m for case in cases) for m in ALL_CORE_COPIES}
        lines.append(
            f"floor: bytes at the bandwidth of the faster all-core copy, median "
            f"{statistics.median(all_core):.1f} GB/s ("
            + ", ".join(f"{m} fastest in {k}" for m, k in winners.items())
            + f"); a one-thread NumPy copy reached {statistics.median(one):.1f} GB/s"
        )
        busy = sum(case["floor"]["one_thread_faster"] for case in cases)
        if busy:
            lines.append(
                f"note: in {busy} of {len(cases)} cases the one-thread copy beat the "
                "all-core copies, so other work competed for the cores: their times and "
                "floors are less reliable"
            )
    lines.append("")
    table = [[
        "case", "N", "rounds", "copy GB/s", "row", "impl", "ms", "floor ms", "time/floor",
        "ref-XLA/time", "ref-tf/time", "DESIGN 6 targets",
    ]]
    for case in cases:
        for index, row in enumerate(case["results"]):
            head = (
                [case["case"], str(case["n"]), str(case["rounds"]),
                 f"{case['floor']['bandwidth_gb_s']:.1f}"]
                if index == 0 else ["", "", "", ""]
            )
            table.append(head + [
                row["subject"],
                _short_implementation(row["implementation"]),
                _format_ms(row["median_ms"]),
                _format_ms(row["floor_ms"]),
                f"{row['time_over_floor']:.2f}",
                f"{row['ref_xla_over_time']:.2f}",
                f"{row['ref_over_time']:.2f}",
                "; ".join(map(_format_target, row["targets"])) or "-",
            ])
    lines.append(_text_table(table))
    reasons: dict[str, list[str]] = {}
    for skipped in report["skipped"]:
        reasons.setdefault(skipped["reason"], []).append(skipped["case"])
    for reason, names in reasons.items():
        lines.append(f"skipped ({reason}): " + ", ".join(names))
    for failed in report["failed"]:
        lines.append(f"FAILED {failed['case']}: {failed['error']}")
    fit = report.get("fit") or []
    if fit:
        lines.append(
            f"\nKeras model.fit step (MLP {fit[0]['features']}-{fit[0]['hidden']}-C, batch "
            f"{fit[0]['batch']}, train_on_batch), ms median:"
        )
        lines.append(_text_table([["C", "jit_compile=True", "jit_compile=False", "False/True",
                                   "impl (True / False)"]] + [
            [str(row["classes"]), _format_ms(row["median_ms"]["fit-xla"]),
             _format_ms(row["median_ms"]["fit"]), f"{row['tf_function_over_xla']:.2f}",
             " / ".join(_short_implementation(row["implementation"].get(name))
                        for name in ("fit-xla", "fit"))]
            for row in fit
        ]))
    targets = all_targets(report)
    met = sum(target["met"] for target in targets)
    lines.append(f"\nDESIGN 6 targets: {met} of {len(targets)} met")
    return "\n".join(lines)


class Report:
    """The run's report, rewritten to ``<out>/bench-cpu.json`` and ``.txt`` after every case."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "status": "running",
            "machine": machine_description(),
            "settings": settings,
            "functions": FUNCTIONS,
            "copy_methods": COPY_METHODS,
            "cases": [],
            "skipped": [],
            "failed": [],
            "elapsed_s": 0.0,
        }

    @property
    def json_path(self) -> Path:
        """Where the JSON report is written."""
        return self.out_dir / "bench-cpu.json"

    def write(self, elapsed_s: float) -> None:
        """Write the JSON and the text table as they stand (each replaced atomically)."""
        self.data["elapsed_s"] = elapsed_s
        targets = all_targets(self.data)
        self.data["targets_met"] = sum(target["met"] for target in targets)
        self.data["targets_total"] = len(targets)
        _write_atomically(self.json_path, json.dumps(self.data, indent=1) + "\n")
        _write_atomically(self.out_dir / "bench-cpu.txt", format_report(self.data) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    # A run killed mid-write must not leave a truncated report behind.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    cases: Sequence[Case],
    out_dir: Path,
    budget: Budget,
    repeats: int = DEFAULT_REPEATS,
    fit_classes: Sequence[int] = FIT_CLASSES,
) -> dict[str, Any]:
    """Benchmark ``cases`` in order within ``budget``, writing the report after each, then
    the model.fit-step rows for ``fit_classes``; the PNG once at the end (also after Ctrl-C,
    which ends the run with status "interrupted"). Returns the report."""
    threads = usable_cores()
    report = Report(out_dir, {
        "total_elements": cases[0].total_elements if cases else None,
        "repeats": repeats,
        "min_rounds": MIN_ROUNDS,
        "warmup": 1,
        "budget_s": budget.seconds,
        "grid": [case.name for case in cases],
        "focal_gamma": FOCAL_GAMMA,
        "ce_weight": CE_WEIGHT,
        "pos_weight": POS_WEIGHT,
        "floor": "logits read once + labels read once (sparse ids N x 4 bytes, dense N x C "
        "x itemsize) + gradient written once, + the loss [N] written once for per-example "
        "rows, at the bandwidth of the faster of the all-core copies of half as many bytes "
        "(read + write), timed interleaved with the case",
    })
    data = report.data
    runnable = [case for case in cases if case.skip_reason() is None]
    data["skipped"] = [
        {"case": case.name, "reason": case.skip_reason()} for case in cases if case not in runnable
    ]
    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as executor:
            for index, case in enumerate(runnable):
                if budget.exhausted():
                    data["skipped"] += [
                        {"case": rest.name, "reason": "time budget spent"}
                        for rest in runnable[index:]
                    ]
                    data["status"] = "budget spent"
                    break
                gc.collect()
                begin = budget.clock()
                try:
                    result = run_case(
                        case, repeats, budget.case_deadline(len(runnable) - index), budget,
                        executor, threads,
                    )
                except Exception as error:  # noqa: BLE001 - one failing case must not end the run
                    message = f"{type(error).__name__}: {error}"
                    data["failed"].append({"case": case.name, "error": message})
                    _progress(f"[{index + 1}/{len(runnable)}] {case.name}: FAILED {error}")
                else:
                    result["elapsed_s"] = budget.clock() - begin
                    data["cases"].append(result)
                    _progress(_progress_line(index + 1, len(runnable), budget, result))
                report.write(budget.elapsed())
            else:
                data["status"] = "complete"
        data["fit"] = run_fit(fit_classes, repeats)
        report.write(budget.elapsed())
    except KeyboardInterrupt:
        data["status"] = "interrupted"
    finally:
        data["machine"]["load_average_end"] = (
            list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        )
        png = cpu_bench_plot.plot(data, out_dir / "bench-cpu.png") if data["cases"] else None
        data["plot"] = None if png is None else png.name
        report.write(budget.elapsed())
    return data


def _progress_line(index: int, total: int, budget: Budget, result: dict[str, Any]) -> str:
    head = result["results"][0]
    return (
        f"[{index}/{total} {budget.elapsed():.0f}s] {result['case']}: keras "
        f"{_format_ms(head['median_ms'])} ms = {head['time_over_floor']:.2f}x floor, "
        f"ref-XLA/time {head['ref_xla_over_time']:.2f}, ref-tf/time "
        f"{head['ref_over_time']:.2f} ({result['rounds']} rounds, {result['elapsed_s']:.1f} s)"
    )


def _default_out_dir() -> Path:
    return Path(__file__).resolve().parent / "results"


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m costxent bench`` / ``benchmarks/cpu_bench.py``."""
    default = expand_grid(DEFAULT_TOTAL)
    skipped = sum(case.skip_reason() is not None for case in default)
    grids = "\n".join(
        f"  {mode:13} {' '.join(g.dtypes)} | {' '.join(g.labels)} | C = "
        + " ".join(map(str, g.classes))
        + ("" if mode in DEFAULT_MODES else "   (not in the default run)")
        for mode, g in MODE_GRIDS.items()
    )
    result = argparse.ArgumentParser(
        prog="python -m costxent bench",
        description=(
            "Forward + backward of costxent's Keras losses (and the per-example ops) against "
            "the reference under XLA and in tf.function and against the memory floor, "
            "interleaved in one run on the CPU. Writes bench-cpu.json (after every case), "
            "bench-cpu.txt and bench-cpu.png to --out and prints the table."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"Each mode's default grid (dtypes | labels | classes), N*C = 2^24:\n{grids}\n"
            "--dtypes replaces every mode's dtypes; --labels and --classes those of the\n"
            "softmax modes (sigmoid: multi-hot labels, C = 30, pos_weight = 27).\n"
            f"The default run has {len(default)} cases ({skipped} with a 10000 x 10000 cost "
            "matrix are skipped)\n"
            f"and takes at most --budget = {DEFAULT_BUDGET_S:.0f} s plus one case: each case "
            "gets an equal share\n"
            f"of the budget left, at least {MIN_ROUNDS} rounds; once it is spent the remaining "
            "cases are skipped."
        ),
    )
    result.add_argument("--modes", nargs="+", choices=MODES, metavar="MODE",
                        help=f"loss modes (default: {' '.join(DEFAULT_MODES)}; also: focal)")
    result.add_argument("--dtypes", nargs="+", choices=DTYPES, metavar="DTYPE",
                        help=f"logits dtypes: {', '.join(DTYPES)}")
    result.add_argument("--labels", nargs="+", choices=LABEL_KINDS, metavar="KIND",
                        help="sparse and/or dense")
    result.add_argument("--classes", nargs="+", type=int, metavar="C", help="class counts")
    result.add_argument("--fit-classes", nargs="*", type=int, default=list(FIT_CLASSES),
                        metavar="C", help="class counts of the model.fit-step rows (jit_compile "
                        f"True vs False, {FIT_BUDGET_S:.0f} s each, outside --budget; none: "
                        "skip them)")
    result.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                        help=f"time for the whole run (default {DEFAULT_BUDGET_S:.0f})")
    result.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed rounds per case at most (default {DEFAULT_REPEATS})")
    result.add_argument("--total-elements", type=int, default=DEFAULT_TOTAL, metavar="N*C",
                        help=f"elements of the logits per case (default 2^24 = {DEFAULT_TOTAL})")
    result.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: benchmarks/results/ beside this file)")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; print the table. Returns the exit status."""
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.repeats < 1:
        command_line.error("--repeats must be at least 1")
    if args.budget < 0:
        command_line.error("--budget must be >= 0")
    cases = expand_grid(
        args.total_elements, args.modes or DEFAULT_MODES, args.dtypes, args.labels, args.classes
    )
    for case in cases:
        if not 2 <= case.classes <= args.total_elements:
            command_line.error(f"{case.name}: C must be in [2, --total-elements]")
    out_dir = args.out or _default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every case builds fresh tf.functions from the same code, which TF reports as excessive
    # retracing; that is by design here.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        report = run(cases, out_dir, Budget(args.budget), args.repeats, args.fit_classes)
    finally:
        logger.setLevel(level)
    print(format_report(report), flush=True)
    _progress(f"wrote {out_dir / 'bench-cpu.json'}, .txt and .png ({report['elapsed_s']:.0f} s)")
    if report["status"] == "interrupted":
        return 130
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
