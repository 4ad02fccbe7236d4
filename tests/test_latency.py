"""Latency tables (issue 22): the format and its one-line errors, the interpolation, the ``latency`` sparsity
measure, the warning for a table of another machine or backend, hjprune-latency-table, hjprune-cost
--latency-table, hjprune-latency-bench at toy scale, and a fairseq prune stage with mode=latency."""

import itertools
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from hjprune_fairseq.core import cost_model
from hjprune_fairseq.core import latency_table as lt
from hjprune_fairseq.core.gates import EncoderGates
from hjprune_fairseq.core.measures import MEASURES
from hjprune_fairseq.core.presets import PRESETS
from hjprune_fairseq.core.sparsity import SparsityConstraint
from hjprune_fairseq.plugin.criterions.sparsity_config import SparsityConfig, constraint_from_config
from hjprune_fairseq.plugin.optim.hjprune_adamw import HJPruneAdamW, HJPruneAdamWConfig

from fairseq_fixtures import EXAMPLES, USER_DIR, hydra_train, make_latency_table, make_letter_corpus

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return make_latency_table(str(tmp_path_factory.mktemp("lat") / "tiny.json"))


@pytest.fixture(scope="module")
def table(table_path):
    return lt.load(table_path)


@pytest.fixture(scope="module")
def smooth_path(table_path, tmp_path_factory):
    """The measured table with its seconds replaced by a smooth increasing function of the kept sizes (1 ms times
    0.1 + the product of the axes' fractions): constraint tests that do not depend on the machine's noise."""
    data = _data(table_path)
    for c in data["components"].values():
        fracs = [torch.tensor(p, dtype=torch.float64) / max(p) for p in c["grid"]]
        prod = torch.ones([len(p) for p in fracs], dtype=torch.float64)
        for k, f in enumerate(fracs):
            prod = prod * f.view([-1 if j == k else 1 for j in range(len(fracs))])
        c["seconds"] = (1e-3 * (0.1 + prod)).tolist()
    data["calibration"].update(scale=1.0, offset_s=0.0, cnn_scale=1.0, dense_scale=1.0)
    path = tmp_path_factory.mktemp("smooth") / "smooth.json"
    path.write_text(json.dumps(data))
    return str(path)


def _data(table_path):
    with open(table_path) as f:
        return json.load(f)


class Gated(torch.nn.Module):
    def __init__(self, head_dims=False):
        super().__init__()
        self.spec = TINY
        self.gates = EncoderGates(TINY, head_dims=head_dims)


