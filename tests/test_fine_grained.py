"""Fine-grained attention pruning with straight-through gates under fairseq-hydra-train (the task-agnostic
recipe of examples/*/distill.yaml), exported and decoded by fairseq-generate."""

import os
import re
import subprocess
import sys

from fairseq_fixtures import EXAMPLES, USER_DIR, make_letter_corpus, train_ok

from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.plugin.checkpoints import load_model


def test_fine_grained_ste_prune_export_and_decode(tmp_path, w2v_pretrained):
    data = make_letter_corpus(str(tmp_path / "data"), {"train": 8, "valid": 4, "test": 3})
    log = train_ok(os.path.join(EXAMPLES, "tiny"), "prune", data, w2v_pretrained, tmp_path / "ck", [
        "optimization.max_update=6", "common.log_interval=1", "criterion.sparsity_warmup_updates=2",
        "criterion.target_sparsity=0.5", "+model.prune_head_dims=true", "+model.gate_ste=true",  # keys the yaml lacks need +
        "optimizer.gate_lr=2.0", "optimizer.lambda_lr=2.0"])
    assert "kept_qk_dims=" in log and "kept_vo_dims=" in log
    gated, _ = load_model(str(tmp_path / "ck" / "checkpoint_last.pt"))
    assert gated.gates.qk is not None and all(g.ste for g in gated.gates.qk)
    slim_path = str(tmp_path / "slim.pt")
    export_slim(str(tmp_path / "ck" / "checkpoint_last.pt"), slim_path)
    slim, _ = load_model(slim_path)
    assert slim.spec.qk_dims is not None and sum(map(sum, slim.spec.vo_dims)) < sum(slim.spec.num_heads) * slim.spec.head_dim
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    r = subprocess.run([exe, data, "--user-dir", USER_DIR, "--task", "hjprune_audio_finetuning", "--path", slim_path,
                        "--gen-subset", "test", "--post-process", "letter", "--scoring", "wer", "--max-tokens", "1000000"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(re.findall(r"^D-\d+\t", r.stdout, re.M)) == 3
