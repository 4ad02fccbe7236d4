"""hjprune-smoke-base: every shipped base-scale config runs, on CPU, for a few updates.

Each config of ``examples/wav2vec2_base/`` (from a randomly initialised stock fairseq wav2vec2-base)
and ``examples/slurp_base/`` (from a randomly initialised HuBERT-base, both written here) trains for
``--updates`` updates under fairseq-hydra-train on a small eSpeak NG corpus (hjprune-synth), in the
chain a user runs: finetune -> prune (every mode) -> hjprune-export -> final, distill from the
pre-trained model, parp from the fine-tuned one. The configs' fp16 is replaced by ``--precision``
(bf16 by default: fp16 on CPU crashes on its first overflow, inside fairseq); PARP runs in fp32, as
it refuses fp16 / bf16. Prints a table: config, seconds per update (between the last two updates),
peak RSS of the training process, and whether every logged loss was finite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from typing import Dict, List, Optional, Sequence

from ..config_sets import USER_DIR, config_set_dir
from ..core.measures import MEASURES

MODES = tuple(MEASURES)  # every registered sparsity measure
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[train_inner\]\[INFO\] - (\{.*\})$", re.M)


def run_stage(exe: str, args: Sequence[str], log: str, cwd: str) -> Dict:
    """Run one command in ``cwd`` (hydra writes .hydra/ there); its wall time, its peak RSS (MiB, from
    wait4) and its exit code."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([exe, *args], stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.time() - t0, "peak_rss_mib": usage.ru_maxrss / 1024}


def parse_updates(log: str) -> Dict:
    """Seconds per update between the last two train_inner lines, and whether every loss is finite."""
    rows = [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f"), json.loads(j)) for t, j in LOG_LINE.findall(open(log).read())]
    losses = [float(r["loss"]) for _, r in rows if "loss" in r]
    per_update = (rows[-1][0] - rows[-2][0]).total_seconds() if len(rows) >= 2 else float("nan")
    return {"updates_logged": len(rows), "s_per_update": per_update,
            "finite_loss": bool(losses) and all(math.isfinite(x) for x in losses)}


class Smoke:
    def __init__(self, work: str, updates: int, precision: str):
        self.work, self.updates, self.precision = work, updates, precision
        self.bin = os.path.dirname(sys.executable)
        self.rows: List[Dict] = []

    def precision_overrides(self, config: str) -> List[str]:
        p = "fp32" if config == "parp" else self.precision
        return [f"common.fp16={p == 'fp16'}".lower(), f"common.bf16={p == 'bf16'}".lower(), "common.amp=false",
                "common.fp16_init_scale=4"]  # fairseq's CPU overflow handler fails: do not overflow

    def train(self, config_set: str, config: str, name: str, data: str, w2v: str, extra: Sequence[str] = ()) -> str:
        save = os.path.join(self.work, "checkpoints", name)
        args = ["--config-dir", config_set_dir(config_set), "--config-name", config,
                f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={w2v}",
                f"checkpoint.save_dir={save}", f"optimization.max_update={self.updates}", "optimization.update_freq=[1]",
                "dataset.max_tokens=80000", "dataset.num_workers=0", "dataset.valid_subset=valid",
                "dataset.disable_validation=true", "common.log_format=json", "common.log_interval=1", "common.cpu=true",
                f"common.tensorboard_logdir={os.path.join(self.work, 'tb', name)}",
                "lr_scheduler.warmup_updates=1", f"lr_scheduler.total_num_update={self.updates}",
                *self.precision_overrides(config), *extra]
        log = os.path.join(self.work, "logs", name.replace("/", "_") + ".log")
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        row = {"config": name, **run_stage(os.path.join(self.bin, "fairseq-hydra-train"), args, log, self.work),
               **parse_updates(log)}
        row["precision"] = "fp32" if config == "parp" else self.precision
        self.rows.append(row)
        if row["rc"]:
            print(f"    failed (exit {row['rc']}); see {log}", file=sys.stderr, flush=True)
        return os.path.join(save, "checkpoint_last.pt")

    def export(self, gated: str, name: str) -> str:
        slim = os.path.join(self.work, f"{name}.pt")
        r = run_stage(os.path.join(self.bin, "hjprune-export"), [gated, slim],
                      os.path.join(self.work, "logs", f"export_{name}.log"), self.work)
        if r["rc"]:
            raise RuntimeError(f"hjprune-export of {gated} failed; see {self.work}/logs/export_{name}.log")
        return slim

    def config_set(self, config_set: str, data: str, pretrained: str, distill: bool) -> None:
        short = config_set.split("_")[0]
        pruning = {"criterion.sparsity_warmup_updates": 2}
        extra = [f"{k}={v}" for k, v in pruning.items()]
        ft = self.train(config_set, "finetune", f"{short}/finetune", data, pretrained)
        for mode in MODES:
            gated = self.train(config_set, "prune", f"{short}/prune_{mode}", data, ft, [f"mode={mode}", *extra])
        self.train(config_set, "final", f"{short}/final", data, self.export(gated, f"{short}_slim"))
        if distill:
            self.train(config_set, "distill", f"{short}/distill", data, pretrained, ["mode=macs", *extra])
        self.train(config_set, "parp", f"{short}/parp", data, ft)


def format_table(rows: List[Dict]) -> str:
    lines = [f"{'config':<32} {'precision':>9} {'s/update':>9} {'peak RSS MiB':>13} {'finite loss':>12} {'exit':>5}"]
    lines += [f"{r['config']:<32} {r['precision']:>9} {r['s_per_update']:>9.2f} {r['peak_rss_mib']:>13.0f} "
              f"{'yes' if r['finite_loss'] else 'NO':>12} {r['rc']:>5}" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-smoke-base", description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=3, help="updates per config (at least 2; default: 3)")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="replaces the configs' fp16 on CPU (default: bf16)")
    p.add_argument("--sets", nargs="+", choices=["wav2vec2_base", "slurp_base"], default=["wav2vec2_base", "slurp_base"],
                   help="config sets to run (default: both)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.updates < 2:
        p.error(f"--updates must be at least 2, got {a.updates}")
    from hjprune_manifests.synth import write_corpus

    from ..fairseq_import import write_random_wav2vec2
    from ..core.spec import PRESETS

    with tempfile.TemporaryDirectory(prefix="hjprune-smoke-") as work:
        os.makedirs(os.path.join(work, "logs"))
        data = os.path.join(work, "data")
        write_corpus(data, "slu", {"train": 6, "valid": 2, "test": 1}, seed=1)
        smoke = Smoke(work, a.updates, a.precision)
        try:
            if "wav2vec2_base" in a.sets:
                w2v = write_random_wav2vec2(PRESETS["wav2vec2_base"], os.path.join(work, "wav2vec2_base.pt"))
                smoke.config_set("wav2vec2_base", data, w2v, distill=True)
            if "slurp_base" in a.sets:
                hubert = write_random_wav2vec2(PRESETS["hubert_base"], os.path.join(work, "hubert_base.pt"), arch="hubert")
                smoke.config_set("slurp_base", data, hubert, distill=False)
        except RuntimeError as e:
            print(f"hjprune-smoke-base: error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(smoke.rows, indent=2) if a.json else format_table(smoke.rows))
        return 0 if all(r["rc"] == 0 and r["finite_loss"] for r in smoke.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
