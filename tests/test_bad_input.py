"""Bad checkpoints and configs fail with one clear line naming the file and what was expected."""

import pytest
import torch
from fairseq_fixtures import make_pretrained
from helpers import gated_model

from hjprune_fairseq.plugin.fairseq_import import read_checkpoint
from hjprune_fairseq.plugin.models.base import HJPruneGatedCtcConfig
from hjprune_fairseq.plugin.models.ctc import HJPruneGatedCtc
from omegaconf import OmegaConf


def test_missing_w2v_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt: checkpoint not found"):
        gated_model(str(tmp_path / "nowhere.pt"))
    with pytest.raises(ValueError, match="model.w2v_path is required"):
        HJPruneGatedCtc.from_config(OmegaConf.structured(HJPruneGatedCtcConfig(normalize=False)), 10)


def test_unsupported_architecture(tmp_path, w2v_pretrained):
    state = torch.load(w2v_pretrained)
    state["cfg"]["model"]["_name"] = "transformer_lm"
    path = tmp_path / "lm.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"lm\.pt: unsupported architecture 'transformer_lm' \(expected one of"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("override, message", [
    (dict(layer_type="conformer"), "layer_type='conformer' is not supported"),
    (dict(pos_conv_depth=5), "pos_conv_depth=5 is not supported"),
    (dict(activation_fn="relu"), "activation_fn='relu' is not supported"),
])
def test_unsupported_variants(tmp_path, override, message):
    path = make_pretrained(str(tmp_path / "variant.pt"), **override)
    with pytest.raises(ValueError, match=r"variant\.pt: " + message.replace("(", r"\(")):
        read_checkpoint(path)


def test_truncated_weights(tmp_path, w2v_pretrained):
    state = torch.load(w2v_pretrained)
    del state["model"]["encoder.layers.1.fc2.weight"]
    path = tmp_path / "cut.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"cut\.pt: missing parameter 'encoder.layers.1.fc2.weight'"):
        read_checkpoint(str(path))


def test_normalize_mismatch(tmp_path):
    path = make_pretrained(str(tmp_path / "norm.pt"), normalize=True)
    with pytest.raises(ValueError, match=r"norm\.pt: the encoder was trained with normalize=True"):
        gated_model(path)


def test_dictionary_size_mismatch(stock_ctc):
    cfg = OmegaConf.structured(HJPruneGatedCtcConfig(w2v_path=stock_ctc[0], normalize=False, feature_grad_mult=1.0))
    with pytest.raises(ValueError, match=r"stock_ctc\.pt: output layer has 32 symbols but the task dictionary has 7"):
        HJPruneGatedCtc.from_config(cfg, 7)


def test_masking_options_fairseq_cannot_run(stock_ctc):
    with pytest.raises(ValueError, match="no_mask_overlap"):
        gated_model(stock_ctc[0], no_mask_overlap=True)
