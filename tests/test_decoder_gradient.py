"""The hand-written decoder gradient (for latent refinement) against PyTorch's autograd."""

from __future__ import annotations

import copy

import pytest
import torch

from model_export.decoder import use_subpixel_upsampling
from model_export.decoder_gradient import DecoderGradient
from model_export.model import SSLIC
from tests.conftest import tiny_model_config


def _tiny_decoder(**overrides):
    model = SSLIC(tiny_model_config(**overrides), load_backbone_weights=False).eval()
    for module in model.decoder.modules():  # move IGDN off its identity-like start so its adjoint matters
        if hasattr(module, "beta") and hasattr(module, "gamma"):
            module.gamma.data.add_(torch.rand_like(module.gamma) * 0.3)
            module.beta.data.add_(torch.rand_like(module.beta) * 0.3)
    deployed = copy.deepcopy(model.decoder)
    use_subpixel_upsampling(deployed)
    return model, deployed


@pytest.mark.parametrize("level", [1, 2, 3])
def test_gradient_equals_autograd_at_every_level(level):
    model, deployed = _tiny_decoder()
    stride = model.level_strides()[level - 1]
    latent = torch.randn(2, 8, 128 // stride, 64 // stride) * 3
    target = torch.rand(2, 3, 128, 64)
    weight = (torch.rand(2, 1, 128, 64) > 0.3).float()
    with torch.no_grad():
        squared, gradient = DecoderGradient(deployed, level)(latent, target, weight)
    reference = latent.clone().requires_grad_(True)
    decoded = model.decoder(reference, level)
    expected = (weight * (decoded.clamp(0, 1) - target) ** 2).sum(dim=(1, 2, 3))
    expected.sum().backward()
    torch.testing.assert_close(squared, expected.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gradient, reference.grad, rtol=1e-4, atol=1e-5 * reference.grad.abs().max().item())
    assert reference.grad.abs().max() > 0


def test_attention_in_the_decoder_and_training_form_are_refused():
    _, deployed = _tiny_decoder(attention="both")
    with pytest.raises(ValueError, match="attention"):
        DecoderGradient(deployed, 1)
    model, _ = _tiny_decoder()
    with pytest.raises(ValueError, match="sub-pixel"):
        DecoderGradient(model.decoder, 1)  # transposed convolutions: export form only