# ---- interpolation ----------------------------------------------------------------------------------------------
def test_grid_is_exact_on_bilinear_terms_and_differentiable():
    """A grid of f(x, y) = 2 + 3x + 5y + 7xy (the shape of T * C_in * C_out cost terms) interpolates exactly
    between its points, with the exact gradient; below the lowest point it extrapolates, at the top it clamps."""
    xs, ys = torch.tensor([1.0, 4.0, 8.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    f = lambda x, y: 2 + 3 * x + 5 * y + 7 * x * y  # noqa: E731
    grid = lt.Grid(("in", "out"), [xs, ys], f(xs.view(-1, 1), ys.view(1, -1)))
    x = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    v = grid(x, y)
    v.backward()
    assert float(v.detach()) == pytest.approx(f(2.5, 1.5))
    assert float(x.grad) == pytest.approx(3 + 7 * 1.5) and float(y.grad) == pytest.approx(5 + 7 * 2.5)
    assert float(grid(0.5, 1.0)) == pytest.approx(f(0.5, 1.0))  # below 1: the first cell, extended
    assert float(grid(9.0, 2.0)) == pytest.approx(f(8.0, 2.0))  # above the top: clamped


# ---- the measure ------------------------------------------------------------------------------------------------
def test_measure_at_masks_is_the_tables_interpolation_and_differentiable_under_probs(table):
    """At 0/1 masks the measure is 1 - predict(kept) / predict(dense), where predict is the grid entries summed
    (a mask that keeps grid sizes reads the grids' own numbers); under keep probabilities it has a gradient on
    every gate group."""
    g = table.grids
    conv_full = [c for c, _, _ in TINY.conv_layers]
    # grid points of the tiny table: 0.5 of 4 heads; 0.5 of 768 units, timed at an odd width (385) as slim models are
    heads, ffn = 2, TINY.ffn_dims[0] // 2 + 1
    masks = EncoderGates(TINY).deterministic()
    for m in masks.conv + [masks.hidden]:
        m.fill_(1.0)
    for m in masks.heads:
        m.fill_(1.0)[heads:] = 0
    for m in masks.ffn:
        m.fill_(1.0)[ffn:] = 0
    L = TINY.num_layers
    cnn = sum(float(g[f"conv{i}"].seconds[-1] if i == 0 else g[f"conv{i}"].seconds[-1, -1]) for i in range(len(conv_full)))
    rest = float(g["front"].seconds[-1, -1]) + L * (
        float(g["attention"].seconds[-1, 1, -1]) + float(g["ffn"].seconds[-1, 1]) - float(g["layer_base"].seconds[-1]))
    kept = cost_model.counts(TINY, masks)
    assert float(table.predict(kept)) == pytest.approx(table.cnn_scale * cnn + table.scale * rest + table.offset, rel=1e-9)
    assert [int(v) for v in g["attention"].points[1]] == [0, 2, 4] and int(g["ffn"].points[1][1]) == ffn
    dense = cost_model.cost(TINY, None, 1.0)
    s = MEASURES["latency"](cost_model.cost(TINY, masks, 1.0), dense, latency_table=table)["latency"]
    assert float(s) == pytest.approx(1 - float(table.predict(kept)) / float(table.predict(dense.counts)))
    assert float(s) < 1  # (a pruned model may read slower than the dense one: odd widths, dense_scale)

    for head_dims in (False, True):
        m = Gated(head_dims)
        for p in m.gates.parameters():
            p.data.normal_(0.0, 1.0)
        s = MEASURES["latency"](cost_model.cost(TINY, m.gates.keep_probs(), 1.0), dense, latency_table=table)["latency"]
        s.backward()
        for name in m.gates.enabled():
            grads = [p.grad for n, p in m.gates.named_parameters() if n.startswith(name + ".")]
            assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), name
            assert any(gr.abs().sum() > 0 for gr in grads), name


def test_latency_measure_needs_its_table():
    with pytest.raises(ValueError, match="needs criterion.latency_table"):
        constraint_from_config(OmegaConf.structured(SparsityConfig(sparsity_mode="latency", target_sparsity=0.3)))
    dense = cost_model.cost(TINY, None, 1.0)
    with pytest.raises(ValueError, match="needs criterion.latency_table"):
        MEASURES["latency"](dense, dense)


def _drive(c, steps=200):
    torch.manual_seed(0)
    m = Gated()
    opt = HJPruneAdamW(OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-4], gate_lr=0.05, lambda_lr=0.05)),
                       list(m.parameters()) + list(c.parameters()))
    for step in range(steps):
        penalty, logs = c(m, step)
        opt.zero_grad()
        penalty.backward()
        opt.step()
    return logs


