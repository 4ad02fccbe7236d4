"""One stage of a pipeline (fairseq-hydra-train, hjprune-export, fairseq-generate) run as a
subprocess, its output in a log file; shared by the demo and the base-config smoke run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence


@dataclass
class StageRun:
    """``rc``: exit status; ``wall_s``: seconds it ran; ``peak_rss_mib``: its peak resident memory (wait4)."""

    rc: int
    wall_s: float
    peak_rss_mib: float


def console_script(name: str) -> str:
    """The path of command ``name`` (fairseq-hydra-train, hjprune-export, ...) installed beside this Python."""
    return os.path.join(os.path.dirname(sys.executable), name)


def run_stage(cmd: Sequence[str], log: str, cwd: str, env: Optional[Dict[str, str]] = None) -> StageRun:
    """Run ``cmd`` in ``cwd`` (hydra writes .hydra/ there), stdout and stderr to ``log``, and wait for it.

    A failure is reported by ``rc``, not raised: the caller says what failed and where its log is.
    """
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: the stage does not outlive its caller (as subprocess.run)
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return StageRun(rc=proc.returncode, wall_s=time.time() - t0, peak_rss_mib=usage.ru_maxrss / 1024)
