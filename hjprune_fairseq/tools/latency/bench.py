"""What a latency table is worth (``hjprune-latency-bench``).

``predict``: random slim shapes of the table's family (CNN channels, heads, FFN units, hidden dims; whole heads
and fine-grained heads, half each), timed in turns with the dense encoder on the table's backend at its input
length and threads, against the table's prediction (as it is, and anchored to the table's own calibration
encoders timed again in the same turns) and against the best MACs-only predictor (latency = a * MACs + b, least
squares on the same shapes): median and worst absolute error in %. Several tables of one family and input
length (one per backend and thread count) get the same shapes, each exported to ONNX once and quantised once for
all of them (``graphs.exported``), then timed one table at a time, its sessions released before the next.

``compare``: checkpoints (a parent and models pruned from it) timed in turns on the table's backend, with the
spread of the repeated timings (tiny models are noisy), beside their predicted latency and speed-up.

``target``: the family's gates driven by the constraint alone (no data, as ``tests/test_sparsity.py`` does) to
``target`` less predicted latency, exported (``core.slim``) and timed in turns with the dense encoder on the
table's backend; beside it the same with ``mode=macs`` at the MACs budget whose model has the same predicted
latency (found by secant steps), to show what the table changes in the kept shape and in measured time.
"""

from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch
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
from ..timing import all_times, fixed_threads, median_times
from .graphs import Backend, Graph, exported
from .measure import slope_through_zero
from .shapes import calibration_specs, random_specs

DENSE = "dense"  # the dense encoder's key among predict's timings
PREDICTORS = ("table", "anchored", "macs_fit")  # predict's predictions: the table's, anchored, the MACs line


def fit_macs(macs: List[float], measured: List[float]) -> List[float]:
    """Predictions of the least-squares line latency = a * MACs + b."""
    x, y = torch.tensor(macs, dtype=torch.float64), torch.tensor(measured, dtype=torch.float64)
    a = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp(min=1e-30)
    b = y.mean() - a * x.mean()
    return (a * x + b).tolist()


def errors(predicted: List[float], measured: List[float]) -> Dict[str, float]:
    e = [100 * abs(p - m) / m for p, m in zip(predicted, measured)]
    return {"median_abs_pct": statistics.median(e), "worst_abs_pct": max(e)}


def check_one_family(tables: Sequence[lt.LatencyTable]) -> None:
    """Refuse, in one line, tables of different encoder families or input lengths (their shapes would differ)."""
    ref = tables[0]
    for t in tables[1:]:
        if t.spec.to_dict() != ref.spec.to_dict() or t.seconds != ref.seconds:
            raise ValueError(f"{t.source}: family {t.data.get('family')} at {t.seconds:g} s, {ref.source}: family "
                             f"{ref.data.get('family')} at {ref.seconds:g} s (expected tables of one family and "
                             "input length)")


def time_graphs(tables: Sequence[lt.LatencyTable], graphs: Sequence[Graph], repeats: int, warmup: int,
                export_jobs: int = 1, timer: Callable = median_times, export_dir: Optional[str] = None) -> List[Dict]:
    """``timer``'s timings of ``graphs`` in turns on each table's backend and threads: every graph exported once
    for all the tables (``graphs.exported``), then one table at a time, its sessions and modules released before
    the next (37 onnxruntime sessions of wav2vec2-base at 10 s held 19 GB on a 2-core VM); ``export_dir``: a kept
    folder of exports to reuse."""
    backends = [Backend(t.backend, t.threads, t.data["dtype"]) for t in tables]
    out = []
    with exported(graphs, [t.backend for t in tables], export_jobs, export_dir) as files:
        for b in backends:
            with fixed_threads(b.threads):
                calls = b.calls(graphs, files)
                with torch.inference_mode():
                    out.append(timer(calls, repeats, warmup))
            del calls
    return out


def encoder_graphs(specs: Dict[str, EncoderSpec], seconds: float, seed: int) -> List[Graph]:
    return [Graph(k, "encoder", s, seconds, seed) for k, s in specs.items()]


def predict(tables: Sequence[lt.LatencyTable], shapes: int, repeats: int = 5, warmup: int = 1, seed: int = 0,
            export_jobs: int = 1, export_dir: Optional[str] = None) -> List[Dict]:
    """For each table (one family and input length): predicted against measured latency on the same ``shapes``
    random slim shapes (half fine-grained), each exported once for all the tables, timed in turns with the dense
    encoder and the tables' calibration encoders (the anchors of the anchored prediction, :func:`_predicted`)."""
    check_one_family(tables)
    for table in tables:
        lt.warn_if_foreign(table, table.backend)
    ref = tables[0]
    specs, kinds = random_specs(ref.spec, shapes, seed)
    anchors = [anchor_specs(t) for t in tables]
    timed = {**specs, DENSE: ref.spec, **{k: s for a in anchors for k, s in a.items()}}
    timings = time_graphs(tables, encoder_graphs(timed, ref.seconds, seed), repeats, warmup, export_jobs,
                          export_dir=export_dir)
    return [_predicted(table, specs, kinds, measured, repeats, anchor)
            for table, measured, anchor in zip(tables, timings, anchors)]


def anchor_specs(table: lt.LatencyTable) -> Dict[str, EncoderSpec]:
    """The table's calibration encoders (``shapes.calibration_specs`` of its config's count and seed), keyed
    ``seed<seed>:<name>``; none for a table made without calibration (it is anchored to the dense encoder)."""
    cfg = table.data.get("config", {})
    n, s = int(cfg.get("calibration", 0)), int(cfg.get("seed", 0))
    return {f"seed{s}:{k}": v for k, v in calibration_specs(table.spec, n, s).items()}


