"""ONNX export (torch's torch.export-based exporter): onnxruntime computes what PyTorch does, for every structure
the encoder has, at any batch size and length down to one frame (the graph's metadata min_samples), with padding
an input of the graph; int8 stays within its measured tolerance; a graph right for some input sizes only is
refused."""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from fairseq_fixtures import save_like_trainer
from helpers import NO_GATES, gated_model, randomize_gates
from omegaconf import OmegaConf

from hjprune_fairseq.cli import bench
from hjprune_fairseq.cli import export as export_cli
from hjprune_fairseq.convert import onnx_export, slim_export
from hjprune_fairseq.core.encoder import Wav2Vec2Encoder
from hjprune_fairseq.core.presets import PRESETS
from hjprune_fairseq.core.spec import EncoderSpec
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.models.base import HJPruneGatedCtcConfig
from hjprune_fairseq.plugin.models.classifier import HJPruneGatedCls
from hjprune_fairseq.plugin.models.distill import HJPruneDistillConfig, HJPruneGatedDistill

# One export, run at all three: two lengths without padding (8019 samples make exactly 99 frames: the
# HuBERT frame rule drops no sample; 5000 make 62 and drop 40) and a padded batch of three.
INPUTS = [[8019], [5000], [7000, 3000, 5000]]
TOL = 1e-4
# int8 (dynamic quantisation of MatMul/Gemm, 7-bit weights) against fp32 PyTorch, measured on tiny random models
# (the ctc fixture's, a whole-head one; the three INPUTS) on an AVX2 CPU without VNNI: 1.3 to 1.7 % relative error
# of the logits, 97 to 99.5 % of frames with the same argmax (with 8-bit weights 10 to 17 %: the kernels saturate
# there, onnx_export.quantize_int8). The bounds leave a margin of about 3x.
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


def prune_fine_grained(model, ffn: bool = False):
    """Uneven heads, one head without query/key dims, one without value/output dims (dropped), a layer
    without heads; with ``ffn``, a layer without FFN units too."""
    randomize_gates(model)
    with torch.no_grad():
        model.gates.qk[0].log_alpha[0].fill_(-20.0)
        model.gates.vo[0].log_alpha[1].fill_(-20.0)
        model.gates.heads[1].log_alpha.fill_(-20.0)
        if ffn:
            model.gates.ffn[0].log_alpha.fill_(-20.0)
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


def printed_json(main, argv):
    """The JSON a command printed, having asserted it succeeded."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return json.loads(printed.getvalue())


# Each export takes seconds (torch.export and the ONNX translation trace the model with symbolic sizes): every
# model is exported once for the module, and each pruned structure is in one of three models.
@pytest.fixture(scope="module")
def ctc(tmp_path_factory, w2v_large_style):
    """A gated CTC model of the large layout (LayerNorm CNN with conv bias, pre-LN) pruned inside and across
    heads (heads of several sizes, one without query/key dims, a layer without heads, one without FFN units,
    hidden dims: uneven positional-conv groups), and what hjprune-export made of its checkpoint: GATED SLIM --onnx
    OUT (the slim checkpoint and its graph), then GATED --onnx OUT --int8 --overwrite over a copy of that graph
    (the masks folded in); the JSON each printed."""
    d = tmp_path_factory.mktemp("ctc")
    model = prune_fine_grained(gated_model(w2v_large_style, prune_head_dims=True), ffn=True)
    gated = save_like_trainer(model, d / "gated.pt")
    fp32, int8 = d / "fp32" / "m.onnx", d / "int8" / "m.onnx"
    report = printed_json(export_cli.main, [gated, str(d / "slim.pt"), "--onnx", str(fp32)])
    int8.parent.mkdir()
    shutil.copy(fp32, int8)
    int8_report = printed_json(export_cli.main, [gated, "--onnx", str(int8), "--int8", "--overwrite"])
    return {"model": model, "gated": gated, "slim": str(d / "slim.pt"), "fp32": str(fp32), "int8": str(int8),
            "report": report, "int8_report": int8_report}


# name -> None (the ctc fixture's slim graph), or (fixture of the pre-trained checkpoint or None, model builder):
# a gated checkpoint exported with its masks folded in.
CASES = {
    "ctc_fine_grained_slim_large_layout": None,
    "hubert_classifier_gated": ("hubert_pretrained", lambda w: prune_whole_units(classifier_model(w))),
    "wavlm_distill_fine_grained_gated": (None, lambda w: prune_fine_grained(wavlm_distill_model())),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(case name, the model, its graph, export_onnx's report), every case exported once for the module."""
    if CASES[request.param] is None:
        c = request.getfixturevalue("ctc")
        return request.param, load_model(c["slim"])[0], c["fp32"], c["report"]["onnx"]
    fixture, build = CASES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    model = build(request.getfixturevalue(fixture) if fixture else None)
    path = save_like_trainer(model, d / "model.pt")
    return request.param, model, str(d / "model.onnx"), onnx_export.export_onnx(path, str(d / "model.onnx"))


