import math

import pytest
import torch

from hjprune_fairseq.core import hard_concrete as hc


def test_keep_prob_matches_sampling_frequency():
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    samples = torch.stack([hc.sample(log_alpha) for _ in range(20000)])
    freq = (samples != 0).float().mean(0)
    assert torch.allclose(freq, hc.keep_prob(log_alpha), atol=0.015)
    assert samples.min() >= 0 and samples.max() <= 1
    assert ((samples > 0) & (samples < 1)).any() and (samples == 1).any() and (samples == 0).any()


def test_log_alpha_for_inverts_keep_prob():
    for p in (0.01, 0.5, 0.99):
        assert hc.keep_prob(torch.tensor(hc.log_alpha_for(p))).item() == pytest.approx(p, abs=1e-6)
    with pytest.raises(ValueError):
        hc.log_alpha_for(1.0)


def test_deterministic_mask_keeps_expected_count_ranked_by_log_alpha():
    torch.manual_seed(0)
    log_alpha = torch.randn(3, 50) * 3
    mask = hc.deterministic_mask(log_alpha)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    expected = hc.keep_prob(log_alpha).sum(-1).round()
    assert torch.equal(mask.sum(-1), expected)
    for row, m in zip(log_alpha, mask):
        kept, dropped = row[m == 1], row[m == 0]
        assert kept.min() > dropped.max()


def test_gate_module_modes_and_gradients():
    g = hc.HardConcrete((4, 6), init_keep_prob=0.7)
    assert g.log_alpha.param_group == "hjprune_gate"
    assert g.expected_l0().shape == (4,)
    assert g.expected_l0().sum().item() == pytest.approx(24 * 0.7, rel=0.05)
    g.train()
    z = g()
    (z.sum() + g.expected_l0().sum()).backward()
    assert g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0
    g.eval()
    assert torch.equal(g(), g.deterministic_mask())
    assert torch.equal(g(), g())


def test_constants_are_the_usual_ones():
    assert hc.BETA == pytest.approx(2 / 3) and hc.LIMIT_L == -0.1 and hc.LIMIT_R == 1.1
    # P(z != 0) at log_alpha = 0 is sigmoid(-beta * log(-l/r)).
    assert hc.keep_prob(torch.tensor(0.0)).item() == pytest.approx(1 / (1 + math.exp((2 / 3) * math.log(0.1 / 1.1))))
