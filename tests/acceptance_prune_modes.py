"""Acceptance run of the prune stage, not part of the test suite (minutes on 2 cores).

    .venv/bin/python tests/acceptance_prune_modes.py OUT_DIR [--targets 0.2 0.4 0.6] [--align 8] [--modes macs ...]

A fairseq wav2vec2 checkpoint with the 'tiny' preset's dimensions and a generated-audio corpus are
made in OUT_DIR; the model is fine-tuned briefly (examples/tiny/finetune.yaml), then pruned in each
sparsity mode with examples/tiny/prune.yaml (at the yaml's targets, or at each of ``--targets``: one
run per mode and target; sep_size then gets the target for both its CNN and Transformer), exported
with hjprune-export (at the run's budget; also with ``--align N``) and measured with hjprune-cost.
Prints, per mode and target, the expected sparsity at the end of pruning (from the gates of
checkpoint_last.pt), the deterministic masks' sparsity (as trained) and the slim models' measured one.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from fairseq_fixtures import EXAMPLES, USER_DIR, hydra_train, make_letter_corpus, make_pretrained

import hjprune_fairseq  # noqa: F401  (registers the hjprune classes)
from hjprune_fairseq.core import cost_model
from hjprune_fairseq.core.measures import MEASURES
from hjprune_fairseq.core.presets import PRESETS
from hjprune_fairseq.plugin.checkpoints import load_model

TINY = os.path.join(EXAMPLES, "tiny")
MODES = {"macs": ["macs"], "size": ["size"], "sep_size": ["cnn", "transformer"], "transformer_only": ["transformer_only"]}
REPORT_KEY = {"macs": "macs_sparsity", "size": "size_sparsity", "cnn": "cnn_size_sparsity",
              "transformer": "transformer_size_sparsity", "transformer_only": "transformer_size_sparsity"}


def run(out, name, overrides):
    r = hydra_train(TINY, name, [f"common.user_dir={USER_DIR}", f"task.data={out}/data", "dataset.max_tokens=100000",
                                 "common.log_interval=100", *overrides], cwd=out, timeout=3600)
    if r.returncode:
        sys.exit(r.stderr[-3000:])


def export_and_measure(ck, slim, seconds, *extra):
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([f"{bin_dir}/hjprune-export", f"{ck}/checkpoint_last.pt", slim, "--overwrite", *extra], check=True,
                   capture_output=True)
    return json.loads(subprocess.run([f"{bin_dir}/hjprune-cost", slim, "--json", "--seconds", str(seconds)],
                                     check=True, capture_output=True, text=True).stdout)


def target_overrides(mode, target):
    if target is None:
        return []
    if mode == "sep_size":
        return [f"criterion.target_cnn_sparsity={target}", f"criterion.target_transformer_sparsity={target}"]
    return [f"criterion.target_sparsity={target}"]


def main(out, targets=(None,), align=1, modes=tuple(MODES)):
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(f"{out}/pre.pt"):
        make_letter_corpus(f"{out}/data", {"train": 160, "valid": 16})
        spec = PRESETS["tiny"]
        make_pretrained(f"{out}/pre.pt", conv_feature_layers=repr(spec.conv_layers), encoder_layers=spec.num_layers,
                        encoder_embed_dim=spec.embed_dim, encoder_ffn_embed_dim=spec.ffn_dims[0],
                        encoder_attention_heads=spec.num_heads[0], conv_pos=spec.pos_conv_kernel,
                        conv_pos_groups=len(spec.pos_conv_groups), final_dim=64)
        run(out, "finetune", [f"model.w2v_path={out}/pre.pt", "optimization.max_update=150", "checkpoint.save_dir=ck/finetune"])
    rows = []
    for mode, names, target in ((m, MODES[m], t) for m in modes for t in targets):
        tag = mode if target is None else f"{mode}_{round(100 * target)}"
        ck = f"{out}/ck/prune_{tag}"
        shutil.rmtree(ck, ignore_errors=True)  # fairseq would resume from an earlier run's checkpoint_last.pt
        run(out, "prune", [f"mode={mode}", f"model.w2v_path={out}/ck/finetune/checkpoint_last.pt", f"checkpoint.save_dir={ck}",
                           *target_overrides(mode, target)])
        model, state = load_model(f"{ck}/checkpoint_last.pt")
        crit = state["cfg"]["criterion"]
        run_targets = {"cnn": crit["target_cnn_sparsity"], "transformer": crit["target_transformer_sparsity"]} if mode == "sep_size" \
            else {mode: crit["target_sparsity"]}
        seconds = crit["macs_seconds"]
        dense = cost_model.cost(model.spec, None, seconds)
        expected = MEASURES[mode](cost_model.cost(model.spec, model.gates.keep_probs(), seconds), dense)
        masked = MEASURES[mode](cost_model.cost(model.spec, model.gates.deterministic(), seconds), dense)
        measured = export_and_measure(ck, f"{out}/slim_{tag}.pt", seconds)
        aligned = export_and_measure(ck, f"{out}/slim_{tag}_align{align}.pt", seconds, "--align", str(align)) \
            if align > 1 else None
        for n in names:
            rows.append((mode, n, run_targets[n], cost_model.to_float(expected[n]), cost_model.to_float(masked[n]),
                         measured[REPORT_KEY[n]], aligned[REPORT_KEY[n]] if aligned else float("nan"),
                         state["optimizer_history"][-1]["num_updates"]))
    print(f"{'mode':<17}{'quantity':<17}{'target':>7}{'expected':>10}{'masks':>8}{'slim':>8}{'aligned':>8}"
          f"{'|exp-t|':>9}{'|slim-t|':>9}{'|al-t|':>8}  updates")
    for mode, n, t, e, m, s, a, u in rows:
        print(f"{mode:<17}{n:<17}{t:>7.3f}{e:>10.4f}{m:>8.4f}{s:>8.4f}{a:>8.4f}{abs(e - t):>9.4f}{abs(s - t):>9.4f}"
              f"{abs(a - t):>8.4f}  {u}")
    ok = all(abs(e - t) <= 0.01 and abs(s - t) <= 0.005 and (align == 1 or abs(a - t) <= 0.005)
             for _, _, t, e, _, s, a, _ in rows)
    print(f"acceptance (expected within 0.01, slim{' and aligned' if align > 1 else ''} within 0.005 of target):",
          "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="acceptance_out")
    p.add_argument("--targets", type=float, nargs="+", help="prune each mode at each of these targets")
    p.add_argument("--align", type=int, default=1, help="also export with hjprune-export --align N")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="the modes to run (default: all)")
    a = p.parse_args()
    sys.exit(main(os.path.abspath(a.out), tuple(a.targets) if a.targets else (None,), a.align, tuple(a.modes)))
