"""The one place that works around fairseq-fixed 0.12.3.1 (and transformers) quirks on Python 3.11 / torch 2.13.

Each workaround has a test in ``tests/test_compat.py`` that fails loudly when the quirk changes
(so the workaround can be dropped or revisited).

1. ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, but fairseq's
   ``checkpoint_utils.load_checkpoint_to_cpu`` does not pass ``weights_only=False``: loading any
   fairseq checkpoint fails on the pickled ``Dictionary`` (HuBERT task state), ``argparse.Namespace``
   (old official checkpoints) or numpy scalars (trainer meters). We allow exactly those types.
2. ``compute_mask_indices(..., no_overlap=True)`` uses ``np.int``, removed in numpy 2: configs that
   ask for ``no_mask_overlap`` / ``no_mask_channel_overlap`` are refused (:func:`check_no_overlap`).
3. ``fairseq/models/wav2vec/wav2vec2_classification.py`` calls ``logging.basicConfig(level=DEBUG)``
   at import, and importing ``fairseq.models`` imports it: :func:`keep_root_logging` undoes that side
   effect around the plugin's first fairseq import, so a library import does not reconfigure logging.
4. ``fairseq.data.data_utils.batch_by_size`` DROPS the last batch when its size is not a multiple of
   ``required_batch_size_multiple`` (default 8): validation and fairseq-generate silently skip up to
   7 utterances, so WER and accuracy cover a subset. The plugin's tasks batch with a multiple of 1
   (:func:`batch_multiple_that_keeps_every_utterance`).
5. fairseq-generate replaces the task's target dictionary by the one pickled in the checkpoint's
   task state (``load_model_ensemble_and_task``) after it took ``tgt_dict`` from the data folder: the
   references are encoded with one and printed with the other, so a different data dictionary decodes
   to garbage without a word. The plugin's task compares the dictionary FILE with the model's record.
6. ``checkpoint_utils.load_checkpoint_to_cpu`` lets torch's error escape for a truncated or foreign
   file (``PytorchStreamReader failed ...``, a multi-line weights-only message), without the file
   name: :func:`name_checkpoint_errors` wraps it so the error is one line naming the file. It serves
   fairseq-generate, fairseq's resume from ``checkpoint_last.pt`` and the plugin's own loading.
7. fairseq-hydra-train reports any exception as hydra's traceback: the plugin's own errors (bad data,
   bad config, bad checkpoint) are raised as :class:`OneLineError` there, which hydra prints as the
   one line it is (:func:`one_line_errors`).
8. fairseq's ``tri_stage`` scheduler fails on a small ``max_update`` with an assertion or a
   ZeroDivisionError: :func:`check_tri_stage_steps` names the smallest value that works.
9. ``compute_mask_indices`` draws from OS entropy unless given seed/epoch/indices (and, with
   ``num_mask_ver=1``, from numpy's global RNG, which fairseq does not reseed per update as it does
   torch's): the masking passed to the core encoder (:func:`fairseq_training_fns`) runs inside
   :func:`numpy_seeded_from_torch`, which gives it a seed drawn from torch and seeds numpy from it.
10. fairseq's ``models.build_model`` configures the model from a merged COPY of ``cfg.model``
   (``merge_with_parent``), so what the model learns while building (its encoder shape, read from
   ``w2v_path``) does not reach the config the trainer saves: :func:`write_back_model_fields`.
11. fairseq-generate gives ``load_dataset`` the checkpoint's saved task section, which an older
   fairseq may have written without fields this one reads: :func:`complete_saved_task_cfg`.
12. Distributed training wraps the model (``.module``): :func:`unwrap`.
13. ``common.fp16`` / ``bf16`` flatten every parameter into one unless
   ``common.fp16_no_flatten_grads``, which loses the optimizer's gate and multiplier groups:
   :func:`check_not_flattened`.
14. The merged copy of quirk 10 names no architecture (``_name`` None) when fairseq inferred the
   model type from a config nested under the model's name; a model built by its ``from_config``
   (scripts, tests) has no ``_name`` either. A checkpoint written from such a ``model.cfg`` would not
   say what it is: the model names itself (:func:`name_the_architecture`).
15. fairseq-fixed requires torchaudio, and pip installs 2.11.1, whose library loads with no torch 2.13 (no
   release matches it); transformers imports torchaudio whenever it can FIND it (``is_torchaudio_available``
   does not load it), so ``from transformers import Wav2Vec2ForCTC`` then fails with ``OSError``. Only
   fairseq's fbank and TTS code imports torchaudio, lazily: the set-up (``make``, the README's install line)
   uninstalls it, and where it is still installed :func:`import_transformers` tells transformers it is absent.
16. fairseq's legacy DDP (``ddp_backend: legacy_ddp``, alias ``no_c10d``) all-reduces every gradient
   through ONE buffer of the dtype of the model's first parameter: under fp16/bf16 the fp32 gate
   gradients travel in 16 bits (fp16: 1e5 -> inf, which lowers the loss scale; 3e-8 -> 5.96e-8).
   ``hjprune_adamw.all_reduce_grads`` (the hook the trainer calls for the model and the criterion)
   reduces through :func:`all_reduce_grads_by_dtype` instead: each dtype in its own buffer, the 16-bit
   weights exactly as fairseq does. ``pytorch_ddp`` (``c10d``) buckets by dtype already, except with
   ``ddp_comm_hook: fp16``, which compresses every bucket to fp16: hjprune_adamw refuses it, and the
   ``slowmo`` and ``fully_sharded`` backends (fairscale's, not checked here).
17. ``FP16Optimizer.clip_grad_norm`` (fp16 and bf16) folds the clip factor into the multiply factor
   that is later applied to EVERY fp32 master copy, whatever the wrapped optimizer clips itself: the
   gates and multipliers were clipped with the weights. :func:`clip_only_what_the_optimizer_clips`
   makes it hand the factor to a wrapped optimizer that has ``multiply_clipped_grads`` (hjprune_adamw:
   the weights' masters); fairseq's clip rule, norm and overflow check are unchanged.
18. Resuming a run of several processes: rank 0 loads the checkpoint and broadcasts it, and the other
   ranks read it with ``torch.load`` without ``weights_only=False`` (``distributed/utils.py``
   ``_broadcast_object_slow``), which refuses the ``DictConfig`` of the saved config: every rank but 0
   crashes. :func:`load_what_rank_0_broadcasts` reads what rank 0 sent (a checkpoint it loaded with the
   safe globals of quirk 1) with ``weights_only=False``.
19. fairseq saves checkpoints at epoch ends and every ``save_interval_updates``, under names of its own; a
   budget ladder needs one at the end of each rung's hold (``checkpoint_budget_0.40.pt``), at updates
   fairseq knows nothing of, with the state fairseq's own checkpoints hold (so a run resumes from it).
   :func:`save_budget_checkpoints` wraps ``fairseq_cli.train.validate_and_save`` (which the training loop
   calls after every update): after it, the criterion is asked for a checkpoint at this update
   (``budget_checkpoint``), written by ``trainer.save_checkpoint`` with the ``extra_state`` that
   ``checkpoint_utils.save_checkpoint`` builds (:func:`fairseq_extra_state`) plus the rung's budget.
   Installed by a criterion with a ladder (importing ``fairseq_cli.train`` costs every other use 0.3 s).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import logging
from typing import Iterator

import numpy as np
import torch

from ..core.encoder import TrainingFns

logger = logging.getLogger(__name__)


def _numpy_scalar_types() -> list:
    # numpy scalars pickle through numpy.core.multiarray.scalar (numpy 2: numpy._core) + dtype objects.
    from numpy._core.multiarray import scalar  # type: ignore[attr-defined]

    types = [scalar, np.dtype]
    types += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return types


def fairseq_safe_globals() -> list:
    """The classes fairseq checkpoints pickle besides tensors and plain containers."""
    from fairseq.data.dictionary import Dictionary

    return [Dictionary, argparse.Namespace] + _numpy_scalar_types()


def install() -> None:
    """Register the safe globals and wrap fairseq's checkpoint loader (idempotent)."""
    torch.serialization.add_safe_globals(fairseq_safe_globals())
    name_checkpoint_errors()
    load_what_rank_0_broadcasts()


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (torch's messages run over many lines)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def name_checkpoint_errors() -> None:
    """Make fairseq's checkpoint loader name the file in a one-line error (quirk 6)."""
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "names_the_file", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as e:  # torch and pickle raise many types for a bad file
            raise as_user_error(ValueError(f"{path}: not a readable fairseq checkpoint ({first_line(e)}); "
                                           "expected a .pt file written by fairseq")) from e

    load_checkpoint_to_cpu.names_the_file = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def _hydra_job_running() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return False
    return HydraConfig.initialized()


def _one_line_error_class():
    from hydra.errors import CompactHydraException

    class OneLineError(CompactHydraException, ValueError):
        """A plugin error that fairseq-hydra-train prints as its message alone (quirk 7)."""

    return OneLineError


OneLineError = _one_line_error_class()
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def as_user_error(e: Exception) -> Exception:
    """``e`` itself, or under fairseq-hydra-train the same message as a :class:`OneLineError`."""
    if isinstance(e, OneLineError) or not _hydra_job_running():
        return e
    return OneLineError(f"hjprune: error: {e}")


def one_line_errors(fn):
    """Decorate a plugin hook fairseq calls (task, optimizer, scheduler): under fairseq-hydra-train its
    errors reach the user as one line instead of a traceback (quirk 7)."""
    @functools.wraps(fn)
    def hook(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            converted = as_user_error(e)
            if converted is e:
                raise
            raise converted from e

    return hook


def check_tri_stage_steps(max_update: int, phase_ratio, warmup: int, hold: int, decay: int) -> None:
    """Refuse a tri_stage schedule fairseq cannot build (quirk 8), naming the smallest max_update that works."""
    if phase_ratio is None:
        if decay < 1:
            raise ValueError(f"lr_scheduler.decay_steps must be at least 1 for tri_stage, got {decay}")
        return

    def decay_steps(n: int) -> int:
        return int(n * phase_ratio[2])  # fairseq's own rounding

    if max_update < 1 or decay_steps(max_update) < 1:
        smallest = next(n for n in range(1, 10**7) if decay_steps(n) >= 1)
        raise ValueError(
            f"optimization.max_update={max_update:g} is too small for lr_scheduler tri_stage with phase_ratio "
            f"{list(phase_ratio)}: its decay phase gets no update; use max_update >= {smallest}"
        )


def check_no_overlap(no_mask_overlap: bool, no_mask_channel_overlap: bool) -> None:
    """Refuse masking options that crash inside fairseq on numpy 2 (quirk 2)."""
    if no_mask_overlap or no_mask_channel_overlap:
        raise ValueError(
            "no_mask_overlap / no_mask_channel_overlap must be false: fairseq-fixed 0.12.3.1's "
            "compute_mask_indices uses np.int there, which numpy 2 removed"
        )


@contextlib.contextmanager
def keep_root_logging() -> Iterator[None]:
    """Restore the root logger's level and handlers after importing fairseq (quirk 3)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


@contextlib.contextmanager
def numpy_seeded_from_torch() -> Iterator[int]:
    """Yield a seed drawn from torch's RNG and run numpy's global RNG from it, then restore numpy (quirk 9).

    fairseq reseeds torch at every update (``common.seed + num_updates``) but not numpy.
    ``compute_mask_indices`` draws from numpy's global RNG and, unless given seed/epoch/indices, from
    ``np.random.default_rng(None)`` (OS entropy): with both seeded from torch, masking is
    reproducible and a resumed run continues exactly as an uninterrupted one.
    """
    seed = int(torch.randint(0, 2**31 - 1, ()))
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield seed
    finally:
        np.random.set_state(state)


def fairseq_training_fns() -> TrainingFns:
    """fairseq's feature masking and CNN gradient scaling, as the core encoder takes them."""
    from fairseq.data.data_utils import compute_mask_indices
    from fairseq.modules import GradMultiply

    return TrainingFns(compute_mask_indices=compute_mask_indices, mask_seed=numpy_seeded_from_torch,
                       grad_multiply=GradMultiply.apply)


def batch_multiple_that_keeps_every_utterance(requested: int) -> int:
    """The ``required_batch_size_multiple`` to use instead of ``requested`` (quirk 4): always 1."""
    if requested != 1:
        _warn_batch_multiple(requested)
    return 1


@functools.lru_cache(maxsize=None)  # once per value: fairseq asks for an iterator every epoch
def _warn_batch_multiple(requested: int) -> None:
    logger.warning(
        "required_batch_size_multiple=%d would make fairseq drop the last batch of every epoch and of "
        "every evaluation (fairseq-fixed 0.12.3.1); using 1 so no utterance is skipped", requested,
    )


def write_back_model_fields(built_cfg, model_cfg, keys) -> None:
    """Copy ``keys`` the model set on its own config copy back into ``model_cfg`` (quirk 10)."""
    from omegaconf import open_dict

    if built_cfg is None:
        return
    with open_dict(model_cfg):
        for key in keys:
            if getattr(built_cfg, key, None) is not None:
                model_cfg[key] = built_cfg[key]


def complete_saved_task_cfg(current, saved):
    """``current`` task config updated with the ``saved`` one's values, for the fields both have
    (quirk 11): saved values win, fields an older fairseq did not write keep today's defaults."""
    from omegaconf import OmegaConf

    if saved is None or saved is current:
        return current
    values = OmegaConf.to_container(saved, resolve=True) if OmegaConf.is_config(saved) else dict(saved)
    return OmegaConf.merge(current, {k: v for k, v in values.items() if k in current and k != "_name"})


def unwrap(model):
    """The model inside fairseq's distributed wrapper, or the model itself (quirk 12)."""
    return getattr(model, "module", model)


def check_not_flattened(params) -> None:
    """Refuse the single flat parameter fp16/bf16 make without fp16_no_flatten_grads (quirk 13)."""
    if (len(params) == 1 and getattr(params[0], "param_group", None) is None and params[0].dim() == 1
            and params[0].numel() > 1):
        raise ValueError(
            "hjprune_adamw received one flat parameter: fp16/bf16 flattened the model, losing the gate and "
            "multiplier groups; set common.fp16_no_flatten_grads=true"
        )


def name_the_architecture(model_cfg, arch: str) -> None:
    """Write the registered name ``arch`` into the model's own config as ``_name`` (quirk 14), so that
    every checkpoint written from it names its architecture, however the model was built."""
    from omegaconf import open_dict

    with open_dict(model_cfg):
        model_cfg._name = arch


def import_transformers():
    """``transformers``, imported without torchaudio (quirk 15); a one-line error if it is absent.

    Where torchaudio is not installed (the set-up removes it), transformers is left as it is; where it is, it is
    hidden from transformers, as the installed one may not load (``find_spec`` of a top-level name imports nothing)."""
    try:
        import transformers.utils as utils
        import transformers.utils.import_utils as import_utils
    except ImportError as e:
        raise ImportError(f"this needs the Hugging Face extra: pip install 'hjprune-fairseq[hf]' ({e})") from e
    if importlib.util.find_spec("torchaudio") is not None:
        utils.is_torchaudio_available = import_utils.is_torchaudio_available = lambda: False
    import transformers

    return transformers


def _legacy_ddp_inside(module):
    """The ``LegacyDistributedDataParallel`` that ``module`` is or wraps (fairseq's proxy and timeout
    wrappers), or None."""
    from fairseq.distributed import DistributedTimeoutWrapper, LegacyDistributedDataParallel, ModuleProxyWrapper

    while isinstance(module, (ModuleProxyWrapper, DistributedTimeoutWrapper)):
        module = module.module
    return module if isinstance(module, LegacyDistributedDataParallel) else None


def _buckets(params, size: int):
    """Consecutive runs of ``params`` of at most ``size`` elements (a larger parameter alone)."""
    bucket, numel = [], 0
    for p in params:
        if bucket and numel + p.numel() > size:
            yield bucket
            bucket, numel = [], 0
        bucket.append(p)
        numel += p.numel()
    if bucket:
        yield bucket


def all_reduce_grads_by_dtype(module) -> bool:
    """Average the gradients of the legacy DDP wrapper ``module`` over the data-parallel group, each
    dtype through its own buffer (quirk 16); False (nothing done) when ``module`` is no such wrapper.

    Otherwise what ``LegacyDistributedDataParallel.all_reduce_grads`` does: nothing inside ``no_sync()``,
    missing gradients become zeros, unshared (``expert``) parameters are skipped, buckets of at most the
    wrapper's buffer size are divided by the world size, then summed."""
    from fairseq.distributed import utils as distributed_utils

    ddp = _legacy_ddp_inside(module)
    if ddp is None:
        return False
    if ddp.accumulate_grads:
        return True
    by_dtype = {}
    for p in ddp.module.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if not hasattr(p, "expert"):
            by_dtype.setdefault((p.device, p.dtype), []).append(p)
    for params in by_dtype.values():
        for bucket in _buckets(params, ddp.buffer_size):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket]).div_(ddp.world_size)
            distributed_utils.all_reduce(flat, ddp.process_group)
            for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
                p.grad.copy_(g.view_as(p))
    return True


