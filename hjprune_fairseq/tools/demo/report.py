"""The demo's report: report.json, PNG plots (score vs GMACs, kept units per layer, latency) and
report.md, from the models the pipeline evaluated and timed."""

import json
import os
from typing import Dict, List, Optional

from hjprune_manifests import output_dir

from .pipeline import DECODER, DECODING, METRIC, TOOL, Budget

DOMAIN = ("The corpus is speech synthesised by eSpeak NG only: these figures show the pipeline's mechanics and "
          "the relative cost of pruning, not accuracy on real speech (models trained on it fail on other voices "
          "and engines).")


def write_report(out: str, task: str, result: Dict, timings: Dict[str, float], budget: Budget) -> None:
    """OUT/report.json, OUT/METRIC_vs_gmacs.png, OUT/kept_per_layer.png, OUT/latency.png, OUT/report.md,
    each recorded in OUT's marker before it is written (a user's file of that name is refused first)."""
    metric = METRIC[task]
    models = result["models"]
    for name in ("report.json", f"{metric}_vs_gmacs.png", "kept_per_layer.png", "latency.png", "report.md"):
        output_dir.own(out, TOOL, name)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"task": task, "budget": budget.__dict__, "precision": result.get("precision"), "timings_s": timings,
                   "models": models}, f, indent=2)
    plot(out, metric, models)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(task, metric, models, timings, budget, result.get("precision")))


