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

With a checkerboard spatial context (S > 0 spatial buckets, ``spatial_edges`` (C, S − 1)) a channel is coded in
two passes. The anchors, (i + j) even, come first and use the B tables as above. Then every other symbol also
knows its four neighbours in its own channel, all anchors:

    N_c(i, j) = Σ over the 4 neighbours inside the channel of min(|s_c|, clip)
    s_c(i, j) = the number of thresholds in spatial_edges_c that are ≤ N_c(i, j)    (0 … S − 1)

and is coded with table B + b_c(i, j) · S + s_c(i, j): B · (1 + S) tables per channel in all (He et al. 2021,
"Checkerboard Context Model", here by counting).

The learned activity (tables format 4, ``mixing`` (2, C, C) in place of ``weights``) weighs every earlier
channel for every channel, at the symbol's own place and over its window: with m_k = min(|s_k|, clip)

    A_c(i, j) = Σ_{k < c} P_ck · m_k(i, j) + the 3×3 window sum of Σ_{k < c} Q_ck · m_k        (P, Q = mixing)

A sign prediction (tables format 6, ``sign_mixing`` (2, C, C) and, with the checkerboard, ``sign_pass2`` (C, 2))
codes a symbol negated, −s_c(i, j), where its predicted sign is negative. With v_k = s_k clipped to ±clip

    P_c(i, j) = Σ_{k < c} U_ck · v_k(i, j) + the 3×3 window sum of Σ_{k < c} V_ck · v_k      (U, V = sign_mixing)

predicts the anchors (every symbol without the checkerboard), and a_c · P_c(i, j) + b_c · N±_c(i, j) the second
pass, N±_c the signed sum of its four anchor neighbours, each clipped to ±clip ((a_c, b_c) = sign_pass2). The
latents' signs follow the earlier channels' and the neighbours' a little; the tables, fitted to the symbols so
flipped, then capture it. Format 5's sign flip is the special case without ``sign_mixing`` and (a, b) = (0, 1).

A diagonal pass (tables format 7, levels with ``diagonal_edges`` (C, S_d − 1)) splits the anchors in two: the
checkerboard's first pass codes only (even i, even j), then a new pass codes (odd i, odd j), whose four diagonal
neighbours are all known, with table B · (1 + S) + b_c(i, j) · S_d + d_c(i, j), d_c the bucket of the sum of their
magnitudes D_c; then the (i + j) odd positions as before (their four neighbours are now of both earlier passes).
B · (1 + S + S_d) tables per channel. Its sign prediction is a′_c · P_c + b′_c · D±_c, D±_c the diagonal
neighbours' signed sum ((a′_c, b′_c) = ``sign_diagonal`` (C, 2)).

The weights are least-squares predictions of m_c and of s_c, fitted at export and stored as integers; the sums run
in float64 with ``numpy.einsum`` (its own single-threaded loops: a multi-threaded BLAS stalls when other work
holds the cores), exact because every partial sum is an integer below 2**53 (``activity_bound``, ``sign_bound``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ChannelContext", "ContextState", "DEFAULT_CLIP", "DEFAULT_WINDOW", "EXACT_LIMIT", "ANCHORS", "DIAGONAL",
    "NEIGHBOURS", "anchor_mask", "bucket_of", "diagonal_sum", "neighbour_sum", "pass_map", "pass_positions",
    "window_sum",
]

DEFAULT_CLIP = 255
DEFAULT_WINDOW = 3
# below this many positions one binary search beats a pass per threshold
_SMALL = 2048
# float64 holds every integer below this exactly: the learned activity's sums must stay below it
EXACT_LIMIT = 1 << 53
# the checkerboard's passes, in coding order: anchors, the diagonal pass (format 7), the neighbour pass
ANCHORS, DIAGONAL, NEIGHBOURS = 0, 1, 2


