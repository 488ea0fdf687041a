"""Rate–distortion of a model on a folder of whole images (eval mode: rounding, estimated bits)."""

from __future__ import annotations

import numpy as np
import torch

from .losses import psnr_from_mse
from .model import SSLIC

__all__ = ["evaluate_images"]


@torch.no_grad()
def evaluate_images(model: SSLIC, images: list[np.ndarray], device: torch.device | str = "cpu") -> dict:
    """Mean bpp (from the entropy model's likelihoods of the rounded latents) and mean PSNR (8-bit RGB,
    after rounding the reconstruction to 8 bits) per level, level 1 first."""
    was_training = model.training
    model.eval()
    levels = list(range(1, model.levels + 1))
    bpp = {level: [] for level in levels}
    psnr = {level: [] for level in levels}
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0).to(device)
        for level, (x_hat, rate) in zip(levels, model.reconstruct_levels(x, levels)):
            x8 = torch.round(x_hat * 255.0)
            mse = torch.mean((x8 - x * 255.0) ** 2).item() / 255.0**2
            bpp[level].append(rate)
            psnr[level].append(psnr_from_mse(mse))
    model.train(was_training)
    return {
        "bpp": [float(np.mean(bpp[level])) for level in levels],
        "psnr": [float(np.mean(psnr[level])) for level in levels],
        "images": len(images),
    }
