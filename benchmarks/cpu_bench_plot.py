"""The PNG of the CPU benchmark: time over the memory floor against C, one panel per group.

Drawn from the JSON report alone, so a committed report can be re-plotted:
``python benchmarks/cpu_bench_plot.py benchmarks/results/bench-cpu.json [OUT.png]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

COLUMNS = 4
# (row subject, line style) for the costxent rows; the references are drawn for "keras".
SUBJECT_STYLES = {"keras": "-", "keras-xla": "-.", "per-example": ":"}
REFERENCE_STYLES = {"xla": "--", "tf.function": (0, (1, 2))}
TARGETS = (1.25, 2.0)


def _groups(cases: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Cases by (mode, dtype, labels), in report order, each sorted by C."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        groups.setdefault(f"{case['mode']}, {case['dtype']}, {case['labels']}", []).append(case)
    return {key: sorted(value, key=lambda case: case["classes"]) for key, value in groups.items()}


def _panel(axis: Any, cases: list[dict[str, Any]]) -> None:
    """time/floor against C (log-log) for each row subject and for the keras row's references."""
    classes = [case["classes"] for case in cases]
    for subject, style in SUBJECT_STYLES.items():
        rows = [_row(case, subject) for case in cases]
        points = [(c, row["time_over_floor"]) for c, row in zip(classes, rows) if row]
        if points:
            axis.plot(*zip(*points), linestyle=style, marker="o", label=f"costxent {subject}")
    for kind, style in REFERENCE_STYLES.items():
        points = []
        for c, case in zip(classes, cases):
            row = _row(case, "keras")
            if row:
                reference_ms = case["median_ms"][row["references"][kind]]
                points.append((c, reference_ms / row["floor_ms"]))
        if points:
            axis.plot(*zip(*points), linestyle=style, marker="s", color="grey",
                      alpha=0.4 + 0.3 * (kind == "xla"), label=f"reference, {kind}")
    for target in TARGETS:
        axis.axhline(target, color="black", linewidth=0.8, linestyle="--", alpha=0.5)
    axis.axhline(1.0, color="black", linewidth=1.2)
    axis.set_xscale("log")
    axis.set_xticks(classes, [str(c) for c in classes])
    axis.minorticks_off()
    axis.set_yscale("log")
    axis.set_xlabel("classes C")
    axis.set_ylabel("time / floor (median)")


def _row(case: dict[str, Any], subject: str) -> Optional[dict[str, Any]]:
    return next((row for row in case["results"] if row["subject"] == subject), None)


def plot(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Write the figure to ``path``; None (with a note on stderr) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return None
    groups = _groups(report["cases"])
    columns = min(COLUMNS, len(groups))
    rows = -(-len(groups) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows + 1),
                                squeeze=False)
    for axis in axes.flat[len(groups):]:
        axis.set_visible(False)
    for axis, (title, cases) in zip(axes.flat, groups.items()):
        _panel(axis, cases)
        axis.set_title(title, fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
    # One legend for the figure: the panels share their lines.
    legend: dict[str, Any] = {}
    for axis in axes.flat[: len(groups)]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=5, fontsize=8)
    machine = report["machine"]
    figure.suptitle(
        f"costxent forward+backward on the CPU, N*C = {report['settings']['total_elements']}: "
        f"time / memory floor (1 = floor; dashed: 1.25x, 2x). {machine['cpu_model']}, "
        f"{machine['cores_usable']} cores, TF {machine['tensorflow']}, {machine['date'][:10]}",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.5 / (3.4 * rows + 1) + 0.03, 1, 0.97))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Re-plot a report: ``REPORT.json [OUT.png]`` (default: the JSON's name with .png)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: cpu_bench_plot.py REPORT.json [OUT.png]", file=sys.stderr)
        return 2
    source = Path(args[0])
    target = Path(args[1]) if len(args) == 2 else source.with_suffix(".png")
    return 0 if plot(json.loads(source.read_text()), target) else 1


if __name__ == "__main__":
    sys.exit(main())
