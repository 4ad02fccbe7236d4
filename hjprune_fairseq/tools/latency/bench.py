"""What a latency table is worth (``hjprune-latency-bench``).

``predict``: random slim shapes of the table's family (CNN channels, heads, FFN units, hidden dims; whole heads
and fine-grained heads, half each), timed in turns on the table's backend at its input length and threads, against
the table's prediction and against the best MACs-only predictor (latency = a * MACs + b, least squares on the same
shapes): median and worst absolute error in %.

``compare``: checkpoints (a parent and models pruned from it) timed in turns on the table's backend, with the
spread of the repeated timings (tiny models are noisy), beside their predicted latency and speed-up.

``target``: the family's gates driven by the constraint alone (no data, as ``tests/test_sparsity.py`` does) to
``target`` less predicted latency, exported (``core.slim``) and timed in turns with the dense encoder on the
table's backend; beside it the same with ``mode=macs`` at the MACs budget whose model has the same predicted
latency (found by secant steps), to show what the table changes in the kept shape and in measured time.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Dict, List, Optional

import torch
from hjprune_manifests.audio import SAMPLE_RATE
from omegaconf import OmegaConf

from ...core import cost_model
from ...core import latency_table as lt
from ...core.encoder import Wav2Vec2Encoder
from ...core.gate_state import GateMasks
from ...core.gates import EncoderGates
from ...core.slim import slim_encoder
from ...core.sparsity import SparsityConstraint
from ...core.spec import EncoderSpec
from ...plugin.optim.hjprune_adamw import HJPruneAdamW, HJPruneAdamWConfig
from ..bench.latency import keep_random, keep_random_dims
from ..timing import all_times, fixed_threads, median_times
from .probes import Backend

HIDDEN_LOW = 0.5  # random shapes keep at least this much of the hidden size (the default table grid's lowest)


def random_masks(spec: EncoderSpec, g: torch.Generator, fine_grained: bool) -> GateMasks:
    """0/1 masks of a random slim shape: every group keeps a uniform random fraction (CNN layers 0.2-1, heads and
    FFN units 0.1-1 per layer, hidden HIDDEN_LOW-1; fine-grained: query/key and value/output dims 0.2-1 per
    layer, at random over its heads)."""
    def u(lo: float) -> float:
        return lo + (1 - lo) * float(torch.rand((), generator=g))

    conv = [keep_random(c, u(0.2), g) for c, _, _ in spec.conv_layers]
    ffn = [keep_random(f, u(0.1), g) for f in spec.ffn_dims]
    hidden = keep_random(spec.embed_dim, u(HIDDEN_LOW), g)
    if not fine_grained:
        return GateMasks(conv=conv, heads=[keep_random(h, u(0.1), g) for h in spec.num_heads], ffn=ffn, hidden=hidden)
    qk = [keep_random_dims(h, spec.head_dim, u(0.2), g) for h in spec.num_heads]
    vo = [keep_random_dims(h, spec.head_dim, u(0.2), g) for h in spec.num_heads]
    return GateMasks(conv=conv, ffn=ffn, hidden=hidden, qk=qk, vo=vo)


def fit_macs(macs: List[float], measured: List[float]) -> List[float]:
    """Predictions of the least-squares line latency = a * MACs + b."""
    x, y = torch.tensor(macs, dtype=torch.float64), torch.tensor(measured, dtype=torch.float64)
    a = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp(min=1e-30)
    b = y.mean() - a * x.mean()
    return (a * x + b).tolist()


def errors(predicted: List[float], measured: List[float]) -> Dict[str, float]:
    e = [100 * abs(p - m) / m for p, m in zip(predicted, measured)]
    return {"median_abs_pct": statistics.median(e), "worst_abs_pct": max(e)}


def time_specs(table: lt.LatencyTable, specs: Dict[str, EncoderSpec], repeats: int, warmup: int,
               seed: int = 0) -> Dict[str, float]:
    """Median seconds of each encoder, timed in turns on the table's backend, threads and input length."""
    torch.manual_seed(seed)
    wav = torch.randn(1, int(round(table.seconds * SAMPLE_RATE)))
    with fixed_threads(table.threads), tempfile.TemporaryDirectory() as folder:
        backend = Backend(table.backend, table.threads, folder, table.data["dtype"])
        calls = {k: backend.encoder_call(Wav2Vec2Encoder(s), wav, k) for k, s in specs.items()}
        with torch.inference_mode():
            return median_times(calls, repeats, warmup)


