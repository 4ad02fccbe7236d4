"""CPU latency of a dense encoder vs a slim one with about ``macs_sparsity`` fewer MACs.

The slim structure follows the pattern HJ-Pruning-MAC learns (paper Fig. 5): early CNN layers (long
sequences) lose the most channels, upper Transformer layers the most heads and FFN units, and the
hidden size loses a few dims spread unevenly over the positional-conv groups. The pattern is a ranking
of the units (gates' log_alpha, :func:`fig5_gates`) that export's budget rule (``core.budget``) cuts at
the requested MACs sparsity, exactly (within 0.5 points), also past the point where the first rows are
empty (the earlier scaled pattern saturated at 0.707 on wav2vec2-base), and with ``align`` in multiples. The models are
timed in the same process, alternately, with the same threads; the median of ``repeats`` is kept.

``fine_grained`` adds a third model at the same MACs sparsity, pruned the task-agnostic way (Wang et
al. 2023): every head stays, and its query/key and value/output dims are pruned instead, a random
choice over the layer's (heads x head_dim) dims, so the heads of a layer end up of uneven widths, as
learned gates leave them. The slim attention runs one call per distinct (QK, VO) width in a layer.

``onnx`` also times the models in onnxruntime, exported by ``onnx_export`` (the slim one also int8,
dynamically quantised), in the same alternation, on the same input (with an all-False padding mask,
which the graph always takes), with as many intra-op threads as torch has; idle onnxruntime threads
do not spin, so they take no CPU from the contender that runs next.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, Sequence, Tuple

import torch
from hjprune_manifests.audio import SAMPLE_RATE

from ...core import cost_model
from ...core import latency_table as lt
from ...core.budget import TOLERANCE, fit_budget, measure_sparsity
from ...core.encoder import Wav2Vec2Encoder
from ...core.gate_state import GateMasks
from ...core.gates import EncoderGates
from ...core.measures import MEASURES
from ...core.presets import PRESETS
from ...core.spec import EncoderSpec
from ..timing import median_times

GOAL = 0.85  # the slim model should reach speed-up >= GOAL x MAC ratio
ONNX_GOAL = 0.9  # in onnxruntime: speed-up >= ONNX_GOAL x MAC ratio


def keep_random(n: int, frac: float, g: torch.Generator) -> torch.Tensor:
    """A 0/1 mask keeping round(frac * n) units (at least one), chosen at random."""
    k = max(1, min(n, int(round(frac * n))))
    mask = torch.zeros(n)
    mask[torch.randperm(n, generator=g)[:k]] = 1.0
    return mask


def keep_random_dims(heads: int, head_dim: int, frac: float, g: torch.Generator) -> torch.Tensor:
    """A (heads, head_dim) 0/1 mask keeping round(frac * heads * head_dim) dims, at random over the layer."""
    return keep_random(heads * head_dim, frac, g).view(heads, head_dim)


OPEN = 20.0  # log_alpha of the bench's gates above which the Fig. 5 rank starts: every unit kept at first


def _ranks(n: int, g: torch.Generator) -> torch.Tensor:
    """A random order of ``n`` units as fractions in (0, 1): which units of a row go first."""
    return (torch.randperm(n, generator=g).float() + 0.5) / max(1, n)


def fig5_gates(spec: EncoderSpec, seed: int = 0, fine_grained: bool = False) -> EncoderGates:
    """Gates whose log_alpha rank the units as Fig. 5 prunes them: unit u (a random fraction in its row) of a
    row of weight w has log_alpha OPEN + u / w, so removing the units below OPEN + s prunes w * s of each row.

    Weights: CNN from 0.9 (first layer) down to 0.3 (last); Transformer layers from 0.2 (bottom) up to 0.9
    (top); hidden 0.15. ``fine_grained``: the attention's query/key and value/output dims are ranked over the
    whole layer (so heads end up of uneven widths) and whole heads are not gated."""
    g = torch.Generator().manual_seed(seed)
    gates = EncoderGates(spec, heads=not fine_grained, head_dims=fine_grained)
    n_conv, L = len(spec.conv_layers), spec.num_layers
    conv_w = [0.9 - 0.6 * i / max(1, n_conv - 1) for i in range(n_conv)]
    layer_w = [0.2 + 0.7 * i / max(1, L - 1) for i in range(L)]
    with torch.no_grad():
        for gate, w in zip(gates.conv, conv_w):
            gate.log_alpha.copy_(OPEN + _ranks(gate.log_alpha.numel(), g) / w)
        for group in ("heads", "ffn", "qk", "vo"):  # qk / vo: one (heads, head_dim) block per layer, ranked as one
            for gate, w in zip(getattr(gates, group) or [], layer_w):
                gate.log_alpha.copy_((OPEN + _ranks(gate.log_alpha.numel(), g) / w).view(gate.log_alpha.shape))
        gates.hidden.log_alpha.copy_(OPEN + _ranks(spec.embed_dim, g) / 0.15)
    return gates


def fig5_masks(spec: EncoderSpec, strength: float, seed: int = 0, fine_grained: bool = False) -> GateMasks:
    """0/1 masks shaped like Fig. 5: ``strength`` * w of every row of weight w pruned (at least one unit kept)."""
    gates = fig5_gates(spec, seed, fine_grained)

    def keep(a: torch.Tensor) -> torch.Tensor:
        rows = a.detach().reshape(-1, a.shape[-1])
        m = (rows >= OPEN + strength).float()
        m[torch.arange(rows.shape[0]), rows.argmax(-1)] = 1.0
        return m.view(a.shape)

    return GateMasks(**{k: (None if v is None else (keep(v.log_alpha) if k == "hidden" else [keep(b.log_alpha) for b in v]))
                        for k, v in ((k, getattr(gates, k)) for k in ("conv", "heads", "ffn", "hidden", "qk", "vo"))})


def slim_spec_for(spec: EncoderSpec, macs_sparsity: float, seconds: float, seed: int = 0,
                  fine_grained: bool = False, align: int = 1) -> EncoderSpec:
    """The slim encoder with ``macs_sparsity`` fewer MACs (within 0.5 points): :func:`fig5_gates` fitted to it by
    the export's budget rule (``core.budget``), kept counts in multiples of ``align``; ValueError if it cannot."""
    from ...core.slim import slim_encoder

    measure = MEASURES["macs"]
    gates = fig5_gates(spec, seed, fine_grained)
    r = fit_budget(gates, measure, {"macs": macs_sparsity}, measure_sparsity(measure, spec, seconds), align=align)
    if not r.met:
        raise ValueError(f"--macs-sparsity {macs_sparsity:g}: the closest {'aligned ' if align > 1 else ''}structure "
                         f"this pattern gives has {r.delivered['macs']:.3f} fewer MACs (expected within "
                         f"{TOLERANCE} of the target)")
    state = Wav2Vec2Encoder(spec).state_dict()
    return slim_encoder(spec, state, r.masks, source="bench")[0]


