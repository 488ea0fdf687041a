import pytest
import torch

from model_export.gdn import GDN, IGDN, LowerBound, NonNegativeParametrizer


def _reference(x, beta, gamma, inverse):
    norm = torch.sqrt(beta.reshape(1, -1, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma, x * x))
    return x * norm if inverse else x / norm


def test_gdn_matches_formula():
    gdn = GDN(5)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
    x = torch.randn(2, 5, 7, 9)
    beta = gdn.beta_reparam(gdn.beta)
    gamma = gdn.gamma_reparam(gdn.gamma)
    torch.testing.assert_close(gdn(x), _reference(x, beta, gamma, inverse=False), rtol=1e-5, atol=1e-6)


def test_igdn_matches_formula_and_inverts_diagonal_gdn():
    igdn = IGDN(4)
    x = torch.randn(1, 4, 6, 6)
    beta = igdn.beta_reparam(igdn.beta)
    gamma = igdn.gamma_reparam(igdn.gamma)
    torch.testing.assert_close(igdn(x), _reference(x, beta, gamma, inverse=True), rtol=1e-5, atol=1e-6)
    # with γ = 0 both reduce to a per-channel scaling by sqrt(β): IGDN(GDN(x)) = x
    gdn = GDN(4)
    with torch.no_grad():
        for module in (gdn, igdn):
            module.gamma.copy_(module.gamma_reparam.init(torch.zeros(4, 4)))
            module.beta.copy_(module.beta_reparam.init(torch.full((4,), 2.5)))
    torch.testing.assert_close(igdn(gdn(x)), x, rtol=1e-4, atol=1e-5)


def test_reparametrisation_keeps_parameters_non_negative():
    gdn = GDN(3, beta_min=1e-6)
    with torch.no_grad():
        gdn.beta.fill_(-5.0)
        gdn.gamma.fill_(-5.0)
    assert torch.all(gdn.beta_reparam(gdn.beta) >= 1e-6 - 1e-12)
    assert torch.all(gdn.gamma_reparam(gdn.gamma) >= 0)
    out = gdn(torch.randn(1, 3, 4, 4))
    assert torch.isfinite(out).all()


def test_lower_bound_passes_gradient_back_towards_the_bound():
    bound = LowerBound(1.0)
    x = torch.tensor([0.5, 2.0], requires_grad=True)
    y = bound(x)
    assert y.tolist() == [1.0, 2.0]
    (-y.sum()).backward()  # gradient descent would increase x: allowed even below the bound
    assert x.grad.tolist() == [-1.0, -1.0]
    x.grad = None
    bound(x).sum().backward()  # would push x further below the bound: blocked there
    assert x.grad.tolist() == [0.0, 1.0]


def test_gdn_gradients_reach_parameters():
    gdn = GDN(3)
    gdn(torch.randn(2, 3, 5, 5)).pow(2).sum().backward()
    assert gdn.beta.grad is not None and torch.any(gdn.beta.grad != 0)
    assert gdn.gamma.grad is not None and torch.any(gdn.gamma.grad != 0)
    assert isinstance(gdn.beta_reparam, NonNegativeParametrizer)


def test_constants_are_not_state_and_legacy_fp16_zeros_are_ignored():
    """fp16 exports used to store the pedestal (2⁻³⁶) and the likelihood floor (1e-9) rounded to zero."""
    gdn = GDN(3)
    assert not any("pedestal" in key or "bound" in key for key in gdn.state_dict())
    legacy = dict(gdn.state_dict())
    legacy["beta_reparam.pedestal"] = torch.zeros(1)
    legacy["beta_reparam.lower_bound.bound"] = torch.zeros(1)
    legacy["gamma_reparam.pedestal"] = torch.zeros(1)
    legacy["gamma_reparam.lower_bound.bound"] = torch.zeros(1)
    fresh = GDN(3)
    fresh.load_state_dict(legacy)
    assert fresh.beta_reparam.pedestal.item() == 2.0**-36
    assert fresh.beta_reparam.lower_bound.bound.item() > 0 and fresh.gamma_reparam.lower_bound.bound.item() > 0


def test_likelihood_floor_survives_an_fp16_checkpoint(tmp_path):
    from model_export.checkpoint import load_codec_checkpoint, save_codec_checkpoint
    from model_export.config import ExperimentConfig, LossConfig
    from model_export.model import SSLIC
    from tests.conftest import tiny_model_config

    three_levels = LossConfig(alpha=[1.0, 2.0, 3.0], beta=[0.0, 0.0, 0.0], gamma=[1.0, 0.9, 0.8])
    config = ExperimentConfig(model=tiny_model_config(), loss=three_levels)
    model = SSLIC(config.model, load_backbone_weights=False)
    path = save_codec_checkpoint(tmp_path / "codec.pt", model, config, {"name": "floor"}, half=True)
    loaded, _, _ = load_codec_checkpoint(path)
    bottleneck = loaded.entropy[0]
    far_out = torch.full((1, bottleneck.channels, 1, 1), 1e4)
    _, likelihood = bottleneck(far_out, training=False)
    assert likelihood.min().item() == pytest.approx(1e-9)  # the floor, not fp16 zero
    assert torch.isfinite(-torch.log2(likelihood)).all()
