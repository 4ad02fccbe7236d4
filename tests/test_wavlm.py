"""WavLM (gated relative position bias) as a model family of the core encoder: equal to transformers'
WavLMModel, pruned (whole heads, head dims, hidden dims) and slimmed without changing its output,
costed exactly, and pruned to a MACs target under fairseq-hydra-train."""

import dataclasses

import pytest
import torch
from fairseq_fixtures import batch, save_like_trainer
from helpers import NO_GATES, VOCAB, gated_model, max_diff, open_gates, randomize_gates
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.core import cost_model
from hjprune_fairseq.core.encoder import Wav2Vec2Encoder
from hjprune_fairseq.core.presets import PRESETS
from hjprune_fairseq.core.spec import EncoderSpec
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.compat import import_transformers

LENGTHS = [4000, 2600]  # 49 and 32 frames: offsets of exact, log-spaced and clamped (beyond 32) buckets
LAYOUTS = {  # transformers' two WavLM layouts
    "post_ln": dict(do_stable_layer_norm=False, feat_extract_norm="group", conv_bias=False),
    "pre_ln": dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True),
}


def tiny_wavlm(layout: str, seed: int = 0):
    """A random transformers WavLMModel, 2 layers of 4 heads of 8 dims; every bias, norm and position-bias
    weight made non-trivial, Transformer weights at unit gain (transformers' init is std 0.02: the
    attention would barely reach the output)."""
    tr = import_transformers()
    torch.manual_seed(seed)
    cfg = tr.WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=32, **LAYOUTS[layout])
    model = tr.WavLMModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel" in name or name.endswith("bias") or "norm" in name:
                p.add_(0.5 * torch.randn(p.shape))
            elif name.startswith("encoder.layers") and p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model


def imported(hf_model, folder) -> str:
    """``hf_model`` saved as transformers saves it, then imported by ``hjprune-import-hf``: the path of
    the hjprune checkpoint, usable as model.w2v_path."""
    from hjprune_fairseq.convert.hf_import import import_hf

    hf_model.save_pretrained(str(folder / "hf"))
    return import_hf(str(folder / "hf"), str(folder / "imported"), normalize=False)["checkpoint"]


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def wavlm(request, tmp_path_factory):
    """(transformers WavLMModel, path of its imported checkpoint) for each layout."""
    hf = tiny_wavlm(request.param)
    return hf, imported(hf, tmp_path_factory.mktemp(f"wavlm_{request.param}"))


def hf_output(hf, source, pad):
    with torch.no_grad():
        return hf(source, attention_mask=None if pad is None else (~pad).long()).last_hidden_state


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("gates", ["none", "open", "open_fine_grained"])
def test_encoder_equals_transformers(wavlm, padded, gates):
    hf, path = wavlm
    cfg = {"none": NO_GATES, "open": {}, "open_fine_grained": dict(prune_head_dims=True)}[gates]
    ours = gated_model(path, **cfg)
    assert ours.spec.rel_pos_buckets == 32 and (ours.gates is None) == (gates == "none")
    if ours.gates is not None:
        open_gates(ours)
    source, pad = batch(LENGTHS if padded else LENGTHS[:1], seed=1)
    pad = pad if padded else None
    expected = hf_output(hf, source, pad)
    with torch.no_grad():
        x, frame_pad, _ = ours.encoder(source, pad, ours.gate_masks())
        valid = torch.ones(x.shape[:2], dtype=torch.bool) if frame_pad is None else ~frame_pad
        assert (x[valid] - expected[valid]).abs().max().item() <= 1e-4
        assert padded == (frame_pad is not None and bool(frame_pad.any()))
        # The bias matters: without the position table the output is far off.
        ours.encoder.rel_pos_embed.weight.zero_()
        x0, _, _ = ours.encoder(source, pad, ours.gate_masks())
    assert (x0[valid] - expected[valid]).abs().max().item() > 1e-2


