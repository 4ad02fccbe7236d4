"""With every gate open, the plugin's model computes exactly what stock fairseq computes."""

import pytest
import torch
from fairseq_fixtures import batch
from helpers import NO_GATES, gated_model, max_diff, open_gates

from hjprune_fairseq.plugin.fairseq_import import read_checkpoint

LENGTHS = [16000, 11000, 7300]


def stock_features(path, source, pad):
    """Stock fairseq pre-trained model's extract_features, built from its checkpoint."""
    from fairseq import checkpoint_utils
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    m = OmegaConf.to_container(state["cfg"]["model"])
    name = m.pop("_name")
    if name == "hubert":
        model = HubertModel(OmegaConf.structured(HubertConfig(**m)), HubertPretrainingConfig(label_rate=50.0),
                            state["task_state"]["dictionaries"])
    else:
        model = Wav2Vec2Model(OmegaConf.structured(Wav2Vec2Config(**m)))
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        if name == "hubert":
            x, pm = model.extract_features(source, padding_mask=pad, mask=False)
        else:
            r = model.extract_features(source, padding_mask=pad, mask=False)
            x, pm = r["x"], r["padding_mask"]
    return x, pm


def test_ctc_logits_equal_stock_wav2vec_ctc(stock_ctc):
    path, stock = stock_ctc
    ours = gated_model(path, **NO_GATES)
    assert ours.gates is None
    source, pad = batch(LENGTHS)
    with torch.no_grad():
        s_out = stock(source=source, padding_mask=pad)
        o_out = ours(source=source, padding_mask=pad)
        a, b = stock.get_logits(s_out), ours.get_logits(o_out)
        lp_a, lp_b = stock.get_normalized_probs(s_out, True), ours.get_normalized_probs(o_out, True)
    assert a.shape == b.shape == (s_out["encoder_out"].shape[0], 3, ours.proj.out_features)
    assert torch.equal(s_out["padding_mask"], o_out["padding_mask"])
    assert max_diff(a, b) <= 1e-5
    assert max_diff(lp_a, lp_b) <= 1e-5


def test_open_gates_equal_stock(stock_ctc):
    """All four gate groups enabled, every deterministic mask all-ones: still the stock output."""
    path, stock = stock_ctc
    ours = gated_model(path)
    assert ours.gates.enabled() == ["conv", "heads", "ffn", "hidden"]
    open_gates(ours)
    source, pad = batch(LENGTHS, seed=1)
    with torch.no_grad():
        a = stock.get_logits(stock(source=source, padding_mask=pad))
        b = ours.get_logits(ours(source=source, padding_mask=pad))
    assert max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("fixture", ["w2v_pretrained", "hubert_pretrained", "w2v_large_style"])
def test_encoder_equals_stock_pretrained(request, fixture):
    path = request.getfixturevalue(fixture)
    ckpt = read_checkpoint(path)
    ours = gated_model(path)
    open_gates(ours)
    source, pad = batch(LENGTHS, seed=2)
    x_stock, pm_stock = stock_features(path, source, pad)
    with torch.no_grad():
        x, pm, _ = ours.encoder(source, pad, ours.gates())
    assert ckpt.kind == "pretrained"
    assert torch.equal(pm, pm_stock)
    valid = ~pm
    assert (x[valid] - x_stock[valid]).abs().max().item() <= 1e-5


def test_pretrained_init_keeps_new_head(w2v_pretrained):
    """A pre-training checkpoint has no CTC head: the head is freshly initialised, the encoder loaded."""
    ckpt = read_checkpoint(w2v_pretrained)
    ours = gated_model(w2v_pretrained, **NO_GATES)
    assert ckpt.head_state is None
    for k, v in ckpt.encoder_state.items():
        assert torch.equal(ours.encoder.state_dict()[k], v), k


def test_training_mode_masks_and_samples(stock_ctc):
    """In training the gates sample (outputs vary) and time masking uses mask_emb."""
    path, _ = stock_ctc
    # At keep probability 0.6 most samples fall inside (0, 1) where the task loss has a gradient
    # (a sample clamped to exactly 0 or 1 has none; the sparsity penalty still reaches it).
    m = gated_model(path, apply_mask=True, mask_prob=0.3, mask_length=2, gate_init_keep_prob=0.6)
    m.train()
    source, pad = batch(LENGTHS, seed=3)
    out1 = m(source=source, padding_mask=pad)["encoder_out"]
    out2 = m(source=source, padding_mask=pad)["encoder_out"]
    assert not torch.allclose(out1, out2)
    (out1 ** 2).mean().backward()
    for group in ("conv", "heads", "ffn", "hidden"):
        grads = [p.grad for n, p in m.gates.named_parameters() if n.startswith(group)]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, group


def test_conv_gates_need_cnn_gradients(stock_ctc):
    with pytest.raises(ValueError, match="feature_grad_mult > 0"):
        gated_model(stock_ctc[0], feature_grad_mult=0.0)
    assert gated_model(stock_ctc[0], feature_grad_mult=0.0, prune_conv=False).gates.conv is None