def clip_only_what_the_optimizer_clips() -> None:
    """Make ``FP16Optimizer.clip_grad_norm`` hand its clip factor to a wrapped optimizer that has
    ``multiply_clipped_grads(c)`` instead of folding it into the factor every master gets (quirk 17)."""
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    original = FP16Optimizer.clip_grad_norm
    if getattr(original, "lets_the_optimizer_clip", False):
        return

    @functools.wraps(original)
    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        multiply_clipped_grads = getattr(self.fp32_optimizer, "multiply_clipped_grads", None)
        if multiply_clipped_grads is None:
            return original(self, max_norm, aggregate_norm_fn)
        # fairseq's _FP16OptimizerMixin.clip_grad_norm, line for line, except where the factor goes.
        self._sync_fp16_grads_to_fp32()
        grad_norm = self._multiply_factor * self.fp32_optimizer.clip_grad_norm(0, aggregate_norm_fn)
        if torch.is_tensor(self._multiply_factor):
            self._multiply_factor = self._multiply_factor.to(grad_norm.device)
        if self.scaler is not None:
            if grad_norm > max_norm > 0.0:
                multiply_clipped_grads(max_norm / grad_norm)
            self.scaler.check_overflow(grad_norm)
        elif max_norm > 0.0:
            multiply_clipped_grads((max_norm / (grad_norm + 1e-6)).clamp_(max=1))
        return grad_norm

    clip_grad_norm.lets_the_optimizer_clip = True
    FP16Optimizer.clip_grad_norm = clip_grad_norm


