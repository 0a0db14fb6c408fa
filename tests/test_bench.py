"""``python -m costxent bench --quick``: it runs, and its JSON, table and PNG are complete.

Structure only: performance is judged from the benchmark's output, never asserted in tests
(DESIGN 5).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import costxent as cx
from costxent import bench

REQUIRED_COMPETITORS = {"fused", "reference", "reference-xla", "tf.nn"}
PASSES = {"fwd_bwd", "fwd"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The output folder and stdout of one ``--quick`` run, as a user starts it."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)
    # Whether costxent is installed or used from the source tree, the child imports this one.
    package_parent = str(Path(cx.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "costxent", "bench", "--quick", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done.stdout


@pytest.fixture(scope="module")
def report(quick_run: tuple[Path, str]) -> dict[str, Any]:
    return json.loads((quick_run[0] / "bench-cpu-quick.json").read_text())


def _positive_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_machine_and_settings_are_described(report: dict[str, Any]) -> None:
    machine = report["machine"]
    for key in ("cpu_model", "cpu_count", "tensorflow", "implementation", "date"):
        assert machine[key], key
    assert "git_commit" in machine
    assert report["device"] == "cpu"
    assert report["settings"]["repeats"] >= 1
    assert report["settings"]["total_elements"] == bench.QUICK_TOTAL


def test_quick_grid_covers_label_kinds_and_the_sigmoid(report: dict[str, Any]) -> None:
    cases = report["cases"]
    assert {case["labels"] for case in cases} == {"sparse", "dense", "multi-hot"}
    assert {"plain", "cost-matrix", "sigmoid"} <= {case["mode"] for case in cases}


def test_every_timing_is_positive_and_finite(report: dict[str, Any]) -> None:
    repeats = report["settings"]["repeats"]
    for case in report["cases"]:
        # Every call of a case runs once per round, however many rounds the budget allowed.
        rounds = len(case["floor"]["copy_times_ms"])
        assert 1 <= rounds <= repeats
        expected = REQUIRED_COMPETITORS | ({"web"} if case["mode"] == "cost-matrix" else set())
        assert set(case["timings_ms"]) == expected, case["case"]
        assert set(case["median_ms"]) == expected
        for name, passes in case["timings_ms"].items():
            assert set(passes) == PASSES, (case["case"], name)
            for values in passes.values():
                assert len(values) == rounds
                assert all(_positive_finite(v) for v in values), (case["case"], name, values)
            for pass_name in PASSES:
                assert _positive_finite(case["median_ms"][name][pass_name])
                if name != "fused":
                    assert _positive_finite(case["ratio_to_fused"][name][pass_name])
        floor = case["floor"]
        assert all(_positive_finite(v) for v in floor["copy_times_ms"])
        assert _positive_finite(floor["bandwidth_gb_s"])
        for pass_name in PASSES:
            assert _positive_finite(floor["ms"][pass_name])
            assert _positive_finite(case["fused_over_floor"][pass_name])
        assert case["rows"] * case["classes"] == case["total_elements"]


def test_targets_are_evaluated(report: dict[str, Any]) -> None:
    targets = report["targets"]
    assert targets, "the quick grid has float32 sparse plain and sigmoid rows"
    for target in targets:
        assert isinstance(target["met"], bool)
        assert _positive_finite(target["value"]) and target["shortfall"] >= 1.0


def test_table_and_plot_are_written(quick_run: tuple[Path, str], report: dict[str, Any]) -> None:
    out, stdout = quick_run
    assert "fused ms" in stdout and "targets:" in stdout
    for case in report["cases"]:
        assert case["case"] in stdout
    assert report["plot"] == "bench-cpu-quick.png"
    assert (out / report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_reformats_from_the_json(report: dict[str, Any]) -> None:
    """A committed report can be re-tabulated without re-running."""
    assert bench.format_report(report).count("fwd+bwd") >= len(report["cases"])


@pytest.mark.parametrize(
    "argv",
    [["--classes", "1"], ["--modes", "sigmoid", "--classes", "0"], ["--repeats", "-1"],
     ["--modes", "plain", "--total-elements", "10", "--classes", "100"]],
)
def test_bad_sizes_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as error:
        bench.main(argv)
    assert error.value.code == 2
