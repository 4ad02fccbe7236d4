"""Task-agnostic pruning by distillation: the loss, a fairseq-hydra-train run on unlabeled audio,
export of the distilled encoder and fine-tuning from it."""

import os

import pytest
import torch
from fairseq_fixtures import EXAMPLES, make_letter_corpus, save_like_trainer, train_ok
from helpers import max_diff, open_gates
from omegaconf import OmegaConf

from hjprune_fairseq.checkpoints import export_slim, load_model
from hjprune_fairseq.criterions.hjprune_distill import HJPruneDistillCriterion, HJPruneDistillCriterionConfig
from hjprune_fairseq.models.hjprune_distill import HJPruneDistillConfig, HJPruneGatedDistill, parse_layers


def distill_model(w2v_path, **kw):
    cfg = OmegaConf.structured(HJPruneDistillConfig(w2v_path=w2v_path, normalize=False, feature_grad_mult=1.0,
                                                     distill_layers="1,2", **kw))
    return HJPruneGatedDistill.from_config(cfg, 0)


def test_parse_layers():
    assert parse_layers("4,8,12", 12) == [4, 8, 12]
    for bad in ("0,2", "2,2", "3,1", "13", "a", ""):
        with pytest.raises(ValueError, match="distill_layers"):
            parse_layers(bad, 12)


def test_loss_is_zero_for_the_teacher_itself_and_grows_when_pruned(w2v_pretrained):
    crit_cfg = OmegaConf.structured(HJPruneDistillCriterionConfig(teacher_path=w2v_pretrained))
    crit = HJPruneDistillCriterion(crit_cfg, task=None)
    model = distill_model(w2v_pretrained).eval()
    open_gates(model)
    d = model.spec.embed_dim
    with torch.no_grad():  # identity heads: the student's layer outputs are the teacher's
        for head in model.proj:
            head.weight.copy_(torch.eye(d))
            head.bias.zero_()
    source = torch.randn(2, 12000)
    pad = torch.zeros(2, 12000, dtype=torch.bool)
    pad[1, 9000:] = True
    sample = {"net_input": {"source": source, "padding_mask": pad}}
    loss, n, log = crit(model, sample)
    loss = loss.detach()
    frames = int((~model(source=source, padding_mask=pad)["padding_mask"]).sum())
    assert n == frames and float(log["l1"]) < 1e-4
    cos_at_1 = -torch.nn.functional.logsigmoid(torch.tensor(1.0)).item()  # cosine similarity 1
    assert float(loss) == pytest.approx(2 * frames * cos_at_1, rel=1e-4)  # two layers
    with torch.no_grad():
        model.gates.heads[0].log_alpha.fill_(-20.0)  # prune layer 1's heads: its output changes
    loss2, _, log2 = crit(model, sample)
    assert float(log2["l1"]) > 1e-3 and float(loss2) > float(loss)


def test_distill_export_and_finetune(tmp_path, w2v_pretrained):
    data = make_letter_corpus(str(tmp_path / "data"), {"train": 8, "valid": 4})
    for split in ("train", "valid"):  # unlabeled audio: the manifest alone
        os.remove(os.path.join(data, f"{split}.ltr"))
    log = train_ok(os.path.join(EXAMPLES, "tiny"), "distill", data, w2v_pretrained, tmp_path / "ck", [
        "optimization.max_update=4", "common.log_interval=1", "criterion.sparsity_warmup_updates=2",
        "model.distill_layers='1,2'"])
    assert "l1=" in log and "cos=" in log and "sparsity=" in log and "lambda1=" in log
    gated_path = str(tmp_path / "ck" / "checkpoint_last.pt")
    gated, _ = load_model(gated_path)
    assert isinstance(gated, HJPruneGatedDistill) and gated.cfg.teacher_dim == gated.spec.embed_dim

    with torch.no_grad():  # prune something for sure, then export
        gated.gates.ffn[1].log_alpha[:100] = -20.0
    gated_path = save_like_trainer(gated, tmp_path / "gated.pt")
    slim_path = str(tmp_path / "slim.pt")
    export_slim(gated_path, slim_path)
    slim, _ = load_model(slim_path)
    source = torch.randn(2, 12000)
    with torch.no_grad():
        a, b = gated(source=source)["layers"], slim(source=source)["layers"]
    assert len(a) == len(b) == 2 and max(max_diff(x, y) for x, y in zip(a, b)) < 1e-4
    assert slim.spec.ffn_dims[1] < gated.spec.ffn_dims[1]

    # the distilled encoder is a w2v_path for fine-tuning (new CTC head, labels needed again)
    data2 = make_letter_corpus(str(tmp_path / "data2"), {"train": 8, "valid": 4})
    train_ok(os.path.join(EXAMPLES, "tiny"), "final", data2, slim_path, tmp_path / "ck2", ["optimization.max_update=2"])
    tuned, _ = load_model(str(tmp_path / "ck2" / "checkpoint_last.pt"))
    assert tuned.spec == slim.spec and tuned.proj.out_features > 0
