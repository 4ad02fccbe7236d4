"""The one place that works around fairseq-fixed 0.12.3.1 quirks on Python 3.11 / torch 2.13.

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
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from typing import Iterator

import numpy as np
import torch

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
    """Register the safe globals once (idempotent)."""
    torch.serialization.add_safe_globals(fairseq_safe_globals())


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
