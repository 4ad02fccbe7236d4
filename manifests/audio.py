"""The audio the data tools and the models agree on: 16 kHz mono, framed by wav2vec2-base's CNN.

``WAV2VEC2_CONV`` is the one definition of wav2vec2-base's (and HuBERT-base's) conv feature extractor,
``(channels, kernel, stride)`` per layer: 320 samples a frame, 400 at least. The plugin's presets
(``hjprune_fairseq``'s spec) use it from here. ``parse_conv_layers`` reads fairseq's own
``conv_feature_layers`` string format without ``eval``; ``format_conv_layers`` writes it.
"""

import ast
from typing import List, Sequence, Tuple

SAMPLE_RATE = 16000  # wav2vec2 / HuBERT are trained on 16 kHz audio; fairseq does not resample
WAV2VEC2_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
MAX_CONV_LAYERS = 1000  # a bound on "[...] * N", so a typo cannot build a huge list

_FORMAT = "lists of (channels, kernel, stride) triples of positive integers, joined by + and repeated by * N"


def parse_conv_layers(text: str) -> List[Tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]*2"``,
    as a list of ``(channels, kernel, stride)``. Only list and tuple literals of integers, ``+`` and
    ``* N`` are read (no ``eval``); anything else raises a one-line ``ValueError``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"conv layers {text!r}: not readable ({e.msg}); expected {_FORMAT}") from None
    layers = _layers(tree.body, text)
    if not layers:
        raise ValueError(f"conv layers {text!r}: no layer; expected {_FORMAT}")
    return layers


def format_conv_layers(layers: Sequence[Tuple[int, int, int]]) -> str:
    """``layers`` in fairseq's ``conv_feature_layers`` format, runs of equal layers as ``[(c,k,s)]*N``."""
    runs: List[List] = []
    for layer in layers:
        if runs and runs[-1][0] == tuple(layer):
            runs[-1][1] += 1
        else:
            runs.append([tuple(layer), 1])
    return "+".join(f"[({c},{k},{s})]" + (f"*{n}" if n > 1 else "") for (c, k, s), n in runs)


def _layers(node: ast.AST, text: str) -> List[Tuple[int, int, int]]:
    if isinstance(node, ast.List):
        return [_triple(e, text) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        layers = _layers(node.left, text) + _layers(node.right, text)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        repeat, listed = (node.right, node.left) if _is_int(node.right) else (node.left, node.right)
        if not _is_int(repeat):
            raise ValueError(f"conv layers {text!r}: '*' needs a whole number of repeats; expected {_FORMAT}")
        layers = _layers(listed, text)
        if len(layers) * repeat.value > MAX_CONV_LAYERS:
            raise ValueError(f"conv layers {text!r}: more than {MAX_CONV_LAYERS} layers")
        layers = layers * repeat.value
    else:
        raise ValueError(f"conv layers {text!r}: {ast.unparse(node)!r} is not a list of triples; expected {_FORMAT}")
    if len(layers) > MAX_CONV_LAYERS:
        raise ValueError(f"conv layers {text!r}: more than {MAX_CONV_LAYERS} layers")
    return layers


def _triple(node: ast.AST, text: str) -> Tuple[int, int, int]:
    if not (isinstance(node, ast.Tuple) and len(node.elts) == 3 and all(_is_int(e) and e.value > 0 for e in node.elts)):
        raise ValueError(f"conv layers {text!r}: {ast.unparse(node)!r} is not a (channels, kernel, stride) triple "
                         "of positive integers")
    return tuple(e.value for e in node.elts)


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int