@dataclass(frozen=True)
class ChannelContext:
    """Per-level context parameters: the counting rule's ``weights`` (C,) int64 ≥ 0 or the learned rule's
    ``mixing`` (2, C, C) int64, zero on and above the diagonal (exactly one of them), ``edges`` (C, B − 1) int64
    non-decreasing, and, for the checkerboard, ``spatial_edges`` (C, S − 1) int64 non-decreasing (``None``: one
    pass), and the sign prediction's ``sign_mixing`` (2, C, C) int64, zero on and above the diagonal, and
    ``sign_pass2`` (C, 2) int64, the neighbour pass's weights (a_c, b_c) (each ``None``: not used); with a diagonal
    pass ``diagonal_edges`` (C, S_d − 1) int64 non-decreasing and ``sign_diagonal`` (C, 2) int64, its weights
    (a′_c, b′_c) (each ``None``: not used)."""

    weights: np.ndarray | None
    edges: np.ndarray
    clip: int = DEFAULT_CLIP
    window: int = DEFAULT_WINDOW
    spatial_edges: np.ndarray | None = None
    mixing: np.ndarray | None = None
    sign_mixing: np.ndarray | None = None
    sign_pass2: np.ndarray | None = None
    diagonal_edges: np.ndarray | None = None
    sign_diagonal: np.ndarray | None = None

    @property
    def learned(self) -> bool:
        """Whether the activity is the learned rule's (``mixing``) rather than the counting rule's."""
        return self.mixing is not None

    @property
    def sign_flip(self) -> bool:
        """Whether some symbols are coded negated by their predicted sign."""
        return self.sign_mixing is not None or self.sign_pass2 is not None or self.sign_diagonal is not None

    def activity_bound(self) -> int:
        """The largest |A_c| any symbols can give."""
        if self.mixing is None:
            return int(self.clip) * int(self.weights.astype(np.int64).sum()) * self.window * self.window
        return int(self.mixed_bounds(self.mixing).max())

    def sign_bound(self) -> int:
        """The largest |P_c|, |a_c · P_c + b_c · N±_c| and |a′_c · P_c + b′_c · D±_c| any symbols can give."""
        channels = self.edges.shape[0]
        bounds = np.zeros(channels) if self.sign_mixing is None else self.mixed_bounds(self.sign_mixing)
        largest = bounds
        for pass_weights in (self.sign_pass2, self.sign_diagonal):
            if pass_weights is not None:
                weights = np.abs(pass_weights.astype(np.float64))
                largest = np.maximum(largest, weights[:, 0] * bounds + weights[:, 1] * 4 * self.clip)
        return int(largest.max(initial=0))

    def mixed_bounds(self, mixing: np.ndarray) -> np.ndarray:
        """Per channel the largest |Σ X · v + window sum of Σ Y · v| for (X, Y) = ``mixing`` and |v| ≤ clip, in
        float64 (weights too large for int64 cannot wrap around to a small bound)."""
        weights = np.abs(mixing.astype(np.float64)).sum(axis=2)
        return self.clip * (weights[0] + self.window * self.window * weights[1])

    @functools.cached_property
    def mixing_rows(self) -> list[np.ndarray | None]:
        """Per channel c the contiguous float64 rows (2, c) of ``mixing``, ``None`` where they are all zero."""
        return _rows(self.mixing)

    @functools.cached_property
    def sign_rows(self) -> list[np.ndarray | None]:
        """Per channel c the contiguous float64 rows (2, c) of ``sign_mixing``, ``None`` where they are all zero."""
        return _rows(self.sign_mixing)

    @property
    def buckets(self) -> int:
        return int(self.edges.shape[1]) + 1

    @property
    def spatial_buckets(self) -> int:
        """S, the spatial buckets of the checkerboard's second pass (0: no checkerboard)."""
        return 0 if self.spatial_edges is None else int(self.spatial_edges.shape[1]) + 1

    @property
    def diagonal_buckets(self) -> int:
        """S_d, the buckets of the diagonal pass (0: none)."""
        return 0 if self.diagonal_edges is None else int(self.diagonal_edges.shape[1]) + 1

    @property
    def tables(self) -> int:
        """Tables per channel: B, or B · (1 + S) with the checkerboard, B · (1 + S + S_d) with a diagonal pass."""
        return self.buckets * (1 + self.spatial_buckets + self.diagonal_buckets)

    @property
    def passes(self) -> tuple[int, ...]:
        """The kinds of a channel's coding passes in order: () without the checkerboard (one pass over every
        position), (ANCHORS, NEIGHBOURS) with it, (ANCHORS, DIAGONAL, NEIGHBOURS) with a diagonal pass."""
        if self.spatial_edges is None:
            return ()
        return (ANCHORS, DIAGONAL, NEIGHBOURS) if self.diagonal_edges is not None else (ANCHORS, NEIGHBOURS)

    def pass_map(self, height: int, width: int) -> np.ndarray:
        """The pass of every position (height, width) of a channel, uint8 (``pass_map``)."""
        return pass_map(height, width, self.diagonal_edges is not None)

    def pass_positions(self, height: int, width: int) -> list[tuple[int | None, np.ndarray | None]]:
        """A channel's coding passes in order, each as (its kind, its flat positions in raster order): one pass
        (``None``, ``None``) over every position without the checkerboard."""
        if not self.passes:
            return [(None, None)]
        return list(zip(self.passes, pass_positions(height, width, self.diagonal_edges is not None)))

    def table_ids(self, channel: int, buckets: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Table of every position (H, W) of ``channel``, int64: its bucket at the anchors and, with the
        checkerboard, B + bucket · S + spatial bucket at the neighbour pass (and B · (1 + S) + bucket · S_d +
        diagonal bucket at the diagonal pass), from the channel's ``values``."""
        ids = buckets.astype(np.int64)
        if self.spatial_edges is None:
            return ids
        diagonal = None
        if self.diagonal_edges is not None:
            diagonal = bucket_of(self._diagonals(values), self.diagonal_edges[channel])
        return self._with_spatial(ids, bucket_of(self._neighbours(values), self.spatial_edges[channel]), diagonal)

    def pass_table_ids(self, channel: int, buckets: np.ndarray, values: np.ndarray, kind: int | None,
                       positions: np.ndarray | None) -> np.ndarray:
        """Tables (n,) int64 of one pass of ``channel`` (``pass_positions``: its ``kind`` and flat ``positions``)
        from the channel's buckets (H, W) and its ``values`` (H, W) of the earlier passes (no other value is
        read): what :meth:`table_ids` gives there, computed only for the pass."""
        ids = buckets.reshape(-1) if positions is None else buckets.reshape(-1)[positions]
        ids = ids.astype(np.int64)
        if kind in (None, ANCHORS):
            return ids
        if kind == NEIGHBOURS:
            spatial = bucket_of(self._neighbours(values).reshape(-1)[positions], self.spatial_edges[channel])
            return self.buckets + ids * self.spatial_buckets + spatial
        magnitudes = np.minimum(np.abs(values[0::2, 0::2].astype(np.int64)), self.clip)  # the anchors alone
        diagonal = bucket_of(_diagonal_pass_sum(magnitudes, values.shape), self.diagonal_edges[channel])
        return self.buckets * (1 + self.spatial_buckets) + ids * self.diagonal_buckets + diagonal

    def pass_flips(self, channel: int, prediction: np.ndarray | None, values: np.ndarray | None,
                   kind: int | None, positions: np.ndarray | None) -> np.ndarray | None:
        """Flips (n,) int64 of one pass of ``channel``, as :meth:`flips_of` finds them there, from its
        prediction P_c (H, W) (``ContextState.sign_prediction``; ``None``: 0) and, for the later passes, the
        channel's ``values`` (H, W) of the earlier passes; ``None`` where nothing flips."""
        weights = {NEIGHBOURS: self.sign_pass2, DIAGONAL: self.sign_diagonal}.get(kind)
        if not self.sign_flip or (prediction is None and weights is None):
            return None
        size = (values if prediction is None else prediction).size if positions is None else positions.size
        predicted = np.zeros(size, dtype=np.int64)
        if prediction is not None:
            predicted = prediction.reshape(-1) if positions is None else prediction.reshape(-1)[positions]
        if weights is not None:
            if kind == NEIGHBOURS:
                signed = np.clip(values.astype(np.int64), -self.clip, self.clip)
                signed_sum = neighbour_sum(signed).reshape(-1)[positions]
            else:
                signed = np.clip(values[0::2, 0::2].astype(np.int64), -self.clip, self.clip)  # the anchors alone
                signed_sum = _diagonal_pass_sum(signed, values.shape)
            predicted = int(weights[channel, 0]) * predicted + int(weights[channel, 1]) * signed_sum
        return np.where(predicted < 0, -1, 1)

    def flips_of(self, symbols: np.ndarray) -> np.ndarray | None:
        """With a sign prediction: int64 (C, H, W), −1 where the symbol of ``symbols`` (C, H, W) is coded negated,
        +1 elsewhere, as the decoder will find them; ``None`` without."""
        if not self.sign_flip:
            return None
        return self._flips(self.sign_predictions(symbols), symbols)

    def sign_predictions(self, symbols: np.ndarray) -> np.ndarray | None:
        """P_c of every symbol of ``symbols`` (C, H, W), int64 (C, H, W); ``None`` without ``sign_mixing``."""
        if self.sign_mixing is None:
            return None
        return _mixed(self.sign_rows, np.clip(symbols.astype(np.int64), -self.clip, self.clip), self.window)

    def _flips(self, predictions: np.ndarray | None, values: np.ndarray) -> np.ndarray:
        """Flips (C, H, W) of every symbol of ``values`` (C, H, W) from their predictions P_c (``None``: 0)."""
        predicted = np.zeros(values.shape, dtype=np.int64) if predictions is None else predictions
        if self.spatial_edges is None:
            return np.where(predicted < 0, -1, 1)
        kinds, anchors_prediction = self.pass_map(*values.shape[-2:]), predicted
        for kind, pass_weights, neighbours in ((NEIGHBOURS, self.sign_pass2, neighbour_sum),
                                               (DIAGONAL, self.sign_diagonal, diagonal_sum)):
            if pass_weights is None:
                continue
            weights = pass_weights.astype(np.int64).T[:, :, None, None]
            signed_sum = neighbours(np.clip(values.astype(np.int64), -self.clip, self.clip))
            predicted = np.where(kinds == kind, weights[0] * anchors_prediction + weights[1] * signed_sum, predicted)
        return np.where(predicted < 0, -1, 1)

    def _neighbours(self, values: np.ndarray) -> np.ndarray:
        return neighbour_sum(np.minimum(np.abs(values.astype(np.int64)), self.clip))

    def _diagonals(self, values: np.ndarray) -> np.ndarray:
        return diagonal_sum(np.minimum(np.abs(values.astype(np.int64)), self.clip))

    def start(self, height: int, width: int, signs: bool = True) -> "ContextState":
        """The state for coding a level of (height, width) channel by channel; ``signs``: keep what the sign
        prediction needs (a coder that knows every symbol already takes its flips from ``flips_of``)."""
        signed = None
        if signs and self.sign_mixing is not None:
            signed = np.zeros((self.sign_mixing.shape[1], height * width), dtype=np.float64)
        if self.mixing is None:
            return ContextState(self, np.zeros((height, width), dtype=np.int64), (height, width), signed)
        running = np.zeros((self.mixing.shape[1], height * width), dtype=np.float64)
        return ContextState(self, running, (height, width), signed)

    def activities_of(self, symbols: np.ndarray) -> np.ndarray:
        """Activity A_c of every symbol of ``symbols`` (C, H, W), as the decoder will find it: int64 (C, H, W)."""
        magnitudes = np.minimum(np.abs(symbols.astype(np.int64)), self.clip)
        if self.mixing is not None:
            return _mixed(self.mixing_rows, magnitudes, self.window)
        magnitudes *= self.weights[:, None, None]
        running = np.zeros_like(magnitudes)
        np.cumsum(magnitudes[:-1], axis=0, out=running[1:])
        return window_sum(running, self.window)

    def buckets_of(self, symbols: np.ndarray) -> np.ndarray:
        """Bucket of every symbol of ``symbols`` (C, H, W), as the decoder will find them: uint8 (C, H, W)."""
        return _count_edges(self.activities_of(symbols), self.edges)

    def table_ids_of(self, symbols: np.ndarray) -> np.ndarray:
        """Table of every symbol of ``symbols`` (C, H, W), as the decoder will find them: int64 (C, H, W)."""
        ids = self.buckets_of(symbols).astype(np.int64)
        if self.spatial_edges is None:
            return ids
        diagonal = None
        if self.diagonal_edges is not None:
            diagonal = _count_edges(self._diagonals(symbols), self.diagonal_edges)
        return self._with_spatial(ids, _count_edges(self._neighbours(symbols), self.spatial_edges), diagonal)

    def _with_spatial(self, buckets: np.ndarray, spatial: np.ndarray, diagonal: np.ndarray | None = None
                      ) -> np.ndarray:
        """Table ids (…, H, W): the bucket at the anchors, B + bucket · S + spatial bucket at the neighbour pass,
        B · (1 + S) + bucket · S_d + diagonal bucket at the diagonal pass (``diagonal`` ``None``: none)."""
        kinds = self.pass_map(*buckets.shape[-2:])
        ids = np.where(kinds == NEIGHBOURS, self.buckets + buckets * self.spatial_buckets + spatial, buckets)
        if diagonal is not None:
            first = self.buckets * (1 + self.spatial_buckets)
            ids = np.where(kinds == DIAGONAL, first + buckets * self.diagonal_buckets + diagonal, ids)
        return ids


@dataclass
class ContextState:
    """What the coded channels leave for the next ones while a level is coded channel after channel: the
    counting rule's running activity R (int64 (H, W)) or the learned rule's magnitudes of every channel (float64
    (C, H · W), zero until coded), and with a sign prediction's ``sign_mixing`` their clipped signed values."""

    context: ChannelContext
    running: np.ndarray
    shape: tuple[int, int]  # (H, W)
    signed: np.ndarray | None = None

    def activity(self, channel: int) -> np.ndarray:
        """A_c (H, W) int64 of ``channel`` from the channels added so far."""
        if not self.context.learned:
            return window_sum(self.running, self.context.window)
        return self._mixed(self.context.mixing_rows[channel], self.running[:channel])

    def sign_prediction(self, channel: int) -> np.ndarray | None:
        """P_c (H, W) int64 of ``channel`` from the channels added so far; ``None`` without ``sign_mixing``."""
        if self.signed is None:
            return None
        return self._mixed(self.context.sign_rows[channel], self.signed[:channel])

    def _mixed(self, rows: np.ndarray | None, planes: np.ndarray) -> np.ndarray:
        if rows is None:
            return np.zeros(self.shape, dtype=np.int64)
        mixed = np.einsum("rk,kn->rn", rows, planes).astype(np.int64)
        return mixed[0].reshape(self.shape) + window_sum(mixed[1].reshape(self.shape), self.context.window)

    def buckets(self, channel: int) -> np.ndarray:
        """Buckets b_c (H, W) uint8 of ``channel`` from the channels added so far."""
        return bucket_of(self.activity(channel), self.context.edges[channel])

    def add(self, channel: int, symbols: np.ndarray) -> None:
        """Add a coded channel's symbols (H, W) to what later channels see."""
        clip = self.context.clip
        magnitude = np.minimum(np.abs(symbols.astype(np.int64)), clip)
        if not self.context.learned:
            self.running += int(self.context.weights[channel]) * magnitude
        else:
            self.running[channel] = magnitude.reshape(-1)
        if self.signed is not None:
            self.signed[channel] = np.clip(symbols.astype(np.int64), -clip, clip).reshape(-1)


def _rows(mixing: np.ndarray | None) -> list[np.ndarray | None]:
    """Per channel c the contiguous float64 rows (2, c) of ``mixing`` (2, C, C), ``None`` where all zero."""
    if mixing is None:
        return []
    rows = mixing.astype(np.float64)
    return [np.ascontiguousarray(rows[:, c, :c]) if rows[:, c, :c].any() else None for c in range(rows.shape[1])]


def _mixed(rows: list[np.ndarray | None], values: np.ndarray, window: int) -> np.ndarray:
    """Σ_{k<c} X_ck · values_k + the window sum of Σ_{k<c} Y_ck · values_k for every channel c of ``values``
    (C, H, W) integers, (X, Y) = ``rows[c]``: int64 (C, H, W), exact in float64 below 2**53."""
    flat = values.reshape(values.shape[0], -1).astype(np.float64)
    mixed = np.zeros((2,) + flat.shape)
    for c, channel_rows in enumerate(rows):  # the lower triangle only: half a full product's work
        if channel_rows is not None:
            mixed[:, c] = np.einsum("rk,kn->rn", channel_rows, flat[:c])
    mixed = mixed.astype(np.int64)
    return mixed[0].reshape(values.shape) + window_sum(mixed[1].reshape(values.shape), window)


def _count_edges(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For (C, H, W) ``values`` and per-channel sorted thresholds ``edges`` (C, K): how many are ≤ each value."""
    counts = np.zeros(values.shape, dtype=np.uint8)
    for k in range(edges.shape[1]):
        counts += values >= edges[:, k, None, None]
    return counts


@functools.lru_cache(maxsize=16)
def anchor_mask(height: int, width: int) -> np.ndarray:
    """The checkerboard's first pass: True where (i + j) is even, (height, width) bool (read-only, cached)."""
    mask = (np.arange(height)[:, None] + np.arange(width)[None, :]) % 2 == 0
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=32)
def pass_positions(height: int, width: int, diagonal: bool) -> tuple[np.ndarray, ...]:
    """Flat positions (raster order, read-only, cached) of the checkerboard's passes in coding order: the anchors,
    the diagonal pass with ``diagonal``, the neighbour pass."""
    flat = pass_map(height, width, diagonal).reshape(-1)
    kinds = (ANCHORS, DIAGONAL, NEIGHBOURS) if diagonal else (ANCHORS, NEIGHBOURS)
    positions = tuple(np.flatnonzero(flat == kind) for kind in kinds)
    for array in positions:
        array.flags.writeable = False
    return positions


@functools.lru_cache(maxsize=32)
def pass_map(height: int, width: int, diagonal: bool) -> np.ndarray:
    """The checkerboard pass of every position, uint8 (height, width) (read-only, cached): NEIGHBOURS where
    (i + j) is odd, ANCHORS elsewhere, except DIAGONAL at (odd i, odd j) with a ``diagonal`` pass."""
    kinds = np.where(anchor_mask(height, width), ANCHORS, NEIGHBOURS).astype(np.uint8)
    if diagonal:
        kinds[1::2, 1::2] = DIAGONAL
    kinds.flags.writeable = False
    return kinds


def diagonal_sum(values: np.ndarray) -> np.ndarray:
    """Sum of the up to four diagonal neighbours inside the plane (last two axes) of every element."""
    total = np.zeros_like(values)
    total[..., 1:, 1:] += values[..., :-1, :-1]
    total[..., :-1, :-1] += values[..., 1:, 1:]
    total[..., 1:, :-1] += values[..., :-1, 1:]
    total[..., :-1, 1:] += values[..., 1:, :-1]
    return total


def _diagonal_pass_sum(anchors: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The sum of the four diagonal neighbours of every (odd, odd) position of a (H, W) = ``shape`` plane, flat in
    raster order (the diagonal pass's positions), from the plane's (even, even) values ``anchors``, the only ones
    it reads: ``diagonal_sum`` there, on a quarter of the plane."""
    rows, columns = shape[0] // 2, shape[1] // 2
    padded = np.zeros((rows + 1, columns + 1), dtype=anchors.dtype)
    padded[: anchors.shape[0], : anchors.shape[1]] = anchors[: rows + 1, : columns + 1]
    total = padded[:-1, :-1] + padded[1:, :-1]
    total += padded[:-1, 1:]
    total += padded[1:, 1:]
    return total.reshape(-1)


def neighbour_sum(values: np.ndarray) -> np.ndarray:
    """Sum of the up to four horizontal and vertical neighbours inside the plane (last two axes) of every
    element (nothing is counted outside the edges)."""
    total = np.zeros_like(values)
    total[..., 1:, :] += values[..., :-1, :]
    total[..., :-1, :] += values[..., 1:, :]
    total[..., :, 1:] += values[..., :, :-1]
    total[..., :, :-1] += values[..., :, 1:]
    return total


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
