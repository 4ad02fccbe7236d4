"""Every yaml under examples/ composes the way fairseq-hydra-train composes it, and builds
(model, criterion, optimizer, lr scheduler) without data."""

import glob
import os

import pytest
import torch
import yaml
from omegaconf import open_dict

from hjprune_fairseq.convert.slim_export import export_slim

from fairseq_fixtures import EXAMPLES as ROOT
from fairseq_fixtures import USER_DIR, compose_like_fairseq, letter_dictionary

SETS = sorted(d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d)))
MODES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, SETS[0], "mode", "*.yaml")))
DISTILL_SETS = ["tiny", "wav2vec2_base"]  # task-agnostic: SLU fine-tunes from these encoders
CASES = [(s, stage, None) for stage in ("finetune", "final", "parp") for s in SETS] + [
    (s, "prune", m) for s in SETS for m in MODES
] + [(s, "distill", m) for s in DISTILL_SETS for m in MODES]


class _Task:
    target_dictionary = letter_dictionary()
    source_dictionary = None


@pytest.fixture(scope="module")
def slim_ckpt(tmp_path_factory, w2v_pretrained):
    from fairseq_fixtures import save_like_trainer
    from test_slim import pruned_model

    d = tmp_path_factory.mktemp("ex")
    gated = save_like_trainer(pruned_model(w2v_pretrained), d / "gated.pt")
    export_slim(gated, str(d / "slim.pt"))
    return str(d / "slim.pt")


def test_every_yaml_is_covered():
    files = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)}
    covered = {f"{s}/{stage}.yaml" for s, stage, _ in CASES} | {f"{s}/mode/{m}.yaml" for s in SETS for m in MODES}
    covered.add("tiny/pretrain.yaml")  # test_pretrain_config_builds
    assert files == covered
    assert set(MODES) == {"macs", "size", "sep_size", "transformer_only", "latency"}


@pytest.mark.parametrize("config_set, stage, mode", CASES)
def test_example_builds(config_set, stage, mode, w2v_pretrained, slim_ckpt, tmp_path, fixture_latency_table):
    from fairseq import models, optim
    from fairseq.criterions import build_criterion
    from fairseq.optim import lr_scheduler

    overrides = [f"common.user_dir={USER_DIR}", f"task.data={tmp_path}",
                 f"model.w2v_path={slim_ckpt if stage == 'final' else w2v_pretrained}"]
    if mode:
        overrides.append(f"mode={mode}")
    if mode == "latency":  # the table is machine-specific: the yaml requires it (???)
        overrides.append(f"criterion.latency_table={fixture_latency_table}")
    if stage == "distill":
        overrides.append("model.distill_layers='1,2'")  # the test checkpoint has two layers
    cfg = compose_like_fairseq(os.path.join(ROOT, config_set), stage, overrides)
    assert cfg.model._name.startswith("hjprune_")
    with open(os.path.join(ROOT, config_set, f"{stage}.yaml")) as f:
        assert yaml.safe_load(f)["hydra"]["run"]["dir"] == "."  # else hydra changes the working dir
    with open_dict(cfg):
        cfg.common.fp16 = False  # CPU build of a GPU config
    model = models.build_model(cfg.model, _Task())
    criterion = build_criterion(cfg.criterion, _Task())
    params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
    optimizer = optim.build_optimizer(cfg.optimizer, params)
    scheduler = lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, optimizer)
    scheduler.step_update(1)
    assert optimizer.get_lr() > 0
    if stage in ("prune", "distill"):
        assert cfg.criterion.sparsity_mode == mode and model.gates is not None
        penalty, logs = criterion.sparsity(model, 0)
        assert torch.isfinite(penalty)
        assert (model.gates.conv is None) == (mode == "transformer_only")
    elif stage == "parp":
        from hjprune_fairseq.core.parp import zero_fraction

        assert model.gates is None and zero_fraction(model.encoder) == pytest.approx(cfg.model.parp_sparsity, abs=1e-3)
    else:
        assert model.gates is None


def test_pretrain_config_builds_the_tiny_preset(tmp_path):
    """examples/tiny/pretrain.yaml is stock fairseq wav2vec2 pre-training of the 'tiny' preset."""
    from fairseq import models
    from fairseq.criterions import build_criterion

    from hjprune_fairseq.plugin.fairseq_import import spec_from_fairseq_cfg
    from hjprune_fairseq.core.presets import PRESETS

    cfg = compose_like_fairseq(os.path.join(ROOT, "tiny"), "pretrain", [f"common.user_dir={USER_DIR}", f"task.data={tmp_path}"])
    assert cfg.task._name == "audio_pretraining" and cfg.model._name == "wav2vec2"
    assert spec_from_fairseq_cfg(cfg.model, "wav2vec2", "pretrain.yaml") == PRESETS["tiny"]
    model = models.build_model(cfg.model, _Task())
    build_criterion(cfg.criterion, _Task())
    assert sum(p.numel() for p in model.parameters()) > 2_000_000
