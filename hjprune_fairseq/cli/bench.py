"""hjprune-bench: CPU latency of a dense encoder vs a slim one with about ``--macs-sparsity`` fewer MACs.

The slim structure follows the pattern HJ-Pruning-MAC learns (paper Fig. 5): early CNN layers (long
sequences) lose the most channels, upper Transformer layers the most heads and FFN units, and the
hidden size loses a few dims spread unevenly over the positional-conv groups. One knob scales the
whole pattern; it is bisected until the cost model gives the requested MACs sparsity. The models are
timed in the same process, alternately, with the same threads; the median of ``--repeats`` is kept.

``--fine-grained`` adds a third model at the same MACs sparsity, pruned the task-agnostic way (Wang et
al. 2023): every head stays, and its query/key and value/output dims are pruned instead, a random
choice over the layer's (heads x head_dim) dims, so the heads of a layer end up of uneven widths, as
learned gates leave them. The slim attention runs one call per distinct (QK, VO) width in a layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch

from ..core import cost_model
from ..core.encoder import Wav2Vec2Encoder
from ..core.gate_state import GateMasks
from ..core.spec import PRESETS, EncoderSpec
from .timing import add_timing_args, apply_threads, median_times


def _keep_top(n: int, frac: float, g: torch.Generator) -> torch.Tensor:
    """A 0/1 mask keeping round(frac * n) units (at least one), chosen at random."""
    k = max(1, min(n, int(round(frac * n))))
    mask = torch.zeros(n)
    mask[torch.randperm(n, generator=g)[:k]] = 1.0
    return mask


def _keep_dims(heads: int, head_dim: int, frac: float, g: torch.Generator) -> torch.Tensor:
    """A (heads, head_dim) 0/1 mask keeping round(frac * heads * head_dim) dims, at random over the layer."""
    return _keep_top(heads * head_dim, frac, g).view(heads, head_dim)


def fig5_masks(spec: EncoderSpec, strength: float, seed: int = 0, fine_grained: bool = False) -> GateMasks:
    """0/1 masks shaped like Fig. 5; ``strength`` in [0, 1] scales how much is pruned.

    ``fine_grained``: the attention loses dims inside its heads (qk / vo masks) instead of whole heads.
    """
    g = torch.Generator().manual_seed(seed)
    n_conv, L = len(spec.conv_layers), spec.num_layers
    # Fraction pruned per group: CNN from 0.9*s (first layer) down to 0.3*s (last);
    # Transformer from 0.2*s (bottom) up to 0.9*s (top); hidden 0.15*s.
    conv = [_keep_top(c, 1 - strength * (0.9 - 0.6 * i / max(1, n_conv - 1)), g) for i, (c, _, _) in enumerate(spec.conv_layers)]
    keep = [1 - strength * (0.2 + 0.7 * i / max(1, L - 1)) for i in range(L)]  # per Transformer layer
    heads = [_keep_top(h, f, g) for h, f in zip(spec.num_heads, keep)]
    ffn = [_keep_top(n, f, g) for n, f in zip(spec.ffn_dims, keep)]
    hidden = _keep_top(spec.embed_dim, 1 - 0.15 * strength, g)
    if not fine_grained:
        return GateMasks(conv=conv, heads=heads, ffn=ffn, hidden=hidden)
    qk = [_keep_dims(h, spec.head_dim, f, g) for h, f in zip(spec.num_heads, keep)]
    vo = [_keep_dims(h, spec.head_dim, f, g) for h, f in zip(spec.num_heads, keep)]
    return GateMasks(conv=conv, ffn=ffn, hidden=hidden, qk=qk, vo=vo)  # heads not gated: every head stays


def slim_spec_for(spec: EncoderSpec, macs_sparsity: float, seconds: float, seed: int = 0,
                  fine_grained: bool = False) -> EncoderSpec:
    """Bisect the Fig. 5 strength until the slim encoder has ``macs_sparsity`` fewer MACs."""
    from ..core.slim import slim_encoder

    dense = cost_model.to_float(cost_model.cost(spec, None, seconds).encoder_macs)
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        masks = fig5_masks(spec, mid, seed, fine_grained)
        s = 1 - cost_model.to_float(cost_model.cost(spec, masks, seconds).encoder_macs) / dense
        lo, hi = (mid, hi) if s < macs_sparsity else (lo, mid)
    masks = fig5_masks(spec, (lo + hi) / 2, seed, fine_grained)
    state = Wav2Vec2Encoder(spec).state_dict()
    return slim_encoder(spec, state, masks, source="bench")[0]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-bench",
        description="Time a dense encoder against a slim one with about --macs-sparsity fewer MACs (HJ-Pruning "
                    "Fig. 5 pattern), on CPU, side by side in one run. Prints latencies, the speed-up and the "
                    "MAC ratio; the goal is speed-up >= 0.85 x MAC ratio.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="wav2vec2_base", help="architecture (default: wav2vec2_base)")
    p.add_argument("--seconds", type=float, default=10.0, help="input length in seconds (default: 10)")
    p.add_argument("--macs-sparsity", type=float, default=0.5, help="fraction of MACs the slim model drops (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, input and which units are pruned")
    p.add_argument("--fine-grained", action="store_true",
                   help="also time a third model at the same MACs sparsity whose attention loses query/key and "
                        "value/output dims inside every head instead of whole heads (task-agnostic pruning)")
    add_timing_args(p, "runs")
    a = p.parse_args(argv)
    if not 0.0 < a.macs_sparsity < 1.0:
        p.error(f"--macs-sparsity must be in (0, 1), got {a.macs_sparsity}")
    apply_threads(a.threads)
    torch.manual_seed(a.seed)
    dense_spec = PRESETS[a.preset]
    specs = {"dense": dense_spec, "slim": slim_spec_for(dense_spec, a.macs_sparsity, a.seconds, a.seed)}
    if a.fine_grained:
        specs["fine_grained"] = slim_spec_for(dense_spec, a.macs_sparsity, a.seconds, a.seed, fine_grained=True)
    models = {k: Wav2Vec2Encoder(spec).eval() for k, spec in specs.items()}
    wav = torch.randn(1, int(a.seconds * cost_model.SAMPLE_RATE))
    with torch.inference_mode():
        lat = median_times({k: (lambda i, m=m: m(wav)) for k, m in models.items()}, a.repeats, a.warmup)
    costs = {k: cost_model.cost(spec, None, a.seconds) for k, spec in specs.items()}
    gmacs = {k: cost_model.to_float(c.encoder_macs) / 1e9 for k, c in costs.items()}
    params = {k: int(cost_model.to_float(c.encoder_params)) for k, c in costs.items()}
    slim_spec = specs["slim"]
    mac_ratio = gmacs["dense"] / gmacs["slim"]
    speedup = lat["dense"] / lat["slim"]
    r = {
        "preset": a.preset, "seconds": a.seconds, "threads": torch.get_num_threads(), "repeats": a.repeats,
        "dense_gmacs": gmacs["dense"], "slim_gmacs": gmacs["slim"],
        "dense_params": params["dense"], "slim_params": params["slim"],
        "dense_latency_s": lat["dense"], "slim_latency_s": lat["slim"],
        "speedup": speedup, "mac_ratio": mac_ratio, "speedup_over_mac_ratio": speedup / mac_ratio,
        "goal_met": speedup >= 0.85 * mac_ratio,
        "slim_structure": {"conv_channels": [c for c, _, _ in slim_spec.conv_layers], "heads": slim_spec.num_heads,
                           "ffn_units": slim_spec.ffn_dims, "hidden": slim_spec.embed_dim,
                           "pos_conv_groups": slim_spec.pos_conv_groups},
    }
    if a.fine_grained:
        fine = specs["fine_grained"]
        f_ratio, f_speedup = gmacs["dense"] / gmacs["fine_grained"], lat["dense"] / lat["fine_grained"]
        r["fine_grained"] = {
            "gmacs": gmacs["fine_grained"], "params": params["fine_grained"], "latency_s": lat["fine_grained"],
            "speedup": f_speedup, "mac_ratio": f_ratio, "speedup_over_mac_ratio": f_speedup / f_ratio,
            "goal_met": f_speedup >= 0.85 * f_ratio,
            "speedup_vs_whole_heads": lat["slim"] / lat["fine_grained"],
            # one attention call per distinct (QK, VO) head width in a layer
            "attention_calls": [len(set(zip(fine.head_qk(i), fine.head_vo(i)))) for i in range(fine.num_layers)],
            "qk_dims": [sum(fine.head_qk(i)) for i in range(fine.num_layers)],
            "vo_dims": [sum(fine.head_vo(i)) for i in range(fine.num_layers)],
        }
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{a.preset}, {a.seconds:g} s input, {r['threads']} threads, median of {a.repeats}")
        print(f"{'model':<6} {'GMACs':>8} {'params':>12} {'latency s':>10}")
        print(f"{'dense':<6} {r['dense_gmacs']:>8.2f} {r['dense_params']:>12,} {lat['dense']:>10.3f}")
        print(f"{'slim':<6} {r['slim_gmacs']:>8.2f} {r['slim_params']:>12,} {lat['slim']:>10.3f}")
        print(f"speed-up {speedup:.2f}x, MAC ratio {mac_ratio:.2f}x, speed-up / MAC ratio {speedup / mac_ratio:.2f} "
              f"(goal >= 0.85: {'met' if r['goal_met'] else 'NOT met'})")
        if a.fine_grained:
            f = r["fine_grained"]
            print(f"fine-grained attention (thin heads): {f['gmacs']:.2f} GMACs, {f['params']:,} params, {f['latency_s']:.3f} s")
            print(f"  speed-up {f['speedup']:.2f}x, MAC ratio {f['mac_ratio']:.2f}x, speed-up / MAC ratio "
                  f"{f['speedup_over_mac_ratio']:.2f} (goal >= 0.85: {'met' if f['goal_met'] else 'NOT met'})")
            print(f"  {f['speedup_vs_whole_heads']:.2f}x the whole-head slim model's speed; attention calls per layer "
                  f"{f['attention_calls']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
