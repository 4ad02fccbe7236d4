"""The one cost model: paper figures, exact parameter counts, differentiability, the CLI."""

import json

import pytest
from helpers import VOCAB, gated_model, randomize_gates

from hjprune_fairseq.cli import cost as cost_cli
from hjprune_fairseq.core import cost_model
from hjprune_fairseq.core.encoder import Wav2Vec2Encoder
from hjprune_fairseq.core.presets import PRESETS


def test_wav2vec2_base_matches_paper():
    r = cost_model.report(PRESETS["wav2vec2_base"], None, 10.0)
    assert r["frames"] == 499
    assert r["gmacs"] == pytest.approx(74.4, rel=0.01)  # paper Sec. 4.2
    assert 0.31 <= r["cnn_macs_share"] <= 0.35  # "nearly 33 %" (Sec. 1)
    assert r["params_by_component"]["cnn"] / r["params"] < 0.05  # "less than 5 % of the parameters"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_dense_params_equal_module_numel(preset):
    spec = PRESETS[preset]
    enc = Wav2Vec2Encoder(spec)
    c = cost_model.cost(spec, None, 10.0, vocab_size=32)
    assert c.encoder_params == sum(p.numel() for p in enc.parameters())
    assert c.head_params == spec.embed_dim * 32 + 32


def test_expected_cost_is_differentiable_in_every_gate(w2v_pretrained):
    m = gated_model(w2v_pretrained)
    randomize_gates(m)
    c = cost_model.cost(m.spec, m.gates.keep_probs(), 10.0, VOCAB)
    (c.encoder_macs + c.encoder_params).backward()
    for name, p in m.gates.named_parameters():
        assert p.grad is not None and (p.grad != 0).all(), name


def test_counts_follow_masks(w2v_pretrained):
    m = gated_model(w2v_pretrained)
    randomize_gates(m)
    masks = m.gates.deterministic()
    k = cost_model.counts(m.spec, masks)
    assert [int(v) for v in k.heads] == [int(h.sum()) for h in masks.heads]
    assert int(k.hidden) == int(masks.hidden.sum())
    full = cost_model.cost(m.spec, None, 2.0)
    pruned = cost_model.cost(m.spec, masks, 2.0)
    for comp in cost_model.COMPONENTS:
        assert pruned.macs[comp] <= full.macs[comp]
    assert pruned.encoder_macs < full.encoder_macs


def test_bad_virtual_length():
    with pytest.raises(ValueError, match="positive"):
        cost_model.frames_for(PRESETS["tiny"], 0.0)
    with pytest.raises(ValueError, match="too short"):
        cost_model.frames_for(PRESETS["tiny"], 0.001)


def test_cli_preset_json(capsys):
    assert cost_cli.main(["--preset", "wav2vec2_base", "--seconds", "10", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["gmacs"] == pytest.approx(74.4, rel=0.01)
    assert set(r["gmacs_by_component"]) == {"cnn", "pos_conv", "attention", "ffn", "other", "head"}
    assert r["layers"]["heads"] == [12] * 12 and r["layers"]["conv_channels"] == [512] * 7


def test_cli_table_and_stock_checkpoint(capsys, stock_ctc):
    assert cost_cli.main([stock_ctc[0]]) == 0
    out = capsys.readouterr().out
    assert "fairseq wav2vec_ctc" in out and "attention" in out


def test_cli_missing_checkpoint(capsys, tmp_path):
    assert cost_cli.main([str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "not found" in err


def test_exact_at_wav2vec2_base_scale_and_bench_structure():
    """94 M parameters: counting from masks must still be exact (float64), and the bench's
    Fig. 5-shaped structure must hit its MACs target."""
    from hjprune_fairseq.core.slim import slim_encoder
    from hjprune_fairseq.tools.bench.latency import fig5_masks, slim_spec_for

    spec = PRESETS["wav2vec2_base"]
    masks = fig5_masks(spec, 0.6)
    slim_spec, _ = slim_encoder(spec, Wav2Vec2Encoder(spec).state_dict(), masks)
    from_masks = cost_model.cost(spec, masks, 10.0, 32)
    exact = cost_model.cost(slim_spec, None, 10.0, 32)
    assert from_masks.total_params == exact.total_params == sum(p.numel() for p in Wav2Vec2Encoder(slim_spec).parameters()) + 32 * slim_spec.embed_dim + 32
    assert from_masks.total_macs == exact.total_macs
    # Fig. 5 shape: the first conv layer and the top Transformer layer lose the most.
    assert slim_spec.conv_layers[0][0] < slim_spec.conv_layers[-1][0]
    assert slim_spec.ffn_dims[-1] < slim_spec.ffn_dims[0] and slim_spec.num_heads[-1] < slim_spec.num_heads[0]
    half = slim_spec_for(spec, 0.5, 10.0)
    r = cost_model.report(half, None, 10.0, reference=spec)
    assert r["macs_sparsity"] == pytest.approx(0.5, abs=0.01)
