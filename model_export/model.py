"""The sslic codec model: backbone → attention → pyramid → per-level entropy bottlenecks → shared decoder.

                 ┌──────────┐  ┌───────────┐  ┌─────────┐ y_L ─ Q ─ EB_L ─ ŷ_L ─┐
  x ─ pad ──────▶│ backbone │─▶│ attention │─▶│ pyramid │ …                      ├─▶ decoder path i ─▶ x̂_i
                 │ (frozen) │  │ (SAGAN)   │  │conv+GDN │ y_1 ─ Q ─ EB_1 ─ ŷ_1 ─┘
                 └──────────┘  └───────────┘  └─────────┘
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import SelfAttention
from .backbone import LearnedStem, ResNet50Group1, load_simclr_backbone
from .config import ModelConfig
from .decoder import SharedDecoder
from .entropy import EntropyBottleneck, quantize
from .pyramid import FeaturePyramid

__all__ = ["SSLIC", "pad_to_multiple", "crop_to", "OFFSET_KEYS"]

# state-dict keys of the decoder's input offsets (fitted after training: model_export.fit_offsets)
OFFSET_KEYS = "decoder.input_offsets."


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom and right so height and width are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h = (-h) % multiple
    pad_w = (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    return x[..., :height, :width]


class Encoder(nn.Module):
    """x (B,3,H,W in [0,1], H and W multiples of ``padding_multiple``) → latents [y_1 … y_L]."""

    def __init__(
        self,
        backbone: nn.Module,
        attention: SelfAttention | None,
        pyramid: FeaturePyramid,
        frozen: bool,
        pixel_shortcut: bool,
    ):
        super().__init__()
        self.backbone = backbone
        self.attention = attention
        self.pyramid = pyramid
        self.backbone_frozen = frozen
        self.pixel_shortcut = pixel_shortcut

    def features(self, x: Tensor) -> Tensor:
        """Backbone features at H/4, with the 4×4 space-to-depth of the centred pixels appended.

        A fine-tuned backbone keeps its batch-norm statistics frozen (only weights and affine parameters train):
        batches of a few crops give noisy statistics, and training and inference must see the same features.
        """
        if self.backbone_frozen:
            self.backbone.eval()
            with torch.no_grad():
                features = self.backbone(x)
        else:
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
            features = self.backbone(x)
        if self.pixel_shortcut:
            features = torch.cat([features, F.pixel_unshuffle(x - 0.5, 4)], dim=1)
        return features

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.features(x)
        if self.attention is not None:
            features = self.attention(features)
        return self.pyramid(features)


class SSLIC(nn.Module):
    """Variable-rate codec with L levels; level 1 is the coarsest (smallest files)."""

    def __init__(self, config: ModelConfig, load_backbone_weights: bool = True):
        super().__init__()
        config.validate()
        self.config = config
        self.levels = config.levels
        if config.backbone == "simclr":
            if load_backbone_weights and config.backbone_checkpoint:
                backbone: nn.Module = load_simclr_backbone(config.backbone_checkpoint)
            else:
                backbone = ResNet50Group1()
            frozen = not config.finetune_backbone
            if frozen:
                backbone.requires_grad_(False)
        else:
            backbone = LearnedStem()
            frozen = False
        channels = backbone.out_channels + (3 * 16 if config.pixel_shortcut else 0)  # type: ignore[attr-defined]
        encoder_attention = None
        if config.attention in ("encoder", "both"):
            encoder_attention = SelfAttention(channels, config.attention_window, config.attention_pool)
        pyramid = FeaturePyramid(channels, config.pyramid_channels, config.latent_channels)
        self.encoder = Encoder(backbone, encoder_attention, pyramid, frozen, config.pixel_shortcut)
        self.entropy = nn.ModuleList(EntropyBottleneck(m) for m in config.latent_channels)
        self.decoder = SharedDecoder(
            config.latent_channels,
            config.decoder_channels,
            attention=config.attention in ("decoder", "both"),
            attention_window=config.attention_window,
            attention_pool=config.attention_pool,
            input_offsets=config.decoder_input_offsets,
        )

    @property
    def padding_multiple(self) -> int:
        """Height and width of the encoder input must be multiples of this."""
        coarsest = 4 * 2**self.levels
        window = 4 * self.config.attention_window if self.config.attention in ("encoder", "both") else 1
        decoder_window = 2 * self.config.attention_window if self.config.attention in ("decoder", "both") else 1
        multiple = coarsest
        for other in (window, decoder_window):
            multiple = multiple * other // math.gcd(multiple, other)
        return multiple

    def level_strides(self) -> list[int]:
        """Downscaling factor of each level's latent relative to the image (level 1 first)."""
        return [4 * 2 ** (self.levels - i + 1) for i in range(1, self.levels + 1)]

    def forward(self, x: Tensor, levels: list[int] | None = None,
                decoder_input: str = "noise") -> dict[str, list[Tensor]]:
        """x: (B,3,H,W) in [0,1] with H, W multiples of ``padding_multiple``.

        Returns ``x_hat``, ``likelihoods`` and ``y`` lists (level 1 first) for the requested levels. In training
        the likelihoods are always those of y + U(−½, ½); ``decoder_input`` chooses what the decoder sees:
        ``noise`` (the same noisy latents, as in the paper) or ``round`` (the rounded latents it gets at
        inference, with a straight-through gradient: "mixed quantisation", Minnen & Singh 2020).
        """
        if decoder_input not in ("noise", "round"):
            raise ValueError(f"decoder_input must be 'noise' or 'round', not {decoder_input!r}")
        levels = levels or list(range(1, self.levels + 1))
        latents = self.encoder(x)
        out: dict[str, list[Tensor]] = {"x_hat": [], "likelihoods": [], "y": []}
        for level in levels:
            y = latents[level - 1]
            bottleneck = self.entropy[level - 1]
            y_hat, likelihoods = bottleneck(y)
            if self.training and decoder_input == "round":
                y_float = y.float()
                y_hat = y_float + (quantize(y_float, "round", bottleneck.medians()) - y_float).detach()
            out["x_hat"].append(self.decoder(y_hat, level))
            out["likelihoods"].append(likelihoods)
            out["y"].append(y)
        return out

    def aux_loss(self) -> Tensor:
        return sum(eb.loss() for eb in self.entropy)  # type: ignore[return-value]

    @torch.no_grad()
    def reconstruct_levels(self, x: Tensor, levels: list[int] | None = None) -> list[tuple[Tensor, float]]:
        """Eval-mode round trip of an image of any size, encoding once: per level (x̂ in [0,1], est. bpp)."""
        levels = levels or list(range(1, self.levels + 1))
        h, w = x.shape[-2:]
        out = self.forward(pad_to_multiple(x, self.padding_multiple), levels)
        pixels = x.shape[0] * h * w
        return [
            (crop_to(x_hat, h, w).clamp(0, 1), -torch.log2(likelihoods).sum().item() / pixels)
            for x_hat, likelihoods in zip(out["x_hat"], out["likelihoods"])
        ]

    def reconstruct(self, x: Tensor, level: int) -> tuple[Tensor, float]:
        """Eval-mode round trip at one level: (x̂ clamped to [0,1], estimated bpp)."""
        return self.reconstruct_levels(x, [level])[0]
