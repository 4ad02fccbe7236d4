"""The transformers configuration of a model exported by hjprune-fairseq (``hjprune-export --hf``).

Shipped in the exported folder beside ``modeling_hjprune.py`` and loaded with ``trust_remote_code``. The
model's shape is the ``encoder_spec`` dict (hjprune-fairseq's ``EncoderSpec``, ``spec.py`` in the same
folder): every layer's kept sizes (heads, or query/key and value/output dims of every head; FFN units),
the hidden size, the CNN's channels and the positional convolution's (possibly uneven) groups, which
transformers' own wav2vec2 classes cannot express. It needs torch and transformers only.
"""

import math

from transformers import PretrainedConfig


def logits_ratio(encoder_spec) -> int:
    """Input samples per output frame: the product of the CNN's strides (``conv_layers``: channels, kernel, stride)."""
    return math.prod(int(stride) for _, _, stride in encoder_spec["conv_layers"]) if encoder_spec else 1


class HJPruneConfig(PretrainedConfig):
    """encoder_spec: the EncoderSpec fields (dict); vocab_size: CTC outputs (0: an encoder without a CTC
    head); pad_token_id: the CTC blank's output; normalize: the model expects each utterance normalised to
    zero mean and unit variance (the feature extractor's ``do_normalize``); sampling_rate: of the audio;
    hjprune: where the model was exported from (checkpoint, architecture, the unpruned encoder's spec).

    inputs_to_logits_ratio: samples per frame, the product of the CNN's strides (as transformers' ``Wav2Vec2Config``
    computes it); always derived from ``encoder_spec``, and a stored value must equal it. transformers' speech
    recognition pipeline aligns its chunks and timestamps with it (without it, to single samples)."""

    model_type = "hjprune_wav2vec2"

    def __init__(self, encoder_spec=None, vocab_size=0, normalize=False, sampling_rate=16000, hjprune=None,
                 pad_token_id=0, inputs_to_logits_ratio=None, **kwargs):
        self.encoder_spec = encoder_spec
        self.vocab_size = vocab_size
        self.normalize = normalize
        self.sampling_rate = sampling_rate
        self.hjprune = hjprune
        self.inputs_to_logits_ratio = logits_ratio(encoder_spec)
        if inputs_to_logits_ratio is not None and inputs_to_logits_ratio != self.inputs_to_logits_ratio:
            raise ValueError(f"inputs_to_logits_ratio is {inputs_to_logits_ratio}, but the CNN of encoder_spec "
                             f"makes a frame of every {self.inputs_to_logits_ratio} samples (expected the same)")
        super().__init__(pad_token_id=pad_token_id, **kwargs)
