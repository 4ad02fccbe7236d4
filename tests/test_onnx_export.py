"""ONNX export: onnxruntime computes what PyTorch does, for every structure the encoder has, at any batch
size and length, with padding an input of the graph; int8 stays within its measured tolerance."""

import json
import os

import numpy as np
import onnx
import pytest
import torch
from fairseq_fixtures import save_like_trainer
from helpers import NO_GATES, gated_model, randomize_gates
from omegaconf import OmegaConf

from hjprune_fairseq import onnx_export
from hjprune_fairseq.checkpoints import export_slim, load_model
from hjprune_fairseq.cli import bench
from hjprune_fairseq.cli import export as export_cli
from hjprune_fairseq.core.encoder import Wav2Vec2Encoder
from hjprune_fairseq.core.spec import EncoderSpec
from hjprune_fairseq.models.base import HJPruneGatedCtcConfig
from hjprune_fairseq.models.classifier import HJPruneGatedCls
from hjprune_fairseq.models.distill import HJPruneDistillConfig, HJPruneGatedDistill

# One export, run at all three: two lengths without padding (8019 samples make exactly 99 frames: the
# HuBERT frame rule drops no sample; 5000 make 62 and drop 40) and a padded batch of three.
INPUTS = [[8019], [5000], [7000, 3000, 5000]]
TOL = 1e-4
# int8 (dynamic quantisation of MatMul/Gemm) against fp32 PyTorch, measured on the tiny random models
# here (dense, whole-head slim, large layout; the three INPUTS): 0.9 to 1.4 % relative error of the
# logits, 97 to 100 % of frames with the same argmax. The bounds leave a margin of about 3x.
INT8_REL_ERROR = 0.05
INT8_ARGMAX_AGREEMENT = 0.9
TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 2 + [(32, 2, 2)] * 2  # the shape of fairseq_fixtures.TINY_MODEL


def pytorch_outputs(model, source, pad):
    """The model's own forward (no padding mask for an unpadded batch): (main output, frame padding (B, T))."""
    with torch.no_grad():
        if hasattr(model, "heads"):  # distillation: the encoder output, of the kept hidden dims only
            x, frame_pad = model.encode(source, pad)
            kept = model.gates.deterministic().hidden != 0 if model.gates is not None else slice(None)
            return x[..., kept], frame_pad
        out = model(source=source, padding_mask=pad)
    y = out["encoder_out"]
    return (y.transpose(0, 1), out["padding_mask"]) if y.dim() == 3 else (y, None)


def assert_ort_matches(model, onnx_path):
    sess = onnx_export.session(onnx_path)
    assert [i.shape for i in sess.get_inputs()] == [["batch", "samples"]] * 2
    for k, lengths in enumerate(INPUTS):
        source, pad = onnx_export.padded_batch(lengths, seed=k)
        ref, ref_pad = pytorch_outputs(model, source, pad if pad.any() else None)
        out = onnx_export.run(sess, source, pad)  # the graph always takes the mask (all False: no padding)
        if len(out) > 1:
            expected_pad = ref_pad if ref_pad is not None else torch.zeros(out[1].shape, dtype=torch.bool)
            assert torch.equal(torch.from_numpy(out[1]), expected_pad), lengths
            assert bool(expected_pad.any()) == (len(lengths) > 1)
            keep = ~expected_pad
            ref, got = ref[keep], torch.from_numpy(out[0])[keep]
        else:
            got = torch.from_numpy(out[0])
        assert got.shape == ref.shape and (got - ref).abs().max().item() <= TOL, lengths


def prune_whole_units(model):
    """Random gates, plus one layer that loses every head and one that loses every FFN unit."""
    randomize_gates(model)
    with torch.no_grad():
        model.gates.heads[1].log_alpha.fill_(-20.0)
        model.gates.ffn[0].log_alpha.fill_(-20.0)
    return model