def test_bf16_bias_in_fp32(wavlm):
    """bf16 activations: the bias is computed in fp32 and cast, the output stays close to fp32's.

    oneDNN off: on an Intel Xeon with AMX-BF16 (torch 2.13.0, oneDNN 3.12), its bf16 conv1d is wrong for some
    small shapes this tiny model has (16 -> 16 channels, kernel 4, stride 4: 89 % of the output's maximum off;
    the grouped position conv too), not for wav2vec2-base's (512 channels; 768 in 16 groups): 17 % error at the
    output with it, 1 % without it. This test is about the bias, not torch's convolutions."""
    hf, path = wavlm
    ours = gated_model(path, **NO_GATES)
    source, pad = batch(LENGTHS, seed=2)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        ref, frame_pad, _ = ours.encoder(source, pad)
        low, _, _ = ours.encoder.to(torch.bfloat16)(source.to(torch.bfloat16), pad)
    valid = ~frame_pad
    assert torch.isfinite(low[valid]).all()
    assert (low[valid].float() - ref[valid]).abs().max().item() < 0.1 * ref[valid].abs().max().item()


def pruned(path, fine_grained: bool, tmp_path, empty_layer: bool = True):
    """A gated model with random gates, layer 1 without any head (unless not ``empty_layer``; and,
    fine-grained, in layer 0 a head without query/key dims and one without value/output dims),
    exported; -> (gated, slim, slim path)."""
    gated = gated_model(path, prune_head_dims=fine_grained)
    randomize_gates(gated, mean=1.5)
    with torch.no_grad():
        if empty_layer:
            gated.gates.heads[1].log_alpha.fill_(-20.0)
        if fine_grained:
            gated.gates.heads[0].log_alpha.fill_(20.0)
            gated.gates.qk[0].log_alpha[0].fill_(-20.0)  # scores the gated bias only
            gated.gates.vo[0].log_alpha[1].fill_(-20.0)  # adds nothing: dropped with its bias
    slim_path = str(tmp_path / f"slim_{fine_grained}.pt")
    export_slim(save_like_trainer(gated, tmp_path / f"gated_{fine_grained}.pt"), slim_path)
    return gated, load_model(slim_path)[0], slim_path


def logits(model, seed):
    source, pad = batch(LENGTHS, seed=seed)
    with torch.no_grad():
        return model.get_logits(model(source=source, padding_mask=pad))