def _predicted(table: lt.LatencyTable, specs: Dict[str, EncoderSpec], kinds: Dict[str, str],
               measured: Dict[str, float], repeats: int, anchors: Dict[str, EncoderSpec]) -> Dict:
    """One table's predictions of ``specs`` against their ``measured`` seconds, beside the fitted MACs line.

    Two predictions from the table: ``table`` (its milliseconds as they are) and ``anchored`` (times the factor
    by which its own calibration encoders, ``anchors``, ran slower or faster here than it predicts them: least
    squares through the origin; the dense encoder's ratio for a table without them). A table is made at one time
    and used at another, in another process: on a 2-core VM the same encoders ran 5-40 % apart between the table's
    process and ``predict``'s (which holds every shape at once), most of it common to every shape: it moves the
    absolute figures, far less the ratios, which are what the latency measure constrains (``target_sparsity`` is a
    fraction of the dense model's latency). The anchors are the table's, not the checked shapes, and several of
    them (one encoder's own timing is noisy too). The MACs line is fitted on these very timings, so it has no drift
    to bear."""
    rows = []
    dense_ms = 1000 * measured[DENSE]
    dense_pred = _ms(table, table.spec)
    names = list(anchors) or [DENSE]
    anchor_pred = [_ms(table, s) for s in anchors.values()] or [dense_pred]
    anchor_ms = [1000 * measured[k] for k in names]
    factor = slope_through_zero(torch.tensor(anchor_pred, dtype=torch.float64),
                                torch.tensor(anchor_ms, dtype=torch.float64))
    for k, s in specs.items():
        c = cost_model.cost(s, None, table.seconds)
        pred = _ms(table, s)
        rows.append({"shape": k, "kind": kinds[k], "gmacs": cost_model.to_float(c.encoder_macs) / 1e9,
                     "measured_ms": 1000 * measured[k], "table_ms": pred, "anchored_ms": pred * factor,
                     "conv_channels": [ch for ch, _, _ in s.conv_layers], "heads": s.num_heads,
                     "qk_dims": [sum(s.head_qk(i)) for i in range(s.num_layers)],
                     "ffn_units": s.ffn_dims, "hidden": s.embed_dim})
    fitted = fit_macs([r["gmacs"] for r in rows], [r["measured_ms"] for r in rows])
    for r, f in zip(rows, fitted):
        r["macs_fit_ms"] = f

    def stats(subset: List[Dict]) -> Dict:
        meas = [r["measured_ms"] for r in subset]
        return {"shapes": len(subset), **{p: errors([r[p + "_ms"] for r in subset], meas) for p in PREDICTORS}}

    return {"table": table.describe(), "backend": table.backend, "threads": table.threads, "seconds": table.seconds,
            "repeats": repeats, "dense": {"measured_ms": dense_ms, "table_ms": dense_pred,
                                          "anchored_ms": dense_pred * factor},
            "anchor": {"encoders": [k.split(":", 1)[-1] for k in names], "measured_ms": anchor_ms,
                       "table_ms": anchor_pred, "factor": factor},
            "all": stats(rows),
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
           secant_steps: int = 2, seed: int = 0, export_jobs: int = 1, export_dir: Optional[str] = None) -> Dict:
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
    measured = time_graphs([table], encoder_graphs(specs, table.seconds, seed), repeats, warmup, export_jobs,
                           export_dir=export_dir)[0]
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


def compare(table: lt.LatencyTable, checkpoints: List[str], repeats: int = 25, warmup: int = 3, seed: int = 0,
            export_jobs: int = 1, export_dir: Optional[str] = None) -> Dict:
    """The encoders of ``checkpoints`` (the first is the reference of the speed-ups) timed in turns on the table's
    backend, threads and input length: median, quartiles, min and max of the repeated timings, the predicted
    latency, and measured against predicted speed-up over the first."""
    from ...plugin.checkpoints import load_model

    lt.warn_if_foreign(table, table.backend)
    specs = {}
    for path in checkpoints:
        specs[path] = load_model(path)[0].encoder.spec
        lt.check_family(table, specs[path], path)
    graphs = [Graph(path, "checkpoint", specs[path], table.seconds, seed, checkpoint=path) for path in checkpoints]
    times = time_graphs([table], graphs, repeats, warmup, export_jobs, timer=all_times, export_dir=export_dir)[0]
    out = {"table": table.describe(), "backend": table.backend, "threads": table.threads, "seconds": table.seconds,
           "repeats": repeats, "models": []}
    ref = checkpoints[0]
    ref_ms = 1000 * statistics.median(times[ref])
    ref_pred = _ms(table, specs[ref])
    for k in checkpoints:
        t = sorted(1000 * v for v in times[k])
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        pred = _ms(table, specs[k])
        out["models"].append({"checkpoint": k, "median_ms": q[1] if len(t) >= 2 else t[0], "q1_ms": q[0], "q3_ms": q[2],
                              "min_ms": t[0], "max_ms": t[-1], "predicted_ms": pred,
                              "measured_speedup": ref_ms / statistics.median(t), "predicted_speedup": ref_pred / pred,
                              "gmacs": _macs(specs[k], table.seconds) / 1e9})
    return out