def test_onnxruntime_equals_pytorch(exported):
    case, model, path, r = exported
    assert r["check_vs_pytorch"]["max_abs_diff"] <= TOL
    assert_ort_matches(model, path)  # the gated model's own masked forward, or the slim one
    if case.startswith("ctc"):
        s = model.spec
        assert model.gates is None and 0 in s.num_heads and 0 in s.ffn_dims  # the slim checkpoint's graph
        assert len(set(s.pos_conv_groups)) > 1 and 0 in s.qk_dims[0]
        assert len(set(zip(s.qk_dims[0], s.vo_dims[0]))) > 1  # heads of several sizes: one attention call each
        assert s.extractor_mode == "layer_norm" and s.layer_norm_first and s.conv_bias
        assert r["arch"] == "hjprune_slim_ctc" and r["outputs"] == ["logits", "frame_padding_mask"]
    if case.startswith("wavlm"):
        assert model.spec.has_rel_pos and r["outputs"] == ["features", "frame_padding_mask"]
    if case.startswith("hubert"):
        assert model.spec.frame_padding == "hubert" and r["outputs"] == ["logits"]
    if case.endswith("_gated"):
        assert r["arch"].startswith("hjprune_slim_")  # masks folded in: the graph is the slim model's


def test_a_dense_checkpoint_is_exported_as_it_is(w2v_pretrained, tmp_path):
    """A model without gates is its own graph (its onnxruntime parity: the dense encoder of the bench test)."""
    model = gated_model(w2v_pretrained, **NO_GATES)
    exportable, arch = slim_export.exportable_model(save_like_trainer(model, tmp_path / "dense.pt"))
    assert arch.name == "hjprune_wav2vec_ctc" and exportable.gates is None and exportable.spec == model.spec
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in exportable.state_dict().items())


