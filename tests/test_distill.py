"""Task-agnostic pruning by distillation: the loss, a fairseq-hydra-train run on unlabeled audio,
export of the distilled encoder and fine-tuning from it."""

import logging
import os

import pytest
import torch
from fairseq_fixtures import EXAMPLES, make_letter_corpus, save_like_trainer, train_ok
from helpers import max_diff, open_gates
from omegaconf import OmegaConf

from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.criterions.distill_loss import HJPruneDistillCriterion, HJPruneDistillCriterionConfig
from hjprune_fairseq.plugin.models.distill import HJPruneDistillConfig, HJPruneGatedDistill, parse_layers


def distill_model(w2v_path, **kw):
    kw.setdefault("distill_layers", "1,2")
    cfg = OmegaConf.structured(HJPruneDistillConfig(w2v_path=w2v_path, normalize=False, feature_grad_mult=1.0, **kw))
    return HJPruneGatedDistill.from_config(cfg, 0)


def distill_criterion(teacher_path, **kw):
    return HJPruneDistillCriterion(OmegaConf.structured(HJPruneDistillCriterionConfig(teacher_path=teacher_path, **kw)),
                                   task=None)


def padded_sample():
    source = torch.randn(2, 12000, generator=torch.Generator().manual_seed(0))
    pad = torch.zeros(2, 12000, dtype=torch.bool)
    pad[1, 9000:] = True
    return {"net_input": {"source": source, "padding_mask": pad}}


def test_parse_layers():
    assert parse_layers("4,8,12", 12) == [4, 8, 12]
    assert parse_layers("0,4,8,12", 12) == [0, 4, 8, 12]  # 0: the Transformer's input, as DPHuBERT
    for bad in ("-1,2", "2,2", "3,1", "13", "a", ""):
        with pytest.raises(ValueError, match="distill_layers"):
            parse_layers(bad, 12)


def test_loss_is_zero_for_the_teacher_itself_and_grows_when_pruned(w2v_pretrained):
    # the earlier loss (summed over layers, -log sigmoid cos), still available as options
    crit = distill_criterion(w2v_pretrained, cos_type="log_sig", layer_reduction="sum")
    model = distill_model(w2v_pretrained).eval()
    open_gates(model)
    d = model.spec.embed_dim
    with torch.no_grad():  # identity heads: the student's layer outputs are the teacher's
        for head in model.heads:
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


def test_hidden_state_0_is_the_transformer_input(w2v_pretrained):
    """DPHuBERT's layer 0: the projected CNN features, padded frames zeroed, before the positional conv."""
    model = distill_model(w2v_pretrained).eval()
    open_gates(model)
    net_input = padded_sample()["net_input"]
    enc = model.encoder
    with torch.no_grad():
        x, frame_pad, hidden_states = model.encode(net_input["source"], net_input["padding_mask"], return_layers=True)
        feats = enc.layer_norm(enc.feature_extractor(net_input["source"]).transpose(1, 2))
        expected = enc.post_extract_proj(feats).masked_fill(frame_pad.unsqueeze(-1), 0.0)
    assert len(hidden_states) == model.spec.num_layers + 1
    assert max_diff(hidden_states[0], expected) < 1e-5
    assert max_diff(hidden_states[-1], x) < 1e-6  # post-LN: the last layer's output is the encoder's