def plot(out: str, metric: str, models: List[Dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for line in dict.fromkeys(_line(m) for m in models):  # a ladder's rungs apart from the runs of the same mode
        pts = sorted((m["gmacs"], m[metric]) for m in models if _line(m) == line)
        ax.plot(*zip(*pts), "o-" if len(pts) > 1 else "*", label=line, markersize=8)
    ax.set_xlabel("GMACs (10 s input)")
    ax.set_ylabel("WER (%)" if metric == "wer" else "accuracy (%)")
    ax.set_title(f"{metric.upper() if metric == 'wer' else 'Accuracy'} vs computation (cf. paper Fig. 1/2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{metric}_vs_gmacs.png"), dpi=100)

    pruned = [m for m in models if m["mode"] != "none"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(axes, ("conv_channels", "heads", "ffn_units"), ("CNN channels", "attention heads", "FFN units")):
        for m in [models[0]] + pruned:
            ax.plot(range(1, len(m["layers"][key]) + 1), m["layers"][key], "o-", label=m["name"])
        ax.set_title(f"kept {title} per layer (cf. Fig. 5)")
        ax.set_xlabel("layer")
        ax.set_ylim(bottom=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "kept_per_layer.png"), dpi=100)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([m["name"] for m in models], [m["latency_s"] for m in models])
    ax.set_ylabel("CPU latency, 10 s input (s)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=100)
    plt.close("all")


def _line(m: Dict) -> str:
    return m["mode"] + (" (ladder)" if m.get("ladder") else "")


def _s(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _fractions(targets: Dict[str, float], digits: int) -> str:
    """0.400 for a measure's one quantity; cnn 0.300, transformer 0.100 for several."""
    if len(targets) == 1:
        return f"{next(iter(targets.values())):.{digits}f}"
    return ", ".join(f"{q} {t:.{digits}f}" for q, t in targets.items())


def budget_rows(models: List[Dict]) -> List[str]:
    """report.md's rows of the pruned models: measure, how it was pruned, target and delivered sparsity."""
    rows = []
    for m in models:
        if "target" not in m:
            continue
        ladder = m.get("ladder")
        by = f"ladder `{ladder['run']}`, rung {ladder['rung']} of {ladder['rungs']}" if ladder else "a run of its own"
        gap = max(abs(m["delivered"][q] - t) for q, t in m["target"].items())
        rows.append(f"| {m['name']} | {m['measure']} | {by} | {_fractions(m['target'], 3)} | "
                    f"{_fractions(m['delivered'], 4)} | {100 * gap:.2f} |")
    return rows


def markdown(task: str, metric: str, models: List[Dict], timings: Dict[str, float], budget: Budget,
             precision: Optional[Dict] = None) -> str:
    """report.md: the table of models (the first is the unpruned baseline of the speed-ups), notes on
    the baselines, the plots and the stage times."""
    base = models[0]
    rows = [f"| {m['name']} | {m['mode']} | {m['gmacs']:.3f} | {m['params']:,} | {m['macs_sparsity']:.3f} | "
            f"{m[metric]:.2f} | {m[metric + '_seen']:.2f} | {m[metric + '_unseen']:.2f} | {m['latency_s']:.3f} | "
            f"{_s(m.get('predicted_latency_s'))} | {base['latency_s'] / m['latency_s']:.2f}x | "
            f"{_x(m.get('target_speedup'))} |" for m in models]
    name = "WER %" if metric == "wer" else "accuracy %"
    notes = []
    if any(m["mode"] == "parp" for m in models):
        notes += ["PARP (unstructured): `params` counts its nonzero encoder weights, set to match macs_40 (its "
                  "target: that size sparsity). The model "
                  "stays dense, so its GMACs and its latency are those of the unpruned model.", ""]
    if any(m["mode"] == "task_agnostic" for m in models):
        notes += ["distill_40 (task-agnostic): the pre-trained encoder pruned without labels by distillation from "
                  "itself (fine-grained heads, straight-through gates, 40 % fewer MACs), then fine-tuned like the "
                  "unpruned model.", ""]
    voices = list(base[metric + "_per_voice"])
    per_voice = [f"| {m['name']} | " + " | ".join(f"{m[metric + '_per_voice'][v]:.2f}" for v in voices) + " |"
                 for m in models]
    md = [f"# hjprune-demo report ({task})", "", DOMAIN, "",
          f"Synthetic eSpeak NG corpus: {budget.train} train / {budget.valid} valid / {budget.test} test utterances; the test "
          f"voices ({', '.join(voices)}) and rates are other eSpeak NG voices, unseen in training; 'seen' / 'unseen' "
          "split the test sentences by whether they occur in training. Every model is decoded the same way: "
          f"fairseq-generate, {DECODER[task]}, `{' '.join(DECODING)}` (no padding, so no hypothesis depends on its batch).", "",
          f"| model | mode | GMACs | params | MACs sparsity | {name} | seen | unseen | latency s | predicted s | speed-up "
          "| target speed-up |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
          "Budgets: each pruned model's target and the sparsity its exported model delivers, both in the measure "
          "of its mode (the fraction removed against the unpruned encoder; `latency`: of the table's predicted "
          "latency; `parp`: of the encoder's weights, by its zeros), and how it was pruned: by a run of its own, or "
          "as a rung of a budget ladder, one run per mode ramping to each of its budgets in turn (`--sweep`).", "",
          "| model | measure | pruned by | target | delivered | off by (points) |", "|---|---|---|---|---|---|",
          *budget_rows(models), "",
          "Latency: measured in turns on this CPU (10 s input, median); predicted: the demo's latency table "
          "(latency_table.json, measured here before training; the encoder only). Target speed-up: what a latency "
          "model's target asks of the table's prediction (1 / (1 - target)).", "",
          f"{name} per test voice:", "", "| model | " + " | ".join(voices) + " |",
          "|---|" + "---|" * len(voices), *per_voice, "", *notes,
          f"![{metric} vs GMACs]({metric}_vs_gmacs.png)", "", "![kept units per layer](kept_per_layer.png)", "",
          "![latency](latency.png)", ""]
    if precision:
        md += [f"Fine-tuning and pruning ran in {precision['precision']}" + (
            f" (a bf16 training step measured {precision['bf16_speedup']}x as fast as fp32 on this CPU)"
            if "bf16_speedup" in precision else "") + "; pre-training in fp32.", ""]
    md += ["Stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())]
    return "\n".join(md) + "\n"
