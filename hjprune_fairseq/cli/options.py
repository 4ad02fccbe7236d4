"""Command-line options shared by several commands."""

import argparse


def add_timing_args(p: argparse.ArgumentParser, what: str) -> None:
    """The options of a side-by-side timing (hjprune_fairseq.tools.timing.median_times) of ``what``."""
    p.add_argument("--repeats", type=int, default=7, help=f"timed {what} per contender; the median is reported (default: 7)")
    p.add_argument("--warmup", type=int, default=2, help=f"untimed {what} per contender first (default: 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