def test_constraint_alone_reaches_a_latency_target_in_ms(smooth_path):
    """criterion.target_latency_ms: converted to 1 - ms / dense predicted ms, then reached; the log shows the
    expected and the deterministic masks' latency in ms beside the MACs."""
    table = lt.load(smooth_path)
    dense_ms = 1000 * float(table.predict(cost_model.counts(TINY)))
    cfg = SparsityConfig(sparsity_mode="latency", latency_table=smooth_path, target_latency_ms=0.7 * dense_ms,
                         sparsity_warmup_updates=40)
    c = constraint_from_config(OmegaConf.structured(cfg))
    logs = _drive(c)
    assert logs["target"] == pytest.approx(0.3)
    assert logs["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert logs["mask_sparsity"] == pytest.approx(0.3, abs=0.03)
    assert logs["exp_latency_ms"] == pytest.approx(0.7 * dense_ms, rel=0.03)
    assert logs["mask_latency_ms"] == pytest.approx(0.7 * dense_ms, rel=0.05)
    assert "exp_gmacs" in logs

    too_slow = SparsityConstraint("latency", {}, 0, 1.0, table, target_latency_ms=2 * dense_ms)
    with pytest.raises(ValueError, match="below the dense model's predicted"):
        too_slow(Gated(), 0)


def test_a_table_of_another_family_is_refused(table):
    other = PRESETS["wav2vec2_base"]
    with pytest.raises(ValueError, match="measured for head_dim=48"):
        lt.expected_latency(other, None, table)
    with pytest.raises(ValueError, match="CNN kernels/strides"):
        lt.expected_latency(PRESETS["tiny"].__class__.uniform([(128, 10, 5)], 192, 2, 4, 768, 32, 4), None, table)


# ---- the file: errors and warnings ------------------------------------------------------------------------------
def _one_line(e):
    assert "\n" not in str(e.value)
    return str(e.value)


def test_the_dense_model_alone_is_predicted_by_its_own_measurement(tmp_path, table_path):
    """dense_scale (the dense model's measured over its fitted time) scales the dense model's prediction, per
    component, and nothing else: not a model with one unit pruned, not expected counts under keep probabilities
    (even at 1)."""
    measured = lt.load(table_path)
    cal = measured.data["calibration"]
    assert 0.85 <= cal["dense_scale"] <= 1.15  # beyond 15 % either way is noise (clamped)
    assert float(measured.predict(cost_model.counts(TINY))) == pytest.approx(cal["models"]["dense"]["predicted_s"])
    data = _data(table_path)
    for scale in (1.0, 0.8):
        data["calibration"]["dense_scale"] = scale
        (tmp_path / f"d{scale}.json").write_text(json.dumps(data))
    one, scaled = lt.load(str(tmp_path / "d1.0.json")), lt.load(str(tmp_path / "d0.8.json"))
    dense = cost_model.counts(TINY)
    parts1, parts8 = lt.components(one, dense), lt.components(scaled, dense)
    assert all(float(parts8[k]) == pytest.approx(0.8 * float(parts1[k])) for k in parts1)
    masks = EncoderGates(TINY).deterministic()
    for m in masks.conv + masks.heads + masks.ffn + [masks.hidden]:
        m.fill_(1.0)
    assert float(scaled.predict(cost_model.counts(TINY, masks))) == pytest.approx(0.8 * float(one.predict(dense)))
    masks.ffn[0][0] = 0.0
    pruned = cost_model.counts(TINY, masks)
    assert float(scaled.predict(pruned)) == pytest.approx(float(one.predict(pruned)))
    expected = cost_model.counts(TINY, EncoderGates(TINY).keep_probs())  # with a gradient: never the dense model
    assert float(scaled.predict(expected)) == pytest.approx(float(one.predict(expected)))


def test_missing_or_malformed_table_is_one_line_naming_the_file(tmp_path, table_path):
    missing = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError) as e:
        lt.load(missing)
    assert missing in _one_line(e)
    cases = {"garbage.json": "{not json", "list.json": "[1, 2]"}
    data = _data(table_path)
    del data["components"]["ffn"]
    cases["no_ffn.json"] = json.dumps(data)
    data = _data(table_path)
    data["components"]["attention"]["seconds"] = data["components"]["attention"]["seconds"][:1]
    cases["shape.json"] = json.dumps(data)
    data = _data(table_path)
    data["backend"] = "tpu"
    cases["backend.json"] = json.dumps(data)
    data = _data(table_path)
    data["calibration"]["dense_scale"] = -1
    cases["dense_scale.json"] = json.dumps(data)
    expect = {"garbage.json": "invalid JSON", "list.json": "not a JSON object", "no_ffn.json": "missing components ffn",
              "shape.json": "seconds of shape", "backend.json": "backend 'tpu'", "dense_scale.json": "dense_scale -1"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError) as e:
            lt.load(str(path))
        msg = _one_line(e)
        assert str(path) in msg and expect[name] in msg and "expected" in msg, msg


def test_a_table_of_another_machine_or_backend_is_named_in_a_warning(tmp_path, table_path, table, caplog):
    assert lt.foreign(table) is None and lt.foreign(table, "pytorch") is None  # measured here
    assert "not onnxruntime_int8" in lt.foreign(table, "onnxruntime_int8")
    data = _data(table_path)
    data["machine"] = {"hostname": "elsewhere", "cpu": "Imaginary CPU 9000", "cores": 256}
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        msg = lt.warn_if_foreign(lt.load(str(path)), "onnxruntime")
    assert "Imaginary CPU 9000" in msg and "256 cores" in msg and "pytorch" in msg and str(path) in msg
    assert msg in caplog.text
    with caplog.at_level("WARNING"):
        constraint_from_config(OmegaConf.structured(SparsityConfig(sparsity_mode="latency", target_sparsity=0.3,
                                                                   latency_table=str(path))))
    assert caplog.text.count("Imaginary CPU 9000") == 2


# ---- the commands -----------------------------------------------------------------------------------------------
def test_grid_widths_are_odd_inside_and_dense_at_the_top():
    """Slim models have the odd widths learned gates leave (slower than round ones): a table's inner width points
    (CNN channels, hidden, FFN units) are odd, its top the dense size; heads (whole heads) stay round counts."""
    from hjprune_fairseq.core.presets import PRESETS
    from hjprune_fairseq.tools.latency.measure import TableConfig, axis_points

    spec = PRESETS["wav2vec2_base"]
    axes = axis_points(spec, TableConfig())
    assert axes["ffn"]["units"] == [0, 769, 1537, 2305, 3072] and axes["ffn"]["hidden"] == [385, 577, 768]
    assert axes["attention"]["heads"] == [0, 3, 6, 9, 12]
    assert axes["conv1"]["in"] == [65, 129, 257, 385, 512] and axes["front"]["conv_dim"] == [65, 129, 257, 385, 512]


