"""Every shipped base-scale config runs, on CPU, for a few updates (behind hjprune-smoke-base).

Each config of ``examples/wav2vec2_base/`` (from a randomly initialised stock fairseq wav2vec2-base)
and ``examples/slurp_base/`` (from a randomly initialised HuBERT-base, both written here) trains for
a few updates under fairseq-hydra-train on a small eSpeak NG corpus (hjprune-synth), in the chain a
user runs: finetune -> prune (every mode) -> hjprune-export -> final, distill from the pre-trained
model, parp from the fine-tuned one. The configs' fp16 is replaced by the given precision (fp16 on
CPU crashes on its first overflow, inside fairseq); PARP runs in fp32, as it refuses fp16 / bf16.
One row per training: seconds per update (between the last two updates), peak RSS of the training
process, and whether every logged loss was finite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from typing import Dict, List, Sequence

from ..core.measures import MEASURES
from ..plugin.config_sets import USER_DIR, config_set_dir
from .stages import console_script, run_stage

logger = logging.getLogger(__name__)

MODES = tuple(MEASURES)  # every registered sparsity measure
CONFIG_SETS = ("wav2vec2_base", "slurp_base")
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[train_inner\]\[INFO\] - (\{.*\})$", re.M)


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
        logger.info(f"[{time.strftime('%H:%M:%S')}] {name} ...")
        row = {"config": name, **asdict(run_stage([console_script("fairseq-hydra-train"), *args], log, self.work)),
               **parse_updates(log)}
        row["precision"] = "fp32" if config == "parp" else self.precision
        self.rows.append(row)
        if row["rc"]:
            logger.info(f"    failed (exit {row['rc']}); see {log}")
        return os.path.join(save, "checkpoint_last.pt")

    def latency_table(self) -> str:
        """A coarse PyTorch latency table of wav2vec2-base's family (1 s input, one run per point; HuBERT-base has
        the same shape) for the modes that need one: the smoke run checks that mode=latency trains, not what
        the table predicts."""
        path = os.path.join(self.work, "latency_wav2vec2_base.json")
        if not os.path.exists(path):
            from .latency.measure import TableConfig, measure_table, write_table

            cfg = TableConfig(seconds=1.0, repeats=1, warmup=0, calibration=0, conv_grid=(0.5, 1.0),
                              hidden_grid=(0.5, 1.0), heads_grid=(0.0, 1.0), dims_grid=(1.0,), ffn_grid=(0.0, 1.0))
            write_table(measure_table(cfg), path)
        return path

    def export(self, gated: str, name: str) -> str:
        slim = os.path.join(self.work, f"{name}.pt")
        r = run_stage([console_script("hjprune-export"), gated, slim],
                      os.path.join(self.work, "logs", f"export_{name}.log"), self.work)
        if r.rc:
            raise RuntimeError(f"hjprune-export of {gated} failed; see {self.work}/logs/export_{name}.log")
        return slim

    def config_set(self, config_set: str, data: str, pretrained: str, distill: bool) -> None:
        short = config_set.split("_")[0]
        pruning = {"criterion.sparsity_warmup_updates": 2}
        extra = [f"{k}={v}" for k, v in pruning.items()]
        ft = self.train(config_set, "finetune", f"{short}/finetune", data, pretrained)
        for mode in MODES:
            needs = [f"criterion.latency_table={self.latency_table()}"] if MEASURES[mode].needs else []
            gated = self.train(config_set, "prune", f"{short}/prune_{mode}", data, ft, [f"mode={mode}", *extra, *needs])
        self.train(config_set, "final", f"{short}/final", data, self.export(gated, f"{short}_slim"))
        if distill:
            self.train(config_set, "distill", f"{short}/distill", data, pretrained, ["mode=macs", *extra])
        self.train(config_set, "parp", f"{short}/parp", data, ft)


def run_smoke(updates: int, precision: str, sets: Sequence[str] = CONFIG_SETS) -> List[Dict]:
    """Run the chain of every config set in ``sets`` in a temporary folder; one row per training.
    A failed training is a row with its exit status; a failed export raises RuntimeError."""
    from hjprune_manifests.synth import write_corpus

    from ..core.presets import PRESETS
    from ..plugin.fairseq_import import write_random_wav2vec2

    with tempfile.TemporaryDirectory(prefix="hjprune-smoke-") as work:
        os.makedirs(os.path.join(work, "logs"))
        data = os.path.join(work, "data")
        write_corpus(data, "slu", {"train": 6, "valid": 2, "test": 1}, seed=1)
        smoke = Smoke(work, updates, precision)
        if "wav2vec2_base" in sets:
            w2v = write_random_wav2vec2(PRESETS["wav2vec2_base"], os.path.join(work, "wav2vec2_base.pt"))
            smoke.config_set("wav2vec2_base", data, w2v, distill=True)
        if "slurp_base" in sets:
            hubert = write_random_wav2vec2(PRESETS["hubert_base"], os.path.join(work, "hubert_base.pt"), arch="hubert")
            smoke.config_set("slurp_base", data, hubert, distill=False)
        return smoke.rows
