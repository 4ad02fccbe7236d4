"""Slim export: physically removing units changes nothing but the size, and the size is as predicted."""

import json

import pytest
import torch
from fairseq_fixtures import batch, save_like_trainer
from helpers import VOCAB, gated_model, max_diff, randomize_gates
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hjprune_fairseq.cli import cost as cost_cli
from hjprune_fairseq.cli import export as export_cli
from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.core import cost_model
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.fairseq_import import read_checkpoint
from hjprune_fairseq.plugin.models.base import HJPruneCtcConfig
from hjprune_fairseq.plugin.models.ctc import HJPruneSlimCtc

LENGTHS = [16000, 12500, 8000]


def pruned_model(path):
    """Random gates, plus one layer that loses every head and one that loses every FFN unit."""
    m = gated_model(path)
    randomize_gates(m)
    with torch.no_grad():
        m.gates.heads[1].log_alpha.fill_(-20.0)
        m.gates.ffn[0].log_alpha.fill_(-20.0)
    return m


@pytest.fixture(params=["w2v_pretrained", "hubert_pretrained", "w2v_large_style"])
def exported(request, tmp_path):
    gated = pruned_model(request.getfixturevalue(request.param))
    gated_path = save_like_trainer(gated, tmp_path / "gated.pt")
    slim_path = str(tmp_path / "slim.pt")
    export_slim(gated_path, slim_path)
    slim, _ = load_model(slim_path)
    return gated, slim, gated_path, slim_path


def test_slim_equals_masked(exported):
    gated, slim, _, _ = exported
    assert isinstance(slim, HJPruneSlimCtc) and slim.gates is None
    masks = gated.gates.deterministic()
    assert slim.spec.num_heads[1] == 0 and slim.spec.ffn_dims[0] == 0
    assert slim.spec.embed_dim == int(masks.hidden.sum()) < gated.spec.embed_dim
    assert len(set(slim.spec.pos_conv_groups)) > 1  # uneven groups: the per-group conv path runs
    source, pad = batch(LENGTHS, seed=4)
    with torch.no_grad():
        a = gated.get_logits(gated(source=source, padding_mask=pad))
        b = slim.get_logits(slim(source=source, padding_mask=pad))
    assert max_diff(a, b) <= 1e-4


def test_slim_params_equal_cost_model(exported):
    gated, slim, _, _ = exported
    numel = sum(p.numel() for p in slim.parameters())
    assert cost_model.cost(slim.spec, None, 10.0, VOCAB).total_params == numel
    predicted = cost_model.cost(gated.spec, gated.gates.deterministic(), 10.0, VOCAB).total_params
    assert int(predicted) == numel


def test_slim_macs_agree_with_flop_counter(exported):
    _, slim, _, _ = exported
    seconds = 2.0
    # The math SDPA backend decomposes attention into bmm, which FlopCounterMode counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        slim(source=torch.randn(1, int(seconds * 16000)))
    measured = fc.get_total_flops() / 2
    predicted = cost_model.to_float(cost_model.cost(slim.spec, None, seconds, VOCAB).total_macs)
    assert measured == pytest.approx(predicted, rel=0.02)