def check_ddp_reduces_in_own_dtype(ddp_backend, ddp_comm_hook) -> None:
    """Refuse the data-parallel settings that would reduce the gates and multipliers in 16 bits or are
    not checked (quirk 16). None (a config without them, in unit tests) passes."""
    if ddp_backend in ("slowmo", "fully_sharded"):
        raise ValueError(f"distributed_training.ddp_backend={ddp_backend} is not supported by hjprune_adamw "
                         "(fairscale's reduction of the fp32 gates and fp64 multipliers is not checked); use "
                         "legacy_ddp or pytorch_ddp")
    if ddp_comm_hook == "fp16" and ddp_backend in ("pytorch_ddp", "c10d"):
        raise ValueError("distributed_training.ddp_comm_hook=fp16 is not supported by hjprune_adamw: it reduces "
                         "every gradient in fp16, the fp32 gates and fp64 multipliers included; use "
                         "ddp_comm_hook=none")


def load_what_rank_0_broadcasts() -> None:
    """Let the ranks that receive fairseq's broadcast of an object read it whole (quirk 18): it is what
    rank 0 of the same run sent, e.g. the checkpoint it loaded under the safe globals of quirk 1."""
    import io

    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils._broadcast_object_slow
    if getattr(original, "loads_what_rank_0_sent", False):
        return

    @functools.wraps(original)
    def _broadcast_object_slow(obj, src_rank, group, dist_device):
        if distributed_utils.get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        # fairseq's receiving side, with weights_only=False
        length = torch.LongTensor([0]).to(dist_device)
        distributed_utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        distributed_utils.broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    _broadcast_object_slow.loads_what_rank_0_sent = True
    distributed_utils._broadcast_object_slow = _broadcast_object_slow