def test_hjprune_latency_table_writes_a_valid_table_and_keeps_an_existing_one(tmp_path, capsys):
    from hjprune_fairseq.cli.latency_table import main

    out = str(tmp_path / "t.json")
    args = [out, "--preset", "tiny", "--seconds", "0.5", "--threads", "1", "--repeats", "1", "--warmup", "0",
            "--calibration", "2", "--conv-grid", "0.5,1", "--hidden-grid", "1", "--heads-grid", "0,1", "--dims-grid",
            "1", "--ffn-grid", "0,1"]
    threads = torch.get_num_threads()
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # the process's thread count is left as it was
    t = lt.load(out)
    assert t.backend == "pytorch" and t.threads == 1 and t.data["family"] == "tiny"
    assert set(t.data["versions"]) >= {"torch"} and t.data["machine"] == lt.machine_info()
    assert set(t.data["calibration"]["models"]) == {"dense", "cal_whole_0", "cal_fine_1"}  # random slim shapes
    assert all(v > 0 for v in t.data["calibration"]["models"]["dense"].values())
    assert "dense measured" in capsys.readouterr().out
    before = open(out).read()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and open(out).read() == before
    assert main(args[:1] + ["--backend", "cuda", "--dtype", "float32"] + args[1:] + ["--overwrite"]) == 2
    assert "cuda" in capsys.readouterr().err


