"""The demo's pipeline: stages, the parallel runner of sweep / baseline points, CPU latency.

Stages (each one the real tool, its output in OUT/logs/STAGE.log): synthesise the corpus
(hjprune-synth) -> pre-train a tiny wav2vec2 with stock fairseq (examples/tiny/pretrain.yaml) ->
fine-tune (finetune.yaml) -> prune with ``macs`` (prune.yaml) -> hjprune-export -> fine-tune the slim
model (final.yaml) -> decode the test split with fairseq-generate -> time both models on CPU. Before
training, a latency table of the tiny encoder is measured on this machine (PyTorch, the threads and input
length the models are timed with, a coarse grid: ``LATENCY_GRIDS``): the report gives every model's predicted
latency beside its measured one. ``Demo.sweep`` then prunes the fine-tuned model with every sparsity mode at
three budgets (the paper's Fig. 1; ``latency`` with that table, its targets fractions of predicted latency), each
mode by one budget-ladder run through its three budgets, every rung's checkpoint then exported at its budget,
fine-tuned and decoded; ``Demo.baselines`` adds PARP (unstructured, at the parameter count of macs_40) and
task-agnostic pruning (distillation from the pre-trained model with fine-grained heads and
straight-through gates, 40 % fewer MACs, then fine-tuning).

Progress goes to this module's logger, one line per stage.

OUT's marker (``OUT/.hjprune-demo``, hjprune_manifests.output_dir) lists exactly the top-level entries
the demo writes, each recorded before it is written (``output_dir.own``), so a file a user puts in OUT
during a run is never taken for the demo's own (a later ``--overwrite`` refuses the folder). The stages
run in the demo's own folders (``logs/``; a training stage in ``logs/NAME/``, where hydra writes its
``.hydra/`` and log), not in OUT itself.
"""

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hjprune_manifests import output_dir
from hjprune_manifests.audio import SAMPLE_RATE

from ...core.measures import MEASURES
from ...plugin.config_sets import USER_DIR, config_set_dir
from ...plugin.criterions.sparsity_config import target_fields
from ...plugin.run_budget import ladder_checkpoint_name
from ...plugin.scoring import parse_generate, subset_scores
from ..stages import console_script, run_stage

logger = logging.getLogger(__name__)

TOOL = "hjprune-demo"  # the name of its marker files, .hjprune-demo (output_dir)
SCORING = {"asr": "wer", "slu": "hjprune_accuracy"}  # fairseq-generate --scoring, per task
METRIC = {"asr": "wer", "slu": "accuracy"}  # the report's name of that score
DECODER = {"asr": "greedy CTC", "slu": "the intent classifier's most probable intent"}  # how fairseq-generate decodes
# fairseq-generate's batching, the same for every model. One utterance a batch: batched decoding pads,
# and the padded zeros reach the first conv layer's GroupNorm (it normalises over time, as stock
# wav2vec2-base), so a hypothesis would depend on its batch neighbours.
DECODING = ["--batch-size", "1"]


@dataclass
class Budget:
    """Corpus sizes, updates per stage and, where set, the samples in a batch of every stage (else the
    config's).

    ``prune`` / ``warmup``: a pruning run of its own (macs_40, the baselines), its updates and its target's ramp
    from 0. ``ladder_warmup`` / ``ladder_hold``: each rung of a sweep's budget ladder (one run per mode through
    its budgets), the ramp from the previous rung's target and the hold that ends with the rung's checkpoint.
    A ladder of three rungs takes :meth:`ladder_updates` (3) of them, at most 60 % of three runs of their own
    (3 x ``prune``): FULL's 324 of 540 are docs/RESULTS.md's ladder against three runs.
    """

    train: int
    valid: int
    test: int
    pretrain: int
    finetune: int
    prune: int
    warmup: int
    final: int
    ladder_warmup: int
    ladder_hold: int
    max_tokens: Optional[int] = None

    def ladder_updates(self, rungs: int) -> int:
        """The updates of a ladder of ``rungs``: each its ramp and its hold (its last checkpoint at the last)."""
        return rungs * (self.ladder_warmup + self.ladder_hold)


