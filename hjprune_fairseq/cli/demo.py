"""hjprune-demo: the whole HJ-Pruning story on a synthetic corpus, on CPU, with a report.

Stages (each one the real tool, its output in OUT/logs/STAGE.log): synthesise the corpus
(hjprune-synth) -> pre-train a tiny wav2vec2 with stock fairseq (examples/tiny/pretrain.yaml) ->
fine-tune (finetune.yaml) -> prune with ``macs`` (prune.yaml) -> hjprune-export -> fine-tune the slim
model (final.yaml) -> decode the test split with fairseq-generate -> time both models on CPU ->
report.md, report.json and PNG plots. ``--sweep`` then prunes the fine-tuned model with every
sparsity mode at three budgets (the paper's Fig. 1); ``--baselines`` adds PARP (unstructured, at the
parameter count of macs_40) and task-agnostic pruning (distillation from the pre-trained model with
fine-grained heads and straight-through gates, 40 % fewer MACs, then fine-tuning).
"""

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from hjprune_manifests import output_dir
from hjprune_manifests.audio import SAMPLE_RATE

from ..config_sets import USER_DIR, config_set_dir

TOOL = "hjprune-demo"  # the name of its marker files, .hjprune-demo (output_dir)


@dataclass
class Budget:
    """Corpus sizes and updates per stage."""

    train: int
    valid: int
    test: int
    pretrain: int
    finetune: int
    prune: int
    warmup: int
    final: int


FULL = Budget(train=1500, valid=100, test=200, pretrain=100, finetune=600, prune=600, warmup=200, final=300)
QUICK = Budget(train=80, valid=10, test=20, pretrain=10, finetune=30, prune=30, warmup=10, final=20)
MAIN_POINT = ("macs", ["criterion.target_sparsity=0.4"])  # the pipeline's pruned model, named macs_40
SWEEP = {  # (mode, overrides) per point: about 20, 40 and 60 % fewer MACs for each method
    "macs": [["criterion.target_sparsity=0.2"], ["criterion.target_sparsity=0.4"], ["criterion.target_sparsity=0.6"]],
    "sep_size": [[f"criterion.target_cnn_sparsity={c}", f"criterion.target_transformer_sparsity={t}"]
                 for c, t in ((0.3, 0.1), (0.6, 0.2), (0.85, 0.35))],
    "size": [["criterion.target_sparsity=0.2"], ["criterion.target_sparsity=0.4"], ["criterion.target_sparsity=0.6"]],
    "transformer_only": [["criterion.target_sparsity=0.3"], ["criterion.target_sparsity=0.5"], ["criterion.target_sparsity=0.7"]],
}