def fairseq_extra_state(trainer, epoch_itr, val_loss) -> dict:
    """The ``extra_state`` that ``checkpoint_utils.save_checkpoint`` gives ``trainer.save_checkpoint`` (quirk 19):
    the data iterator's position, the validation loss, the task's checkpoint dict and the best loss so far."""
    from fairseq import checkpoint_utils

    extra_state = {"train_iterator": epoch_itr.state_dict(), "val_loss": val_loss}
    if hasattr(trainer.task, "get_checkpoint_dict"):
        extra_state = {**extra_state, **trainer.task.get_checkpoint_dict()}
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        extra_state.update({"best": checkpoint_utils.save_checkpoint.best})
    return extra_state


def save_budget_checkpoints() -> None:
    """Save the checkpoint the criterion asks for after an update (quirk 19; idempotent): its
    ``budget_checkpoint(num_updates)`` returns None or (file name, entries added to extra_state)."""
    import os

    from fairseq_cli import train as fairseq_train

    original = fairseq_train.validate_and_save
    if getattr(original, "saves_budget_checkpoints", False):
        return

    @functools.wraps(original)
    def validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
        valid_losses, should_stop = original(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)
        ask = getattr(unwrap(trainer.criterion), "budget_checkpoint", None)
        wanted = ask(trainer.get_num_updates()) if ask is not None else None
        if wanted is not None and not cfg.checkpoint.no_save:
            name, extra = wanted
            if trainer.data_parallel_rank == 0:
                os.makedirs(cfg.checkpoint.save_dir, exist_ok=True)
            trainer.consolidate_optimizer()
            state = {**fairseq_extra_state(trainer, epoch_itr, valid_losses[0]), **extra}
            trainer.save_checkpoint(os.path.join(cfg.checkpoint.save_dir, name), state)
        return valid_losses, should_stop

    validate_and_save.saves_budget_checkpoints = True
    fairseq_train.validate_and_save = validate_and_save
