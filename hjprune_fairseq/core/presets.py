"""Built-in encoder shapes (:class:`~.spec.EncoderSpec`) by name, for the cost report, the benchmarks and tests.

Kept out of ``spec.py`` so that ``spec.py`` imports nothing but torch and the standard library:
``hjprune-export --hf`` ships it (with ``encoder.py`` and ``gate_state.py``) as the modelling code of
an exported model, which must run without this package. wav2vec2-base's conv stack has one definition,
shared with the data tools (``hjprune_manifests.audio``).
"""

from __future__ import annotations

from typing import Dict

from hjprune_manifests.audio import WAV2VEC2_CONV  # one definition, shared with the data tools

from .spec import EncoderSpec

PRESETS: Dict[str, EncoderSpec] = {
    "wav2vec2_base": EncoderSpec.uniform(WAV2VEC2_CONV, 768, 12, 12, 3072, 128, 16),
    "hubert_base": EncoderSpec.uniform(WAV2VEC2_CONV, 768, 12, 12, 3072, 128, 16, frame_padding="hubert"),
    "wav2vec2_large": EncoderSpec.uniform(
        WAV2VEC2_CONV, 1024, 24, 16, 4096, 128, 16, conv_bias=True, extractor_mode="layer_norm",
        layer_norm_first=True,
    ),
    # wavlm-base-plus (WavLM, Chen et al. 2022): wav2vec2-base's shape plus a gated relative position bias.
    "wavlm_base": EncoderSpec.uniform(WAV2VEC2_CONV, 768, 12, 12, 3072, 128, 16, rel_pos_buckets=320,
                                      rel_pos_max_distance=800),
    # The model the demo and the tests train on 2 CPU cores.
    "tiny": EncoderSpec.uniform(
        [(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2, 192, 4, 4, 768, 32, 4,
    ),
}
