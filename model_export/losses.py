"""Rate–distortion loss of the paper (eq. 2): Σᵢ αᵢ·MSE + Σᵢ βᵢ·P + Σᵢ γᵢ·bpp, over the L levels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import LossConfig
from .perceptual import PerceptualLoss

__all__ = ["RateDistortionLoss", "LevelTerms", "psnr_from_mse", "bits_per_pixel"]


def bits_per_pixel(likelihoods: Tensor, pixels: int) -> Tensor:
    return -torch.log2(likelihoods).sum() / pixels


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of an MSE measured on [0, 1] images."""
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@dataclass
class LevelTerms:
    mse: Tensor  # on [0, 1] scale
    bpp: Tensor
    perceptual: Tensor


def mean_level_terms(parts: list[list[LevelTerms]]) -> list[LevelTerms]:
    """Per-level terms averaged over the equally sized batches of one accumulated update."""
    if len(parts) == 1:
        return parts[0]
    return [
        LevelTerms(*(torch.stack([getattr(terms[level], name).detach() for terms in parts]).mean()
                     for name in ("mse", "bpp", "perceptual")))
        for level in range(len(parts[0]))
    ]


class RateDistortionLoss:
    """Weights per level come from ``LossConfig``. MSE is measured on [0, 1] images, so αᵢ = λᵢ·255²·γᵢ for
    CompressAI's λ (whose loss is λ·255²·MSE + bpp)."""

    def __init__(self, config: LossConfig, perceptual: PerceptualLoss | None):
        self.config = config
        self.perceptual = perceptual if any(config.beta) else None

    def __call__(self, x: Tensor, output: dict[str, list[Tensor]]) -> tuple[Tensor, list[LevelTerms]]:
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        target = self.perceptual.target(x) if self.perceptual is not None else None
        total = x.new_zeros(())
        terms = []
        for index, (x_hat, likelihoods) in enumerate(zip(output["x_hat"], output["likelihoods"])):
            mse = torch.mean((x - x_hat.float()) ** 2)
            bpp = bits_per_pixel(likelihoods, pixels)
            if self.perceptual is not None and target is not None:
                perceptual = self.perceptual(x_hat, target)
            else:
                perceptual = x.new_zeros(())
            total = (
                total
                + self.config.alpha[index] * mse
                + self.config.beta[index] * perceptual
                + self.config.gamma[index] * bpp
            )
            terms.append(LevelTerms(mse.detach(), bpp.detach(), perceptual.detach()))
        return total, terms