class Demo:
    def __init__(self, out: str, task: str, budget: Budget, threads: Optional[int] = None):
        self.out, self.task, self.budget = out, task, budget
        self.threads = threads  # torch threads per stage (None: torch's default, every core)
        self.data = os.path.join(out, "data")
        self.config_dir = config_set_dir("tiny_slu" if task == "slu" else "tiny")
        self.timings: Dict[str, float] = {}
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)

    def step(self, name: str, cmd: List[str]) -> None:
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        log = os.path.join(self.out, "logs", f"{name}.log")
        env = dict(os.environ)
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        with open(log, "w") as f:
            r = subprocess.run(cmd, cwd=self.out, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.timings[name] = round(time.time() - t0, 1)
        if r.returncode:
            tail = open(log).read().splitlines()[-15:]
            raise RuntimeError(f"stage {name} failed (exit {r.returncode}); end of {log}:\n" + "\n".join(tail))
        print(f"[{time.strftime('%H:%M:%S')}] {name} done in {self.timings[name]} s", flush=True)

    def train(self, name: str, config_dir: str, config: str, overrides: Sequence[str]) -> str:
        save = os.path.join(self.out, "checkpoints", name)
        exe = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
        # A fresh folder, renamed in when training ends: fairseq would resume from an earlier run's
        # checkpoint_last.pt, and only an earlier demo's checkpoints/NAME (its marker) is replaced.
        with output_dir.staging(save) as tmp:
            self.step(name, [exe, "--config-dir", config_dir, "--config-name", config, f"common.user_dir={USER_DIR}",
                             f"task.data={self.data}", f"checkpoint.save_dir={tmp}", *overrides])
            output_dir.replace_entry(os.path.dirname(save), name, tmp, TOOL)
        output_dir.record(self.out, TOOL, os.listdir(self.out))  # with what fairseq-hydra-train wrote in OUT
        return save

    # ---- stages ---------------------------------------------------------------------------------
    def synthesise(self) -> None:
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] synthesise {self.task} corpus ...", flush=True)
        from hjprune_manifests.synth import write_corpus

        b = self.budget
        sizes = write_corpus(self.data, self.task, {"train": b.train, "valid": b.valid, "test": b.test}, overwrite=True)
        self.timings["synthesise"] = round(time.time() - t0, 1)
        print(f"[{time.strftime('%H:%M:%S')}] corpus: {sizes}", flush=True)

    def pipeline(self) -> Dict:
        b = self.budget
        self.synthesise()
        pre = self.train("pretrain", config_set_dir("tiny"), "pretrain", [f"optimization.max_update={b.pretrain}"])
        ft = self.train("finetune", self.config_dir, "finetune", [
            f"model.w2v_path={pre}/checkpoint_last.pt", f"optimization.max_update={b.finetune}"])
        models = [self.evaluate("unpruned", f"{ft}/checkpoint_best.pt", "none")]
        models.append(self.prune_point(*MAIN_POINT, f"{ft}/checkpoint_best.pt", "macs_40"))
        return {"models": models, "finetuned": f"{ft}/checkpoint_best.pt", "pretrained": f"{pre}/checkpoint_last.pt"}

    def prune_point(self, mode: str, overrides: List[str], finetuned: str, name: str) -> Dict:
        b = self.budget
        pr = self.train(f"prune_{name}", self.config_dir, "prune", [
            f"mode={mode}", *overrides, f"model.w2v_path={finetuned}", f"optimization.max_update={b.prune}",
            f"criterion.sparsity_warmup_updates={b.warmup}"])
        slim = os.path.join(self.out, f"slim_{name}.pt")
        self.step(f"export_{name}", [os.path.join(os.path.dirname(sys.executable), "hjprune-export"),
                                     f"{pr}/checkpoint_last.pt", slim, "--overwrite"])
        fin = self.train(f"final_{name}", self.config_dir, "final", [f"model.w2v_path={slim}", f"optimization.max_update={b.final}"])
        return self.evaluate(name, f"{fin}/checkpoint_best.pt", mode)

    def parp_point(self, finetuned: str, params: int) -> Dict:
        """PARP from the fine-tuned model, its sparsity set for ``params`` nonzero encoder weights."""
        from ..checkpoints import load_model
        from ..core.parp import prunable_weights

        model, _ = load_model(finetuned)
        dense = sum(p.numel() for p in model.encoder.parameters())
        prunable = sum(w.numel() for _, w in prunable_weights(model.encoder))
        sparsity = min(0.95, max(0.0, (dense - params) / prunable))  # PARP prunes Transformer matrices only
        run = self.train("parp", self.config_dir, "parp", [
            f"model.w2v_path={finetuned}", f"model.parp_sparsity={sparsity:.4f}", f"optimization.max_update={self.budget.prune}"])
        # checkpoint_last: the final prune; a checkpoint between re-prunes holds adjusted (regrown) weights
        return self.evaluate("parp", f"{run}/checkpoint_last.pt", "parp")

    def distill_point(self, pretrained: str) -> Dict:
        """Task-agnostic: prune the pre-trained encoder by distillation on the unlabeled training audio
        (40 % fewer MACs, fine-grained heads, straight-through gates), export, then fine-tune it."""
        b = self.budget
        run = self.train("distill", config_set_dir("tiny"), "distill", [
            "mode=macs", "criterion.target_sparsity=0.4", f"model.w2v_path={pretrained}",
            f"optimization.max_update={b.prune}", f"criterion.sparsity_warmup_updates={b.warmup}"])
        slim = os.path.join(self.out, "slim_distill_40.pt")
        self.step("export_distill_40", [os.path.join(os.path.dirname(sys.executable), "hjprune-export"),
                                        f"{run}/checkpoint_last.pt", slim, "--overwrite"])
        ft = self.train("finetune_distill_40", self.config_dir, "finetune", [
            f"model.w2v_path={slim}", f"optimization.max_update={b.finetune}"])
        return self.evaluate("distill_40", f"{ft}/checkpoint_best.pt", "task_agnostic")

    def evaluate(self, name: str, ckpt: str, mode: str) -> Dict:
        """Decode the test split with fairseq-generate; cost and per-layer sizes (latency: time_models)."""
        from .cost import describe

        exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
        if self.task == "slu":
            extra = ["--task", "hjprune_audio_classification", "--scoring", "hjprune_accuracy"]
        else:
            extra = ["--task", "hjprune_audio_finetuning", "--post-process", "letter", "--scoring", "wer"]
        self.step(f"decode_{name}", [exe, self.data, "--user-dir", USER_DIR, "--path", ckpt, "--gen-subset", "test",
                                     "--max-tokens", "2000000", "--results-path", os.path.join(self.out, "decode", name),
                                     *extra])
        hyps, refs = parse_generate(os.path.join(self.out, "decode", name, "generate-test.txt"))
        seen = [l.split("\t")[4] == "1" for l in open(os.path.join(self.data, "test.meta.tsv")).read().splitlines()[1:]]
        cost = describe(ckpt, 10.0)
        r = {"name": name, "mode": mode, "checkpoint": ckpt, "gmacs": cost["encoder_gmacs"],
             # PARP: its nonzero weights (its MACs and latency stay dense)
             "params": cost.get("nonzero_encoder_params", cost["encoder_params"]),
             "macs_sparsity": cost["macs_sparsity"], "size_sparsity": cost.get("nonzero_size_sparsity", cost["size_sparsity"]),
             "layers": cost["layers"]}
        ids = sorted(refs)
        if self.task == "slu":
            r["accuracy"] = accuracy(refs, hyps, ids)
            r["accuracy_seen"] = accuracy(refs, hyps, [i for i in ids if seen[i]])
            r["accuracy_unseen"] = accuracy(refs, hyps, [i for i in ids if not seen[i]])
        else:
            r["wer"] = wer(refs, hyps, ids)
            r["wer_seen"] = wer(refs, hyps, [i for i in ids if seen[i]])
            r["wer_unseen"] = wer(refs, hyps, [i for i in ids if not seen[i]])
        print(f"    {name}: " + ", ".join(f"{k} {r[k]:.3f}" for k in ("gmacs", "wer", "accuracy") if k in r), flush=True)
        return r

    def sweep(self, result: Dict, jobs: int) -> None:
        """Every mode at three budgets from the fine-tuned model (the pipeline's macs_40 is the middle
        macs point)."""
        points = [(mode, o, f"{mode}_{k + 1}") for mode, pts in SWEEP.items() for k, o in enumerate(pts)
                  if (mode, o) != MAIN_POINT]
        result["models"] += self.parallel("sweep", jobs, [
            functools.partial(self.prune_point, mode, o, result["finetuned"], name) for mode, o, name in points])

    def baselines(self, result: Dict, jobs: int) -> None:
        """PARP at the parameter count of macs_40, and task-agnostic pruning by distillation."""
        macs_40 = next(m for m in result["models"] if m["name"] == "macs_40")
        result["models"] += self.parallel("baselines", jobs, [
            functools.partial(self.parp_point, result["finetuned"], macs_40["params"]),
            functools.partial(self.distill_point, result["pretrained"])])

    def parallel(self, name: str, jobs: int, points: List[Callable[[], Dict]]) -> List[Dict]:
        """Run ``points`` (each a chain of stages) ``jobs`` at a time, each stage with cores / jobs torch
        threads: on 2 cores two one-thread trainings do ~1.4x the updates per second of one two-thread
        training. Latency is measured afterwards (time_models), the models taking turns."""
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.time()
        self.threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        try:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(point) for point in points]
                try:
                    return [f.result() for f in futures]
                except BaseException:
                    for f in futures:  # a failed point stops the rest once the running points end
                        f.cancel()
                    raise
        finally:
            self.threads = None
            self.timings[name] = round(time.time() - t0, 1)

    def time_models(self, models: List[Dict]) -> None:
        """CPU latency of every model, measured side by side once training has finished."""
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] time {len(models)} models on CPU ...", flush=True)
        times = latencies({m["name"]: m["checkpoint"] for m in models})
        for m in models:
            m["latency_s"] = times[m["name"]]
        self.timings["latency"] = round(time.time() - t0, 1)


