"""Side-by-side timing shared by the benchmarks: alternate the contenders, keep the median."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch


def add_timing_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--repeats", type=int, default=7, help=f"timed {what} per contender; the median is reported (default: 7)")
    p.add_argument("--warmup", type=int, default=2, help=f"untimed {what} per contender first (default: 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def apply_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def median_times(calls: Dict[str, Callable[[int], None]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median wall time of each call; they alternate so drifts in machine load hit all alike.

    Each call receives the iteration number (to seed per-iteration randomness identically).
    """
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for i in range(warmup + repeats):
        for k, call in calls.items():
            t0 = time.perf_counter()
            call(i)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