def test_hjprune_cost_prints_predicted_latency_per_component(table_path, capsys):
    from hjprune_fairseq.cli.cost import main

    assert main(["--preset", "tiny", "--latency-table", table_path]) == 0
    out = capsys.readouterr().out
    assert "predicted latency" in out
    for name in ("cnn", "front", "attention", "ffn", "layer_norms", "constant", "total"):
        assert f"\n{name} " in out, name
    assert main(["--preset", "tiny", "--latency-table", table_path, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["latency"]
    assert r["ms"]["total"] == pytest.approx(sum(v for k, v in r["ms"].items() if k != "total"))
    assert r["ms"]["total"] == pytest.approx(r["dense_ms"])
    assert main(["--preset", "wav2vec2_base", "--latency-table", table_path]) == 2  # another family: one line
    assert "measured for head_dim" in capsys.readouterr().err


def test_latency_bench_runs_at_toy_scale(table, smooth_path):
    from hjprune_fairseq.tools.latency import bench

    r = bench.predict([table], shapes=2, repeats=1, warmup=0)[0]
    assert {s["kind"] for s in r["shapes"]} == {"whole_heads", "fine_grained"}
    assert all(s["measured_ms"] > 0 and s["table_ms"] > 0 for s in r["shapes"])
    assert r["all"]["macs_fit"]["worst_abs_pct"] >= 0 and r["dense"]["measured_ms"] > 0
    # anchored: times how much slower the table's own calibration encoders ran here than it predicts them
    a = r["anchor"]
    n = table.data["config"]["calibration"]
    assert n > 0 and len(a["encoders"]) == len(a["measured_ms"]) == len(a["table_ms"]) == n
    assert all(e.startswith("cal_") for e in a["encoders"]) and all(m > 0 for m in a["measured_ms"])
    p, m = torch.tensor(a["table_ms"]), torch.tensor(a["measured_ms"])
    assert a["factor"] == pytest.approx(float((p * m).sum() / (p * p).sum()))
    for s in r["shapes"] + [r["dense"]]:
        assert s["anchored_ms"] == pytest.approx(s["table_ms"] * a["factor"])
    t = bench.target(lt.load(smooth_path), goal=0.3, steps=150, repeats=1, warmup=0, secant_steps=1)
    assert t["latency"]["predicted_reduction"] == pytest.approx(0.3, abs=0.04)
    assert t["macs"]["predicted_ms"] == pytest.approx(t["latency"]["predicted_ms"], rel=0.15)
    assert t["dense"]["measured_ms"] > 0


# ---- several tables from one export of each graph --------------------------------------------------------------
class FakeOnnx:
    """Stands in for torch's ONNX exporter, the int8 quantisation and onnxruntime (``convert.onnx_export``): it
    records every export, quantisation and session (file, threads), writes a placeholder file, and its sessions
    check their feed's names. What is checked is which graph is exported, quantised and opened how often."""

    def __init__(self, monkeypatch):
        from hjprune_fairseq.convert import onnx_export

        self.exports, self.quantised, self.sessions = [], [], []
        fake = self

        def export_fixed(module, inputs, names, path, opset=None):
            fake._write("fixed", path, names)

        def export_graph(graph, path, source, metadata=None, opset=None):
            fake._write("whole", path, ["source", "padding_mask"])

        def quantize_int8(fp32, int8, op_types=None):
            assert os.path.isfile(fp32)
            fake.quantised.append(fp32)
            with open(int8, "w") as f:
                f.write(open(fp32).read())

        class Session:
            def __init__(self, path, threads):
                self.names = open(path).read().split()

            def run(self, outputs, feed):
                assert sorted(feed) == sorted(self.names)
                return []

        def session(path, threads=0, spinning=True):
            fake.sessions.append((path, threads))
            return Session(path, threads)

        for name, f in (("export_fixed", export_fixed), ("export_graph", export_graph), ("quantize_int8", quantize_int8),
                        ("session", session)):
            monkeypatch.setattr(onnx_export, name, f)

    def _write(self, kind, path, names):
        assert not os.path.exists(path)
        self.exports.append((kind, path))
        with open(path, "w") as f:
            f.write(" ".join(names))


TINY_GRID = ["--preset", "tiny", "--seconds", "0.5", "--repeats", "1", "--warmup", "0", "--calibration", "1",
             "--conv-grid", "0.5,1", "--hidden-grid", "1", "--heads-grid", "0,1", "--dims-grid", "1", "--ffn-grid", "0,1"]


def test_latency_tables_of_two_backends_and_threads_export_each_graph_once(tmp_path, table_path, monkeypatch, capsys):
    """--backend onnxruntime onnxruntime_int8 --threads 1 2: four tables, each as a table measured alone records it;
    each probe and calibration encoder exported once and quantised once, then opened once per table with that
    table's threads; existing tables refused before anything is exported; an OUT without {threads} refused."""
    from hjprune_fairseq.cli.latency_table import main
    from hjprune_fairseq.tools.latency.measure import TableConfig, axis_points

    fake = FakeOnnx(monkeypatch)
    out = str(tmp_path / "tabs" / "w_{backend}_t{threads}.json")
    args = [out, "--backend", "onnxruntime", "onnxruntime_int8", "--threads", "1", "2", "--export-jobs", "1"] + TINY_GRID
    assert main(args) == 0
    printed = capsys.readouterr().out
    alone = _data(table_path)  # the fixture: one pytorch table measured alone
    runs = [(b, t) for b in ("onnxruntime", "onnxruntime_int8") for t in (1, 2)]
    for b, t in runs:
        path = out.format(backend=b, threads=t)
        table = lt.load(path)
        assert (table.backend, table.threads, table.data["dtype"]) == (b, t, "float32")
        assert (table.data["config"]["backend"], table.data["config"]["threads"]) == (b, t)
        assert set(table.data) == set(alone) and set(table.data["config"]) == set(alone["config"])
        assert set(table.data["versions"]) == {"torch", "onnxruntime"} and table.data["machine"] == alone["machine"]
        assert f"{path}: tiny on {b} (float32, {t} threads" in printed
    cfg = TableConfig(preset="tiny", conv_grid=(0.5, 1.0), hidden_grid=(1.0,), heads_grid=(0.0, 1.0), dims_grid=(1.0,),
                      ffn_grid=(0.0, 1.0), calibration=1)
    probes = sum(len(list(itertools.product(*a.values()))) for a in axis_points(TINY, cfg).values())
    fp32 = [p for _, p in fake.exports]
    assert len(fp32) == len(set(fp32)) == probes + 4  # + the dense and one slim encoder, and each one's CNN
    assert [k for k, _ in fake.exports].count("whole") == 2
    assert sorted(fake.quantised) == sorted(fp32)  # each quantised once
    opened = {}
    for path, threads in fake.sessions:
        opened.setdefault(path, []).append(threads)
    int8 = [p[:-len(".onnx")] + "_int8.onnx" for p in fp32]
    assert sorted(opened) == sorted(fp32 + int8)
    assert all(sorted(t) == [1, 2] for t in opened.values())  # once per table, with its threads
    assert not os.path.exists(os.path.dirname(fp32[0]))  # the graphs' folder is removed

    before = len(fake.exports)
    assert main(args) == 2
    err = _one_line_err(capsys)
    assert "exists" in err and out.format(backend="onnxruntime", threads=1) in err
    assert len(fake.exports) == before  # refused before anything is exported
    assert main([out.replace("{threads}", "x")] + args[1:]) == 2
    assert "{threads}" in _one_line_err(capsys) and len(fake.exports) == before


def _one_line_err(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def _as_table(tmp_path, table_path, backend, threads, **changes):
    data = {**_data(table_path), "backend": backend, "threads": threads, **changes}
    path = tmp_path / f"{backend}_{threads}_{len(changes)}.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_latency_bench_predict_over_tables_exports_each_shape_once(tmp_path, table_path, monkeypatch, capsys):
    """predict T1 T2: the same random shapes timed on each table's backend and threads, each shape exported once
    and quantised once; one JSON list of per-table results. Tables of another input length: one line."""
    from hjprune_fairseq.cli.latency_bench import main

    fake = FakeOnnx(monkeypatch)
    tables = [_as_table(tmp_path, table_path, "onnxruntime", 2), _as_table(tmp_path, table_path, "onnxruntime_int8", 1)]
    assert main(["predict", *tables, "--shapes", "2", "--repeats", "1", "--warmup", "0", "--export-jobs", "1"]) == 0
    text = capsys.readouterr().out
    results = json.loads(text.strip().splitlines()[-1])
    assert [(r["backend"], r["threads"]) for r in results] == [("onnxruntime", 2), ("onnxruntime_int8", 1)]
    assert all(r["all"]["shapes"] == 2 for r in results) and all(t in text for t in tables)
    fp32 = [p for _, p in fake.exports]
    # the two shapes, the dense encoder and the tables' one calibration encoder (the anchor of the anchored
    # prediction; the same for both tables, exported once)
    assert [k for k, _ in fake.exports] == ["whole"] * 4 and sorted(fake.quantised) == sorted(fp32)
    assert sorted(fake.sessions) == sorted([(p, 2) for p in fp32] + [(p[:-5] + "_int8.onnx", 1) for p in fp32])

    other = _as_table(tmp_path, table_path, "onnxruntime", 1, seconds=1.0)
    assert main(["predict", tables[0], other, "--shapes", "2", "--export-jobs", "1"]) == 2
    assert "expected tables of one family and input length" in _one_line_err(capsys) and len(fake.exports) == 4


def test_graphs_are_exported_in_worker_processes_before_timing(tmp_path):
    """--export-jobs 2: two probes exported by the real exporter in two processes; each file runs in onnxruntime
    as the probe does in PyTorch; the temporary folder is gone afterwards."""
    pytest.importorskip("onnxruntime")
    from hjprune_fairseq.tools.latency.graphs import Backend, Graph, exported

    graphs = [Graph(f"conv6@{c}", "probe", TINY, 0.5, 0, "conv6", (c, c)) for c in (8.0, 16.0)]
    with exported(graphs, ["onnxruntime"], jobs=2) as files:
        folder = os.path.dirname(files[graphs[0].key]["onnxruntime"])
        for g in graphs:
            module, inputs = g.build()
            onnx_out = Backend("onnxruntime", 1).call(g, files)(0)
            with torch.no_grad():
                assert torch.allclose(torch.from_numpy(onnx_out[0]), module(*inputs), atol=1e-4)
    assert not os.path.exists(folder)


def test_an_export_folder_is_kept_and_reused_and_an_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    """--export-dir: graphs exported and quantised once into the folder, named by their recipe; a later run with
    the same recipes exports nothing, a changed recipe is exported anew; what else is in the folder stays; an
    export that fails leaves no file to reuse; a file where the folder should be is one line."""
    from hjprune_fairseq.tools.latency.graphs import Graph, exported

    fake = FakeOnnx(monkeypatch)
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / "mine.onnx").write_text("the user's")
    graphs = [Graph(f"conv6@{c}", "probe", TINY, 0.5, 0, "conv6", (c, c)) for c in (8.0, 16.0)]
    with exported(graphs, ["onnxruntime", "onnxruntime_int8"], 1, str(folder)) as files:
        first = {k: dict(v) for k, v in files.items()}
    assert len(fake.exports) == 2 and len(fake.quantised) == 2
    assert all(os.path.isfile(f) and os.path.dirname(f) == str(folder) for v in first.values() for f in v.values())
    assert len({f for v in first.values() for f in v.values()}) == 4
    with exported(graphs, ["onnxruntime_int8"], 1, str(folder)) as files:
        assert files == {k: {"onnxruntime_int8": v["onnxruntime_int8"]} for k, v in first.items()}
    assert len(fake.exports) == 2 and len(fake.quantised) == 2  # reused
    other = Graph("conv6@12.0", "probe", TINY, 0.5, 0, "conv6", (12.0, 12.0))
    with exported([graphs[0], other], ["onnxruntime"], 1, str(folder)) as files:
        assert files[graphs[0].key] == {"onnxruntime": first[graphs[0].key]["onnxruntime"]}
    assert len(fake.exports) == 3 and (folder / "mine.onnx").read_text() == "the user's"

    from hjprune_fairseq.convert import onnx_export

    def broken(module, inputs, names, path, opset=None):
        with open(path, "w") as f:
            f.write("half")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_export, "export_fixed", broken)
    before = sorted(os.listdir(folder))
    with pytest.raises(RuntimeError, match="exporter failed"):
        with exported([Graph("conv6@4.0", "probe", TINY, 0.5, 0, "conv6", (4.0, 4.0))], ["onnxruntime"], 1, str(folder)):
            pass
    assert sorted(os.listdir(folder)) == before
    with pytest.raises(NotADirectoryError, match="mine.onnx"):
        with exported(graphs, ["onnxruntime"], 1, str(folder / "mine.onnx")):
            pass


# ---- fairseq: a prune stage with mode=latency -------------------------------------------------------------------
def test_prune_stage_with_mode_latency_logs_latency(tmp_path, w2v_pretrained, fixture_latency_table):
    corpus = make_letter_corpus(str(tmp_path / "data"), {"train": 4, "valid": 2})
    args = {"common.user_dir": USER_DIR, "task.data": corpus, "model.w2v_path": w2v_pretrained,
            "checkpoint.save_dir": str(tmp_path / "ck"), "optimization.max_update": 4, "dataset.max_tokens": 64000,
            "common.log_interval": 1, "criterion.sparsity_warmup_updates": 2, "dataset.validate_interval_updates": 0,
            "mode": "latency", "criterion.latency_table": fixture_latency_table}
    r = hydra_train(os.path.join(EXAMPLES, "tiny"), "prune", [f"{k}={v}" for k, v in args.items()], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-4000:]
    log = r.stdout + r.stderr
    for key in ("exp_latency_ms=", "mask_latency_ms=", "exp_gmacs=", "mask_sparsity="):
        assert key in log, key
    assert os.path.exists(tmp_path / "ck" / "checkpoint_last.pt")
    # export meets the run's latency budget, measured with the run's table (criterion.latency_table)
    from hjprune_fairseq.convert.slim_export import export_slim

    info = export_slim(str(tmp_path / "ck" / "checkpoint_last.pt"), str(tmp_path / "slim.pt"))
    fit = info["budget"]
    assert fit is not None and set(fit.targets) == {"latency"} and fit.targets["latency"] > 0
    assert abs(fit.delivered["latency"] - fit.targets["latency"]) < abs(fit.before["latency"] - fit.targets["latency"]) + 1e-9


def test_hjprune_bench_prints_predicted_beside_measured(table_path, capsys):
    from hjprune_fairseq.cli.bench import main

    threads = torch.get_num_threads()
    try:
        assert main(["--preset", "tiny", "--seconds", "0.5", "--macs-sparsity", "0.4", "--repeats", "1", "--warmup", "0",
                     "--threads", "1", "--fine-grained", "--latency-table", table_path]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "predicted s" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-3:]}
    assert set(rows) == {"dense", "slim", "fine_grained"}
    assert all(float(r[2]) > 0 and r[4] == table_path for r in rows.values())
    assert "WARNING" not in out  # the table's machine, backend, seconds and threads


