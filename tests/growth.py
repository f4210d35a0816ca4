"""Growth measurements for the linear-time tests: the cost of n against 8n, not seconds.

A stage is linear when 8 times the input costs about 8 times the work; a quadratic one
costs 64 times. :func:`growth` returns that ratio from CPU time (``process_time``, so
other processes on a loaded machine do not count), interleaving the two sizes and keeping
the best of several runs of each, with Python's cyclic collector paused while timing
(its pauses depend on what else the test process holds, not on the stage measured).
Tests assert the ratio lies below :data:`LINEAR_BOUND`, far from both ends.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

#: 8n against n: linear code measures about 8, quadratic code 64; 24 separates them with
#: room for cache effects on the larger input.
LINEAR_BOUND = 24.0


def growth(run: Callable[[int], object], n: int, *, factor: int = 8, repeats: int = 3) -> float:
    """The CPU time of ``run(factor * n)`` over that of ``run(n)``, best of ``repeats``.

    ``run`` gets the size and does the work measured (build its input outside, or
    keep the building cheap next to the work).
    """
    small = large = math.inf
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            small = min(small, _cpu_seconds(run, n))
            large = min(large, _cpu_seconds(run, factor * n))
    finally:
        if was_enabled:
            gc.enable()
    # A run too fast for the clock's resolution would make the ratio meaningless.
    assert small > 1e-4, f"run({n}) took {small:.2e} s of CPU: measure a larger n"
    return large / small


def _cpu_seconds(run: Callable[[int], object], size: int) -> float:
    start = time.process_time()
    run(size)
    return time.process_time() - start
