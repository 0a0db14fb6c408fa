"""No state of the installed files can crash ``import costxent``.

The built package (installed, or the developer build on PYTHONPATH) is copied to a temporary
folder, the copy is damaged, and a fresh Python imports it: it must exit 0 with one warning
naming what is wrong, fall back to the reference, and still compute the right losses
(checked against the float64 NumPy oracle). An intact copy is the control: it runs the fused
op without a warning, so a check that rejected every file would fail here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import costxent
import oracle
from costxent import _library

PACKAGE = Path(costxent.__file__).absolute().parent
OP_LIBRARY = _library._LIBRARY_FILE
INFO = _library._build_info()
FILES = getattr(INFO, "FILES", None) or {}
CORE = next((name for name in FILES if name.startswith("_core.")), None)

pytestmark = pytest.mark.skipif(
    OP_LIBRARY not in FILES or not (PACKAGE / OP_LIBRARY).is_file(),
    reason="costxent is not built with a recorded op library (pip install . or tools/dev_build.sh)",
)

LABELS = [0, 2, 1, 2]
LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-4.0, 5.0, 1.0], [1e3, 0.0, -1e3]]
CLASS_WEIGHT = [1.0, 3.0, 0.5]

_SCRIPT = """
import json, sys, warnings
sys.path.insert(0, {parent!r})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import costxent as cx
    assert cx.__file__.startswith({parent!r}), cx.__file__
    from costxent import _library
    implementation = cx.ops.implementation()
    loss = cx.ops.softmax_cross_entropy({labels!r}, {logits!r}, class_weight={weights!r})
with warnings.catch_warnings(record=True) as caught_core:
    warnings.simplefilter("always")
    core, core_reason = _library.load_core()
print(json.dumps({{
    "implementation": implementation,
    "loss": [float(v) for v in loss.numpy()],
    "core_loaded": core is not None,
    "core_reason": core_reason,
    "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
    "core_warnings": [str(w.message) for w in caught_core if w.category is RuntimeWarning],
}}))
"""


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _dangling_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.with_name("no-such-file.so"))


def _named_pipe(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)  # opening it to read would block forever


def _unreadable(path: Path) -> None:
    path.chmod(0)


def _other_tensorflow(info: Path) -> None:
    text = info.read_text().replace(f'TF_VERSION = "{INFO.TF_VERSION}"', 'TF_VERSION = "2.5.0"')
    info.write_text(text)


# name -> (file to damage, damage, text the one warning must contain)
DAMAGES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "missing": (OP_LIBRARY, Path.unlink, f"{OP_LIBRARY} is not installed"),
    "empty": (OP_LIBRARY, lambda p: p.write_bytes(b""), f"{OP_LIBRARY} is 0 bytes but the build"),
    "truncated": (OP_LIBRARY, _truncate, "(truncated or replaced)"),
    "flipped": (OP_LIBRARY, _flip_bytes, f"{OP_LIBRARY} is corrupt (its SHA-256 differs"),
    "directory": (OP_LIBRARY, _directory, f"{OP_LIBRARY} is a directory"),
    "dangling-link": (OP_LIBRARY, _dangling_link, f"{OP_LIBRARY} is not installed"),
    "named-pipe": (OP_LIBRARY, _named_pipe, f"{OP_LIBRARY} is a named pipe"),
    "unreadable": (OP_LIBRARY, _unreadable, f"{OP_LIBRARY} cannot be read"),
    "build-info-garbage": (
        "_build_info.py",
        lambda p: p.write_bytes(b"\x00\xff not python ("),
        "the build recorded no size and SHA-256",
    ),
    "build-info-missing": (
        "_build_info.py",
        Path.unlink,
        "the build recorded no size and SHA-256",
    ),
    "other-tensorflow": ("_build_info.py", _other_tensorflow, "built for TensorFlow 2.5.0"),
}
if CORE is not None:
    DAMAGES["core-truncated"] = (CORE, _truncate, f"{CORE} is ")


def _damaged_copy(root: Path, case: str) -> Path:
    package = root / "costxent"
    shutil.copytree(PACKAGE, package, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    if case != "intact":
        name, damage, _ = DAMAGES[case]
        damage(package / name)
    return root


@pytest.fixture(scope="module")
def imports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case imported at once, each in its own Python: case -> (returncode, stdout, stderr)."""
    script = {"labels": LABELS, "logits": LOGITS, "weights": CLASS_WEIGHT}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("COSTXENT_IMPLEMENTATION", None)
    running = {}
    for case in ["intact", *DAMAGES]:
        parent = _damaged_copy(tmp_path_factory.mktemp(case), case)
        code = _SCRIPT.format(parent=str(parent), **script)
        running[case] = subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=parent,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    results = {}
    for case, process in running.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            results[case] = ("timeout", stdout, stderr)
            continue
        results[case] = (process.returncode, stdout, stderr)
    return results


def _report(imports: dict[str, Any], case: str) -> dict[str, Any]:
    returncode, stdout, stderr = imports[case]
    assert returncode == 0, f"{case}: import exited {returncode}\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def _expected_loss() -> np.ndarray:
    loss, _ = oracle.softmax_cross_entropy(
        np.array(LABELS), np.array(LOGITS), class_weight=CLASS_WEIGHT
    )
    return loss


def test_intact_copy_runs_the_fused_op_without_a_warning(imports: dict[str, Any]) -> None:
    report = _report(imports, "intact")
    assert report["implementation"] == "fused-cpu"
    assert report["warnings"] == [] and report["core_warnings"] == []
    assert report["core_loaded"] == (CORE is not None), report["core_reason"]
    np.testing.assert_allclose(report["loss"], _expected_loss(), rtol=1e-5)


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_damaged_copy_warns_once_and_falls_back(imports: dict[str, Any], case: str) -> None:
    if case == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    report = _report(imports, case)
    name, _, expected = DAMAGES[case]
    np.testing.assert_allclose(report["loss"], _expected_loss(), rtol=1e-5)
    if name == CORE:
        assert report["implementation"] == "fused-cpu"
        assert report["warnings"] == []
        assert len(report["core_warnings"]) == 1, report["core_warnings"]
        assert expected in report["core_warnings"][0]
        assert not report["core_loaded"] and expected in report["core_reason"]
    else:
        assert len(report["warnings"]) == 1, report["warnings"]
        assert expected in report["warnings"][0], report["warnings"][0]
        assert report["implementation"].startswith("reference: ")
        assert report["implementation"][len("reference: ") :] in report["warnings"][0]
