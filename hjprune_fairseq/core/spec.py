"""The shape of a wav2vec2/HuBERT/WavLM encoder, dense or slim.

An :class:`EncoderSpec` is everything the cost model and the module builders need to know about an
encoder's dimensions. A dense pre-trained model has uniform per-layer sizes; a slim (exported) model
has the kept sizes of every layer. The spec is stored in every checkpoint this plugin writes
(``model.encoder_spec``), so checkpoints are self-contained. :func:`conv_output_lengths` gives the
frames the CNN makes of a number of samples. It imports nothing but torch and the standard library
(``hjprune-export --hf`` ships it as modelling code); the named shapes are in ``presets``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

EXTRACTOR_MODES = ("default", "layer_norm")
FRAME_PADDING_RULES = ("wav2vec2", "hubert")


@dataclass
class EncoderSpec:
    """Dimensions of a (possibly slim) wav2vec2-style encoder.

    conv_layers: per CNN layer ``(out_channels, kernel, stride)``; input of layer 0 is the waveform.
    conv_bias: whether the CNN convolutions have a bias.
    extractor_mode: "default" (GroupNorm on the first conv only) or "layer_norm" (LayerNorm over
        channels after every conv), as fairseq's ``ConvFeatureExtractionModel``.
    embed_dim: Transformer hidden size d (kept dims for a slim model).
    pos_conv_kernel: kernel of the grouped positional convolution.
    pos_conv_groups: number of hidden dims in each group of the positional convolution; a dense
        model has ``[d // G] * G``; a slim model may have uneven (even empty) groups.
    num_heads, head_dim: heads per layer, dims per head (``head_dim`` also sets the attention scale
        1/sqrt(head_dim), which fine-grained pruning keeps).
    qk_dims, vo_dims: after fine-grained attention pruning, the query/key and value/output dims of
        every head (per layer, per head); None means ``head_dim`` for every head.
    ffn_dims: FFN intermediate size per layer.
    layer_norm_first: pre-LN (True, e.g. wav2vec2-large) or post-LN (False, wav2vec2-base).
    frame_padding: how a frame is marked as padding: "wav2vec2" (conv output-length formula) or
        "hubert" (a frame is padding when all its samples are).
    rel_pos_buckets, rel_pos_max_distance: WavLM's gated relative position bias (Chen et al. 2022,
        Sec. 2.2): the buckets of its bias table and the distance at which the log-spaced buckets
        end; 0 means no relative position bias (wav2vec2, HuBERT).
    rel_pos_heads: columns of the bias table: the number of heads of the UNPRUNED model (the table is
        kept whole; a kept head reads its original column). 0 without a relative position bias.
    """

    conv_layers: List[Tuple[int, int, int]]
    conv_bias: bool
    extractor_mode: str
    embed_dim: int
    pos_conv_kernel: int
    pos_conv_groups: List[int]
    num_heads: List[int]
    head_dim: int
    ffn_dims: List[int]
    layer_norm_first: bool
    frame_padding: str = "wav2vec2"
    qk_dims: Optional[List[List[int]]] = None
    vo_dims: Optional[List[List[int]]] = None
    rel_pos_buckets: int = 0
    rel_pos_max_distance: int = 0
    rel_pos_heads: int = 0

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in c) for c in self.conv_layers]
        self.pos_conv_groups = [int(g) for g in self.pos_conv_groups]
        self.num_heads = [int(h) for h in self.num_heads]
        self.ffn_dims = [int(f) for f in self.ffn_dims]
        if self.extractor_mode not in EXTRACTOR_MODES:
            raise ValueError(f"extractor_mode must be one of {EXTRACTOR_MODES}, got {self.extractor_mode!r}")
        if self.frame_padding not in FRAME_PADDING_RULES:
            raise ValueError(f"frame_padding must be one of {FRAME_PADDING_RULES}, got {self.frame_padding!r}")
        if any(len(c) != 3 for c in self.conv_layers):
            raise ValueError(f"each conv layer must be (channels, kernel, stride), got {self.conv_layers}")
        if sum(self.pos_conv_groups) != self.embed_dim:
            raise ValueError(
                f"pos_conv_groups {self.pos_conv_groups} sum to {sum(self.pos_conv_groups)}, "
                f"expected embed_dim={self.embed_dim}"
            )
        if len(self.num_heads) != len(self.ffn_dims):
            raise ValueError(
                f"num_heads has {len(self.num_heads)} layers but ffn_dims has {len(self.ffn_dims)}"
            )
        for name in ("qk_dims", "vo_dims"):
            dims = getattr(self, name)
            if dims is None:
                continue
            dims = [[int(v) for v in layer] for layer in dims]
            setattr(self, name, dims)
            low = 1 if name == "vo_dims" else 0  # a head without value dims adds nothing: export drops it
            if [len(layer) for layer in dims] != self.num_heads or any(
                    not low <= v <= self.head_dim for layer in dims for v in layer):
                raise ValueError(f"{name} must give every head of every layer ({self.num_heads}) a size in "
                                 f"{low}..{self.head_dim}, got {dims}")
        self._check_rel_pos()

    def _check_rel_pos(self) -> None:
        """All three relative-position fields 0, or a usable WavLM bias table (one-line ValueErrors)."""
        self.rel_pos_buckets, self.rel_pos_max_distance, self.rel_pos_heads = (
            int(self.rel_pos_buckets), int(self.rel_pos_max_distance), int(self.rel_pos_heads))
        fields = {"rel_pos_buckets": self.rel_pos_buckets, "rel_pos_max_distance": self.rel_pos_max_distance,
                  "rel_pos_heads": self.rel_pos_heads}
        if not any(fields.values()):
            return
        if not all(v > 0 for v in fields.values()):
            raise ValueError(f"rel_pos_buckets, rel_pos_max_distance and rel_pos_heads must be all 0 (no relative "
                             f"position bias) or all positive, got {fields}")
        # Half the buckets per direction, of which half are exact distances (max_exact = buckets // 4).
        if self.rel_pos_buckets < 4:
            raise ValueError(f"rel_pos_buckets must be >= 4 (two directions, exact and log-spaced buckets), "
                             f"got {self.rel_pos_buckets}")
        if self.rel_pos_max_distance <= self.rel_pos_buckets // 4:
            raise ValueError(f"rel_pos_max_distance must exceed rel_pos_buckets // 4 = {self.rel_pos_buckets // 4}, "
                             f"got {self.rel_pos_max_distance}")
        if max(self.num_heads, default=0) > self.rel_pos_heads:
            raise ValueError(f"rel_pos_heads must be at least the heads of every layer ({self.num_heads}), "
                             f"got {self.rel_pos_heads}")

    @property
    def has_rel_pos(self) -> bool:
        """Whether the encoder has WavLM's gated relative position bias."""
        return self.rel_pos_buckets > 0

    def head_qk(self, layer: int) -> List[int]:
        """Query/key dims of every head of ``layer``."""
        return list(self.qk_dims[layer]) if self.qk_dims is not None else [self.head_dim] * self.num_heads[layer]

    def head_vo(self, layer: int) -> List[int]:
        """Value/output dims of every head of ``layer``."""
        return list(self.vo_dims[layer]) if self.vo_dims is not None else [self.head_dim] * self.num_heads[layer]

    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    @property
    def conv_dim(self) -> int:
        """Channels of the last CNN layer (input of the feature projection)."""
        return self.conv_layers[-1][0]

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["conv_layers"] = [list(c) for c in self.conv_layers]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EncoderSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown EncoderSpec fields {sorted(unknown)}")
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})

    @classmethod
    def uniform(
        cls,
        conv_layers: List[Tuple[int, int, int]],
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        pos_conv_kernel: int,
        pos_conv_groups: int,
        conv_bias: bool = False,
        extractor_mode: str = "default",
        layer_norm_first: bool = False,
        frame_padding: str = "wav2vec2",
        rel_pos_buckets: int = 0,
        rel_pos_max_distance: int = 0,
    ) -> "EncoderSpec":
        """A dense encoder with the same sizes in every layer (what pre-training produces); a relative
        position bias (``rel_pos_buckets`` > 0) has a column per head."""
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if embed_dim % pos_conv_groups:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by pos_conv_groups={pos_conv_groups}")
        return cls(
            conv_layers=list(conv_layers),
            conv_bias=conv_bias,
            extractor_mode=extractor_mode,
            embed_dim=embed_dim,
            pos_conv_kernel=pos_conv_kernel,
            pos_conv_groups=[embed_dim // pos_conv_groups] * pos_conv_groups,
            num_heads=[num_heads] * num_layers,
            head_dim=embed_dim // num_heads,
            ffn_dims=[ffn_dim] * num_layers,
            layer_norm_first=layer_norm_first,
            frame_padding=frame_padding,
            rel_pos_buckets=rel_pos_buckets,
            rel_pos_max_distance=rel_pos_max_distance,
            rel_pos_heads=num_heads if rel_pos_buckets else 0,
        )


def conv_output_lengths(lengths: torch.Tensor, conv_layers: Sequence[Tuple[int, int, int]]) -> torch.Tensor:
    """Frames produced from ``lengths`` samples (no padding, floor), as fairseq's formula."""
    for _, k, s in conv_layers:
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
    return lengths

