"""Every scenario script in examples/ and the demo run end to end in their --fast mode.

They run as subprocesses from the repository root with the caller's environment, so they
import the same costxent as the tests (installed, or PYTHONPATH=python). Two at a time: each
spends most of its few seconds importing TensorFlow on one core.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Script -> a line its fast run must print (the scripts assert their own claims).
EXAMPLES = {
    "binary_reward_tp.py": "checked: -MisclassificationCost(M) * n == 3*TP - FP",
    "class_weights.py": "batch loss: class_weight in the loss",
    "cost_table.py": "read M[predicted, true]: costs 1 and 1, mean 1",
    "thresholds.py": "checked: Precision/Recall(from_logits=True) equal scikit-learn's",
    "sparse_vs_categorical.py": "trained on ids vs one-hot",
}
DEMO_ROWS = (
    "plain cross-entropy",
    "balanced class weights",
    "cost matrix weights",
    "expected cost + 0.3 CE",
)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    png = tmp_path_factory.mktemp("demo") / "demo.png"
    commands = {name: [f"examples/{name}", "--fast"] for name in EXAMPLES}
    commands["demo"] = ["-m", "costxent", "demo", "--fast", "--out", str(png)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(commands, pool.map(_run, commands.values())))
    return {"png": png, **results}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(runs: dict, name: str) -> None:
    result = runs[name]
    assert result.returncode == 0, result.stdout + result.stderr
    assert EXAMPLES[name] in result.stdout, result.stdout


def test_demo_prints_table_and_writes_png(runs: dict) -> None:
    result = runs["demo"]
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("cost/example", 1)[1]
    for row in DEMO_ROWS:
        assert row in table, result.stdout
    assert runs["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