FULL = Budget(train=1500, valid=100, test=200, pretrain=80, finetune=480, prune=180, warmup=70, final=100,
              ladder_warmup=60, ladder_hold=48)
QUICK = Budget(train=60, valid=8, test=16, pretrain=6, finetune=20, prune=24, warmup=8, final=12,
               ladder_warmup=6, ladder_hold=6, max_tokens=100000)
MAIN_POINT = ("macs", {"macs": 0.4})  # the pipeline's pruned model, a run of its own, named macs_40
SWEEP = {  # mode: its ladder's rungs, {quantity: target} each: about 20, 40 and 60 % fewer MACs for each method
    "macs": [{"macs": t} for t in (0.2, 0.4, 0.6)],
    "sep_size": [{"cnn": c, "transformer": t} for c, t in ((0.3, 0.1), (0.6, 0.2), (0.85, 0.35))],
    "size": [{"size": t} for t in (0.2, 0.4, 0.6)],
    "transformer_only": [{"transformer_only": t} for t in (0.3, 0.5, 0.7)],
    # 20, 40, 60 % less predicted latency (the demo's table): target speed-ups 1.25x, 1.67x, 2.5x
    "latency": [{"latency": t} for t in (0.2, 0.4, 0.6)],
}


@dataclass
class Asked:
    """What a pruned model was asked for: ``targets`` {quantity: fraction removed} of the measure ``measure``;
    ``ladder``: where it was pruned, {"run": the ladder's stage, "rung": 1.., "rungs": n} for a rung of a
    budget ladder, None for a run of its own."""

    measure: str
    targets: Dict[str, float]
    ladder: Optional[Dict[str, Any]] = None


def target_overrides(mode: str, rungs: List[Dict[str, float]]) -> List[str]:
    """The prune stage's target fields for the budgets ``rungs`` of ``mode``: a number per field for one budget,
    a list per field (a budget ladder) for several."""
    if len(rungs) == 1:
        return [f"criterion.{f}={rungs[0][q]}" for q, f in target_fields(mode).items()]
    return [f"criterion.{f}=[{','.join(str(r[q]) for r in rungs)}]" for q, f in target_fields(mode).items()]


def ladder_stage(mode: str) -> str:
    """The stage (log, checkpoint folder) of ``mode``'s budget ladder in the sweep."""
    return f"prune_{mode}_ladder"


LATENCY_SECONDS = 10.0  # the input length of the demo's timings (latencies) and of its latency table
# The demo's table: two or three points per axis (the tiny encoder's components take milliseconds), 3 runs each.
LATENCY_GRIDS = dict(conv_grid=(0.25, 1.0), hidden_grid=(0.5, 1.0), heads_grid=(0.0, 0.5, 1.0), dims_grid=(0.5, 1.0),
                     ffn_grid=(0.0, 0.5, 1.0), repeats=3, warmup=1, calibration=2)


def _now() -> str:
    return time.strftime("%H:%M:%S")


PRECISIONS = {"fp32": [], "bf16": ["common.bf16=true", "common.fp16_no_flatten_grads=true"]}  # stage overrides


def faster_precision(threads: int = 0, seconds: float = 8.0) -> Dict:
    """{"precision": "bf16" or "fp32", "bf16_speedup": fp32 time / bf16 time} of one training step (forward
    and backward) of the demo's tiny encoder on a batch of ``seconds`` of audio, the two taking turns.

    bf16 is chosen only where it is measured at least 10 % faster: CPUs with bf16 instructions (e.g.
    AVX512-BF16) run it about 1.6x faster than fp32, others emulate it, slower.
    """
    import copy

    import torch

    from ...core.encoder import Wav2Vec2Encoder
    from ...core.presets import PRESETS
    from ..timing import apply_threads, median_times

    apply_threads(threads)
    torch.manual_seed(0)
    fp32 = Wav2Vec2Encoder(PRESETS["tiny"])
    models = {"fp32": (fp32, torch.float32), "bf16": (copy.deepcopy(fp32).to(torch.bfloat16), torch.bfloat16)}
    wav = torch.randn(4, int(seconds * SAMPLE_RATE / 4))

    def step(model, dtype) -> None:
        x, _, _ = model(wav.to(dtype))
        x.float().square().mean().backward()

    t = median_times({k: (lambda i, m=m, d=d: step(m, d)) for k, (m, d) in models.items()}, repeats=3, warmup=1)
    ratio = t["fp32"] / t["bf16"]
    return {"precision": "bf16" if ratio >= 1.1 else "fp32", "bf16_speedup": round(ratio, 2)}


