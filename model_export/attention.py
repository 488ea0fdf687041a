"""SAGAN self-attention (Zhang et al. 2019) with windows and pooled keys/values.

out = x + γ · attend(q = W_q x, k = pool(W_k x), v = pool(W_v x)), with q/k at C/8 channels, a softmax over
the keys and γ learned from 0. Full attention at H/4 grows with the square of the image area, so attention
runs inside non-overlapping ``window``×``window`` tiles (0 = one tile for the whole map) over keys and values
max-pooled by ``pool``: memory and time then grow linearly with the image area. Training uses PyTorch's
fused SDPA; export uses explicit matmul + softmax (the same maths, and faster in ONNX Runtime), arranged
channels first: tiles are (C, pixels) and the output is v · softmax(kᵀq), the softmax taken over the keys,
so cutting and re-assembling tiles moves runs of ``window`` contiguous floats. The channels-last arrangement
that SDPA needs cost ONNX Runtime a 6-D transpose of the whole H/4 map element by element: 70 of the
encoder's 223 ms on a 768×512 image (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SelfAttention"]


class SelfAttention(nn.Module):
    """Args:
    channels: input channels C.
    window: tile side in feature pixels; the map's height and width must be multiples of it (0: no tiles).
    pool: max-pool factor for keys and values (1: none); must divide ``window``.
    """

    def __init__(self, channels: int, window: int = 16, pool: int = 2):
        super().__init__()
        if window and window % pool:
            raise ValueError(f"attention pool {pool} must divide the window {window}")
        self.window = int(window)
        self.pool = int(pool)
        self.query = nn.Conv2d(channels, max(channels // 8, 1), 1)
        self.key = nn.Conv2d(channels, max(channels // 8, 1), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.use_sdpa = True

    def _tiles(self, t: Tensor, side: int) -> Tensor:
        """(B, C, H, W) → (B·nH·nW, side², C)."""
        b, c, h, w = t.shape
        t = t.reshape(b, c, h // side, side, w // side, side)
        return t.permute(0, 2, 4, 3, 5, 1).reshape(-1, side * side, c)

    @staticmethod
    def _tiles_channels_first(t: Tensor, side: int) -> Tensor:
        """(B, C, H, W) → (B·nH·nW, C, side²)."""
        b, c, h, w = t.shape
        t = t.reshape(b, c, h // side, side, w // side, side)
        return t.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, side * side)

    def _attend_channels_first(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The matmul path: (B, C, H, W) output of attention, before γ."""
        (b, c), (h, w) = v.shape[:2], q.shape[2:]  # v may be pooled
        if not self.window:
            weights = torch.softmax(torch.matmul(k.flatten(2).transpose(1, 2), q.flatten(2)), dim=1)
            return torch.matmul(v.flatten(2), weights).reshape(b, c, h, w)
        side = self.window
        q_t = self._tiles_channels_first(q, side)
        k_t = self._tiles_channels_first(k, side // self.pool)
        v_t = self._tiles_channels_first(v, side // self.pool)
        weights = torch.softmax(torch.matmul(k_t.transpose(1, 2), q_t), dim=1)  # (tiles, keys, queries)
        out = torch.matmul(v_t, weights).reshape(b, h // side, w // side, c, side, side)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query(x)
        k = self.key(x)
        v = self.value(x)
        if self.pool > 1:
            k = F.max_pool2d(k, self.pool)
            v = F.max_pool2d(v, self.pool)
        if not self.use_sdpa or torch.onnx.is_in_onnx_export():
            return x + self.gamma * self._attend_channels_first(q, k, v)
        if self.window:
            q_t = self._tiles(q, self.window)
            k_t = self._tiles(k, self.window // self.pool)
            v_t = self._tiles(v, self.window // self.pool)
        else:
            q_t = q.flatten(2).transpose(1, 2)
            k_t = k.flatten(2).transpose(1, 2)
            v_t = v.flatten(2).transpose(1, 2)
        out = F.scaled_dot_product_attention(q_t, k_t, v_t, scale=1.0)
        if self.window:
            side = self.window
            out = out.reshape(b, h // side, w // side, side, side, c).permute(0, 5, 1, 3, 2, 4)
            out = out.reshape(b, c, h, w)
        else:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        return x + self.gamma * out