def onnx_contenders(models: Dict[str, Wav2Vec2Encoder], wav: torch.Tensor,
                    folder: str) -> Tuple[Dict[str, Callable[[int], None]], Dict[str, float]]:
    """The encoders as onnxruntime sessions of graphs exported into ``folder`` (``wav`` must have at least each
    graph's ``min_samples``), the slim one also int8:
    ``{"onnx_NAME": call}`` for :func:`median_times` (``onnx_slim_int8`` too), and how far the graphs' outputs on
    ``wav`` (1, S) are from PyTorch's (``NAME_max_abs_diff`` of each fp32 graph, ``int8_rel_error``)."""
    from ...convert import onnx_export

    pad = torch.zeros(wav.shape, dtype=torch.bool)
    calls: Dict[str, Callable[[int], None]] = {}
    outputs = {}
    for name, model in models.items():
        paths = {name: os.path.join(folder, f"{name}.onnx")}
        onnx_export.export_graph(onnx_export.EncoderGraph(model), paths[name], name)  # PyTorch gets no mask: same model
        if name == "slim":
            paths["slim_int8"] = os.path.join(folder, "slim_int8.onnx")
            onnx_export.quantize_int8(paths["slim"], paths["slim_int8"])
        for k, path in paths.items():
            sess = onnx_export.session(path, torch.get_num_threads(), spinning=False)
            graph = f"the {k} graph"
            onnx_export.check_samples(wav.shape[1], onnx_export.graph_min_samples(sess, graph), graph)
            calls[f"onnx_{k}"] = lambda i, s=sess: onnx_export.run(s, wav, pad)
            outputs[k] = calls[f"onnx_{k}"](0)
    with torch.inference_mode():
        refs = {name: model(wav)[:1] for name, model in models.items()}
    check = {f"{name}_max_abs_diff": onnx_export.compare(refs[name], outputs[name], None)["max_abs_diff"]
             for name in models}
    check["int8_rel_error"] = onnx_export.compare(refs["slim"], outputs["slim_int8"], None)["rel_error"]
    return calls, check


