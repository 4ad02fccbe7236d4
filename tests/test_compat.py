"""Each fairseq quirk that compat.py works around is still there (else the workaround can go)."""

import inspect
import subprocess
import sys

import numpy as np
import pytest

from hjprune_fairseq.plugin import compat


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_fairseq_torch_load_needs_safe_globals(stock_ctc, w2v_pretrained, hubert_pretrained):
    from fairseq import checkpoint_utils

    assert "weights_only" not in inspect.getsource(checkpoint_utils.load_checkpoint_to_cpu)
    # Without the plugin, fairseq cannot load its own HuBERT checkpoint (pickled Dictionary).
    plain = run(f"from fairseq import checkpoint_utils; checkpoint_utils.load_checkpoint_to_cpu({hubert_pretrained!r})")
    assert plain.returncode != 0 and "weights_only" in plain.stderr
    fixed = run(
        "import hjprune_fairseq; from fairseq import checkpoint_utils; "
        f"s = checkpoint_utils.load_checkpoint_to_cpu({hubert_pretrained!r}); print(type(s['task_state']['dictionaries'][0]).__name__)"
    )
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.strip() == "Dictionary"


def test_numpy_scalars_and_namespace_load(tmp_path):
    import argparse

    import torch

    path = tmp_path / "meters.pt"
    torch.save({"args": argparse.Namespace(a=1), "best": np.float64(0.5), "n": np.int64(3)}, path)
    s = torch.load(path)  # weights_only=True by default; compat.install() ran at import
    assert s["best"] == 0.5 and s["args"].a == 1


def test_no_mask_overlap_still_broken_in_fairseq():
    from fairseq.data.data_utils import compute_mask_indices

    with pytest.raises(AttributeError, match="int"):
        compute_mask_indices((2, 50), None, 0.5, 5, no_overlap=True)
    with pytest.raises(ValueError, match="np.int"):
        compat.check_no_overlap(True, False)
    compat.check_no_overlap(False, False)


def test_fairseq_import_sets_debug_logging_but_plugin_import_does_not():
    quirk = run("import logging, fairseq.models; print(logging.getLogger().level)")
    assert quirk.returncode == 0 and quirk.stdout.strip() == "10"
    plugin = run("import logging, hjprune_fairseq; r = logging.getLogger(); print(r.level, len(r.handlers))")
    assert plugin.returncode == 0 and plugin.stdout.strip() == "30 0"


def test_torchaudio_never_imported():
    r = run("import sys, hjprune_fairseq; from hjprune_fairseq.cli import cost, export, bench; print('torchaudio' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False"


def test_fairseq_batching_drops_the_last_batch_but_the_task_does_not():
    """Quirk 4: 13 utterances, required_batch_size_multiple=8 -> fairseq keeps 8."""
    from fairseq.data import data_utils

    sizes = np.arange(10000, 10013, dtype=np.int64)
    kept = data_utils.batch_by_size(np.arange(13, dtype=np.int64), lambda i: sizes[i], num_tokens_vec=sizes,
                                    max_tokens=10**6, required_batch_size_multiple=8)
    assert sum(len(b) for b in kept) == 8
    assert compat.batch_multiple_that_keeps_every_utterance(8) == 1


def test_fairseq_generate_swaps_in_the_checkpoints_dictionary_before_building_the_model():
    """Quirk 5: the task state (its pickled target dictionary) is merged before build_model, so the
    plugin's task compares the dictionary file, not self.target_dictionary."""
    from fairseq import checkpoint_utils

    src = inspect.getsource(checkpoint_utils.load_model_ensemble_and_task)
    assert src.index("task.load_state_dict(state[\"task_state\"])") < src.index("task.build_model(")


def test_fairseq_loader_does_not_name_a_bad_file(tmp_path, w2v_pretrained):
    """Quirk 6: without the plugin, a truncated checkpoint fails without its file name."""
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(w2v_pretrained, "rb").read()[:3000])
    plain = run(f"from fairseq import checkpoint_utils; checkpoint_utils.load_checkpoint_to_cpu({str(cut)!r})")
    assert plain.returncode != 0 and "cut.pt" not in plain.stderr.strip().splitlines()[-1]
    fixed = run(f"import hjprune_fairseq; from fairseq import checkpoint_utils; "
                f"checkpoint_utils.load_checkpoint_to_cpu({str(cut)!r})")
    last = fixed.stderr.strip().splitlines()[-1]
    assert fixed.returncode != 0 and last.startswith(f"ValueError: {cut}: not a readable fairseq checkpoint (")


