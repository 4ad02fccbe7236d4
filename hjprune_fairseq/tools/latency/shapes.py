"""Random slim shapes of an encoder family, as learned gates leave them: every group keeps a random number of units
(odd widths, uneven heads), for checking a latency table (``bench.predict``) and for fitting its calibration
(``measure.calibrate``, from other seeds)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from ...core.encoder import Wav2Vec2Encoder
from ...core.gate_state import GateMasks
from ...core.slim import slim_encoder
from ...core.spec import EncoderSpec
from ..bench.latency import keep_random, keep_random_dims

# A table's calibration shapes are random ones drawn from its seed plus this, so that they are never the shapes
# ``hjprune-latency-bench predict`` checks the table on (its seeds are small numbers).
CALIBRATION_SEED = 1_000_003
HIDDEN_LOW = 0.5  # random shapes keep at least this much of the hidden size (the default table grid's lowest)


def random_masks(spec: EncoderSpec, g: torch.Generator, fine_grained: bool) -> GateMasks:
    """0/1 masks of a random slim shape: every group keeps a uniform random fraction (CNN layers 0.2-1, heads and
    FFN units 0.1-1 per layer, hidden HIDDEN_LOW-1; fine-grained: query/key and value/output dims 0.2-1 per
    layer, at random over its heads)."""
    def u(lo: float) -> float:
        return lo + (1 - lo) * float(torch.rand((), generator=g))

    conv = [keep_random(c, u(0.2), g) for c, _, _ in spec.conv_layers]
    ffn = [keep_random(f, u(0.1), g) for f in spec.ffn_dims]
    hidden = keep_random(spec.embed_dim, u(HIDDEN_LOW), g)
    if not fine_grained:
        return GateMasks(conv=conv, heads=[keep_random(h, u(0.1), g) for h in spec.num_heads], ffn=ffn, hidden=hidden)
    qk = [keep_random_dims(h, spec.head_dim, u(0.2), g) for h in spec.num_heads]
    vo = [keep_random_dims(h, spec.head_dim, u(0.2), g) for h in spec.num_heads]
    return GateMasks(conv=conv, ffn=ffn, hidden=hidden, qk=qk, vo=vo)


def random_specs(spec: EncoderSpec, shapes: int, seed: int,
                 prefix: str = "") -> Tuple[Dict[str, EncoderSpec], Dict[str, str]]:
    """``shapes`` random slim specs of ``spec`` (:func:`random_masks`, every second one fine-grained; named
    ``prefix`` + whole_n / fine_n), and their kind."""
    g = torch.Generator().manual_seed(seed)
    state = Wav2Vec2Encoder(spec).state_dict()
    specs, kinds = {}, {}
    for n in range(shapes):
        fine = n % 2 == 1
        name = f"{prefix}{'fine' if fine else 'whole'}_{n}"
        specs[name] = slim_encoder(spec, state, random_masks(spec, g, fine), source=name)[0]
        kinds[name] = "fine_grained" if fine else "whole_heads"
    return specs, kinds


def calibration_specs(spec: EncoderSpec, shapes: int, seed: int) -> Dict[str, EncoderSpec]:
    """A table's calibration shapes (``measure.calibrate``; ``bench.predict`` times them again to anchor the table):
    :func:`random_specs` from :data:`CALIBRATION_SEED` + the table's ``seed``, named ``cal_whole_0``,
    ``cal_fine_1``, ..."""
    return random_specs(spec, shapes, CALIBRATION_SEED + seed, prefix="cal_")[0]
