"""The multi-label ``pos_weight`` example runs end to end and prints its recall numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import costxent

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_multilabel_pos_weight_example_fast() -> None:
    # The subprocess imports the same costxent as this test process.
    package_parent = str(Path(costxent.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [sys.executable, "examples/multilabel_pos_weight.py", "--fast"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"pos_weight = negatives / positives = \d+\.\d\d", result.stdout)
    number = r"\s+(\d\.\d{3})"
    rows = {
        name: re.search(rf"^{name}{number}{number}", result.stdout, re.MULTILINE)
        for name in ("plain", r"pos_weight=\d+\.\d")
    }
    assert all(rows.values()), result.stdout
    plain_recall, weighted_recall = (float(row.group(1)) for row in rows.values())
    assert weighted_recall > plain_recall  # the point of pos_weight: fewer missed positives
    assert "checked: WeightedBinaryCrossentropy" in result.stdout