def test_cost_cli_reads_gated_and_slim(exported, capsys):
    gated, slim, gated_path, slim_path = exported
    assert cost_cli.main([gated_path, "--json"]) == 0
    g = json.loads(capsys.readouterr().out)
    assert cost_cli.main([slim_path, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["kind"] == "slim" and g["kind"].startswith("gated")
    assert s["params"] == g["params"] == sum(p.numel() for p in slim.parameters())
    assert s["gmacs"] == pytest.approx(g["gmacs"], rel=1e-9)
    assert s["macs_sparsity"] == pytest.approx(g["macs_sparsity"], abs=1e-9) and s["macs_sparsity"] > 0.05
    assert s["layers"]["heads"][1] == 0


def test_slim_checkpoint_loads_with_fairseq_and_as_w2v_path(exported):
    from fairseq import checkpoint_utils

    _, slim, _, slim_path = exported
    state = checkpoint_utils.load_checkpoint_to_cpu(slim_path)
    assert state["cfg"]["model"]["_name"] == "hjprune_slim_ctc"
    # The final fine-tuning stage builds the slim model from model.w2v_path=slim.pt.
    cfg = OmegaConf.structured(HJPruneCtcConfig(w2v_path=slim_path, normalize=False))
    again = HJPruneSlimCtc.from_config(cfg, VOCAB).eval()
    assert read_checkpoint(slim_path).kind == "hjprune"
    assert again.spec == slim.spec and again.reference_spec == slim.reference_spec
    for k, v in slim.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_export_cli(tmp_path, w2v_pretrained, capsys):
    gated_path = save_like_trainer(pruned_model(w2v_pretrained), tmp_path / "g.pt")
    out = tmp_path / "sub" / "s.pt"
    assert export_cli.main([gated_path, str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] < gated_model(w2v_pretrained).proj.in_features * 10**6
    assert r["macs_sparsity"] == pytest.approx(r["gated_macs_sparsity"])
    # Refuses to overwrite, and names the file.
    assert export_cli.main([gated_path, str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_export_refuses_dead_cnn_layer(tmp_path, w2v_pretrained):
    m = gated_model(w2v_pretrained)
    with torch.no_grad():
        m.gates.conv[2].log_alpha.fill_(-20.0)
    path = save_like_trainer(m, tmp_path / "dead.pt")
    with pytest.raises(ValueError, match=r"dead\.pt: every output channel of CNN layer 2 is pruned"):
        export_slim(path, str(tmp_path / "s.pt"))
    assert not (tmp_path / "s.pt").exists()


def test_export_refuses_empty_hidden(tmp_path, w2v_pretrained):
    m = gated_model(w2v_pretrained)
    with torch.no_grad():
        m.gates.hidden.log_alpha.fill_(-20.0)
    path = save_like_trainer(m, tmp_path / "nohid.pt")
    with pytest.raises(ValueError, match="every hidden dimension is pruned"):
        export_slim(path, str(tmp_path / "s.pt"))


def test_export_refuses_non_gated_and_missing(tmp_path, stock_ctc):
    with pytest.raises(ValueError, match="has no gates to export"):
        export_slim(stock_ctc[0], str(tmp_path / "s.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        export_slim(str(tmp_path / "missing.pt"), str(tmp_path / "s.pt"))
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a readable fairseq checkpoint"):
        export_slim(str(bad), str(tmp_path / "s.pt"))


def test_ste_training_forward_equals_the_exported_model(w2v_pretrained, tmp_path):
    """gate_ste: the training forward already is the slim model; log_alpha still gets gradients."""
    gated = gated_model(w2v_pretrained, gate_ste=True)
    randomize_gates(gated)
    export_slim(save_like_trainer(gated, tmp_path / "gated.pt"), str(tmp_path / "slim.pt"))
    slim, _ = load_model(str(tmp_path / "slim.pt"))
    assert "gate_ste" not in slim.cfg
    source, pad = batch(LENGTHS, seed=5)
    gated.train()
    torch.manual_seed(0)
    a = gated.get_logits(gated(source=source, padding_mask=pad))
    with torch.no_grad():
        b = slim.get_logits(slim(source=source, padding_mask=pad))
    finite = torch.isfinite(b)
    assert max_diff(a.detach()[finite], b[finite]) < 1e-4
    a[finite].logsumexp(-1).sum().backward()
    grads = [g.log_alpha.grad for g in list(gated.gates.heads) + list(gated.gates.ffn) + [gated.gates.hidden]]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)

    plain = gated_model(w2v_pretrained)  # without STE the training forward is a random sample, not the mask
    plain.load_state_dict(gated.state_dict())
    plain.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = plain.get_logits(plain(source=source, padding_mask=pad))
    assert max_diff(c[finite], b[finite]) > 1e-2


@pytest.fixture(params=["w2v_pretrained", "w2v_large_style"])
def fine_grained(request, tmp_path):
    """Head, query/key and value/output gates: uneven heads, one head without query/key dims,
    one without value/output dims, one whole layer without heads."""
    gated = gated_model(request.getfixturevalue(request.param), prune_head_dims=True)
    randomize_gates(gated)
    with torch.no_grad():
        gated.gates.qk[0].log_alpha[0].fill_(-20.0)  # attends uniformly
        gated.gates.vo[0].log_alpha[1].fill_(-20.0)  # adds nothing: dropped
        gated.gates.heads[1].log_alpha.fill_(-20.0)
    export_slim(save_like_trainer(gated, tmp_path / "gated.pt"), str(tmp_path / "slim.pt"))
    slim, _ = load_model(str(tmp_path / "slim.pt"))
    return gated, slim


def test_fine_grained_export_equals_the_masked_model(fine_grained):
    gated, slim = fine_grained
    masks = gated.gates.deterministic()
    s = slim.spec
    assert s.num_heads[1] == 0 and s.qk_dims[0][0] == 0 and len(set(s.qk_dims[0] + s.vo_dims[0])) > 1
    kept0 = [h for h in range(gated.spec.num_heads[0]) if masks.heads[0][h] and masks.vo[0][h].sum() > 0]
    assert s.vo_dims[0] == [int(masks.vo[0][h].sum()) for h in kept0] and 1 not in kept0
    source, pad = batch(LENGTHS, seed=6)
    with torch.no_grad():
        a = gated.get_logits(gated(source=source, padding_mask=pad))
        b = slim.get_logits(slim(source=source, padding_mask=pad))
    finite = torch.isfinite(a)
    assert torch.equal(finite, torch.isfinite(b)) and max_diff(a[finite], b[finite]) < 1e-4


def test_fine_grained_cost_is_exact(fine_grained):
    gated, slim = fine_grained
    masked = cost_model.cost(gated.spec, gated.gates.deterministic(), 4.0, VOCAB)
    exact = cost_model.cost(slim.spec, None, 4.0, VOCAB)
    assert cost_model.to_float(masked.encoder_params) == exact.encoder_params == sum(
        p.numel() for p in slim.encoder.parameters())
    assert cost_model.to_float(masked.encoder_macs) == exact.encoder_macs
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:  # counts the per-size attention calls
        slim.encoder(torch.randn(1, 64000))
    assert fc.get_total_flops() / 2 == pytest.approx(exact.encoder_macs, rel=0.02)
