"""The PNG of ``python -m costxent bench``: forward+backward milliseconds per competitor.

Drawn from the benchmark's JSON report alone, so a committed report can be re-plotted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

MAX_PANELS = 6


def _panels(cases: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Softmax groups (mode, dtype, labels) as ms-vs-C panels: float32 sparse first (the
    DESIGN 6 rows), then one panel for all sigmoid rows (issue 4), then the other groups
    while there is room."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        key = (
            "sigmoid (C = labels per row)"
            if case["mode"] == "sigmoid"
            else f"{case['mode']}, {case['dtype']}, {case['labels']}"
        )
        groups.setdefault(key, []).append(case)

    def order(item: tuple[str, list[dict[str, Any]]]) -> tuple[int, int]:
        first = item[1][0]
        if first["mode"] == "sigmoid":
            rank = 1
        else:
            rank = 0 if (first["dtype"], first["labels"]) == ("float32", "sparse") else 2
        return rank, -len(item[1])

    return sorted(groups.items(), key=order)[:MAX_PANELS]


def plot(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Write the figure to ``path``; None (with a note on stderr) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return None

    panels = _panels(report["cases"])
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False
    )
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (title, cases) in zip(axes.flat, panels):
        if cases[0]["mode"] == "sigmoid":
            _sigmoid_panel(axis, cases, report["competitors"])
        else:
            _classes_panel(axis, cases, report["competitors"])
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
    # One legend for the figure: the panels share competitors, and per-panel legends hide lines.
    legend: dict[str, Any] = {}
    for axis in axes.flat[: len(panels)]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=3, fontsize=8)
    machine = report["machine"]
    figure.suptitle(
        f"costxent forward+backward, N*C = {report['settings']['total_elements']}, "
        f"{report['device']}: {machine['cpu_model']} ({machine['cpus_usable']} cores), "
        f"TF {machine['tensorflow']}, {machine['date'][:10]}",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.08 if rows == 1 else 0.05, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _classes_panel(axis: Any, cases: list[dict[str, Any]], labels: dict[str, str]) -> None:
    """Milliseconds against C on log-log axes, one line per competitor plus the floor."""
    cases = sorted(cases, key=lambda case: case["classes"])
    classes = [case["classes"] for case in cases]
    for name, label in labels.items():
        points = [
            (c, case["median_ms"][name]["fwd_bwd"])
            for c, case in zip(classes, cases)
            if name in case["median_ms"]
        ]
        if points:
            axis.plot(*zip(*points), marker="o", label=label)
    floor = [case["floor"]["ms"]["fwd_bwd"] for case in cases]
    axis.plot(classes, floor, "k--", marker="_", label="memory floor")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("classes C")
    axis.set_ylabel("ms (median)")


def _sigmoid_panel(axis: Any, cases: list[dict[str, Any]], labels: dict[str, str]) -> None:
    """Grouped bars, one group per sigmoid case, one bar per competitor plus the floor."""
    names = [name for name in labels if name in cases[0]["median_ms"]]
    width = 0.8 / (len(names) + 1)
    for offset, name in enumerate(names):
        axis.bar(
            [i + offset * width for i in range(len(cases))],
            [case["median_ms"][name]["fwd_bwd"] for case in cases],
            width,
            label=labels[name],
        )
    axis.bar(
        [i + len(names) * width for i in range(len(cases))],
        [case["floor"]["ms"]["fwd_bwd"] for case in cases],
        width,
        color="black",
        label="memory floor",
    )
    axis.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(cases))],
        [f"{case['dtype']} C={case['classes']}" for case in cases],
    )
    axis.set_yscale("log")
    axis.set_ylabel("ms (median)")
