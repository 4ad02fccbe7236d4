"""Side-by-side timing shared by the benchmarks and the demo: alternate the contenders, keep the median."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Dict, Iterator, List

import torch


def apply_threads(threads: int) -> None:
    """Use ``threads`` torch threads; 0 or less keeps torch's choice."""
    if threads > 0:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """:func:`apply_threads` for the block, then torch's thread count as it was (a library call leaves the
    process as it found it)."""
    before = torch.get_num_threads()
    apply_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def all_times(calls: Dict[str, Callable[[int], None]], repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Wall time of every timed run of each call; they alternate so drifts in machine load hit all alike.

    Each call receives the iteration number (to seed per-iteration randomness identically).
    """
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for i in range(warmup + repeats):
        for k, call in calls.items():
            t0 = time.perf_counter()
            call(i)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def median_times(calls: Dict[str, Callable[[int], None]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median wall time of each call, timed in turns (:func:`all_times`)."""
    return {k: statistics.median(v) for k, v in all_times(calls, repeats, warmup).items()}
