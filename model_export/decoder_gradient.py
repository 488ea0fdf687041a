"""The gradient of one level's decoder, as a graph of forward operations, for encoder-side latent refinement.

``DecoderGradient(decoder, level)`` maps (ŷ, target, weight) to the weighted squared error of the decoded image,
S = Σ weight · (clamp(x̂, 0, 1) − target)², and its gradient ∂S/∂ŷ. The backward pass is written out by hand
(the adjoint of a stride-1 convolution is a convolution with the kernel flipped and its channels swapped; of a
pixel shuffle, the pixel unshuffle; of IGDN, below; of the input offsets, the identity, as their shift only changes
where ŷ crosses a rounding step), so the graph exports to plain ONNX and the torch-free
service can refine latents with ONNX Runtime alone (``service/refine.py``, docs/architecture.md). It expects the
export form of the decoder (:func:`model_export.decoder.use_subpixel_upsampling`), and a trunk without attention.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import InputOffsets, ResidualBlock, SharedDecoder, SubPixelUpsample
from .gdn import GDN

__all__ = ["DecoderGradient", "decoder_steps"]


def _conv_input_gradient(grad: Tensor, conv: nn.Conv2d) -> Tensor:
    """Adjoint of a stride-1, same-padded convolution: the flipped, channel-swapped kernel."""
    return F.conv2d(grad, conv.weight.transpose(0, 1).flip(2, 3), padding=conv.padding)


def decoder_steps(decoder: SharedDecoder, level: int) -> list[nn.Module]:
    """The modules level ``level``'s path applies, in order (the order of :meth:`SharedDecoder.forward`)."""
    if decoder.trunk.attention is not None:
        raise ValueError("latent refinement does not support attention in the decoder")
    steps: list[nn.Module] = [decoder.entry[level - 1]]
    if decoder.input_offsets is not None:
        steps.insert(0, decoder.input_offsets[level - 1])
    for j in reversed(range(decoder.levels - level)):
        steps.extend(decoder.up[j])
    steps.extend(decoder.refine[:level])
    steps.extend([*decoder.trunk.up1, *decoder.trunk.up2, decoder.trunk.to_rgb])
    for step in steps:
        supported = isinstance(step, (SubPixelUpsample, ResidualBlock, InputOffsets))
        supported = supported or (isinstance(step, GDN) and step.inverse)
        if isinstance(step, nn.Conv2d):
            supported = step.stride == (1, 1) and step.dilation == (1, 1) and step.groups == 1
        if not supported:
            raise ValueError(f"no adjoint for {step} (export the decoder in its sub-pixel form first)")
    return steps


def _forward(step: nn.Module, x: Tensor) -> tuple[Tensor, tuple]:
    """The step's output and what its adjoint needs."""
    if isinstance(step, GDN):
        channels = x.shape[1]
        gamma = step.gamma_reparam(step.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, step.beta_reparam(step.beta)).sqrt()
        return x * norm, (x, norm, gamma)
    if isinstance(step, ResidualBlock):
        first, activation, second = step.body
        hidden = first(x)
        return x + second(activation(hidden)), (hidden,)
    return step(x), ()


def _backward(step: nn.Module, grad: Tensor, saved: tuple) -> Tensor:
    if isinstance(step, GDN):
        # y_i = x_i·s_i, s_i = sqrt(β_i + Σ_j γ_ij x_j²)  ⇒  ∂S/∂x_k = g_k·s_k + x_k · Σ_i γ_ik · g_i·x_i / s_i
        x, norm, gamma = saved
        return grad * norm + x * F.conv2d(grad * x / norm, gamma.transpose(0, 1))
    if isinstance(step, ResidualBlock):
        first, activation, second = step.body
        (hidden,) = saved
        inner = _conv_input_gradient(grad, second)
        slope = (hidden > 0).to(grad.dtype) * (1.0 - activation.negative_slope) + activation.negative_slope
        return grad + _conv_input_gradient(inner * slope, first)
    if isinstance(step, SubPixelUpsample):
        return _conv_input_gradient(F.pixel_unshuffle(grad, 2), step.conv)
    if isinstance(step, InputOffsets):  # a shift that is constant between the rounding steps
        return grad
    return _conv_input_gradient(grad, step)


class DecoderGradient(nn.Module):
    """(ŷ (B, C, h, w), target (B, 3, H, W), weight (B, 1, H, W)) → (S per image (B,), ∂S/∂ŷ)."""

    def __init__(self, decoder: SharedDecoder, level: int):
        super().__init__()
        self.decoder = decoder
        self.level = int(level)
        self.steps = decoder_steps(decoder, self.level)

    def forward(self, latent: Tensor, target: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        x = latent
        saved = []
        for step in self.steps:
            x, kept = _forward(step, x)
            saved.append(kept)
        clamped = x.clamp(0.0, 1.0)
        error = clamped - target
        squared = (weight * error * error).sum(dim=(1, 2, 3))
        inside = ((x > 0.0) & (x < 1.0)).to(x.dtype)
        grad = 2.0 * weight * error * inside
        for step, kept in zip(reversed(self.steps), reversed(saved)):
            grad = _backward(step, grad, kept)
        return squared, grad