def predict(table: lt.LatencyTable, shapes: int, repeats: int = 5, warmup: int = 1, seed: int = 0) -> Dict:
    """Predicted against measured latency on ``shapes`` random slim shapes (half fine-grained) of the table's family."""
    lt.warn_if_foreign(table, table.backend)
    spec = table.spec
    g = torch.Generator().manual_seed(seed)
    state = Wav2Vec2Encoder(spec).state_dict()
    specs, kinds = {}, {}
    for n in range(shapes):
        fine = n % 2 == 1
        name = f"{'fine' if fine else 'whole'}_{n}"
        specs[name] = slim_encoder(spec, state, random_masks(spec, g, fine), source=name)[0]
        kinds[name] = "fine_grained" if fine else "whole_heads"
    del state
    measured = time_specs(table, specs, repeats, warmup, seed)
    names = list(specs)
    rows = []
    for k in names:
        c = cost_model.cost(specs[k], None, table.seconds)
        rows.append({"shape": k, "kind": kinds[k], "gmacs": cost_model.to_float(c.encoder_macs) / 1e9,
                     "measured_ms": 1000 * measured[k],
                     "table_ms": 1000 * float(table.predict(cost_model.counts(specs[k]))),
                     "conv_channels": [ch for ch, _, _ in specs[k].conv_layers], "heads": specs[k].num_heads,
                     "qk_dims": [sum(specs[k].head_qk(i)) for i in range(specs[k].num_layers)],
                     "ffn_units": specs[k].ffn_dims, "hidden": specs[k].embed_dim})
    fitted = fit_macs([r["gmacs"] for r in rows], [r["measured_ms"] for r in rows])
    for r, f in zip(rows, fitted):
        r["macs_fit_ms"] = f

    def stats(subset: List[Dict]) -> Dict:
        meas = [r["measured_ms"] for r in subset]
        return {"shapes": len(subset), "table": errors([r["table_ms"] for r in subset], meas),
                "macs_fit": errors([r["macs_fit_ms"] for r in subset], meas)}

    return {"table": table.describe(), "backend": table.backend, "threads": table.threads, "seconds": table.seconds,
            "repeats": repeats, "all": stats(rows),
            "by_kind": {k: stats([r for r in rows if r["kind"] == k]) for k in ("whole_heads", "fine_grained")
                        if any(r["kind"] == k for r in rows)},
            "shapes": rows}


class _Gated(torch.nn.Module):
    """What the constraint reads from a model: its spec and its gates."""

    def __init__(self, spec: EncoderSpec, head_dims: bool):
        super().__init__()
        self.spec = spec
        self.gates = EncoderGates(spec, head_dims=head_dims)