class TimeLeft:
    """An estimate of the time a run has left, from the stages still to come (:meth:`expect`).

    A training stage is expected to take its updates times the seconds per update of the fine-tuning
    and pruning stages done so far (startup included; before any, ``first_guess_s``: a bf16 update on
    2 cores); pre-training (stock fairseq, fp32, another loss) is not a guide to them. Any other stage
    is expected to take the mean time of the other stages done so far (30 s before any); a budget ladder's
    run is a training stage of its rungs' updates. Stages run side by side (``--sweep``) are counted one after
    the other, so the estimate is then high.
    """

    NOT_A_GUIDE = ("pretrain",)

    def __init__(self, first_guess_s: float = 0.35):
        self.first_guess_s = first_guess_s
        self.pending: Dict[str, int] = {}  # stage -> updates (0: not a training stage)
        self.trained = [0.0, 0]  # seconds, updates of the training stages done
        self.other: List[float] = []  # seconds of the other stages done

    def expect(self, stages: Dict[str, int]) -> None:
        self.pending.update(stages)

    def done(self, name: str, seconds: float) -> None:
        updates = self.pending.pop(name, 0)
        if updates:
            if name not in self.NOT_A_GUIDE:
                self.trained[0] += seconds
                self.trained[1] += updates
        else:
            self.other.append(seconds)

    def seconds_left(self) -> float:
        per_update = self.trained[0] / self.trained[1] if self.trained[1] else self.first_guess_s
        per_other = sum(self.other) / len(self.other) if self.other else 30.0
        return sum(u * per_update if u else per_other for u in self.pending.values())