@pytest.mark.parametrize("fine_grained", [False, True])
def test_slim_equals_gated_and_cost_is_exact(wavlm, fine_grained, tmp_path):
    _, path = wavlm
    gated, slim, _ = pruned(path, fine_grained, tmp_path)
    s, masks = slim.spec, gated.gates.deterministic()
    assert s.num_heads[1] == 0 and 0 < s.num_heads[0] and s.embed_dim < gated.spec.embed_dim
    assert (s.rel_pos_buckets, s.rel_pos_max_distance, s.rel_pos_heads) == (32, 32, 4)
    enc = slim.encoder.state_dict()
    assert enc["rel_pos_embed.weight"].shape == (32, 4) and not any(k.startswith("layers.1.self_attn.rel") for k in enc)
    a0 = slim.encoder.layers[0].self_attn
    if fine_grained:
        assert s.qk_dims[0][0] == 0 and a0.head_ids.tolist() == [0, 2, 3]  # head 1 lost its value dims
    # Pruned hidden dims of a kept head's slice point at the zero pad (one past the slim hidden size).
    kept_hidden = masks.hidden.nonzero().flatten()
    expected_index = torch.full((gated.spec.embed_dim,), s.embed_dim)
    expected_index[kept_hidden] = torch.arange(s.embed_dim)
    assert torch.equal(a0.rel_gate_index, expected_index.view(4, 8)[a0.head_ids])
    assert (a0.rel_gate_index == s.embed_dim).any()
    assert max_diff(logits(gated, 3), logits(slim, 3)) < 1e-4

    numel = sum(p.numel() for p in slim.encoder.parameters())
    assert cost_model.cost(s, None, 4.0).encoder_params == numel
    assert cost_model.to_float(cost_model.cost(gated.spec, masks, 4.0).encoder_params) == numel
    assert cost_model.to_float(cost_model.cost(gated.spec, masks, 4.0).encoder_macs) == cost_model.cost(s, None, 4.0).encoder_macs
    # 200 frames: the one-dim products the flop counter sees for a head without query/key dims (which
    # the cost model counts as 0) stay near 1 % of the total.
    seconds = 0.25
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        slim(source=torch.randn(1, int(seconds * 16000)))
    predicted = cost_model.cost(s, None, seconds, VOCAB)
    assert fc.get_total_flops() / 2 == pytest.approx(predicted.total_macs, rel=0.02)
    # The position gate's own MACs: the attention's matrix products other than its four projections'.
    counts = {k.split("encoder.", 1)[-1]: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    att = "layers.0.self_attn"
    projections = sum(counts[f"{att}.{p}"] for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    products = dict(fc.get_flop_counts()[f"HJPruneSlimCtc.encoder.{att}"])
    gate = sum(n for op, n in products.items() if "bmm" not in str(op)) - projections
    assert gate / 2 == 8 * predicted.frames * s.num_heads[0] * s.head_dim


def test_slim_of_a_slim_model_keeps_the_original_heads(wavlm, tmp_path):
    """Pruning an exported model again: head_ids and rel_gate_index stay relative to the ORIGINAL heads
    and hidden vector of the bias table and gates."""
    _, path = wavlm
    _, slim, slim_path = pruned(path, False, tmp_path, empty_layer=False)  # (a layer without heads has no gates)
    assert slim.spec.num_heads[0] >= 2
    again = gated_model(slim_path, prune_conv=False, prune_ffn=False)
    with torch.no_grad():
        again.gates.heads[0].log_alpha[0] = -20.0  # drop the first kept head
        again.gates.hidden.log_alpha[: 3] = -20.0
    twice_path = str(tmp_path / "twice.pt")
    export_slim(save_like_trainer(again, tmp_path / "again.pt"), twice_path)
    twice, _ = load_model(twice_path)
    before, after = slim.encoder.layers[0].self_attn, twice.encoder.layers[0].self_attn
    assert torch.equal(after.head_ids, before.head_ids[1:])
    assert max_diff(logits(again, 4), logits(twice, 4)) < 1e-4
    assert cost_model.cost(twice.spec, None, 4.0).encoder_params == sum(p.numel() for p in twice.encoder.parameters())


def test_expected_cost_of_the_bias_is_differentiable():
    """The position-bias terms add gradient to the head gates (rel_gate_const and rel_gate MACs per head)."""
    from hjprune_fairseq.core.gates import EncoderGates

    wavlm = PRESETS["wavlm_base"]
    plain = dataclasses.replace(wavlm, rel_pos_buckets=0, rel_pos_max_distance=0, rel_pos_heads=0)
    gates = EncoderGates(wavlm)  # the same gates for both
    grads = []
    for spec in (wavlm, plain):
        gates.zero_grad()
        c = cost_model.cost(spec, gates.keep_probs(), 10.0)
        (c.params["attention"] + c.macs["attention"]).backward()
        grads.append(torch.stack([g.log_alpha.grad for g in gates.heads]))
    assert (grads[0] > grads[1]).all()


def test_wavlm_base_preset_and_cli(capsys):
    import json

    from hjprune_fairseq.cli import cost as cost_cli
    from hjprune_fairseq.plugin.fairseq_import import fairseq_model_config

    spec = PRESETS["wavlm_base"]
    assert cost_cli.main(["--preset", "wavlm_base", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    base = cost_model.report(PRESETS["wav2vec2_base"], None, 10.0)
    # wav2vec2-base plus the table (320 x 12), 12 x (rel_gate 8 x 64 + 8, 12 constants); 8*T*768 MACs a layer.
    assert r["params"] - base["params"] == 320 * 12 + 12 * (8 * 64 + 8 + 12)
    assert (r["gmacs"] - base["gmacs"]) * 1e9 == pytest.approx(12 * 8 * 499 * 768, rel=1e-6)
    assert sum(p.numel() for p in Wav2Vec2Encoder(spec).parameters()) == r["encoder_params"]
    with pytest.raises(ValueError, match="rel_pos_heads must be at least"):
        dataclasses.replace(spec, rel_pos_heads=8)
    with pytest.raises(ValueError, match="all 0 .* or all positive"):
        dataclasses.replace(spec, rel_pos_max_distance=0)
    with pytest.raises(ValueError, match="fairseq has no WavLM"):
        fairseq_model_config(spec)  # so no random wav2vec2 checkpoint silently drops the bias
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    old = PRESETS["wav2vec2_base"].to_dict()
    for k in ("rel_pos_buckets", "rel_pos_max_distance", "rel_pos_heads"):
        old.pop(k)
    assert EncoderSpec.from_dict(old) == PRESETS["wav2vec2_base"]  # specs saved before WavLM still load


def test_prunes_to_a_macs_target_under_fairseq_hydra_train(tmp_path, capsys):
    """The tiny WavLM (post-LN) prunes under fairseq-hydra-train (examples/tiny prune, mode macs): the
    expected sparsity climbs to its target, as the tiny wav2vec2's does (same settings: 0.01 -> 0.39 of
    0.3 at update 10; this WavLM: 0.01 -> 0.30)."""
    import json
    import os
    import re

    from fairseq_fixtures import EXAMPLES, make_letter_corpus, train_ok

    from hjprune_fairseq.cli import cost as cost_cli

    path = imported(tiny_wavlm("post_ln"), tmp_path)
    data = make_letter_corpus(str(tmp_path / "data"), {"train": 8, "valid": 4})
    log = train_ok(os.path.join(EXAMPLES, "tiny"), "prune", data, path, tmp_path / "ck", [
        "mode=macs", "optimization.max_update=10", "common.log_interval=1", "criterion.sparsity_warmup_updates=4",
        "criterion.target_sparsity=0.3", "optimizer.gate_lr=2.0", "optimizer.lambda_lr=2.0"])
    rows = [dict(re.findall(r"(\w+)=([-\d.e]+)", line)) for line in log.splitlines() if "train_inner" in line]
    sparsity = [float(r["sparsity"]) for r in rows]
    assert len(sparsity) == 10 and sparsity[0] < 0.05 and abs(sparsity[-1] - 0.3) < 0.1, sparsity
    gated, _ = load_model(str(tmp_path / "ck" / "checkpoint_last.pt"))
    assert gated.spec.has_rel_pos and gated.gates is not None
    assert cost_cli.main([str(tmp_path / "ck" / "checkpoint_last.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["macs_sparsity"] == pytest.approx(float(rows[-1]["mask_sparsity"]), abs=1e-3)


def test_train_step_bench_on_wavlm(monkeypatch, tmp_path):
    """hjprune-bench-train on a WavLM preset: fairseq has no WavLM, so the update compared with is the
    same encoder without gates; both updates run from the same random dense WavLM checkpoint."""
    from hjprune_fairseq.tools.bench import train_update

    spec = EncoderSpec.uniform([(16, 10, 5), (16, 4, 4), (16, 4, 4)], 32, 2, 4, 48, 8, 4, rel_pos_buckets=32,
                               rel_pos_max_distance=32)  # the shape of tiny_wavlm()
    path, baseline = train_update.write_random(spec, str(tmp_path))
    assert baseline == "dense"
    for kind in ("dense", "prune"):
        model, _, _ = train_update.build(kind, path, "macs")
        assert model.spec == spec and (model.gates is not None) == (kind == "prune")
    monkeypatch.setitem(train_update.PRESETS, "tiny_wavlm", spec)
    r = train_update.compare_updates("tiny_wavlm", "macs", 1, 0.5, repeats=1, warmup=0)
    assert r["baseline"].startswith("hjprune_slim_ctc") and r["stock_update_s"] > 0 and r["prune_update_s"] > 0