def test_hydra_prints_a_compact_exception_as_its_message():
    """Quirk 7: hydra prints a CompactHydraException as str(e) alone, any other as a traceback."""
    from hydra._internal import utils as hydra_utils

    src = inspect.getsource(hydra_utils.run_and_report)
    assert "isinstance(ex, CompactHydraException)" in src and "sys.stderr.write(str(ex)" in src
    assert issubclass(compat.OneLineError, ValueError)
    assert compat.as_user_error(ValueError("x")).__class__ is ValueError  # outside a hydra job: unchanged


def test_fairseq_tri_stage_fails_on_a_small_max_update():
    """Quirk 8: phase_ratio [0.1, 0.6, 0.3] and max_update 3 leave the decay phase 0 steps."""
    import torch
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
    from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRSchedule, TriStageLRScheduleConfig
    from omegaconf import OmegaConf

    opt = FairseqAdam(OmegaConf.structured(FairseqAdamConfig(lr=[1e-3], tpu=False)), [torch.nn.Parameter(torch.zeros(1))])
    cfg = OmegaConf.structured(TriStageLRScheduleConfig(phase_ratio=[0.1, 0.6, 0.3], max_update=3, lr=[1e-3]))
    with pytest.raises(ZeroDivisionError):
        TriStageLRSchedule(cfg, opt)
    with pytest.raises(ValueError, match="use max_update >= 4"):
        compat.check_tri_stage_steps(3, [0.1, 0.6, 0.3], 0, 0, 0)
    compat.check_tri_stage_steps(4, [0.1, 0.6, 0.3], 0, 0, 0)



def test_fairseq_masking_is_not_reproducible_without_a_seed():
    """Quirk 9: without seed/epoch/indices compute_mask_indices draws from OS entropy, whatever numpy's
    global seed; inside numpy_seeded_from_torch (which yields the seed passed on) the same torch seed
    gives the same masks, and numpy's global state is left as it was."""
    import torch
    from fairseq.data.data_utils import compute_mask_indices

    unseeded = []
    for _ in range(2):
        np.random.seed(0)
        unseeded.append(compute_mask_indices((4, 200), None, 0.33, 5, min_masks=2))
    assert not np.array_equal(unseeded[0], unseeded[1])
    seeded = []
    for _ in range(2):
        torch.manual_seed(7)
        state = np.random.get_state()[1].copy()
        with compat.numpy_seeded_from_torch() as seed:
            seeded.append(compute_mask_indices((4, 200), None, 0.33, 5, min_masks=2, seed=seed, epoch=1,
                                               indices=torch.arange(4)))
        assert np.array_equal(state, np.random.get_state()[1])
    assert np.array_equal(seeded[0], seeded[1])
    assert compat.fairseq_training_fns().compute_mask_indices is compute_mask_indices


def test_fairseq_builds_models_from_a_merged_copy_of_their_config():
    """Quirk 10: what a model writes into its cfg while building is lost unless written back."""
    from fairseq import models
    from omegaconf import OmegaConf

    assert "merge_with_parent(" in inspect.getsource(models.build_model)
    model_cfg = OmegaConf.create({"_name": "x", "encoder_spec": None})
    compat.write_back_model_fields(OmegaConf.create({"encoder_spec": {"d": 1}, "other": 2}), model_cfg, ["encoder_spec"])
    assert model_cfg.encoder_spec == {"d": 1} and "other" not in model_cfg


def test_fairseq_generate_loads_data_with_the_saved_task_config():
    """Quirk 11: the checkpoint's task section reaches load_dataset; fields it lacks keep today's values."""
    from fairseq_cli import generate
    from omegaconf import OmegaConf

    assert "task_cfg=saved_cfg.task" in inspect.getsource(generate._main)
    current = OmegaConf.create({"data": "new", "labels": "ltr", "check_audio": True})
    merged = compat.complete_saved_task_cfg(current, {"_name": "old", "data": "old", "labels": "wrd"})
    assert dict(merged) == {"data": "old", "labels": "wrd", "check_audio": True}