def prune_fine_grained(model):
    """Uneven heads, one head without query/key dims, one without value/output dims (dropped), a layer
    without heads."""
    randomize_gates(model)
    with torch.no_grad():
        model.gates.qk[0].log_alpha[0].fill_(-20.0)
        model.gates.vo[0].log_alpha[1].fill_(-20.0)
        model.gates.heads[1].log_alpha.fill_(-20.0)
    return model


def classifier_model(w2v):
    c = OmegaConf.structured(HJPruneGatedCtcConfig(w2v_path=w2v, normalize=False, feature_grad_mult=1.0))
    return HJPruneGatedCls.from_config(c, 6).eval()


def wavlm_distill_model():
    """A random WavLM-shaped student (relative position bias) pruned inside its heads, by distillation."""
    spec = EncoderSpec.uniform(TINY_CONV, 48, 2, 4, 64, 16, 4, rel_pos_buckets=16, rel_pos_max_distance=40)
    c = OmegaConf.structured(HJPruneDistillConfig(normalize=False, feature_grad_mult=1.0, encoder_spec=spec.to_dict(),
                                                  distill_layers="1,2", prune_head_dims=True))
    return HJPruneGatedDistill.from_config(c, 0).eval()


# name -> (fixture of the pre-trained checkpoint or None, model builder, export the slim checkpoint
# (True) or the gated one with its masks folded in (False))
CASES = {
    "dense": ("w2v_pretrained", lambda w: gated_model(w, **NO_GATES), False),
    "whole_head_slim": ("w2v_pretrained", lambda w: prune_whole_units(gated_model(w)), True),
    "fine_grained_slim_large_layout": (
        "w2v_large_style", lambda w: prune_fine_grained(gated_model(w, prune_head_dims=True)), True),
    "hubert_classifier_gated": ("hubert_pretrained", lambda w: prune_whole_units(classifier_model(w)), False),
    "wavlm_distill_fine_grained_gated": (None, lambda w: prune_fine_grained(wavlm_distill_model()), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnxruntime_equals_pytorch(case, request, tmp_path):
    fixture, build, slim_first = CASES[case]
    model = build(request.getfixturevalue(fixture) if fixture else None)
    path = save_like_trainer(model, tmp_path / "model.pt")
    if slim_first:
        export_slim(path, str(tmp_path / "slim.pt"))
        path = str(tmp_path / "slim.pt")
        model, _ = load_model(path)
        assert model.gates is None and 0 in model.spec.num_heads
    r = onnx_export.export_onnx(path, str(tmp_path / "model.onnx"))
    assert r["check_vs_pytorch"]["max_abs_diff"] <= TOL
    assert_ort_matches(model, str(tmp_path / "model.onnx"))  # the gated model's own masked forward, or the slim one
    if case.startswith("fine_grained"):
        s = model.spec
        assert len(set(s.pos_conv_groups)) > 1 and 0 in s.qk_dims[0]
        assert len(set(zip(s.qk_dims[0], s.vo_dims[0]))) > 1  # heads of several sizes: one attention call each
        assert s.extractor_mode == "layer_norm" and s.layer_norm_first
    if case.startswith("wavlm"):
        assert model.spec.has_rel_pos and r["outputs"] == ["features", "frame_padding_mask"]
    if case.startswith("hubert"):
        assert model.spec.frame_padding == "hubert" and r["outputs"] == ["logits"]
    if case == "dense":
        assert r["arch"] == "hjprune_wav2vec_ctc" and model.gates is None
    elif not slim_first:
        assert r["arch"].startswith("hjprune_slim_")  # masks folded in: the graph is the slim model's


def test_int8_within_measured_tolerance(tmp_path, w2v_pretrained):
    model = prune_whole_units(gated_model(w2v_pretrained))
    path = save_like_trainer(model, tmp_path / "gated.pt")
    r = onnx_export.export_onnx(path, str(tmp_path / "int8.onnx"), int8=True)
    assert r["int8"]
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    int8_weights = [w for w in graph.initializer if w.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 4 * 2 + 2 * 2  # q, k, v, out_proj, fc1, fc2 of both layers (but the pruned ones)
    assert "Conv" in {n.op_type for n in graph.node} and "ConvInteger" not in {n.op_type for n in graph.node}
    sess = onnx_export.session(str(tmp_path / "int8.onnx"))
    for k, lengths in enumerate(INPUTS):
        source, pad = onnx_export.padded_batch(lengths, seed=k)
        with torch.no_grad():
            out = model(source=source, padding_mask=pad)
        frame_pad = out["padding_mask"]
        c = onnx_export.compare([out["encoder_out"].transpose(0, 1)], onnx_export.run(sess, source, pad), frame_pad)
        assert c["rel_error"] < INT8_REL_ERROR and c["argmax_agreement"] >= INT8_ARGMAX_AGREEMENT, (lengths, c)
        assert c["max_abs_diff"] > 10 * TOL  # it is quantised


def test_a_data_dependent_branch_fails_the_export(tmp_path):
    """Without trace_padding the encoder's "no padding" shortcut would freeze: the export says where."""
    graph = onnx_export.EncoderGraph(Wav2Vec2Encoder(EncoderSpec.uniform(TINY_CONV, 48, 2, 4, 64, 16, 4)))
    graph.encoder.trace_padding = False
    with pytest.raises(ValueError, match=r"small: the traced graph would freeze .*encoder\.py:\d+"):
        onnx_export.trace_to_onnx(graph, str(tmp_path / "e.onnx"), "small")


def test_export_cli_onnx(tmp_path, w2v_pretrained, capsys):
    gated = save_like_trainer(prune_whole_units(gated_model(w2v_pretrained)), tmp_path / "gated.pt")
    out = tmp_path / "sub" / "m.onnx"
    assert export_cli.main([gated, "--onnx", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["onnx"]["outputs"] == ["logits", "frame_padding_mask"] and r["onnx"]["check_vs_pytorch"]["max_abs_diff"] <= TOL
    assert "slim" not in r and os.listdir(tmp_path / "sub") == ["m.onnx"]  # no temporary left
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["normalize"] == "false" and meta["hjprune_arch"] == "hjprune_slim_ctc"
    # Refuses to write over an existing file or the input; --overwrite replaces the file it wrote.
    before = out.read_bytes()
    assert export_cli.main([gated, "--onnx", str(out), "--int8"]) == 2
    assert "m.onnx: already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert export_cli.main([gated, "--onnx", gated]) == 2
    assert "output would overwrite the input checkpoint" in capsys.readouterr().err
    assert export_cli.main([gated, "--onnx", str(out), "--int8", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["onnx"]["int8"] and out.stat().st_size < len(before)
    # With a slim path too: the slim checkpoint and the graph of it.
    assert export_cli.main([gated, str(tmp_path / "slim.pt"), "--onnx", str(tmp_path / "slim.onnx")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["slim"] == str(tmp_path / "slim.pt") and r["onnx"]["onnx"] == str(tmp_path / "slim.onnx")
    assert export_cli.main([gated]) == 2
    assert "nothing to write; give SLIM, --onnx OUT.onnx" in capsys.readouterr().err


def test_bench_onnx_reports_each_runtime(capsys):
    assert bench.main(["--preset", "tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--json", "--onnx"]) == 0
    r = json.loads(capsys.readouterr().out)
    o = r["onnx"]
    for k in ("dense_latency_s", "slim_latency_s", "slim_int8_latency_s"):
        assert o[k] > 0
    assert o["speedup"] == pytest.approx(o["dense_latency_s"] / o["slim_latency_s"])
    assert o["speedup_over_mac_ratio"] == pytest.approx(o["speedup"] / r["mac_ratio"])
    assert o["int8_speedup"] == pytest.approx(o["dense_latency_s"] / o["slim_int8_latency_s"])
    assert o["slim_max_abs_diff"] <= TOL and np.isfinite(o["int8_rel_error"])
