"""One rank of a CPU/gloo fairseq training run (fairseq's own spawn assumes CUDA): the test starts two.

Usage: python ddp_driver.py RANK WORLD PORT OUT CONFIG_DIR CONFIG_NAME [overrides...]
After every update it writes this rank's gates and Lagrange multipliers to OUT.
"""

import sys

import torch

import hjprune_fairseq  # noqa: F401
from fairseq import distributed_utils
from fairseq.trainer import Trainer
from fairseq_cli.train import main

from fairseq_fixtures import compose_like_fairseq


def dump_after_step(out: str):
    original = Trainer.train_step

    def train_step(self, samples, raise_oom=False):
        result = original(self, samples, raise_oom)
        state = {n.replace("module.", ""): p.detach().clone() for n, p in self.model.named_parameters() if "gates." in n}
        state.update({"criterion." + n.replace("module.", ""): p.detach().clone() for n, p in self.criterion.named_parameters()})
        state["num_updates"] = self.get_num_updates()
        torch.save(state, out)
        return result

    Trainer.train_step = train_step


if __name__ == "__main__":
    rank, world, port, out, config_dir, name, *overrides = sys.argv[1:]
    dump_after_step(out)
    cfg = compose_like_fairseq(config_dir, name, overrides + [
        "common.cpu=true", "distributed_training.distributed_backend=gloo", "distributed_training.ddp_backend=legacy_ddp",
        f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}", "distributed_training.distributed_no_spawn=true",
        f"distributed_training.distributed_rank={rank}", f"distributed_training.distributed_world_size={world}",
        "distributed_training.device_id=0",
    ])
    distributed_utils.call_main(cfg, main)