def drive(table: lt.LatencyTable, mode: str, target: float, steps: int, head_dims: bool = False,
          seed: int = 0) -> GateMasks:
    """The deterministic masks of the family's gates after ``steps`` updates of hjprune_adamw on the constraint
    alone (target warm-up over the first fifth), at the rates of the tiny configs' pruning stage."""
    torch.manual_seed(seed)
    m = _Gated(table.spec, head_dims)
    c = SparsityConstraint(mode, {mode: target}, steps // 5, table.seconds, table)
    cfg = HJPruneAdamWConfig(lr=[1e-4], gate_lr=0.05, lambda_lr=0.05)
    opt = HJPruneAdamW(OmegaConf.structured(cfg), list(m.parameters()) + list(c.parameters()))
    for step in range(steps):
        penalty, _ = c(m, step)
        opt.zero_grad()
        penalty.backward()
        opt.step()
    return m.gates.deterministic()


def _ms(table: lt.LatencyTable, spec: EncoderSpec, masks: Optional[GateMasks] = None) -> float:
    return 1000 * float(table.predict(cost_model.counts(spec, masks)))


def _macs(spec: EncoderSpec, seconds: float, masks: Optional[GateMasks] = None) -> float:
    return cost_model.to_float(cost_model.cost(spec, masks, seconds).encoder_macs)


def target(table: lt.LatencyTable, goal: float = 0.4, steps: int = 300, repeats: int = 5, warmup: int = 1,
           secant_steps: int = 2, seed: int = 0) -> Dict:
    """Prune the family to ``goal`` less predicted latency with the constraint alone (mode latency), and with
    mode macs at the MACs budget of the same predicted latency; time both slim encoders against the dense one."""
    lt.warn_if_foreign(table, table.backend)
    spec = table.spec
    dense_ms, dense_macs = _ms(table, spec), _macs(spec, table.seconds)
    masks = {"latency": drive(table, "latency", goal, steps, seed=seed)}
    want = _ms(table, spec, masks["latency"])
    # macs mode: secant steps on its target until its model's predicted latency is the latency model's
    t0 = 1 - _macs(spec, table.seconds, masks["latency"]) / dense_macs
    runs = {t0: drive(table, "macs", t0, steps, seed=seed)}  # macs target -> its masks
    tried = [(t0, _ms(table, spec, runs[t0]))]
    t1 = min(0.95, t0 + 0.05 if tried[0][1] > want else t0 - 0.05)
    for _ in range(secant_steps):
        runs[t1] = drive(table, "macs", t1, steps, seed=seed)
        tried.append((t1, _ms(table, spec, runs[t1])))
        (ta, la), (tb, lb) = tried[-2], tried[-1]
        if abs(lb - want) < 0.005 * dense_ms or la == lb:
            break
        t1 = min(0.95, max(0.0, tb + (want - lb) * (tb - ta) / (lb - la)))
    masks["macs"] = runs[min(tried, key=lambda t: abs(t[1] - want))[0]]
    state = Wav2Vec2Encoder(spec).state_dict()
    specs = {"dense": spec, **{k: slim_encoder(spec, state, m, source=k)[0] for k, m in masks.items()}}
    del state
    measured = time_specs(table, specs, repeats, warmup, seed)
    out = {"table": table.describe(), "backend": table.backend, "threads": table.threads, "seconds": table.seconds,
           "goal": goal, "steps": steps, "repeats": repeats, "macs_targets_tried": tried}
    for k, s in specs.items():
        out[k] = {"measured_ms": 1000 * measured[k], "predicted_ms": _ms(table, s), "gmacs": _macs(s, table.seconds) / 1e9,
                  "measured_reduction": 1 - measured[k] / measured["dense"],
                  "predicted_reduction": 1 - _ms(table, s) / dense_ms,
                  "macs_reduction": 1 - _macs(s, table.seconds) / dense_macs,
                  "conv_channels": [c for c, _, _ in s.conv_layers], "heads": s.num_heads, "ffn_units": s.ffn_dims,
                  "hidden": s.embed_dim}
    out["latency_within_3_points"] = abs(out["latency"]["measured_reduction"] - goal) <= 0.03
    return out


def compare(table: lt.LatencyTable, checkpoints: List[str], repeats: int = 25, warmup: int = 3, seed: int = 0) -> Dict:
    """The encoders of ``checkpoints`` (the first is the reference of the speed-ups) timed in turns on the table's
    backend, threads and input length: median, quartiles, min and max of the repeated timings, the predicted
    latency, and measured against predicted speed-up over the first."""
    from ...plugin.checkpoints import load_model

    lt.warn_if_foreign(table, table.backend)
    encoders = {}
    for path in checkpoints:
        encoders[path] = load_model(path)[0].encoder.eval()
        lt.check_family(table, encoders[path].spec, path)
    torch.manual_seed(seed)
    wav = torch.randn(1, int(round(table.seconds * SAMPLE_RATE)))
    with fixed_threads(table.threads), tempfile.TemporaryDirectory() as folder:
        backend = Backend(table.backend, table.threads, folder, table.data["dtype"])
        calls = {k: backend.encoder_call(e, wav, k) for k, e in encoders.items()}
        with torch.inference_mode():
            times = all_times(calls, repeats, warmup)
    out = {"table": table.describe(), "backend": table.backend, "threads": table.threads, "seconds": table.seconds,
           "repeats": repeats, "models": []}
    ref = checkpoints[0]
    ref_ms = 1000 * statistics.median(times[ref])
    ref_pred = _ms(table, encoders[ref].spec)
    for k in checkpoints:
        t = sorted(1000 * v for v in times[k])
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        pred = _ms(table, encoders[k].spec)
        out["models"].append({"checkpoint": k, "median_ms": q[1] if len(t) >= 2 else t[0], "q1_ms": q[0], "q3_ms": q[2],
                              "min_ms": t[0], "max_ms": t[-1], "predicted_ms": pred,
                              "measured_speedup": ref_ms / statistics.median(t), "predicted_speedup": ref_pred / pred,
                              "gmacs": _macs(encoders[k].spec, table.seconds) / 1e9})
    return out
