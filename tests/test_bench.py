"""The CPU benchmark harness (benchmarks/cpu_bench.py) on a tiny grid.

Structure only - the report's schema, the floor, the ratios, the targets, the budget - never
speed: performance is judged from the benchmark's output, not asserted in tests (DESIGN 5).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from costxent import __main__ as entry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import cpu_bench  # noqa: E402

TINY = 2**12
TINY_ARGS = [
    "--classes", "2", "10", "--modes", "plain", "sigmoid", "--dtypes", "float32",
    "--labels", "sparse", "--total-elements", str(TINY), "--repeats", "3", "--budget", "300",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The output folder and stdout of ``python -m costxent bench`` on the tiny grid, run
    in this process through the same entry point."""
    out = tmp_path_factory.mktemp("bench")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = entry.main(["bench", *TINY_ARGS, "--out", str(out)])
    assert status == 0
    return out, stdout.getvalue()


@pytest.fixture(scope="module")
def report(tiny_run: tuple[Path, str]) -> dict[str, Any]:
    return json.loads((tiny_run[0] / "bench-cpu.json").read_text())


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_entry_finds_the_harness_from_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert entry.bench_harness_dir() == REPO / "benchmarks"


def test_entry_without_a_source_tree_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "lib" / "site-packages" / "costxent"
    site.mkdir(parents=True)
    monkeypatch.setattr(entry, "__file__", str(site / "__main__.py"))
    monkeypatch.chdir(tmp_path)
    assert entry.bench_harness_dir() is None
    assert entry.bench([]) == 2
    assert "benchmarks/cpu_bench.py" in capsys.readouterr().err


def test_report_schema(report: dict[str, Any]) -> None:
    assert report["schema"] == cpu_bench.SCHEMA
    assert report["status"] == "complete"
    machine = report["machine"]
    for key in ("date", "cpu_model", "cpu_count", "cores_usable", "tensorflow", "keras",
                "implementation"):
        assert machine[key], key
    assert "instruction_set" in machine and "cpu_simd_flags" in machine
    assert report["settings"]["total_elements"] == TINY
    assert report["settings"]["repeats"] == 3
    assert [case["case"] for case in report["cases"]] == [
        "plain float32 sparse C=2", "plain float32 sparse C=10", "sigmoid float32 multi-hot C=30"
    ]
    assert report["skipped"] == [] and report["failed"] == []
    for case in report["cases"]:
        per_example = case["mode"] != "sigmoid"
        expected = set(cpu_bench.FUNCTIONS) if per_example else {
            "keras", "keras-xla", "ref-keras-xla", "ref-keras"
        }
        assert set(case["timings_ms"]) == expected == set(case["median_ms"])
        for values in case["timings_ms"].values():
            assert len(values) == case["rounds"] and all(map(_positive, values))
        assert 1 <= case["rounds"] <= 3
        subjects = [row["subject"] for row in case["results"]]
        assert subjects == (["keras", "keras-xla", "per-example"] if per_example
                            else ["keras", "keras-xla"])
        for row in case["results"]:
            assert row["implementation"], row
        assert case["n"] * case["classes"] == case["total_elements"]


def test_floor_is_positive_and_uses_every_core(report: dict[str, Any]) -> None:
    cores = cpu_bench.usable_cores()
    for case in report["cases"]:
        floor = case["floor"]
        assert floor["threads"] == cores
        assert floor["method"] in cpu_bench.ALL_CORE_COPIES
        methods = floor["methods"]
        assert set(methods) == set(cpu_bench.COPY_METHODS)
        assert methods["numpy-threads"]["threads"] == cores
        assert methods["tf-deepcopy"]["threads"] == cores  # TF's default intra-op pool
        assert methods["numpy-1-thread"]["threads"] == 1
        assert not methods["numpy-1-thread"]["all_cores"]
        for method in methods.values():
            assert len(method["times_ms"]) == case["rounds"]
            assert _positive(method["bandwidth_gb_s"])
        # The floor takes the faster all-core copy, never the one-thread copy.
        assert floor["bandwidth_gb_s"] == max(
            methods[m]["bandwidth_gb_s"] for m in cpu_bench.ALL_CORE_COPIES
        )
        assert floor["one_thread_faster"] == (
            methods["numpy-1-thread"]["bandwidth_gb_s"] > floor["bandwidth_gb_s"]
        )
        n, c = case["n"], case["classes"]
        labels = n * 4 if case["labels"] == "sparse" else n * c * 4
        assert case["bytes"] == {"logits": n * c * 4, "labels": labels,
                                 "gradient": n * c * 4, "loss": n * 4}
        assert floor["copy_bytes"] == (2 * n * c * 4 + labels) // 2