def parse_generate(path: str):
    text = open(path).read()
    refs = {int(i): t for i, t in re.findall(r"^T-(\d+)\t(.*)$", text, re.M)}
    hyps = {int(i): h for i, _, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", text, re.M)}
    if refs.keys() != hyps.keys() or not refs:
        raise RuntimeError(f"{path}: fairseq-generate output lacks T-/D- lines for some utterances")
    return hyps, refs


def wer(refs: Dict[int, str], hyps: Dict[int, str], ids: List[int]) -> float:
    import editdistance

    words = sum(len(refs[i].split()) for i in ids)
    return 100.0 * sum(editdistance.eval(refs[i].split(), hyps[i].split()) for i in ids) / words if words else float("nan")


def accuracy(refs: Dict[int, str], hyps: Dict[int, str], ids: List[int]) -> float:
    return 100.0 * sum(refs[i] == hyps[i] for i in ids) / len(ids) if ids else float("nan")


def latencies(checkpoints: Dict[str, str], seconds: float = 10.0, repeats: int = 25, warmup: int = 3) -> Dict[str, float]:
    """Median CPU time of one forward pass on ``seconds`` of audio, per model. The models take turns
    (hjprune-bench's timer), so a drift in machine speed hits them all alike. Timed one after the
    other (median of 5 each), a sweep reported macs_40 2.03x faster where taking turns gives 1.30x."""
    import torch

    from ..checkpoints import load_model
    from .timing import median_times

    models = {name: load_model(ckpt)[0].eval() for name, ckpt in checkpoints.items()}
    wav = torch.randn(1, int(seconds * SAMPLE_RATE))
    with torch.inference_mode():
        return median_times({name: (lambda i, m=m: m(source=wav)) for name, m in models.items()}, repeats, warmup)


def write_report(out: str, task: str, result: Dict, timings: Dict[str, float], budget: Budget) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if task == "slu" else "wer"
    models = result["models"]
    json.dump({"task": task, "budget": budget.__dict__, "timings_s": timings, "models": models},
              open(os.path.join(out, "report.json"), "w"), indent=2)

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in dict.fromkeys(m["mode"] for m in models):
        pts = sorted((m["gmacs"], m[metric]) for m in models if m["mode"] == mode)
        ax.plot(*zip(*pts), "o-" if len(pts) > 1 else "*", label=mode, markersize=8)
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

    base = models[0]
    rows = [f"| {m['name']} | {m['mode']} | {m['gmacs']:.3f} | {m['params']:,} | {m['macs_sparsity']:.3f} | "
            f"{m[metric]:.2f} | {m[metric + '_seen']:.2f} | {m[metric + '_unseen']:.2f} | {m['latency_s']:.3f} | "
            f"{base['latency_s'] / m['latency_s']:.2f}x |" for m in models]
    name = "WER %" if metric == "wer" else "accuracy %"
    notes = []
    if any(m["mode"] == "parp" for m in models):
        notes += ["PARP (unstructured): `params` counts its nonzero encoder weights, set to match macs_40. The model "
                  "stays dense, so its GMACs and its latency are those of the unpruned model.", ""]
    if any(m["mode"] == "task_agnostic" for m in models):
        notes += ["distill_40 (task-agnostic): the pre-trained encoder pruned without labels by distillation from "
                  "itself (fine-grained heads, straight-through gates, 40 % fewer MACs), then fine-tuned like the "
                  "unpruned model.", ""]
    md = [f"# hjprune-demo report ({task})", "",
          f"Synthetic eSpeak NG corpus: {budget.train} train / {budget.valid} valid / {budget.test} test utterances; the test "
          "voices and rates are unseen in training; 'seen' / 'unseen' split the test sentences by whether they occur in "
          "training.", "",
          f"| model | mode | GMACs | params | MACs sparsity | {name} | seen | unseen | latency s | speed-up |",
          "|---|---|---|---|---|---|---|---|---|---|", *rows, "", *notes,
          f"![{metric} vs GMACs]({metric}_vs_gmacs.png)", "", "![kept units per layer](kept_per_layer.png)", "",
          "![latency](latency.png)", "", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())]
    open(os.path.join(out, "report.md"), "w").write("\n".join(md) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["asr", "slu"], default="asr", help="speech recognition or intent classification")
    p.add_argument("--out", help="output folder (default: demo_out/TASK)")
    p.add_argument("--quick", action="store_true", help="tiny budgets (a test run, minutes)")
    p.add_argument("--sweep", action="store_true", help="also prune with every mode at three budgets (paper Fig. 1)")
    p.add_argument("--baselines", action="store_true",
                   help="also PARP (unstructured, at macs_40's parameter count) and task-agnostic pruning by distillation")
    p.add_argument("--jobs", type=int, default=2,
                   help="--sweep / --baselines: points trained at once, each with cores/jobs threads")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in the folder")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be at least 1, got {a.jobs}")
    from hjprune_manifests.synth import TOOL as SYNTH

    out = os.path.abspath(a.out or os.path.join("demo_out", a.task))
    try:  # before anything is written: OUT new, empty, or only an earlier demo's output (its marker)
        output_dir.check(out, TOOL, a.overwrite, "results")
        output_dir.check(os.path.join(out, "data"), SYNTH, True)  # the corpus, replaced by Demo.synthesise
        output_dir.claim(out, TOOL, a.overwrite, "results")
    except (ValueError, FileExistsError) as e:
        print(f"hjprune-demo: error: {e}", file=sys.stderr)
        return 2
    budget = QUICK if a.quick else FULL
    t0 = time.time()
    try:
        demo = Demo(out, a.task, budget)
        result = demo.pipeline()
        if a.sweep:
            demo.sweep(result, a.jobs)
        if a.baselines:
            demo.baselines(result, a.jobs)
        demo.time_models(result["models"])
        write_report(out, a.task, result, demo.timings, budget)
    except (RuntimeError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"hjprune-demo: error: {e}", file=sys.stderr)
        return 1
    finally:  # whatever the run wrote in OUT is the demo's own: OUT held nothing else when it started
        output_dir.record(out, TOOL, os.listdir(out))
    print(f"report: {os.path.join(out, 'report.md')} ({time.time() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