def test_latency_bench_compare_times_checkpoints_with_their_spread(tmp_path, w2v_pretrained, fixture_latency_table):
    from test_slim import pruned_model

    from fairseq_fixtures import save_like_trainer
    from hjprune_fairseq.cli.latency_bench import format_compare
    from hjprune_fairseq.convert.slim_export import export_slim
    from hjprune_fairseq.tools.latency import bench

    gated = save_like_trainer(pruned_model(w2v_pretrained), tmp_path / "gated.pt")
    slim = str(tmp_path / "slim.pt")
    export_slim(gated, slim)
    r = bench.compare(lt.load(fixture_latency_table), [str(gated), slim], repeats=3, warmup=1)
    parent, child = r["models"]
    assert parent["measured_speedup"] == 1.0 and parent["predicted_speedup"] == 1.0
    assert child["predicted_speedup"] == pytest.approx(parent["predicted_ms"] / child["predicted_ms"])
    assert child["gmacs"] < parent["gmacs"] and child["predicted_ms"] < parent["predicted_ms"] / lt.load(
        fixture_latency_table).dense_scale  # below the dense model's time by the slim shapes' fit
    for m in r["models"]:
        assert m["min_ms"] <= m["q1_ms"] <= m["median_ms"] <= m["q3_ms"] <= m["max_ms"]
    assert "slim.pt" in format_compare(r)


