"""The CUDA softmax kernels' launch regimes by class count, and the C values at their edges.

`model_plan` restates the launcher of cc/core/cuda_kernels.cu (softmax_mode): a row of C
elements spans ceil((C + V - 1) / V) 16-byte vectors of V elements (over every offset of its
first element); a warp group of a power-of-two number of lanes takes rows of up to 32
vectors, one vector a lane; a block of up to 1024 threads takes S vectors a thread; beyond
that a cluster of up to 16 blocks (more than 8 is Hopper's non-portable size) holds the row,
and longer rows are walked in chunks of the whole cluster's slots. Where costxent._core has
`launch_plan(dtype, c)` (the launcher's own answer), `core_plan` normalises it and the
edges are found from it instead, so tests follow the kernels when their regimes move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
WARP_VECTORS = 32
MAX_BLOCK = 1024
PORTABLE_CLUSTER = 8
MAX_CLUSTER = 16
INT32_MAX = 2**31 - 1


def vec(dtype: str) -> int:
    """Elements per 16-byte vector."""
    return 16 // ITEMSIZE[dtype]


def slots(dtype: str) -> int:
    """16-byte vectors a thread of a block group holds (kSlots in cuda_kernels.cu)."""
    v = vec(dtype)
    return 1 if v >= 8 else (2 if ITEMSIZE[dtype] == 8 else 8 // v)


@dataclass(frozen=True)
class Plan:
    """One launch shape: regime ("warp", "block", "cluster", "chunked"), threads per row
    group (lanes of a warp group, threads of a block), blocks per cluster, and the vectors a
    thread holds per chunk of a row."""

    regime: str
    threads: int
    cluster: int
    slots: int

    @property
    def label(self) -> str:
        if self.regime == "warp":
            return f"warp{self.threads}"
        if self.regime == "block":
            return "block"
        return f"{self.regime}{self.cluster}"


def model_plan(dtype: str, c: int) -> Plan:
    """The plan softmax_mode chooses on an sm_90 GPU that can run every cluster size."""
    v, s = vec(dtype), slots(dtype)
    vectors = -(-(c + v - 1) // v)
    if vectors <= WARP_VECTORS:
        return Plan("warp", 1 << max(0, (vectors - 1).bit_length()), 1, 1)
    threads = -(-vectors // s)
    if threads <= MAX_BLOCK:
        return Plan("block", -(-threads // 32) * 32, 1, s)
    cluster = min(-(-threads // MAX_BLOCK), MAX_CLUSTER)
    block = min(-(-(-(-threads // cluster)) // 32) * 32, MAX_BLOCK)
    regime = "cluster" if block * cluster >= threads else "chunked"
    return Plan(regime, block, cluster, s)


def core_plan(core: Any, dtype: str, c: int) -> Plan:
    """_core.launch_plan(dtype, c) as a Plan. It may return a dict or an object; the keys
    read are regime, then threads, block, width or lanes, cluster or clusters, slots
    (defaults: 1)."""
    raw = core.launch_plan(dtype, c)
    get = raw.get if isinstance(raw, dict) else (lambda k, d=None: getattr(raw, k, d))

    def first(*keys: str, default: int = 1) -> int:
        for k in keys:
            value = get(k)
            if value is not None:
                return int(value)
        return default

    return Plan(
        str(get("regime")),
        first("threads", "block", "width", "lanes"),
        first("cluster", "clusters"),
        first("slots"),
    )


def planner(core: Any | None) -> Callable[[str, int], Plan]:
    """The launcher's own plan where _core reports it, else the model."""
    if core is not None and hasattr(core, "launch_plan"):
        return lambda dtype, c: core_plan(core, dtype, c)
    return model_plan


def regime_key(p: Plan) -> str:
    """What the tests treat as one regime: each warp-group width, one block, clusters of up
    to the portable 8 blocks, the 9-block cluster (the smallest non-portable one), larger
    clusters, and chunked rows; a regime this file does not know by its name and width."""
    if p.regime == "block":
        return "block"
    if p.regime == "cluster":
        return "cluster9" if p.cluster == 9 else ("cluster<=8" if p.cluster <= 8 else "cluster>9")
    if p.regime == "chunked":
        return "chunked"
    return f"{p.regime}{p.threads}"


def edges(dtype: str, plan: Callable[[str, int], Plan] = model_plan, c_max: int = 1 << 19) -> list[int]:
    """Every C in [2, c_max] whose regime (regime_key) differs from that of C - 1, and that
    C - 1: the largest C of each regime and the smallest of the next. Regimes change
    monotonically with C, so a galloping search and a bisection find each edge."""
    found: set[int] = set()
    lo = 2
    key = regime_key(plan(dtype, lo))
    while True:
        step = 1
        while True:  # plan(lo) has `key`; find an hi beyond the edge
            hi = min(lo + step, c_max)
            if regime_key(plan(dtype, hi)) != key:
                break
            if hi == c_max:
                return sorted(found)
            lo, step = hi, 2 * step
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if regime_key(plan(dtype, mid)) == key:
                lo = mid
            else:
                hi = mid
        found.update((lo, hi))
        lo, key = hi, regime_key(plan(dtype, hi))


def max_index_touched(dtype: str, c: int, p: Plan) -> int:
    """One past the largest element index (relative to the row's start) that the row walk of
    plan p forms for a row of c elements at the worst offset: the end of the last slot of the
    last chunk, which is what `first(chunk, s) + V` reaches in whole_aligned. cuda_kernels.cu
    computes it in int, so it must stay <= INT32_MAX."""
    v = vec(dtype)
    vectors = -(-(c + v - 1) // v)
    per_chunk = p.threads * p.cluster * p.slots
    chunks = -(-vectors // per_chunk)
    return chunks * per_chunk * v
