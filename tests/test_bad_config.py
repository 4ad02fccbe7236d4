"""Bad prune configs fail with a clear error before any training starts."""

import os

import pytest
from fairseq_fixtures import EXAMPLES, USER_DIR, compose_like_fairseq, hydra_train, letter_dictionary

TINY = os.path.join(EXAMPLES, "tiny")


class _Task:
    target_dictionary = letter_dictionary()


def build_criterion(overrides):
    from fairseq.criterions import build_criterion as build

    cfg = compose_like_fairseq(TINY, "prune", [f"common.user_dir={USER_DIR}", "task.data=x", "model.w2v_path=x", *overrides])
    return build(cfg.criterion, _Task())


@pytest.mark.parametrize("overrides, message", [
    (["criterion.target_sparsity=1.2"], r"target sparsity for macs must be in \[0, 1\), got 1.2"),
    (["mode=size", "criterion.target_sparsity=-0.5"], r"target sparsity for size must be in \[0, 1\)"),
    (["mode=sep_size", "criterion.target_cnn_sparsity=null"], "sep_size needs criterion.target_cnn_sparsity"),
    (["criterion.macs_seconds=0"], "macs_seconds must be positive"),
])
def test_bad_sparsity_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_criterion(overrides)


def test_missing_w2v_path_fails_before_training(tmp_path):
    missing = tmp_path / "missing.pt"
    letter_dictionary(str(tmp_path / "dict.ltr.txt"))  # the task is set up before the model
    r = hydra_train(TINY, "prune", [f"common.user_dir={USER_DIR}", f"task.data={tmp_path}",
                                    f"model.w2v_path={missing}", f"checkpoint.save_dir={tmp_path / 'ck'}"], cwd=str(tmp_path))
    assert r.returncode != 0
    assert f"{missing}: checkpoint not found" in r.stderr
    assert not list((tmp_path / "ck").glob("*.pt"))  # fairseq makes the folder up front; nothing was trained


@pytest.mark.parametrize("config, max_update, smallest", [
    ("finetune", 1, 2),  # phase_ratio [0.1, 0.4, 0.5]
    ("prune", 1, 4), ("prune", 3, 4),  # [0.1, 0.6, 0.3]
])
def test_max_update_too_small_for_the_schedule(config, max_update, smallest):
    from fairseq.optim.lr_scheduler import build_lr_scheduler

    cfg = compose_like_fairseq(TINY, config, [f"common.user_dir={USER_DIR}", "task.data=x", "model.w2v_path=x",
                                              f"optimization.max_update={max_update}"])
    with pytest.raises(ValueError, match=rf"optimization.max_update={max_update} is too small for lr_scheduler "
                                         r"tri_stage with phase_ratio \[0\.1, 0\.\d, 0\.\d\]: its decay phase gets no "
                                         r"update; use max_update >= " + str(smallest)):
        build_lr_scheduler(cfg.lr_scheduler, optimizer=None)


def test_the_smallest_max_update_named_works(tmp_path, w2v_pretrained):
    from fairseq_fixtures import make_letter_corpus, train_ok

    data = make_letter_corpus(str(tmp_path / "d"), {"train": 2, "valid": 1})
    log = train_ok(TINY, "finetune", data, w2v_pretrained, tmp_path / "ck", ["optimization.max_update=2"])
    assert "done training" in log