def test_the_graph_records_its_shortest_input_and_computes_one_frame(exported):
    """metadata min_samples is the fewest samples PyTorch takes (one frame), which the graph computes as PyTorch
    does, alone and beside a longer row; one sample fewer fails inside onnxruntime, hence the tools' check."""
    case, model, path, r = exported
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    n = int(meta[onnx_export.MIN_SAMPLES])
    # The tiny CNN's receptive field: 1 + 9 + 2 x 5 + 2 x 10 + 1 x 20 + 1 x 40 samples.
    assert n == r["min_samples"] == onnx_export.min_samples(model.spec) == 100
    with torch.no_grad(), pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        model(source=torch.randn(1, n - 1), padding_mask=None)
    sess = onnx_export.session(path)
    for lengths in ([n], [n + 80, n]):  # one frame; a padded batch of two frames and one
        source, pad = onnx_export.padded_batch(lengths, seed=3)
        ref, ref_pad = pytorch_outputs(model, source, pad if pad.any() else None)
        out = onnx_export.run(sess, source, pad)
        if ref.dim() == 3:
            assert ref.shape[1] == len(lengths) and out[0].shape == tuple(ref.shape)
            keep = ~ref_pad if ref_pad is not None else torch.ones(ref.shape[:2], dtype=torch.bool)
            ref, got = ref[keep], torch.from_numpy(out[0])[keep]
        else:
            got = torch.from_numpy(out[0])
        assert (got - ref).abs().max().item() <= TOL, (case, lengths)
    with pytest.raises(Exception, match="Conv"):
        onnx_export.run(sess, *onnx_export.padded_batch([n - 1]))
    with pytest.raises(ValueError) as e:
        onnx_export.check_samples(n - 1, onnx_export.graph_min_samples(sess, path), path)
    assert str(e.value) == (f"{path}: an input of {n - 1} samples is shorter than the graph takes (expected at least "
                            f"min_samples={n} samples, 6.25 ms at 16000 Hz: the CNN's receptive field, one frame)")


def test_int8_within_measured_tolerance(ctc):
    model, path = ctc["model"], ctc["int8"]
    assert ctc["int8_report"]["onnx"]["int8"]
    graph = onnx.load(path).graph
    weights = {w.name for w in graph.initializer}
    ops = [n.op_type for n in graph.node]
    assert not [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]  # all quantised
    assert ops.count("MatMulInteger") >= 6  # the feature projection, layer 0's attention, layer 1's FFN, the output
    assert "Conv" in ops and "ConvInteger" not in ops
    sess = onnx_export.session(path)
    for k, lengths in enumerate(INPUTS):
        source, pad = onnx_export.padded_batch(lengths, seed=k)
        with torch.no_grad():
            out = model(source=source, padding_mask=pad)
        frame_pad = out["padding_mask"]
        c = onnx_export.compare([out["encoder_out"].transpose(0, 1)], onnx_export.run(sess, source, pad), frame_pad)
        assert c["rel_error"] < INT8_REL_ERROR and c["argmax_agreement"] >= INT8_ARGMAX_AGREEMENT, (lengths, c)
        assert c["max_abs_diff"] > 10 * TOL  # it is quantised


def test_a_data_dependent_branch_fails_the_export(tmp_path):
    """Without trace_padding the encoder's "no padding" shortcut would branch on the input: the export says where."""
    graph = onnx_export.EncoderGraph(Wav2Vec2Encoder(EncoderSpec.uniform(TINY_CONV, 48, 2, 4, 64, 16, 4)))
    graph.encoder.trace_padding = False
    with pytest.raises(ValueError, match=r"small: the graph would branch on a value computed from the input "
                                         r"\(.*encoder\.py:\d+: if padding_mask is None"):
        onnx_export.export_graph(graph, str(tmp_path / "e.onnx"), "small")


class SizeDependent(torch.nn.Module):
    """A graph whose output depends on a Python branch on the input's length, or on a fixed length."""

    spec = EncoderSpec.uniform(TINY_CONV, 48, 2, 4, 64, 16, 4)
    output_axes = {"features": {0: "batch", 1: "samples"}}

    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed

    def forward(self, source, padding_mask):
        if self.fixed:
            return (source * torch.ones(onnx_export.TRACE_LENGTHS[0]),)
        return (source * 2 if source.shape[1] > 1000 else source,)