class Demo:
    def __init__(self, out: str, task: str, budget: Budget, threads: Optional[int] = None, precision: str = "fp32"):
        self.out, self.task, self.budget = os.path.abspath(out), task, budget
        self.precision_overrides = PRECISIONS[precision]  # of the stages that train in that precision
        self.batch = [f"dataset.max_tokens={budget.max_tokens}"] if budget.max_tokens else []
        self.threads = threads  # torch threads per stage (None: torch's default, every core)
        self.data = os.path.join(self.out, "data")
        self.config_dir = config_set_dir("tiny_slu" if task == "slu" else "tiny")
        self.timings: Dict[str, float] = {}
        self.time_left = TimeLeft()
        self.logs = self.own("logs")
        os.makedirs(self.logs, exist_ok=True)
        self.latency_table: Optional[str] = None  # OUT/latency_table.json once measured

    def own(self, name: str) -> str:
        """OUT/NAME, recorded as the demo's before it is written (refused if a user put it there)."""
        return output_dir.own(self.out, TOOL, name)

    def step(self, name: str, cmd: List[str], cwd: Optional[str] = None) -> None:
        """Run stage ``name`` in ``cwd`` (default: OUT/logs), its output in OUT/logs/NAME.log."""
        logger.info(f"[{_now()}] {name} ...")
        log = os.path.join(self.logs, f"{name}.log")
        env = dict(os.environ)
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        run = run_stage(cmd, log, cwd or self.logs, env)
        self.timings[name] = round(run.wall_s, 1)
        if run.rc:
            tail = open(log).read().splitlines()[-15:]
            raise RuntimeError(f"stage {name} failed (exit {run.rc}); end of {log}:\n" + "\n".join(tail))
        self.finished(name)

    def finished(self, name: str) -> None:
        """The progress line of a finished stage: its time and an estimate of the time left."""
        self.time_left.done(name, self.timings[name])
        left = self.time_left.seconds_left()
        logger.info(f"[{_now()}] {name} done in {self.timings[name]} s" +
                    (f"; about {left / 60:.0f} min left (estimate)" if left else ""))

    def train(self, name: str, config_dir: str, config: str, overrides: Sequence[str]) -> str:
        save = os.path.join(self.own("checkpoints"), name)
        work = os.path.join(self.logs, name)  # hydra.run.dir is "." in the configs: .hydra/ and its log go here
        os.makedirs(work, exist_ok=True)
        # A fresh folder, renamed in when training ends: fairseq would resume from an earlier run's
        # checkpoint_last.pt, and only an earlier demo's checkpoints/NAME (its marker) is replaced.
        with output_dir.staging(save) as tmp:
            self.step(name, [console_script("fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", config,
                             f"common.user_dir={USER_DIR}", f"task.data={self.data}", f"checkpoint.save_dir={tmp}",
                             *overrides, *self.batch], cwd=work)
            output_dir.replace_entry(os.path.dirname(save), name, tmp, TOOL)
        return save

    def export(self, name: str, gated: str) -> str:
        """hjprune-export of the gated checkpoint ``gated`` to OUT/slim_NAME.pt."""
        slim = self.own(f"slim_{name}.pt")
        self.step(f"export_{name}", [console_script("hjprune-export"), gated, slim, "--overwrite"])
        return slim

    # ---- stages ---------------------------------------------------------------------------------
    def measure_latency_table(self) -> None:
        """OUT/latency_table.json: the tiny encoder's table on this machine, in this process (nothing else runs),
        PyTorch, with the threads and input length of :func:`latencies`."""
        import torch

        from ...core.presets import PRESETS
        from ..latency.measure import TableConfig, measure_table, write_table

        t0 = time.time()
        logger.info(f"[{_now()}] latency_table ...")
        spec = PRESETS["tiny"]  # what examples/tiny/pretrain.yaml pre-trains (tests/test_examples.py)
        cfg = TableConfig(preset="tiny", seconds=LATENCY_SECONDS, threads=torch.get_num_threads(), **LATENCY_GRIDS)
        path = self.own("latency_table.json")
        write_table(measure_table(cfg, spec), path, overwrite=True)
        self.latency_table = path
        self.timings["latency_table"] = round(time.time() - t0, 1)
        self.finished("latency_table")

    def synthesise(self) -> None:
        t0 = time.time()
        logger.info(f"[{_now()}] synthesise {self.task} corpus ...")
        from hjprune_manifests.synth import write_corpus

        b = self.budget
        self.own("data")
        sizes = write_corpus(self.data, self.task, {"train": b.train, "valid": b.valid, "test": b.test}, overwrite=True)
        self.timings["synthesise"] = round(time.time() - t0, 1)
        logger.info(f"[{_now()}] corpus: {sizes}")
        self.finished("synthesise")

    def pipeline(self) -> Dict:
        b = self.budget
        self.time_left.expect({"synthesise": 0, "latency_table": 0, "pretrain": b.pretrain, "finetune": b.finetune,
                               "decode_unpruned": 0, "latency": 0})
        self.expect_point("macs_40")
        self.synthesise()
        self.measure_latency_table()
        pre = self.train("pretrain", config_set_dir("tiny"), "pretrain", [f"optimization.max_update={b.pretrain}"])
        ft = self.train("finetune", self.config_dir, "finetune", [
            f"model.w2v_path={pre}/checkpoint_last.pt", f"optimization.max_update={b.finetune}", *self.precision_overrides])
        models = [self.evaluate("unpruned", f"{ft}/checkpoint_best.pt", "none")]
        models.append(self.prune_point(*MAIN_POINT, f"{ft}/checkpoint_best.pt", "macs_40"))
        return {"models": models, "finetuned": f"{ft}/checkpoint_best.pt", "pretrained": f"{pre}/checkpoint_last.pt"}

    def expect_point(self, name: str) -> None:
        """The stages of prune_point ``name``, for the estimate of the time left."""
        self.time_left.expect({f"prune_{name}": self.budget.prune})
        self.expect_finish(name)

    def expect_ladder(self, mode: str, rungs: int) -> None:
        """The stages of prune_ladder of ``mode`` and of finishing its ``rungs`` (``{mode}_1``, ...)."""
        self.time_left.expect({ladder_stage(mode): self.budget.ladder_updates(rungs)})
        for k in range(rungs):
            self.expect_finish(f"{mode}_{k + 1}")

    def expect_finish(self, name: str) -> None:
        self.time_left.expect({f"export_{name}": 0, f"final_{name}": self.budget.final, f"decode_{name}": 0})

    def prune(self, stage: str, mode: str, rungs: List[Dict[str, float]], finetuned: str, updates: int,
              warmup: int, extra: Sequence[str] = ()) -> str:
        """Prune stage ``stage``: ``mode`` to the budgets ``rungs`` (several: a ladder) from ``finetuned``; its
        checkpoint folder."""
        table = [f"criterion.latency_table={self.latency_table}"] if "latency_table" in MEASURES[mode].needs else []
        return self.train(stage, self.config_dir, "prune", [
            f"mode={mode}", *target_overrides(mode, rungs), *table, f"model.w2v_path={finetuned}",
            f"optimization.max_update={updates}", f"criterion.sparsity_warmup_updates={warmup}", *extra,
            *self.precision_overrides])

    def prune_point(self, mode: str, targets: Dict[str, float], finetuned: str, name: str) -> Dict:
        """``mode`` pruned to ``targets`` by a run of its own, then finished (:meth:`finish`) as ``name``."""
        pr = self.prune(f"prune_{name}", mode, [targets], finetuned, self.budget.prune, self.budget.warmup)
        return self.finish(name, f"{pr}/checkpoint_last.pt", Asked(mode, targets))

    def prune_ladder(self, mode: str, rungs: List[Dict[str, float]], finetuned: str) -> List[Tuple[str, str, Asked]]:
        """``mode`` pruned by one budget-ladder run through ``rungs``, each ramped to over ``ladder_warmup``
        updates and held ``ladder_hold``; (name ``{mode}_K``, the rung's checkpoint, what it was asked) per rung."""
        b, stage = self.budget, ladder_stage(mode)
        run = self.prune(stage, mode, rungs, finetuned, b.ladder_updates(len(rungs)), b.ladder_warmup,
                         [f"+criterion.budget_hold_updates={b.ladder_hold}"])
        return [(f"{mode}_{k + 1}", os.path.join(run, ladder_checkpoint_name(r)),
                 Asked(mode, r, {"run": stage, "rung": k + 1, "rungs": len(rungs)})) for k, r in enumerate(rungs)]

    def finish(self, name: str, gated: str, asked: Asked) -> Dict:
        """Export the gated checkpoint ``gated`` at its budget, fine-tune the slim model (final.yaml), decode it."""
        slim = self.export(name, gated)
        fin = self.train(f"final_{name}", self.config_dir, "final", [
            f"model.w2v_path={slim}", f"optimization.max_update={self.budget.final}", *self.precision_overrides])
        r = self.evaluate(name, f"{fin}/checkpoint_best.pt", asked.measure, asked)
        if "latency" in asked.targets:  # the target speed-up over the unpruned model, predicted by the table
            r["target_speedup"] = 1 / (1 - asked.targets["latency"])
        return r

    def parp_point(self, finetuned: str, params: int) -> Dict:
        """PARP from the fine-tuned model, its sparsity set for ``params`` nonzero encoder weights."""
        from ...core.parp import prunable_weights
        from ...plugin.checkpoints import load_model

        model, _ = load_model(finetuned)
        dense = sum(p.numel() for p in model.encoder.parameters())
        prunable = sum(w.numel() for _, w in prunable_weights(model.encoder))
        sparsity = min(0.95, max(0.0, (dense - params) / prunable))  # PARP prunes Transformer matrices only
        run = self.train("parp", self.config_dir, "parp", [
            f"model.w2v_path={finetuned}", f"model.parp_sparsity={sparsity:.4f}", f"optimization.max_update={self.budget.prune}"])
        # checkpoint_last: the final prune; a checkpoint between re-prunes holds adjusted (regrown) weights
        return self.evaluate("parp", f"{run}/checkpoint_last.pt", "parp", Asked("size", {"size": 1 - params / dense}))

    def distill_point(self, pretrained: str) -> Dict:
        """Task-agnostic: prune the pre-trained encoder by distillation on the unlabeled training audio
        (40 % fewer MACs, fine-grained heads, straight-through gates), export, then fine-tune it."""
        b = self.budget
        run = self.train("distill", config_set_dir("tiny"), "distill", [
            "mode=macs", "criterion.target_sparsity=0.4", f"model.w2v_path={pretrained}",
            f"optimization.max_update={b.prune}", f"criterion.sparsity_warmup_updates={b.warmup}", *self.precision_overrides])
        slim = self.export("distill_40", f"{run}/checkpoint_last.pt")
        ft = self.train("finetune_distill_40", self.config_dir, "finetune", [
            f"model.w2v_path={slim}", f"optimization.max_update={b.finetune}", *self.precision_overrides])
        return self.evaluate("distill_40", f"{ft}/checkpoint_best.pt", "task_agnostic", Asked("macs", {"macs": 0.4}))

    def evaluate(self, name: str, ckpt: str, mode: str, asked: Optional[Asked] = None) -> Dict:
        """Decode the test split with fairseq-generate and score it with the same scorer, overall and
        on the seen / unseen test sentences; cost and per-layer sizes (latency: time_models); a pruned model
        (``asked``) with its targets and the sparsity it delivers in their measure."""
        from ..cost_report import describe

        scoring, metric = SCORING[self.task], METRIC[self.task]
        if self.task == "slu":
            extra = ["--task", "hjprune_audio_classification", "--scoring", scoring]
        else:
            extra = ["--task", "hjprune_audio_finetuning", "--post-process", "letter", "--scoring", scoring]
        results = os.path.join(self.own("decode"), name)
        self.step(f"decode_{name}", [console_script("fairseq-generate"), self.data, "--user-dir", USER_DIR, "--path", ckpt,
                                     "--gen-subset", "test", *DECODING, "--results-path", results, *extra])
        hyps, refs = parse_generate(os.path.join(results, "generate-test.txt"))
        meta = [l.split("\t") for l in open(os.path.join(self.data, "test.meta.tsv")).read().splitlines()[1:]]
        seen = [row[4] == "1" for row in meta]
        cost = describe(ckpt, LATENCY_SECONDS, latency_table=self.latency_table)
        r = {"name": name, "mode": mode, "checkpoint": ckpt, "gmacs": cost["encoder_gmacs"],
             # PARP: its nonzero weights (its MACs and latency stay dense)
             "params": cost.get("nonzero_encoder_params", cost["encoder_params"]),
             "macs_sparsity": cost["macs_sparsity"], "size_sparsity": cost.get("nonzero_size_sparsity", cost["size_sparsity"]),
             "layers": cost["layers"]}
        if "latency" in cost:  # the table predicts the encoder; latencies() times the model, its head too
            r["predicted_latency_s"] = cost["latency"]["ms"]["total"] / 1000
        if asked is not None:
            delivered = dict(cost["sparsity"][asked.measure])
            if mode == "parp":  # unstructured: the fraction its zeros remove (r["size_sparsity"]), not its structure's
                delivered["size"] = r["size_sparsity"]
            r.update(measure=asked.measure, target=dict(asked.targets), ladder=asked.ladder,
                     delivered={q: delivered[q] for q in asked.targets})
        ids = sorted(refs)
        r.update(subset_scores(scoring, refs, hyps, {metric: ids, f"{metric}_seen": [i for i in ids if seen[i]],
                                                     f"{metric}_unseen": [i for i in ids if not seen[i]]}))
        voices = sorted({meta[i][1] for i in ids})  # one WER can hide a wide spread across test voices
        r[f"{metric}_per_voice"] = subset_scores(scoring, refs, hyps, {v: [i for i in ids if meta[i][1] == v] for v in voices})
        logger.info(f"    {name}: " + ", ".join(f"{k} {r[k]:.3f}" for k in ("gmacs", "wer", "accuracy") if k in r))
        return r

    def sweep(self, result: Dict, jobs: int) -> None:
        """Every mode of SWEEP at its budgets from the fine-tuned model: one budget-ladder run per mode (the
        ladders side by side, ``jobs`` at a time), then each rung exported at its budget, fine-tuned and decoded
        (side by side), named ``{mode}_1``, ``_2``, ... The macs ladder's 0.4 rung (macs_2) is reported beside
        the pipeline's macs_40, a run of its own: a ladder's rung against a run."""
        for mode, rungs in SWEEP.items():
            self.expect_ladder(mode, len(rungs))
        ladders = self.parallel("sweep_ladders", jobs, [
            functools.partial(self.prune_ladder, mode, rungs, result["finetuned"]) for mode, rungs in SWEEP.items()])
        result["models"] += self.parallel("sweep_rungs", jobs, [
            functools.partial(self.finish, *rung) for rungs in ladders for rung in rungs])

    def baselines(self, result: Dict, jobs: int) -> None:
        """PARP at the parameter count of macs_40, and task-agnostic pruning by distillation."""
        macs_40 = next(m for m in result["models"] if m["name"] == "macs_40")
        b = self.budget
        self.time_left.expect({"parp": b.prune, "decode_parp": 0, "distill": b.prune, "export_distill_40": 0,
                               "finetune_distill_40": b.finetune, "decode_distill_40": 0})
        result["models"] += self.parallel("baselines", jobs, [
            functools.partial(self.parp_point, result["finetuned"], macs_40["params"]),
            functools.partial(self.distill_point, result["pretrained"])])

    def parallel(self, name: str, jobs: int, points: List[Callable[[], Any]]) -> List[Any]:
        """Run ``points`` (each a chain of stages) ``jobs`` at a time, each stage with cores / jobs torch
        threads (cores / points where fewer): on 2 cores two one-thread trainings do ~1.4x the updates per
        second of one two-thread training. Latency is measured afterwards (time_models), the models taking turns."""
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.time()
        self.threads = max(1, len(os.sched_getaffinity(0)) // max(1, min(jobs, len(points))))
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
        logger.info(f"[{_now()}] time {len(models)} models on CPU ...")
        times = latencies({m["name"]: m["checkpoint"] for m in models})
        for m in models:
            m["latency_s"] = times[m["name"]]
        self.timings["latency"] = round(time.time() - t0, 1)
        self.finished("latency")


def latencies(checkpoints: Dict[str, str], seconds: float = LATENCY_SECONDS, repeats: int = 25, warmup: int = 3) -> Dict[str, float]:
    """Median CPU time of one forward pass on ``seconds`` of audio, per model. The models take turns
    (hjprune-bench's timer), so a drift in machine speed hits them all alike. Timed one after the
    other (median of 5 each), a sweep reported macs_40 2.03x faster where taking turns gives 1.30x."""
    import torch

    from ...plugin.checkpoints import load_model
    from ..timing import median_times

    models = {name: load_model(ckpt)[0].eval() for name, ckpt in checkpoints.items()}
    wav = torch.randn(1, int(seconds * SAMPLE_RATE))
    with torch.inference_mode():
        return median_times({name: (lambda i, m=m: m(source=wav)) for name, m in models.items()}, repeats, warmup)