def test_ratios_come_from_the_measured_times(report: dict[str, Any]) -> None:
    for case in report["cases"]:
        floor = case["floor"]
        for method in floor["methods"].values():
            assert method["median_ms"] == statistics.median(method["times_ms"])
            assert method["bandwidth_gb_s"] == pytest.approx(
                2 * floor["copy_bytes"] / (method["median_ms"] * 1e-3) / 1e9
            )
        for name, times in case["timings_ms"].items():
            assert case["median_ms"][name] == statistics.median(times)
        for row in case["results"]:
            ms = case["median_ms"][row["subject"]]
            assert row["median_ms"] == ms
            per_example = case["bytes"]["loss"] if row["subject"] == "per-example" else 0
            assert row["floor_bytes"] == (
                case["bytes"]["logits"] + case["bytes"]["labels"] + case["bytes"]["gradient"]
                + per_example
            )
            assert row["floor_ms"] == pytest.approx(
                row["floor_bytes"] / (floor["bandwidth_gb_s"] * 1e9) * 1e3
            )
            assert row["time_over_floor"] == pytest.approx(ms / row["floor_ms"])
            references = row["references"]
            assert row["ref_xla_over_time"] == pytest.approx(
                case["median_ms"][references["xla"]] / ms
            )
            assert row["ref_over_time"] == pytest.approx(
                case["median_ms"][references["tf.function"]] / ms
            )


def test_targets_are_marked_from_the_ratios(report: dict[str, Any]) -> None:
    counts = {}
    for case in report["cases"]:
        for row in case["results"]:
            counts[(case["mode"], case["classes"], row["subject"])] = len(row["targets"])
            for target in row["targets"]:
                value, required = target["value"], target["required"]
                assert target["met"] == (value <= required if target["at_most"]
                                         else value >= required)
                assert value in (row["time_over_floor"], row["ref_xla_over_time"],
                                 row["ref_over_time"])
    # DESIGN 6: the headline row has the floor, XLA and tf.function targets; XLA one target;
    # per-example a floor target only for C >= 100; the sigmoid the floor and tf.nn-XLA.
    assert counts == {
        ("plain", 2, "keras"): 3, ("plain", 2, "keras-xla"): 1, ("plain", 2, "per-example"): 0,
        ("plain", 10, "keras"): 3, ("plain", 10, "keras-xla"): 1,
        ("plain", 10, "per-example"): 0,
        ("sigmoid", 30, "keras"): 2, ("sigmoid", 30, "keras-xla"): 1,
    }
    met = sum(t["met"] for case in report["cases"] for row in case["results"]
              for t in row["targets"])
    assert (report["targets_met"], report["targets_total"]) == (met, 11)


def test_table_text_and_plot_are_written(tiny_run: tuple[Path, str],
                                         report: dict[str, Any]) -> None:
    out, stdout = tiny_run
    table = cpu_bench.format_report(report)
    assert table in stdout
    assert (out / "bench-cpu.txt").read_text() == table + "\n"
    for case in report["cases"]:
        assert case["case"] in table
    assert f"DESIGN 6 targets: {report['targets_met']} of 11 met" in table
    assert report["plot"] == "bench-cpu.png"
    assert (out / "bench-cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.partial"))