def test_a_graph_for_some_lengths_only_fails_the_export(tmp_path):
    """The capture accepts what it cannot prove (Dim.DYNAMIC); a condition on the input's length is refused,
    not baked into a graph that is wrong for other lengths (the TorchScript tracer froze such branches silently)."""
    with pytest.raises(ValueError) as e:
        onnx_export.export_graph(SizeDependent(fixed=False), str(tmp_path / "e.onnx"), "branch")
    assert str(e.value) == ("branch: the captured graph holds only where axis 1 of source is 1001 or more "
                            "(expected any size from 180): a Python branch on that size")
    with pytest.raises(ValueError, match=r"^fixed: the graph cannot keep batch and samples dynamic \(You marked "
                                         r".*specialized it to be a constant \(16000\)\); expected a graph"):
        onnx_export.export_graph(SizeDependent(fixed=True), str(tmp_path / "e.onnx"), "fixed")
    assert not os.listdir(tmp_path)


def test_export_cli_onnx(ctc, tmp_path, capsys):
    gated, r = ctc["gated"], ctc["report"]
    fp32 = ctc["fp32"]
    assert r["slim"] == ctc["slim"] and r["onnx"]["onnx"] == fp32  # the slim checkpoint and the graph of it
    assert r["onnx"]["outputs"] == ["logits", "frame_padding_mask"]
    assert r["onnx"]["check_vs_pytorch"]["max_abs_diff"] <= TOL and r["onnx"]["min_samples"] == 100
    assert os.listdir(os.path.dirname(fp32)) == ["m.onnx"]  # no temporary left
    meta = {p.key: p.value for p in onnx.load(fp32).metadata_props}
    assert meta["normalize"] == "false" and meta["hjprune_arch"] == "hjprune_slim_ctc"
    assert meta["min_samples"] == "100" and meta["sample_rate"] == "16000"
    # GATED --onnx OUT --int8 --overwrite replaced the file it wrote; the masks folded in, no slim checkpoint.
    r8 = ctc["int8_report"]
    assert "slim" not in r8 and r8["onnx"]["int8"] and r8["onnx"]["arch"] == "hjprune_slim_ctc"
    assert os.path.getsize(ctc["int8"]) < os.path.getsize(fp32)
    assert os.listdir(os.path.dirname(ctc["int8"])) == ["m.onnx"]
    assert {p.key: p.value for p in onnx.load(ctc["int8"]).metadata_props}["min_samples"] == "100"
    # Refuses to write over an existing file or the input, before exporting.
    out = tmp_path / "m.onnx"
    out.write_bytes(b"mine")
    assert export_cli.main([gated, "--onnx", str(out), "--int8"]) == 2
    assert "m.onnx: already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert export_cli.main([gated, "--onnx", gated]) == 2
    assert "output would overwrite the input checkpoint" in capsys.readouterr().err
    assert export_cli.main([gated]) == 2
    assert "nothing to write; give SLIM, --onnx OUT.onnx" in capsys.readouterr().err


def test_bench_onnx_reports_each_runtime(capsys, monkeypatch):
    # A one-layer encoder rather than the tiny preset (four layers, seven conv layers): an export costs seconds.
    monkeypatch.setitem(PRESETS, "onnx_test", EncoderSpec.uniform([(32, 10, 5), (32, 8, 4)], 32, 1, 4, 32, 8, 4))
    # 0.4 fewer MACs: a budget its coarse units meet within 0.5 points (0.5 is refused: 0.449 is the closest)
    assert bench.main(["--preset", "onnx_test", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--json",
                       "--onnx", "--macs-sparsity", "0.4"]) == 0
    r = json.loads(capsys.readouterr().out)
    o = r["onnx"]
    for k in ("dense_latency_s", "slim_latency_s", "slim_int8_latency_s"):
        assert o[k] > 0
    assert o["speedup"] == pytest.approx(o["dense_latency_s"] / o["slim_latency_s"])
    assert o["speedup_over_mac_ratio"] == pytest.approx(o["speedup"] / r["mac_ratio"])
    assert o["int8_speedup"] == pytest.approx(o["dense_latency_s"] / o["slim_int8_latency_s"])
    assert o["dense_max_abs_diff"] <= TOL and o["slim_max_abs_diff"] <= TOL and np.isfinite(o["int8_rel_error"])
