"""CIBHash and FDBH: registry, configs, losses against references, quantiser gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contrahash.losses import nt_xent
from contrahash.methods import METHODS, StepInfo, build_method


def test_registry_names_and_unknown_method():
    assert {"cibhash", "fdbh"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_method("nope", 8, [8])


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lamda_rec'\]"):
        build_method("fdbh", 8, [8], {"lamda_rec": 0.1})
    with pytest.raises(ValueError, match="fdo must be one of"):
        build_method("fdbh", 8, [8], {"fdo": "magic"})


def test_bad_code_lengths():
    with pytest.raises(ValueError, match="positive"):
        build_method("cibhash", 8, [0])
    with pytest.raises(ValueError, match="duplicate"):
        build_method("cibhash", 8, [16, 16])


def test_cibhash_loss_matches_hand_written_reference():
    torch.manual_seed(0)
    m = build_method("cibhash", 6, [4])
    f1, f2 = torch.randn(5, 6), torch.randn(5, 6)
    out = m.training_loss([f1, f2], StepInfo())
    head = m.heads["4"]
    p1, p2 = torch.sigmoid(head(f1)), torch.sigmoid(head(f2))
    b1, b2 = torch.where(p1 >= 0.5, 1.0, -1.0), torch.where(p2 >= 0.5, 1.0, -1.0)

    def kl(p, q):
        return (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(1).mean()

    expected = nt_xent(b1, b2, 0.3) + 0.001 * 0.5 * (kl(p1, p2) + kl(p2, p1))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)


def _grad_reaches_first_layer(method, views):
    out = method.training_loss(views, StepInfo(epoch=3, epochs=10))
    out.loss.backward()
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    return grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("cfg", [{}, {"fdo": "bihalf"}, {"fdo": "none", "polarization": False},
                                 {"reconstruction": False, "decorrelation": False}])
def test_fdbh_gradients_flow_through_straight_through_sign(cfg):
    torch.manual_seed(0)
    m = build_method("fdbh", 12, [8, 16], cfg)
    m.train()
    views = [torch.randn(16, 12), torch.randn(16, 12)]
    assert _grad_reaches_first_layer(m, views)
    first = m.encoders["8"][0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_cibhash_gradients_flow():
    m = build_method("cibhash", 12, [8])
    assert _grad_reaches_first_layer(m, [torch.randn(8, 12), torch.randn(8, 12)])
    assert m.heads["8"][0].weight.grad.abs().sum() > 0


def test_fdbh_fdo_balances_bits_and_uses_running_stats():
    torch.manual_seed(0)
    m = build_method("fdbh", 10, [16], {"fdo_momentum": 1.0})
    m.train()
    # features with a strong common offset: without balancing most bits would be constant
    f = torch.randn(256, 10) + 5.0
    u = m.encoders["16"](f)
    b = torch.sign(m._balanced(u, 16))
    ones = (b > 0).float().mean(0)
    assert ((ones - 0.5).abs() < 0.1).all()
    # momentum 1 → running stats equal this batch's statistics; inference uses them
    m.eval()
    codes = m.encode(f)[16]
    expected = torch.where((u - u.mean(0)) / torch.sqrt(u.var(0) + 1e-5) >= 0, 1.0, -1.0)
    assert torch.equal(codes, expected)


def test_fdbh_loss_parts_follow_switches():
    m = build_method("fdbh", 8, [8], {"polarization": False, "reconstruction": False,
                                     "decorrelation": False, "fdo": "none"})
    out = m.training_loss([torch.randn(8, 8), torch.randn(8, 8)], StepInfo())
    assert set(out.parts) == {"contrastive_8"}
    full = build_method("fdbh", 8, [8]).training_loss([torch.randn(8, 8), torch.randn(8, 8)], StepInfo())
    assert set(full.parts) == {"contrastive_8", "polarization_8", "decorrelation_8", "reconstruction_8"}


def test_fdbh_alpha_schedule():
    m = build_method("fdbh", 8, [8], {"alpha_start": 1.0, "alpha_end": 10.0})
    assert m.alpha(StepInfo(epoch=0, epochs=10)) == 1.0
    assert m.alpha(StepInfo(epoch=10, epochs=10)) == pytest.approx(10.0)


def test_fdbh_reconstruction_targets_features():
    """The reconstruction part equals a hand-written mean of 1 − cos(g(b), f) over both views,
    adds to the loss with its weight, and trains the decoder."""
    torch.manual_seed(1)
    cfg = {"lambda_rec": 1.0, "polarization": False, "decorrelation": False, "fdo": "none",
           "neighbour_prob": 0.0}
    m = build_method("fdbh", 8, [8], cfg)
    f1 = torch.randn(8, 8, requires_grad=True)
    f2 = torch.randn(8, 8, requires_grad=True)
    out = m.training_loss([f1, f2], StepInfo())
    f = torch.cat([f1, f2]).detach()
    b = torch.sign(m.encoders["8"](f))
    expected = (1 - F.cosine_similarity(m.decoders["8"](b), f, dim=1)).mean()
    assert float(out.parts["reconstruction_8"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(
        float(out.parts["contrastive_8"]) + float(expected), rel=1e-5)
    assert not out.parts["reconstruction_8"].requires_grad  # parts are detached for logging
    m.zero_grad()
    m.training_loss([f1, f2], StepInfo()).loss.backward()
    assert m.decoders["8"][0].weight.grad.abs().sum() > 0


def test_fdbh_extra_neighbour_positive_matches_reference():
    """neighbour_mode="extra": three views; loss = NT-Xent(b1,b2) + w·½(NT-Xent(b1,b3)+NT-Xent(b2,b3))."""
    torch.manual_seed(3)
    cfg = {"neighbour_mode": "extra", "neighbour_weight": 0.7, "polarization": False,
           "reconstruction": False, "decorrelation": False}
    m = build_method("fdbh", 6, [8], cfg)
    assert m.n_views == 3
    assert build_method("fdbh", 6, [8]).n_views == 3  # the default
    assert build_method("fdbh", 6, [8], {"neighbour_mode": "replace"}).n_views == 2
    assert build_method("fdbh", 6, [8], {"neighbour_mode": "extra", "neighbour_prob": 0.0}).n_views == 2
    f = [torch.randn(10, 6) for _ in range(3)]
    out = m.training_loss(f, StepInfo())
    # reference: standardise the three views together with batch statistics, then sign
    u = m.encoders["8"](torch.cat(f))
    u = (u - u.mean(0)) / torch.sqrt(u.var(0, unbiased=False) + 1e-5)
    b1, b2, b3 = torch.sign(u).split(10)
    expected = nt_xent(b1, b2) + 0.7 * 0.5 * (nt_xent(b1, b3) + nt_xent(b2, b3))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(out.parts) == {"contrastive_8", "neighbour_8"}


def test_fdbh_rejects_bad_neighbour_mode():
    with pytest.raises(ValueError, match="neighbour_mode"):
        build_method("fdbh", 8, [8], {"neighbour_mode": "both"})
    with pytest.raises(ValueError, match="neighbour_weight"):
        build_method("fdbh", 8, [8], {"neighbour_weight": -1.0})
    with pytest.raises(ValueError, match="neighbour_refresh"):
        build_method("fdbh", 8, [8], {"neighbour_refresh": -2})


def test_fdbh_embed_is_the_test_time_pre_quantisation_output():
    torch.manual_seed(0)
    m = build_method("fdbh", 6, [8, 16])
    m.training_loss([torch.randn(32, 6) + 2, torch.randn(32, 6) + 2], StepInfo())  # moves running stats
    f = torch.randn(5, 6)
    e = m.embed(f)
    assert e.shape == (5, 24)
    assert torch.allclose(e[:, :8].norm(dim=1), torch.ones(5), atol=1e-5)
    # the sign of the embedding is the code (running statistics, not batch statistics)
    assert torch.equal(torch.sign(e[:, 8:]), m.encode(f)[16].float())
