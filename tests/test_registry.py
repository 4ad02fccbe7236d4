"""The architecture registry: every hjprune model registered once, with fairseq and here, consistently."""

import dataclasses

import pytest
from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY

from hjprune_fairseq.plugin.models import registry
from hjprune_fairseq.plugin.models.base import HJPruneCtcConfig, HJPruneGatedCtcConfig


def test_every_hjprune_model_fairseq_knows_is_registered_here():
    fairseq_names = sorted(n for n in MODEL_REGISTRY if n.startswith("hjprune_"))
    assert registry.names() == fairseq_names and len(fairseq_names) == 8
    for name in registry.names():
        arch = registry.get(name)
        assert MODEL_REGISTRY[name] is arch.model_class and MODEL_DATACLASS_REGISTRY[name] is arch.config_class
        assert arch.model_class.ARCH == name


def test_gated_architectures_and_their_slim_counterparts():
    gated = registry.names(kind="gated")
    assert gated == ["hjprune_wav2vec_cls", "hjprune_wav2vec_ctc", "hjprune_wav2vec_distill"]
    for name in gated:
        arch = registry.get(name)
        assert arch.slim.kind == "slim" and arch.slim.head == arch.head
        assert arch.gate_fields == ("prune_conv", "prune_heads", "prune_ffn", "prune_hidden", "prune_head_dims",
                                    "gate_init_keep_prob", "gate_ste")
    assert {registry.get(n).slim_name for n in gated} == set(registry.names(kind="slim"))
    assert registry.names(kind="parp") == ["hjprune_parp_cls", "hjprune_parp_ctc"]
    assert registry.names(head="classifier") == ["hjprune_parp_cls", "hjprune_slim_cls", "hjprune_wav2vec_cls"]


def test_gate_fields_are_derived_from_the_configs():
    """A field added to the gated config only is a gate field, with no list to update."""
    fields = {f.name for f in dataclasses.fields(HJPruneGatedCtcConfig)} - {f.name for f in dataclasses.fields(HJPruneCtcConfig)}
    assert set(registry.get("hjprune_wav2vec_ctc").gate_fields) == fields


def test_lookups_of_unknown_names_and_bad_registrations():
    assert registry.find("wav2vec_ctc") is None and registry.find(None) is None
    with pytest.raises(ValueError, match="'wav2vec_ctc' is not an hjprune model"):
        registry.get("wav2vec_ctc")
    with pytest.raises(ValueError, match="has no slim counterpart"):
        registry.get("hjprune_slim_ctc").slim
    with pytest.raises(ValueError, match="names its slim counterpart"):
        registry.register("hjprune_x", HJPruneGatedCtcConfig, kind="gated", head="ctc")
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.register("hjprune_x", HJPruneCtcConfig, kind="dense", head="ctc")
    with pytest.raises(ValueError, match="head must be one of"):
        registry.register("hjprune_x", HJPruneCtcConfig, kind="slim", head="lm")
    assert "hjprune_x" not in MODEL_REGISTRY and registry.find("hjprune_x") is None