def speedups(dense_s: float, model_s: float, mac_ratio: float, goal: float) -> Dict:
    """speedup (dense / model latency), speedup_over_mac_ratio and goal_met (speed-up >= goal x MAC ratio)."""
    s = dense_s / model_s
    return {"speedup": s, "speedup_over_mac_ratio": s / mac_ratio, "goal_met": s >= goal * mac_ratio}


def predictions(tables: Sequence[lt.LatencyTable], specs: Dict[str, EncoderSpec], lat: Dict[str, float], seconds: float,
                threads: int) -> Dict[str, Dict]:
    """Predicted beside measured latency of every timed model (``lat``: ``NAME`` in PyTorch, ``onnx_NAME`` in
    onnxruntime, ``onnx_slim_int8``), each from the table of its backend, else the first table (``foreign`` says
    why it may not hold, as it does for a table of another machine, input length or thread count)."""
    out = {}
    for key, measured in lat.items():
        backend, name = "pytorch", key
        if key == "onnx_slim_int8":
            backend, name = "onnxruntime_int8", "slim"
        elif key.startswith("onnx_"):
            backend, name = "onnxruntime", key[len("onnx_"):]
        table = next((t for t in tables if t.backend == backend), tables[0])
        why = [w for w in [lt.foreign(table, backend)] if w]
        if table.seconds != seconds or table.threads != threads:
            why.append(f"it was measured at {table.seconds:g} s and {table.threads} threads, this run is {seconds:g} s "
                       f"and {threads} threads")
        lt.check_family(table, specs[name], name)
        out[key] = {"measured_s": measured, "predicted_s": float(table.predict(cost_model.counts(specs[name]))),
                    "table": table.source, "foreign": "; ".join(why) or None}
    return out


