"""costxent._core.launch_plan: the CUDA softmax planner, asked without a GPU.

The plan must hold every row it is given: a row of C classes can touch
ceil((C + V - 1) / V) 16-byte vectors (V elements each, over all offsets of its first
element), and every regime but 'chunked' must give it at least that many slots. The regimes
must follow C in order, use no more threads than a row needs, and respect the cluster limit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import core_cases

try:
    _core = core_cases.load_core()
except ImportError as exc:  # built without the extension: nothing to test here
    pytest.skip(f"costxent._core is not built: {exc}", allow_module_level=True)

BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
ORDER = ["thread", "warp", "block", "cluster", "chunked"]
# Every regime edge of every element size, and a spread in between.
CLASSES = sorted(
    {1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 16, 17, 30, 60, 61, 62, 63, 64, 65, 100, 121, 122, 126,
     127, 128, 129, 250, 256, 1000, 2044, 2046, 2047, 2048, 4094, 4096, 4097, 8192, 8193,
     10000, 65530, 65536, 131066, 131067, 131072, 262144, 10**6, 2**31 - 65}
)


def vectors_touched(dtype: str, c: int) -> int:
    v = 16 // BYTES[dtype]
    return math.ceil((c + v - 1) / v)


def capacity(plan: dict) -> int:
    """16-byte vectors a plan's group holds at once."""
    if plan["regime"] in ("thread", "warp"):
        return plan["width"] * plan["slots"]
    return plan["threads"] * plan["clusters"] * plan["slots"]


@pytest.mark.parametrize("dtype", list(BYTES))
def test_every_resident_plan_holds_its_row(dtype: str) -> None:
    for c in CLASSES:
        plan = _core.launch_plan(dtype, c)
        need = vectors_touched(dtype, c)
        assert plan["vectors"] == need, (c, plan)
        if plan["regime"] == "chunked":
            assert capacity(plan) < need, (c, plan)
        else:
            assert capacity(plan) >= need, (c, plan)


@pytest.mark.parametrize("dtype", list(BYTES))
def test_regimes_follow_the_class_count(dtype: str) -> None:
    ranks = [ORDER.index(_core.launch_plan(dtype, c)["regime"]) for c in CLASSES]
    assert ranks == sorted(ranks)
    # Binary and the other usual small problems get a thread per row, C = 10 a warp slice,
    # C = 1000 no more than a block.
    for c in (2, 3, 8):
        plan = _core.launch_plan(dtype, c)
        assert (plan["regime"], plan["width"], plan["clusters"]) == ("thread", 1, 1)
    assert _core.launch_plan(dtype, 10)["regime"] == "warp"
    assert _core.launch_plan(dtype, 1000)["regime"] in ("warp", "block")


@pytest.mark.parametrize("dtype", list(BYTES))
def test_plans_use_no_more_threads_than_the_row_needs(dtype: str) -> None:
    for c in CLASSES:
        plan = _core.launch_plan(dtype, c)
        need = vectors_touched(dtype, c)
        assert plan["threads"] % 32 == 0 and 32 <= plan["threads"] <= 512
        if plan["regime"] == "warp":
            assert plan["width"] & (plan["width"] - 1) == 0 and 2 <= plan["width"] <= 32
            assert (plan["width"] // 2) * plan["slots"] < need, (c, plan)
        if plan["regime"] == "block":
            assert (plan["threads"] - 32) * plan["slots"] < need, (c, plan)
        if plan["regime"] == "cluster":
            assert (plan["clusters"] - 1) * plan["threads"] * plan["slots"] < need, (c, plan)


def test_cluster_limit() -> None:
    c = 50_000  # beyond one block for float32, within a cluster of 16, not of 8
    assert _core.launch_plan("float32", c)["clusters"] == 13
    plan8 = _core.launch_plan("float32", c, max_cluster=8)
    assert plan8["clusters"] == 8 and plan8["regime"] == "chunked"
    plan1 = _core.launch_plan("float32", c, max_cluster=1)
    assert (plan1["regime"], plan1["clusters"]) == ("chunked", 1)
    for c in CLASSES:
        assert _core.launch_plan("bfloat16", c, max_cluster=1)["regime"] != "cluster"


def test_dtype_spellings() -> None:
    assert _core.launch_plan(np.float32, 100) == _core.launch_plan("float32", 100)
    assert _core.launch_plan(np.dtype("float16"), 100) == _core.launch_plan("bfloat16", 100)


@pytest.mark.parametrize(
    "args, error, message",
    [
        (("int32", 10), TypeError, "dtype must be float16, bfloat16, float32 or float64, got int32"),
        (("float32", 0), ValueError, "classes must be in [1, "),
        (("float32", 2**31), ValueError, "got 2147483648"),
        (("float32", 10, 0), ValueError, "max_cluster must be in [1, 16], got 0"),
        (("float32", 10, 17), ValueError, "max_cluster must be in [1, 16], got 17"),
    ],
)
def test_bad_arguments_raise(args: tuple, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        _core.launch_plan(*args)
    assert message in str(info.value)