def test_distributed_models_are_wrapped():
    """Quirk 12: fairseq's DDP wrappers hold the model in .module."""
    import torch
    from fairseq.distributed import ModuleProxyWrapper

    assert "self.module = module" in inspect.getsource(ModuleProxyWrapper.__init__)
    inner = torch.nn.Linear(2, 2)
    wrapped = type("W", (), {"module": inner})()
    assert compat.unwrap(wrapped) is inner and compat.unwrap(inner) is inner


def test_fp16_flattens_parameters_unless_told_not_to():
    """Quirk 13: FP16Optimizer's flat fp32 copy is one parameter without the group tags (built on a
    CUDA device, so the check is given such a parameter)."""
    import torch
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    src = inspect.getsource(FP16Optimizer.build_fp32_params)
    assert "if flatten:" in src and "fp32_params[device] = torch.nn.Parameter(fp32_params[device])" in src
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    b.param_group = "hjprune_gate"
    with pytest.raises(ValueError, match="fp16_no_flatten_grads=true"):
        compat.check_not_flattened([torch.nn.Parameter(torch.cat([a, b]).detach())])
    compat.check_not_flattened(FP16Optimizer.build_fp32_params(None, [a, b], flatten=False))


def test_fairseq_names_no_architecture_on_a_nested_model_config(monkeypatch, w2v_pretrained):
    """Quirk 14: fairseq infers the model type of a config nested under the model's name, and the
    merged copy it builds the model from has no ``_name``; the model writes its registered name."""
    import types

    from fairseq import models
    from fairseq_fixtures import letter_dictionary
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.models.ctc import HJPruneGatedCtc

    def nested():
        return OmegaConf.create({"hjprune_wav2vec_ctc": {"w2v_path": w2v_pretrained, "normalize": False,
                                                         "feature_grad_mult": 1.0}})

    task = types.SimpleNamespace(target_dictionary=letter_dictionary())
    given = {}
    with monkeypatch.context() as m:
        m.setattr(HJPruneGatedCtc, "build_model", classmethod(lambda cls, cfg, task: given.setdefault("cfg", cfg)))
        models.build_model(nested(), task)
    assert given["cfg"].w2v_path == w2v_pretrained and given["cfg"]._name is None
    model = models.build_model(nested(), task)
    assert type(model) is HJPruneGatedCtc and model.cfg._name == "hjprune_wav2vec_ctc"