@pytest.mark.parametrize("gate_ste", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_loss_at_update_0_of_an_unpruned_student_is_its_minimum(w2v_pretrained, gate_ste, training):
    """Identity heads (DPHuBERT): with every gate open the student predicts the teacher exactly, so
    per frame L1 = 0 and the cosine similarity is 1: raw term -1, log_sig term -log sigmoid(1)."""
    torch.manual_seed(0)  # the HardConcrete samples of training mode
    model = distill_model(w2v_pretrained, distill_layers="0,1,2", prune_head_dims=True, gate_ste=gate_ste)
    model.train(training)
    open_gates(model)  # log_alpha 20: every HardConcrete sample and deterministic mask is exactly 1
    d = model.spec.embed_dim
    for head in model.heads:
        assert torch.equal(head.weight, torch.eye(d)) and not head.bias.any()
    sample = padded_sample()
    sparsity = dict(sparsity_mode="macs", target_sparsity=0.4, sparsity_warmup_updates=10)  # penalty 0 at update 0
    for cos_type, per_frame in (("raw", -1.0), ("log_sig", -torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())):
        crit = distill_criterion(w2v_pretrained, cos_type=cos_type, **sparsity)
        loss, n, log = crit(model, sample)
        assert n == int((~model(**sample["net_input"])["padding_mask"]).sum())
        assert abs(float(log["l1"]) / n) < 1e-5
        assert float(log["cos"]) / n == pytest.approx(per_frame, abs=1e-5)
        assert float(loss.detach()) / n == pytest.approx(per_frame, abs=1e-5)  # l1_weight = cos_weight = 1


def test_loss_is_averaged_over_layers(w2v_pretrained):
    model = distill_model(w2v_pretrained, distill_layers="0,1,2").eval()
    with torch.no_grad():
        model.gates.ffn[0].log_alpha[:50] = -20.0  # a pruned student: every term is non-trivial
    sample = padded_sample()
    mean_loss, n, mean_log = distill_criterion(w2v_pretrained)(model, sample)
    sum_loss, _, sum_log = distill_criterion(w2v_pretrained, layer_reduction="sum")(model, sample)
    assert float(mean_log["l1"]) > 1e-3 * n
    assert float(sum_loss) == pytest.approx(3 * float(mean_loss), rel=1e-5)
    assert float(sum_log["l1"]) == pytest.approx(3 * float(mean_log["l1"]), rel=1e-5)


def test_heads_are_random_when_the_widths_differ(w2v_pretrained, caplog):
    d = distill_model(w2v_pretrained).spec.embed_dim
    with caplog.at_level(logging.INFO, logger="hjprune_fairseq.plugin.models.distill"):
        model = distill_model(w2v_pretrained, teacher_dim=d + 8)
    assert all(head.weight.shape == (d + 8, d) for head in model.heads)
    assert f"map width {d} to the teacher's {d + 8}: not square, so initialised at random" in caplog.text
    crit = distill_criterion(w2v_pretrained)
    with pytest.raises(ValueError, match="model.teacher_dim must be the teacher's embed_dim"):
        crit(model, padded_sample())


def test_export_keeps_hidden_state_0(tmp_path, w2v_pretrained):
    """The head of layer 0 is sliced like the others when hidden dims are removed."""
    gated = distill_model(w2v_pretrained, distill_layers="0,2").eval()
    open_gates(gated)
    with torch.no_grad():
        gated.gates.hidden.log_alpha[::3] = -20.0
        gated.gates.ffn[1].log_alpha[:40] = -20.0
    slim_path = str(tmp_path / "slim.pt")
    export_slim(save_like_trainer(gated, tmp_path / "gated.pt"), slim_path)
    slim, _ = load_model(slim_path)
    assert slim.spec.embed_dim < gated.spec.embed_dim and slim.distill_layers == [0, 2]
    source = padded_sample()["net_input"]["source"]
    with torch.no_grad():
        a, b = gated(source=source)["layers"], slim(source=source)["layers"]
    assert max(max_diff(x, y) for x, y in zip(a, b)) < 1e-4


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


def test_checkpoints_that_hold_the_heads_as_proj_load(tmp_path, w2v_pretrained):
    """The heads were saved as ``proj.N.*`` before they were named ``heads``: fairseq's
    upgrade_state_dict_named hook renames them on load."""
    model = distill_model(w2v_pretrained).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_()
    path = save_like_trainer(model, tmp_path / "old.pt")
    state = torch.load(path, weights_only=False)
    state["model"] = {("proj." + k[len("heads."):] if k.startswith("heads.") else k): v for k, v in state["model"].items()}
    assert "proj.1.weight" in state["model"] and not any(k.startswith("heads.") for k in state["model"])
    torch.save(state, path)
    loaded, _ = load_model(path)
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(model.heads, loaded.heads))