def compare_latency(preset: str, macs_sparsity: float, seconds: float, seed: int = 0, fine_grained: bool = False,
                    repeats: int = 7, warmup: int = 2, onnx: bool = False, align: int = 1,
                    latency_tables: Sequence[lt.LatencyTable] = ()) -> Dict:
    """Time the dense ``preset`` encoder against its Fig. 5 slim counterpart (and the fine-grained one)
    on ``seconds`` of random audio with torch's current threads: latencies (s), GMACs, parameters,
    the speed-up, the MAC ratio, whether the goal is met, and the slim structure. ``onnx``: the same in
    onnxruntime under ``"onnx"`` (and the slim model int8), timed in the same alternation. ``align`` > 1:
    also the same pattern at the same MACs sparsity with kept counts in multiples of ``align``.
    ``latency_tables``: the predicted latency of every timed model beside its measured one, under ``"predicted"``."""
    torch.manual_seed(seed)
    dense_spec = PRESETS[preset]
    specs = {"dense": dense_spec, "slim": slim_spec_for(dense_spec, macs_sparsity, seconds, seed)}
    if fine_grained:
        specs["fine_grained"] = slim_spec_for(dense_spec, macs_sparsity, seconds, seed, fine_grained=True)
    if align > 1:
        specs["aligned"] = slim_spec_for(dense_spec, macs_sparsity, seconds, seed, align=align)
    models = {k: Wav2Vec2Encoder(spec).eval() for k, spec in specs.items()}
    wav = torch.randn(1, int(seconds * SAMPLE_RATE))
    calls = {k: (lambda i, m=m: m(wav)) for k, m in models.items()}
    with tempfile.TemporaryDirectory() as folder:
        if onnx:
            ort_calls, ort_check = onnx_contenders(models, wav, folder)
            calls.update(ort_calls)
        with torch.inference_mode():
            lat = median_times(calls, repeats, warmup)
    costs = {k: cost_model.cost(spec, None, seconds) for k, spec in specs.items()}
    gmacs = {k: cost_model.to_float(c.encoder_macs) / 1e9 for k, c in costs.items()}
    params = {k: int(cost_model.to_float(c.encoder_params)) for k, c in costs.items()}
    slim_spec = specs["slim"]
    mac_ratio = gmacs["dense"] / gmacs["slim"]
    speedup = lat["dense"] / lat["slim"]
    r = {
        "preset": preset, "seconds": seconds, "threads": torch.get_num_threads(), "repeats": repeats,
        "dense_gmacs": gmacs["dense"], "slim_gmacs": gmacs["slim"],
        "dense_params": params["dense"], "slim_params": params["slim"],
        "dense_latency_s": lat["dense"], "slim_latency_s": lat["slim"],
        "speedup": speedup, "mac_ratio": mac_ratio, "speedup_over_mac_ratio": speedup / mac_ratio,
        "goal_met": speedup >= GOAL * mac_ratio,
        "slim_structure": {"conv_channels": [c for c, _, _ in slim_spec.conv_layers], "heads": slim_spec.num_heads,
                           "ffn_units": slim_spec.ffn_dims, "hidden": slim_spec.embed_dim,
                           "pos_conv_groups": slim_spec.pos_conv_groups},
    }
    if fine_grained:
        fine = specs["fine_grained"]
        f_ratio, f_speedup = gmacs["dense"] / gmacs["fine_grained"], lat["dense"] / lat["fine_grained"]
        r["fine_grained"] = {
            "gmacs": gmacs["fine_grained"], "params": params["fine_grained"], "latency_s": lat["fine_grained"],
            "speedup": f_speedup, "mac_ratio": f_ratio, "speedup_over_mac_ratio": f_speedup / f_ratio,
            "goal_met": f_speedup >= GOAL * f_ratio,
            "speedup_vs_whole_heads": lat["slim"] / lat["fine_grained"],
            # one attention call per distinct (QK, VO) head width in a layer
            "attention_calls": [len(set(zip(fine.head_qk(i), fine.head_vo(i)))) for i in range(fine.num_layers)],
            "qk_dims": [sum(fine.head_qk(i)) for i in range(fine.num_layers)],
            "vo_dims": [sum(fine.head_vo(i)) for i in range(fine.num_layers)],
        }
    if align > 1:
        a = specs["aligned"]
        a_ratio, a_speedup = gmacs["dense"] / gmacs["aligned"], lat["dense"] / lat["aligned"]
        r["aligned"] = {
            "align": align, "gmacs": gmacs["aligned"], "params": params["aligned"], "latency_s": lat["aligned"],
            "speedup": a_speedup, "mac_ratio": a_ratio, "speedup_over_mac_ratio": a_speedup / a_ratio,
            "goal_met": a_speedup >= GOAL * a_ratio, "speedup_vs_unaligned": lat["slim"] / lat["aligned"],
            "structure": {"conv_channels": [c for c, _, _ in a.conv_layers], "heads": a.num_heads,
                          "ffn_units": a.ffn_dims, "hidden": a.embed_dim},
        }
    if onnx:
        import onnxruntime

        o = {"onnxruntime": onnxruntime.__version__, "goal": ONNX_GOAL, "threads": torch.get_num_threads(),
             **{f"{k}_latency_s": lat[f"onnx_{k}"] for k in list(specs) + ["slim_int8"]},
             **speedups(lat["onnx_dense"], lat["onnx_slim"], mac_ratio, ONNX_GOAL)}
        o.update({f"int8_{k}": v for k, v in speedups(lat["onnx_dense"], lat["onnx_slim_int8"], mac_ratio, ONNX_GOAL).items()})
        o["int8_vs_fp32_slim"] = lat["onnx_slim"] / lat["onnx_slim_int8"]
        if fine_grained:
            f_ratio = gmacs["dense"] / gmacs["fine_grained"]
            o.update({f"fine_grained_{k}": v for k, v in speedups(lat["onnx_dense"], lat["onnx_fine_grained"], f_ratio,
                                                                  ONNX_GOAL).items()})
        if align > 1:
            a_ratio = gmacs["dense"] / gmacs["aligned"]
            o.update({f"aligned_{k}": v for k, v in speedups(lat["onnx_dense"], lat["onnx_aligned"], a_ratio,
                                                             ONNX_GOAL).items()})
            o["aligned_speedup_vs_unaligned"] = lat["onnx_slim"] / lat["onnx_aligned"]
        o["pytorch_over_onnxruntime"] = {k: lat[k] / lat[f"onnx_{k}"] for k in specs}
        o.update(ort_check)
        r["onnx"] = o
    if latency_tables:
        r["predicted"] = predictions(latency_tables, specs, lat, seconds, torch.get_num_threads())
    return r