def test_transformers_imports_torchaudio_unless_told_it_is_absent(tmp_path):
    """Quirk 15: transformers imports torchaudio whenever it can find it, so an installed torchaudio that does not load
    (fairseq-fixed pulls 2.11.1, which fails on torch 2.13) breaks its audio classes; the set-up uninstalls it, and
    import_transformers hides one that is still installed (here a stand-in that fails as 2.11.1 does). That
    transformers' own pipeline runs in this environment without any such trick: tests/test_hf_export.py."""
    import importlib.util
    import os

    # The environment the set-up makes (make, the README's install line): no torchaudio, transformers left as it is.
    assert importlib.util.find_spec("torchaudio") is None, "torchaudio is installed: the set-up must uninstall it"
    assert compat.import_transformers().utils.is_torchaudio_available.__module__ == "transformers.utils.import_utils"
    broken = tmp_path / "torchaudio"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise OSError('Could not load this library: stand-in _torchaudio.so')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    code = ("import sys; {}from transformers import Wav2Vec2FeatureExtractor; import transformers.utils; "
            "print('torchaudio' in sys.modules, transformers.utils.is_torchaudio_available.__module__)")
    stock = subprocess.run([sys.executable, "-c", code.format("")], capture_output=True, text=True, timeout=300,
                           env=env)
    assert stock.returncode != 0 and "stand-in _torchaudio.so" in stock.stderr  # the quirk: transformers imported it
    ours = subprocess.run([sys.executable, "-c", code.format("from hjprune_fairseq.plugin import compat; "
                                                              "compat.import_transformers(); ")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.split() == ["False", "hjprune_fairseq.plugin.compat"]  # hidden, never imported


@pytest.fixture
def one_process_group():
    """A gloo group of this process alone (fairseq's DDP wrappers need one), removed afterwards."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_legacy_ddp_reduces_every_gradient_in_the_first_parameters_dtype(one_process_group):
    """Quirk 16: fairseq's legacy DDP copies every gradient through one buffer of the dtype of the model's first
    parameter (fp16 under common.fp16): fp32 gate gradients come back rounded or inf. all_reduce_grads_by_dtype
    reduces each dtype in its own buffer, the 16-bit weights as fairseq does. (Two ranks: test_mixed_precision.)"""
    import torch
    from fairseq.distributed import LegacyDistributedDataParallel
    from fairseq.models import DistributedFairseqModel
    from omegaconf import OmegaConf

    from hjprune_fairseq.core.hard_concrete import HardConcrete

    assert "self.buffer = next(self.module.parameters()).new(self.buffer_size)" in inspect.getsource(
        LegacyDistributedDataParallel.all_reduce_grads)
    args = OmegaConf.create({"tpu": False, "ddp_backend": "legacy_ddp", "heartbeat_timeout": -1})
    gate_grad = torch.tensor([1e5, 1.0001, 3e-8])

    def wrapped_model(seed):
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), HardConcrete((3,)), torch.nn.Linear(3, 200)).half()
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        model[1].log_alpha.grad = gate_grad.clone()
        return model, DistributedFairseqModel(args, model, process_group=one_process_group, device="cpu")

    stock, stock_wrapped = wrapped_model(0)
    stock_wrapped.all_reduce_grads()
    assert stock[1].log_alpha.grad.tolist() == [float("inf"), 1.0, 2 ** -24]  # through fp16
    ours, ours_wrapped = wrapped_model(0)
    ours_wrapped.module.buffer_size = 100  # several buckets; the last Linear's weight alone, larger than one
    assert compat.all_reduce_grads_by_dtype(ours_wrapped)
    assert torch.equal(ours[1].log_alpha.grad, gate_grad)
    for a, b in zip(stock.parameters(), ours.parameters()):
        if a.dtype == torch.float16:
            assert torch.equal(a.grad, b.grad)
    with ours_wrapped.no_sync():  # update_freq > 1: nothing is reduced until the last micro-batch
        ours[1].log_alpha.grad[0] = float("nan")
        assert compat.all_reduce_grads_by_dtype(ours_wrapped)
    assert not compat.all_reduce_grads_by_dtype(torch.nn.Linear(2, 2))  # not a legacy DDP wrapper: nothing done


def test_fp16_optimizer_clips_every_master_with_the_factor_of_the_weights():
    """Quirk 17: FP16Optimizer (fp16 and bf16) folds the clip factor into the multiply factor applied to every fp32
    master, whatever the wrapped optimizer clips: with fairseq's SGD a gate's update is clipped with the weights'.
    With a wrapped optimizer that has multiply_clipped_grads, the factor goes there and nowhere else."""
    import argparse

    import torch
    from fairseq.optim.fp16_optimizer import FP16Optimizer, _FP16OptimizerMixin
    from fairseq.optim.sgd import SGD
    from omegaconf import OmegaConf

    assert "self._multiply_factor *= max_norm / grad_norm" in inspect.getsource(_FP16OptimizerMixin.clip_grad_norm)
    assert FP16Optimizer.clip_grad_norm.lets_the_optimizer_clip  # installed by hjprune_adamw's import
    cfg = OmegaConf.create({"optimizer": {}, "optimization": {"update_freq": [1]},
                            "common": {"bf16": True, "fp16_scale_window": 1}})

    def clipped_update(wrapped_cls):
        weight, gate = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16)), torch.nn.Parameter(torch.zeros(1))
        masters = FP16Optimizer.build_fp32_params(None, [weight, gate], flatten=False)
        sgd = wrapped_cls(argparse.Namespace(lr=[1.0], momentum=0.0, weight_decay=0.0), masters)
        opt = FP16Optimizer(cfg, [weight, gate], sgd, masters)
        opt.zero_grad()
        opt.backward(weight.float().sum() * 50.0 + gate.sum())  # weights' norm 100, the gate's gradient 1
        assert opt.clip_grad_norm(10.0) == pytest.approx(100.0, rel=1e-4)
        opt.step()
        return weight.float(), gate

    class ClipsWeights(SGD):
        def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
            return self.param_groups[0]["params"][0].grad.norm()

        def multiply_clipped_grads(self, c):
            self.param_groups[0]["params"][0].grad.mul_(c)

    weight, gate = clipped_update(SGD)
    assert gate.item() == pytest.approx(-0.1, rel=1e-4)  # clipped with the weights
    weight, gate = clipped_update(ClipsWeights)
    assert gate.item() == -1.0 and weight.tolist() == pytest.approx([-5.0] * 4, rel=1e-2)


def broadcast_a_config(rank: int, port: int, out: str) -> None:
    """One of two ranks: rank 0 broadcasts a checkpoint-like object through fairseq, with fairseq's own receiving
    side and then the plugin's; each rank writes what it got (or the error's type) to OUT/rankR.txt."""
    import torch
    import torch.distributed as dist
    from fairseq.distributed import utils as distributed_utils
    from omegaconf import OmegaConf

    torch.set_num_threads(1)  # a forked child
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    state = {"cfg": OmegaConf.create({"model": {"_name": "hjprune_wav2vec_ctc"}}), "model": {"w": torch.ones(2)}}
    got = []
    for slow in (distributed_utils._broadcast_object_slow.__wrapped__, distributed_utils._broadcast_object_slow):
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(distributed_utils, "_broadcast_object_slow", slow)
                obj = distributed_utils.broadcast_object(state if rank == 0 else None, src_rank=0, group=dist.group.WORLD)
            got.append(f"{obj['cfg'].model._name} {obj['model']['w'].tolist()}")
        except Exception as e:  # the receiving rank's torch.load refuses the DictConfig
            got.append(type(e).__name__)
            # fairseq's broadcast of the tensors that follows never happens on the failing rank: finish it
            distributed_utils.broadcast_tensors(None if rank else [state["model"]["w"]], 0, dist.group.WORLD)
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write("\n".join(got))
    dist.destroy_process_group()


def test_fairseq_ranks_cannot_load_the_checkpoint_rank_0_broadcasts(tmp_path):
    """Quirk 18: resuming with several processes, rank 0 broadcasts the checkpoint it loaded and the others read it
    with torch.load's weights-only default, which refuses the saved config (DictConfig)."""
    import socket
    import time

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = torch.multiprocessing.start_processes(broadcast_a_config, args=(port, str(tmp_path)), nprocs=2, join=False,
                                                  start_method="fork")
    deadline = time.monotonic() + 60
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail("the two ranks did not finish within 60 s")
    expected = "hjprune_wav2vec_ctc [1.0, 1.0]"
    assert (tmp_path / "rank0.txt").read_text().splitlines() == [expected, expected]
    assert (tmp_path / "rank1.txt").read_text().splitlines() == ["UnpicklingError", expected]


def test_budget_checkpoints_follow_fairseqs_save_and_loop():
    """Quirk 19: the loop calls validate_and_save by its module name after every update, with these arguments;
    checkpoint_utils.save_checkpoint builds the extra_state fairseq_extra_state copies; trainer.save_checkpoint
    takes (filename, extra_state)."""
    from fairseq import checkpoint_utils
    from fairseq.trainer import Trainer
    from fairseq_cli import train as fairseq_train

    assert list(inspect.signature(fairseq_train.validate_and_save).parameters) == [
        "cfg", "trainer", "task", "epoch_itr", "valid_subsets", "end_of_epoch"]
    assert "valid_losses, should_stop = validate_and_save(" in inspect.getsource(fairseq_train.train)
    save = inspect.getsource(checkpoint_utils.save_checkpoint)
    for line in ('"train_iterator": epoch_itr.state_dict(),', '"val_loss": val_loss,',
                 'extra_state = {**extra_state, **trainer.task.get_checkpoint_dict()}',
                 'extra_state.update({"best": save_checkpoint.best})', 'trainer.save_checkpoint(checkpoints[0], extra_state)'):
        assert line in save, line
    assert save.count("extra_state[") == 0 and save.count("extra_state.update(") == 1  # nothing else goes in
    assert list(inspect.signature(Trainer.save_checkpoint).parameters) == ["self", "filename", "extra_state"]
    compat.save_budget_checkpoints()
    compat.save_budget_checkpoints()  # idempotent
    assert fairseq_train.validate_and_save.saves_budget_checkpoints
    assert fairseq_train.validate_and_save.__wrapped__.__module__ == "fairseq_cli.train"
