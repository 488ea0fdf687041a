"""Channel context of the entropy coder: which of a channel's tables codes each symbol.

The factorized density codes every symbol of a channel with one table, whatever the image does there. The
channel context picks, per symbol, one of B tables of its channel by how busy the already coded channels are
at that place: for channel c at (i, j)

    R_c(i, j) = Σ_{k < c} w_k · min(|s_k(i, j)|, clip)          (integers, w_k ≈ 4096 / mean |s_k|)
    A_c(i, j) = the sum of R_c over the 3×3 window around (i, j), edges replicated
    b_c(i, j) = the number of thresholds in edges_c that are ≤ A_c(i, j)    (0 … B − 1)

Everything is integer arithmetic, so encoder and decoder compute the same buckets on every machine. Channel
0 has no coded channels before it: its activity is 0 everywhere. The weights, thresholds and B tables per
channel are fitted on the training images at export (``model_export.freeze.fit_context_tables``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ChannelContext", "ContextState", "DEFAULT_CLIP", "DEFAULT_WINDOW", "bucket_of", "window_sum"]

DEFAULT_CLIP = 255
DEFAULT_WINDOW = 3
# below this many positions one binary search beats a pass per threshold
_SMALL = 2048


@dataclass(frozen=True)
class ChannelContext:
    """Per-level context parameters: ``weights`` (C,) int64 ≥ 0, ``edges`` (C, B − 1) int64 non-decreasing."""

    weights: np.ndarray
    edges: np.ndarray
    clip: int = DEFAULT_CLIP
    window: int = DEFAULT_WINDOW

    @property
    def buckets(self) -> int:
        return int(self.edges.shape[1]) + 1

    def start(self, height: int, width: int) -> "ContextState":
        return ContextState(self, np.zeros((height, width), dtype=np.int64))

    def activities_of(self, symbols: np.ndarray) -> np.ndarray:
        """Activity A_c of every symbol of ``symbols`` (C, H, W), as the decoder will find it: int64 (C, H, W)."""
        magnitudes = np.minimum(np.abs(symbols.astype(np.int64)), self.clip) * self.weights[:, None, None]
        running = np.zeros_like(magnitudes)
        np.cumsum(magnitudes[:-1], axis=0, out=running[1:])
        return window_sum(running, self.window)

    def buckets_of(self, symbols: np.ndarray) -> np.ndarray:
        """Bucket of every symbol of ``symbols`` (C, H, W), as the decoder will find them: uint8 (C, H, W)."""
        activities = self.activities_of(symbols)
        buckets = np.zeros(activities.shape, dtype=np.uint8)
        for k in range(self.edges.shape[1]):
            buckets += activities >= self.edges[:, k, None, None]
        return buckets


@dataclass
class ContextState:
    """The running weighted activity R_c while a level is coded channel after channel."""

    context: ChannelContext
    running: np.ndarray  # int64 (H, W)

    def activity(self) -> np.ndarray:
        """A (H, W) of the next channel: the windowed sum of the running activity."""
        return window_sum(self.running, self.context.window)

    def buckets(self, channel: int) -> np.ndarray:
        """Buckets b_c (H, W) uint8 of ``channel`` from the channels added so far."""
        return bucket_of(self.activity(), self.context.edges[channel])

    def add(self, channel: int, symbols: np.ndarray) -> None:
        """Add a coded channel's symbols (H, W) to the running activity."""
        magnitude = np.minimum(np.abs(symbols.astype(np.int64)), self.context.clip)
        self.running += int(self.context.weights[channel]) * magnitude


def bucket_of(activity: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of the sorted thresholds ``edges`` are ≤ each activity (``searchsorted(side="right")``), uint8."""
    if activity.size < _SMALL:
        return np.searchsorted(edges, activity, side="right").astype(np.uint8)
    buckets = np.zeros(activity.shape, dtype=np.uint8)
    for edge in edges.tolist():
        buckets += activity >= edge
    return buckets


def window_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum over the ``window``×``window`` neighbourhood (last two axes, edges replicated) of every element, in
    integers."""
    if window == 1:
        return values.copy()
    radius = window // 2
    height, width = values.shape[-2:]
    padded = np.empty(values.shape[:-2] + (height + 2 * radius, width + 2 * radius), dtype=values.dtype)
    padded[..., radius : radius + height, radius : radius + width] = values
    padded[..., :radius, radius : radius + width] = values[..., :1, :]
    padded[..., radius + height :, radius : radius + width] = values[..., -1:, :]
    padded[..., :, :radius] = padded[..., :, radius : radius + 1]
    padded[..., :, radius + width :] = padded[..., :, radius + width - 1 : radius + width]
    rows = padded[..., :height, :].copy()
    for d in range(1, window):
        rows += padded[..., d : d + height, :]
    total = rows[..., :width].copy()
    for d in range(1, window):
        total += rows[..., d : d + width]
    return total
