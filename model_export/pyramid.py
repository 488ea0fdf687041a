"""Feature pyramid: level L (finest) is a strided conv + GDN of the attended backbone features, and each
coarser level a strided conv + GDN of the next finer one; a 3×3 conv projects each level to its latent."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .gdn import GDN

__all__ = ["FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """(B, C_in, H/4, W/4) → latents [y_1 … y_L]; y_i has ``latent_channels[i-1]`` channels at H/2^(2+L−i+1).

    Level 1 is the coarsest (H/4 / 2^L), level L the finest (H/8).
    """

    def __init__(self, in_channels: int, channels: int, latent_channels: Sequence[int]):
        super().__init__()
        self.levels = len(latent_channels)
        down = []
        for index in range(self.levels):
            source = in_channels if index == 0 else channels
            down.append(nn.Sequential(nn.Conv2d(source, channels, 5, stride=2, padding=2), GDN(channels)))
        # down[0] makes level L, down[1] level L-1, …
        self.down = nn.ModuleList(down)
        self.to_latent = nn.ModuleList(
            nn.Conv2d(channels, latent_channels[level], 3, padding=1) for level in range(self.levels)
        )

    def forward(self, features: Tensor) -> list[Tensor]:
        latents: list[Tensor] = [features] * self.levels
        current = features
        for step in range(self.levels):
            level_index = self.levels - 1 - step  # 0-based index of level L - step
            current = self.down[step](current)
            latents[level_index] = self.to_latent[level_index](current)
        return latents