def test_latency_bench_compare_reads_the_table_first(tmp_path, capsys):
    """compare TABLE PARENT.pt SLIM.pt, as the README writes it: TABLE is the first argument, not the last."""
    from hjprune_fairseq.cli.latency_bench import main

    table = str(tmp_path / "table.json")
    assert main(["compare", table, str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 2
    assert f"{table}: no such latency table" in capsys.readouterr().err


def test_a_table_times_every_probe_and_calibration_encoder_in_one_set_of_turns(monkeypatch):
    """A shared machine's speed drifts within minutes: the whole table (every component's grid and the encoders
    its scales are fitted to) is one set of turns, so a drift hits every component alike. A machine twice as slow
    for the calibration's encoders as for the probes would otherwise double the scale; here the factor a slowdown
    applies to every timing of a round cancels out of the table's predictions of ratios."""
    from hjprune_fairseq.tools.latency import measure

    seen = []
    real = measure.median_times

    def recording(calls, repeats, warmup):
        seen.append(sorted(calls))
        return real(calls, repeats, warmup)

    monkeypatch.setattr(measure, "median_times", recording)
    cfg = measure.TableConfig(preset="tiny", seconds=0.25, threads=1, repeats=1, warmup=0, calibration=2,
                              conv_grid=(0.5, 1.0), hidden_grid=(1.0,), heads_grid=(0.0, 1.0), dims_grid=(1.0,),
                              ffn_grid=(0.0, 1.0))
    table = measure.measure_table(cfg)
    probes = [g.key for gs in measure.component_graphs(TINY, cfg).values() for g in gs]
    encoders = [g.key for g in measure.calibration_graphs(TINY, cfg)[1]]
    assert len(seen) == 1 and seen[0] == sorted(probes + encoders)
    assert len(encoders) == 6 and set(table["calibration"]["models"]) == {"dense", "cal_whole_0", "cal_fine_1"}


def test_a_raise_is_named_in_a_warning_when_it_is_large_not_when_it_is_the_jitter_of_a_small_probe(caplog):
    """A point raised by 30 % and more of itself and by at least a millisecond is a busy machine, named in a
    warning; a sub-millisecond probe raised by 0.13 ms (the demo's tiny table on an idle machine) is not."""
    from hjprune_fairseq.tools.latency.measure import Graph, grid_entry

    axes = {"hidden": [97, 192], "heads": [0, 4]}
    graphs = [Graph(f"attention@{h},{n}", "probe", TINY, 1.0, 0, "attention", (h, n))
              for h in (97, 192) for n in (0, 4)]

    def warned(ms):
        caplog.clear()
        with caplog.at_level("WARNING"):
            entry = grid_entry({g.key: t / 1000 for g, t in zip(graphs, ms)}, graphs, axes, "attention")
        assert entry["seconds"][1][0] == max(ms[0], ms[2]) / 1000  # raised either way
        return "faster than a smaller one" in caplog.text

    assert not warned([0.27, 1.7, 0.14, 1.9])  # +0.13 ms, 93 %
    assert warned([27.0, 170.0, 14.0, 190.0])  # +13 ms, 93 %
    assert not warned([27.0, 170.0, 24.0, 190.0])  # +3 ms, 12 %


def test_a_grid_point_timed_faster_than_a_smaller_one_is_raised_except_along_dims():
    """Noise (a busy machine) never makes the table predict a smaller model slower; uneven head dims can truly be
    slower than whole heads (one attention call per size), so the dims axis keeps its timings."""
    from hjprune_fairseq.tools.latency.measure import monotone

    t = torch.tensor([[[1.0, 0.8], [3.0, 2.0]], [[0.9, 1.5], [2.5, 4.0]]], dtype=torch.float64)  # hidden, heads, dims
    out, raised = monotone(t, ["hidden", "heads", "dims"])
    assert torch.equal(out, torch.tensor([[[1.0, 0.8], [3.0, 2.0]], [[1.0, 1.5], [3.0, 4.0]]], dtype=torch.float64))
    assert raised == pytest.approx(0.2)  # 2.5 -> 3.0
    for d in (0, 1):  # non-decreasing along the monotone axes, the dims axis as measured
        assert (out.diff(dim=d) >= 0).all()
    assert out[0, 0, 1] < out[0, 0, 0]
    same, none = monotone(out, ["hidden", "heads", "dims"])
    assert torch.equal(same, out) and none == 0.0


def test_a_table_timed_with_another_allocator_is_named_in_a_warning(tmp_path, table_path, monkeypatch):
    """How the process allocates (torch's huge pages, glibc's malloc tunables, a preloaded allocator) changes large
    tensors' time several-fold: a table timed with another allocator environment is named; a table that does not
    record it (made before it was recorded) is not."""
    data = _data(table_path)
    for k in lt.ALLOCATOR_ENV:
        monkeypatch.delenv(k, raising=False)
    data["machine"]["allocator"] = {**{k: "" for k in lt.ALLOCATOR_ENV}, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps(data))
    why = lt.foreign(lt.load(str(path)))
    assert "timed with GLIBC_TUNABLES='glibc.malloc.trim_threshold=1', this process has GLIBC_TUNABLES=''" in why
    assert "THP_MEM_ALLOC_ENABLE" not in why  # only what differs
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert lt.foreign(lt.load(str(path))) is None
    del data["machine"]["allocator"]  # a table from before it was recorded
    path.write_text(json.dumps(data))
    assert lt.foreign(lt.load(str(path))) is None
