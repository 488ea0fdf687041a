"""Factorized non-parametric density per channel (Ballé et al. 2018, appendix 6.1).

Each channel's density is the derivative of a cumulative c(x) = sigmoid(f_K ∘ … ∘ f_1(x)), where every f_k
is a small per-channel monotone map (non-negative matrices, tanh gates with non-negative factors). The
probability of a quantised value q is c(q + ½) − c(q − ½). Per-channel quantiles (lower tail, median, upper
tail) stay learnable through an auxiliary loss, so the freeze step can cut each channel's support and build
integer CDF tables from the same density.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gdn import LowerBound

__all__ = ["EntropyBottleneck", "quantize"]


def quantize(y: Tensor, mode: str, offsets: Tensor | None = None) -> Tensor:
    """``noise``: y + U(−½, ½) (training proxy); ``round``: round(y − offset) + offset (inference)."""
    if mode == "noise":
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)
    if mode == "round":
        if offsets is None:
            return torch.round(y)
        return torch.round(y - offsets) + offsets
    if mode == "symbols":
        if offsets is None:
            return torch.round(y)
        return torch.round(y - offsets)
    raise ValueError(f"unknown quantisation mode {mode!r}")


class EntropyBottleneck(nn.Module):
    """Learned factorized prior over ``channels`` latent channels.

    Args:
        channels: number of latent channels (one density each).
        filters: hidden widths of the cumulative network, (3, 3, 3) as in the paper.
        init_scale: initial spread of the density.
        tail_mass: probability mass left outside [lower quantile, upper quantile] (split in two).
        likelihood_bound: floor on likelihoods so bits stay finite.
    """

    quantiles: Tensor
    target: Tensor

    def __init__(
        self,
        channels: int,
        filters: tuple[int, ...] = (3, 3, 3),
        init_scale: float = 10.0,
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
    ):
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)

        widths = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

        init = torch.tensor([-self.init_scale, 0.0, self.init_scale])
        self.quantiles = nn.Parameter(init.repeat(channels, 1, 1))
        target = np.log(2 / self.tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))

    # -- density -------------------------------------------------------------------------------------------
    def _logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        """Logits of the cumulative, for inputs shaped (channels, 1, n)."""
        logits = inputs
        for i in range(len(self.filters) + 1):
            matrix = self.matrices[i]
            bias = self.biases[i]
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                factor = self.factors[i]
                if stop_gradient:
                    factor = factor.detach()
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, values: Tensor) -> Tensor:
        """P(q) for values shaped (channels, 1, n); symmetric evaluation for numerical accuracy. Both bounds go
        through the density network in one pass (half the kernels, which a GPU step is short of)."""
        bounds = self._logits_cumulative(torch.cat([values - 0.5, values + 0.5], dim=2), stop_gradient=False)
        lower, upper = bounds.split(values.shape[2], dim=2)
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def medians(self) -> Tensor:
        """Per-channel medians, shaped (1, C, 1, 1) for broadcasting over latents."""
        return self.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)

    def loss(self) -> Tensor:
        """Auxiliary loss that moves ``quantiles`` onto the tail_mass/2 and median points of the density."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, y: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """Quantise ``y`` (B, C, H, W) and return (ŷ, likelihoods of ŷ)."""
        if training is None:
            training = self.training
        with torch.autocast(y.device.type, enabled=False):  # densities in fp32 under a bf16 autocast
            y_hat = quantize(y.float(), "noise" if training else "round", self.medians())
            batch, channels = y_hat.shape[:2]
            values = y_hat.permute(1, 0, 2, 3).reshape(channels, 1, -1)
            likelihood = self.likelihood_lower_bound(self._likelihood(values))
            likelihood = likelihood.reshape(channels, batch, *y_hat.shape[2:]).permute(1, 0, 2, 3)
        return y_hat, likelihood

    def pmf(self, samples: Tensor) -> Tensor:
        """Probability of every integer in ``samples`` (C, n) for each channel; used by the freeze step."""
        with torch.no_grad():
            return self._likelihood(samples.unsqueeze(1)).squeeze(1)
