"""A soft conv-channel gate z scales its channel once (z, not z^2), in both extractor modes."""

import copy

import pytest
import torch
from fairseq_fixtures import batch
from helpers import gated_model

from hjprune_fairseq.core.gate_state import GateMasks


def ones_like_conv(encoder):
    return [torch.ones(c.out_channels) for c in encoder.feature_extractor.convs]


@pytest.mark.parametrize("fixture", ["w2v_pretrained", "w2v_large_style"])  # group_norm and layer_norm CNNs
@pytest.mark.parametrize("layer", [1, -1])  # a middle layer (next conv's weights) and the last (feature LN)
def test_soft_conv_gate_is_applied_once(request, fixture, layer):
    encoder = gated_model(request.getfixturevalue(fixture)).encoder.eval()
    source, pad = batch([3000, 2600])
    gates = ones_like_conv(encoder)
    gates[layer][3] = 0.5
    gated, _, _ = encoder(source, pad, GateMasks(conv=gates))
    # The same 0.5, applied once by hand to the weights that read channel 3.
    reference = copy.deepcopy(encoder)
    with torch.no_grad():
        if layer == -1:
            reference.layer_norm.weight[3] *= 0.5
            reference.layer_norm.bias[3] *= 0.5
        else:
            reference.feature_extractor.convs[layer + 1].weight[:, 3] *= 0.5
    expected, _, _ = reference(source, pad, GateMasks(conv=ones_like_conv(encoder)))
    assert (gated - expected).abs().max().item() < 1e-5
    plain, _, _ = encoder(source, pad, GateMasks(conv=ones_like_conv(encoder)))
    assert (gated - plain).abs().max().item() > 1e-3  # the gate does something
