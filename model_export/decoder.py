"""One synthesis decoder whose level paths share weights (paper section 2.1.3).

Parameters, with D decoder channels and L levels:
- ``entry[i]``: 3×3 conv, latent channels of level i → D, at level i's resolution (level i's own);
- ``up[j]``: 5×5 transposed conv ×2 + IGDN, H/2^(3+j+1) → H/2^(3+j) (j = 0 … L−2), shared by every level
  coarser than the resolution it starts from;
- ``refine[i]``: a residual block at H/8, level i's own refinement, also applied by every finer level;
- ``trunk``: H/8 → H (transposed convs + IGDN to H/4 at D and H/2 at D/2 channels, optional attention,
  last transposed conv to RGB), shared
  by all levels.

With ``input_offsets``, each level's path starts with its own ``InputOffsets`` (fitted after training).

Level i's path: entry[i] → up[L−i−1] … up[0] → refine[1] … refine[i] → trunk. So the decoder of level i uses
all of level i−1's trunk and refinement parameters plus its own entry and refinement block; every level's
path is a module of its own (``DecoderPath``) and exports on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import SelfAttention
from .gdn import IGDN

__all__ = [
    "SharedDecoder", "DecoderPath", "InputOffsets", "OFFSET_CLASSES", "MAX_INPUT_OFFSET", "ResidualBlock",
    "SubPixelUpsample", "use_subpixel_upsampling",
]

# |q| = 0, 1, 2, 3 and 4 or more each get their own offset per channel
OFFSET_CLASSES = 5
# the largest |δ| a fit may give: below ½, so that ŷ − δ still rounds to the symbol of ŷ, which is how the runtime
# decodes a plainly rounded level without the offsets (service.codec.Codec.dequantize)
MAX_INPUT_OFFSET = 0.49


def _upsample(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, 5, stride=2, padding=2, output_padding=1)


class SubPixelUpsample(nn.Module):
    """The ×2 transposed convolution of :func:`_upsample` rewritten as a 3×3 convolution to four times the
    channels followed by a pixel shuffle: the same function, since output pixel (2q + a, 2r + b) only sees
    input pixels q − 1 … q + 1 and r − 1 … r + 1, through taps ``4 + a − 2j`` of the 5×5 kernel (zero where
    that falls outside it). ONNX Runtime runs these convolutions on its fast CPU kernels; its ConvTranspose
    took 67–82 % of a decoder's time (docs/benchmarks.md)."""

    def __init__(self, transposed: nn.ConvTranspose2d):
        super().__init__()
        if not self.fits(transposed):
            raise ValueError(f"not a 5x5 stride-2 transposed convolution with padding 2: {transposed}")
        weight = transposed.weight.detach()  # (in, out, 5, 5)
        in_channels, out_channels = weight.shape[:2]
        phases = weight.new_zeros(out_channels, 2, 2, in_channels, 3, 3)
        for a in range(2):
            for b in range(2):
                for j in range(3):
                    for k in range(3):
                        tap_row, tap_col = 4 + a - 2 * j, 4 + b - 2 * k
                        if tap_row <= 4 and tap_col <= 4:
                            phases[:, a, b, :, j, k] = weight[:, :, tap_row, tap_col].t()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1, bias=transposed.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(phases.reshape(4 * out_channels, in_channels, 3, 3))
            if transposed.bias is not None:
                self.conv.bias.copy_(transposed.bias.detach().repeat_interleave(4))

    @staticmethod
    def fits(module: nn.Module) -> bool:
        return (isinstance(module, nn.ConvTranspose2d) and module.kernel_size == (5, 5) and module.stride == (2, 2)
                and module.padding == (2, 2) and module.output_padding == (1, 1) and module.dilation == (1, 1)
                and module.groups == 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def use_subpixel_upsampling(module: nn.Module) -> int:
    """Replace, in place, every ×2 transposed convolution inside ``module`` by its :class:`SubPixelUpsample`
    (for export: the parameters change names and shapes, so training and checkpoints keep the originals).
    Returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if SubPixelUpsample.fits(child):
            setattr(module, name, SubPixelUpsample(child))
            replaced += 1
        else:
            replaced += use_subpixel_upsampling(child)
    return replaced


class ResidualBlock(nn.Module):
    """x + conv3×3(LeakyReLU(conv3×3(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Trunk(nn.Module):
    """H/8 → H: ×2 up + IGDN (D), ×2 up + IGDN (D/2), [attention], ×2 up to 3 channels."""

    def __init__(self, channels: int, attention: SelfAttention | None):
        super().__init__()
        fine = self.fine_channels(channels)
        self.up1 = nn.Sequential(_upsample(channels, channels), IGDN(channels))
        self.up2 = nn.Sequential(_upsample(channels, fine), IGDN(fine))
        self.attention = attention
        self.to_rgb = _upsample(fine, 3)

    @staticmethod
    def fine_channels(channels: int) -> int:
        """Channels at H/2: half the decoder width, which halves the cost of the two costliest layers."""
        return max(channels // 2, 8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.up2(self.up1(x))
        if self.attention is not None:
            x = self.attention(x)
        return self.to_rgb(x)


class InputOffsets(nn.Module):
    """Reconstruction offsets of one level's decoder input: with q = round(ŷ − median), the decoder reads
    ŷ + sign(q) · δ[c, min(|q|, K − 1)] (δ[c, 0] alone where q = 0) instead of ŷ = q + median.

    The encoder's rate–distortion optimised rounding moves symbols towards 0, so the best value to decode a
    symbol to is not the integer itself; ``model_export.fit_offsets`` fits δ (C, K) for the decoded pixels' MSE
    on the symbols the runtime codes. Zero offsets are the identity. The medians are a buffer copied from the
    level's entropy model when the offsets are fitted."""

    medians: Tensor

    def __init__(self, channels: int, classes: int = OFFSET_CLASSES):
        super().__init__()
        self.offsets = nn.Parameter(torch.zeros(channels, classes))
        self.register_buffer("medians", torch.zeros(channels))

    def forward(self, y_hat: Tensor) -> Tensor:
        symbols = torch.round(y_hat - self.medians.view(1, -1, 1, 1)).detach()
        magnitude = symbols.abs().clamp(max=self.offsets.shape[1] - 1)
        shift = torch.zeros_like(y_hat)
        for k in range(self.offsets.shape[1]):  # a sum of masks: exports as plain elementwise ONNX ops
            shift = shift + self.offsets[:, k].view(1, -1, 1, 1) * (magnitude == k).to(y_hat.dtype)
        return y_hat + torch.where(symbols < 0, -shift, shift)


class SharedDecoder(nn.Module):
    """Holds every parameter of every level path; ``forward(y, level)`` decodes one level (1-based)."""

    def __init__(
        self,
        latent_channels: Sequence[int],
        channels: int = 128,
        attention: bool = False,
        attention_window: int = 16,
        attention_pool: int = 2,
        input_offsets: bool = False,
    ):
        super().__init__()
        self.levels = len(latent_channels)
        self.input_offsets = nn.ModuleList(InputOffsets(m) for m in latent_channels) if input_offsets else None
        self.entry = nn.ModuleList(nn.Conv2d(m, channels, 3, padding=1) for m in latent_channels)
        self.up = nn.ModuleList(
            nn.Sequential(_upsample(channels, channels), IGDN(channels)) for _ in range(self.levels - 1)
        )
        self.refine = nn.ModuleList(ResidualBlock(channels) for _ in range(self.levels))
        attn = None
        if attention:
            attn = SelfAttention(Trunk.fine_channels(channels), attention_window, attention_pool)
        self.trunk = Trunk(channels, attn)

    def forward(self, y: Tensor, level: int) -> Tensor:
        if not 1 <= level <= self.levels:
            raise ValueError(f"level must be in 1..{self.levels}, got {level}")
        if self.input_offsets is not None:
            y = self.input_offsets[level - 1](y)
        x = self.entry[level - 1](y)
        for j in reversed(range(self.levels - level)):
            x = self.up[j](x)
        for i in range(level):
            x = self.refine[i](x)
        return self.trunk(x)

    def path(self, level: int) -> "DecoderPath":
        return DecoderPath(self, level)

    def path_parameters(self, level: int) -> list[nn.Parameter]:
        """The parameters level ``level``'s path uses (for tests and docs)."""
        modules: list[nn.Module] = [self.entry[level - 1], self.trunk]
        modules += [self.up[j] for j in range(self.levels - level)]
        modules += [self.refine[i] for i in range(level)]
        if self.input_offsets is not None:
            modules.append(self.input_offsets[level - 1])
        return [p for m in modules for p in m.parameters()]


class DecoderPath(nn.Module):
    """One level's decoder as a stand-alone module (ŷ_i → x̂_i), sharing the decoder's parameters."""

    def __init__(self, decoder: SharedDecoder, level: int):
        super().__init__()
        self.decoder = decoder
        self.level = int(level)

    def forward(self, y_hat: Tensor) -> Tensor:
        return self.decoder(y_hat, self.level)