class _FakeClock:
    """A clock that advances by ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_rounds_stop_at_the_case_deadline_after_the_minimum() -> None:
    budget = cpu_bench.Budget(1e9, _FakeClock(1.0))
    calls = {"a": lambda: None, "b": lambda: None}
    times = cpu_bench.interleave(calls, repeats=100, deadline=budget.clock() + 2, budget=budget)
    assert {len(v) for v in times.values()} == {cpu_bench.MIN_ROUNDS}
    times = cpu_bench.interleave(calls, repeats=100, deadline=budget.clock() + 30, budget=budget)
    assert cpu_bench.MIN_ROUNDS < len(times["a"]) < 100


def test_a_spent_budget_stops_the_case_after_one_round() -> None:
    budget = cpu_bench.Budget(5.0, _FakeClock(1.0))
    times = cpu_bench.interleave(
        {"a": lambda: None, "b": lambda: None}, repeats=100, deadline=1e9, budget=budget
    )
    assert 1 <= len(times["a"]) < cpu_bench.MIN_ROUNDS
    # Each case gets an equal share of what is left.
    fresh = cpu_bench.Budget(100.0, _FakeClock(1.0))
    assert fresh.case_deadline(4) == pytest.approx(2.0 + (100.0 - 1.0) / 4)


def test_the_budget_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: dict[str, Any]
) -> None:
    """Cases that each take 1 s (on a fake clock) under a 2.5 s budget: the third starts
    with 0.5 s left, the rest are skipped, and the report on disk says so."""
    clock = _FakeClock(0.0)
    template = report["cases"][0]

    def one_second_case(case: cpu_bench.Case, *args: Any) -> dict[str, Any]:
        clock.now += 1.0
        return dict(copy.deepcopy(template), case=case.name, classes=case.classes)

    monkeypatch.setattr(cpu_bench, "run_case", one_second_case)
    cases = cpu_bench.expand_grid(TINY, ("plain",), ("float32",), ("sparse",), (2, 3, 10, 30))
    result = cpu_bench.run(cases, tmp_path, cpu_bench.Budget(2.5, clock))
    assert result["status"] == "budget spent"
    assert [case["case"] for case in result["cases"]] == [case.name for case in cases[:3]]
    assert result["skipped"] == [{"case": cases[3].name, "reason": "time budget spent"}]
    written = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert written["status"] == "budget spent" and len(written["cases"]) == 3
    assert f"skipped (time budget spent): {cases[3].name}" in cpu_bench.format_report(result)


def test_default_grid_and_flags() -> None:
    full = cpu_bench.expand_grid(2**24)
    classes = cpu_bench.ALL_CLASSES
    # plain/class-weight/cost-matrix x {float32, bfloat16} x {sparse, dense}; expected cost
    # float32 sparse; the sigmoid at C = 30 in both dtypes.
    assert len(full) == 3 * 2 * 2 * len(classes) + len(classes) + 2
    names = [case.name for case in full]
    assert names[0] == "plain float32 sparse C=2"
    # Every float32 mode, the sigmoid included, before the dense labels.
    assert names.index("sigmoid float32 multi-hot C=30") < names.index("plain float32 dense C=2")
    assert [case.dtype for case in full] == sorted(
        (case.dtype for case in full), key=cpu_bench.DTYPES.index
    )
    skipped = {case.name for case in full if case.skip_reason()}
    assert skipped == {
        f"cost-matrix {d} {k} C=10000" for d in ("float32", "bfloat16") for k in ("sparse", "dense")
    } | {"expected-cost float32 sparse C=10000"}
    subset = cpu_bench.expand_grid(2**24, cpu_bench.DEFAULT_MODES, ["float32"], None, [2, 1000])
    assert len(subset) == 3 * 2 * 2 + 2 + 1
    sigmoid = [case for case in subset if case.mode == "sigmoid"]
    assert [(c.labels, c.classes) for c in sigmoid] == [("multi-hot", cpu_bench.SIGMOID_CLASSES)]
    focal = cpu_bench.expand_grid(2**24, ["focal"], None, ["dense"], [10])
    assert [case.name for case in focal] == [
        "focal float32 dense C=10", "focal bfloat16 dense C=10"
    ]


def test_split_covers_the_buffers() -> None:
    source, target = np.arange(1001) % 251, np.zeros(1001, int)
    pairs = cpu_bench.split(target, source, 3)
    assert len(pairs) == 3
    for dst, src in pairs:
        np.copyto(dst, src)
    assert (target == source).all()


@pytest.mark.parametrize("argv", [["--classes", "1"], ["--repeats", "0"], ["--budget", "-1"],
                                  ["--total-elements", "10", "--classes", "100"]])
def test_bad_arguments_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as error:
        cpu_bench.main(argv)
    assert error.value.code == 2
