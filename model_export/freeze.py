"""Freeze step: turn each level's learned factorized density into integer CDF tables (CompressAI's
``EntropyBottleneck.update``, with an escape symbol).

For channel c of a level, with median m_c and learned tail quantiles q_lo, q_hi:
- symbols are ``round(y − m_c)``; the table covers ``[−minima_c, maxima_c]`` with
  ``minima_c = ceil(m_c − q_lo)`` and ``maxima_c = ceil(q_hi − m_c)`` (both ≥ 0);
- the table's index of symbol s is ``s − offset_c`` with ``offset_c = −minima_c``;
- one extra index, ``length_c − 1``, is the escape: it stands for every symbol outside the table and carries
  the probability mass of both tails; the runtime codes the escaped value itself with uniform models;
- the probabilities are quantised to integer frequencies summing to ``2**precision``, every one ≥ 1, so
  the CDF ``cdf_c[0] = 0 < cdf_c[1] < … < cdf_c[length_c] = 2**precision`` is strictly increasing.

Optionally (``fit_tables``) the probabilities are then refitted to how often each symbol occurs when the
encoder's latents are rounded on training images. The density was learned on noisy latents y + U(−½, ½), whose
distribution is smoother than that of round(y − m_c): its tables give the most frequent symbols too little
probability. The support, offsets and escape stay as frozen; only the frequencies change.

``fit_context_tables`` then gives every channel B tables, one per bucket of the channel context
(``service.channel_context``: how busy the channels coded before it are around each symbol), fitted to the
same training symbols and smoothed towards the channel's own table; with ``spatial_buckets`` S, B · S more for
the second pass of a checkerboard, chosen also by the symbol's four anchor neighbours in its own channel, and
with ``diagonal_buckets`` S_d, B · S_d more for a diagonal pass, chosen by the four diagonal neighbours. With
``signs="learned"`` it also fits a sign prediction from the earlier channels (and the neighbours) and the
tables to the symbols as coded, negated where the prediction is negative.
``runtime_coder`` gives the service's coder for such tables, so the export can refit them to the symbols the
encoder's rate-distortion optimised rounding will actually code with them (``model_export.export``).

The tables are written with ``numpy.savez`` (no pickled objects); ``docs/artifacts.md`` describes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.channel_context import (DEFAULT_CLIP, DEFAULT_WINDOW, DIAGONAL, EXACT_LIMIT, NEIGHBOURS, ChannelContext,
                                     diagonal_sum, neighbour_sum, pass_map, window_sum)
from service.entropy_coder import LevelTables, TableCoder

from .entropy import EntropyBottleneck

__all__ = [
    "FrozenTables", "freeze_bottleneck", "quantize_pmf", "save_tables", "symbol_counts", "fit_tables", "count_bits",
    "fit_context_tables", "context_bits", "DEFAULT_PRECISION", "DEFAULT_PRIOR_WEIGHT", "DEFAULT_CONTEXT_BUCKETS",
    "DEFAULT_CONTEXT_PSEUDO_COUNTS", "DEFAULT_SPATIAL_BUCKETS", "DEFAULT_DIAGONAL_BUCKETS", "learned_mixing",
    "runtime_coder",
]

DEFAULT_PRECISION = 16
# share of the learned density kept in fitted tables: symbols unseen in the fitting images stay cheap
DEFAULT_PRIOR_WEIGHT = 0.01
# channel context: tables per channel, and how many symbols' worth of the channel's own table each one keeps
DEFAULT_CONTEXT_BUCKETS = 16
DEFAULT_CONTEXT_PSEUDO_COUNTS = 50.0
# checkerboard: buckets of the anchor-neighbour sum in the second pass (8 chosen on val, docs/architecture.md)
DEFAULT_SPATIAL_BUCKETS = 8
# the diagonal pass: buckets of the diagonal-neighbour sum (as the checkerboard's; docs/architecture.md)
DEFAULT_DIAGONAL_BUCKETS = 8
# the context weight of channel c is about _WEIGHT_SCALE / mean |symbol of c|
_WEIGHT_SCALE = 4096
# learned activity: channel c's largest weight, and the places per image its least squares sees
_MIX_SCALE = 4096
_MIX_SAMPLES = 4096
# sign prediction: the larger of a channel's two second-pass weights, at most
_PASS2_SCALE = 1 << 20
SIGN_PREDICTIONS = ("none", "neighbours", "learned")


@dataclass
class FrozenTables:
    """Integer tables of one level; rows of ``cdf`` are padded with ``2**precision``."""

    cdf: np.ndarray  # int32 (C, max(lengths) + 1)
    lengths: np.ndarray  # int32 (C,): table length including the escape symbol
    offsets: np.ndarray  # int32 (C,): symbol value of table index 0
    medians: np.ndarray  # float32 (C,)
    precision: int
    context: ChannelContext | None = None
    context_cdf: np.ndarray | None = None  # int32 (C, context.tables, max(lengths) + 1), padded like ``cdf``

    @property
    def channels(self) -> int:
        return int(self.lengths.shape[0])


def quantize_pmf(probabilities: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies ≥ 1 that sum to ``2**precision`` and follow ``probabilities`` as closely as
    rounding allows (CompressAI's ``pmf_to_quantized_cdf``, done in integers)."""
    total = 1 << precision
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 1 or probabilities.size < 2 or probabilities.size > total:
        raise ValueError(f"need 2..{total} probabilities, got shape {probabilities.shape}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.sum() <= 0:
        raise ValueError("probabilities must be finite, non-negative and not all zero")
    freqs = np.maximum(np.round(probabilities / probabilities.sum() * total).astype(np.int64), 1)
    excess = int(freqs.sum()) - total
    while excess > 0:
        # take from the largest bins first, never pushing one below 1
        order = np.argsort(-freqs, kind="stable")
        for index in order:
            if excess == 0:
                break
            if freqs[index] > 1:
                take = min(excess, int(freqs[index]) - 1, max(1, int(freqs[index]) // 4))
                freqs[index] -= take
                excess -= take
    if excess < 0:
        freqs[int(np.argmax(freqs))] -= excess
    return freqs


@torch.no_grad()
def freeze_bottleneck(bottleneck: EntropyBottleneck, precision: int = DEFAULT_PRECISION) -> FrozenTables:
    """Integer CDF tables for every channel of ``bottleneck`` (evaluated in float64 for stability)."""
    if not 8 <= precision <= 16:
        raise ValueError(f"precision must be 8..16 bits, got {precision}")
    quantiles = bottleneck.quantiles.detach().double()[:, 0, :]
    medians = quantiles[:, 1]
    minima = torch.ceil(medians - quantiles[:, 0]).clamp(min=0).long()
    maxima = torch.ceil(quantiles[:, 2] - medians).clamp(min=0).long()
    lengths = (minima + maxima + 1).numpy()
    max_length = int(lengths.max())
    if max_length + 1 > (1 << precision) // 2:
        raise ValueError(f"a channel's support ({max_length} symbols) is too wide for {precision}-bit tables")

    density = _Float64Density(bottleneck)
    starts = medians - minima.double()
    samples = starts[:, None] + torch.arange(max_length, dtype=torch.float64)[None, :]
    pmf = density.pmf(samples).numpy()
    lower_tail = torch.sigmoid(density.logits(starts[:, None] - 0.5))[:, 0].numpy()
    ends = starts + torch.as_tensor(lengths, dtype=torch.float64)
    upper_tail = torch.sigmoid(-density.logits(ends[:, None] - 0.5))[:, 0].numpy()

    channels = lengths.shape[0]
    total = 1 << precision
    cdf = np.full((channels, max_length + 2), total, dtype=np.int32)
    for c in range(channels):
        n = int(lengths[c])
        probabilities = np.concatenate([pmf[c, :n], [lower_tail[c] + upper_tail[c]]])
        freqs = quantize_pmf(probabilities, precision)
        cdf[c, 0] = 0
        cdf[c, 1 : n + 2] = np.cumsum(freqs)
    return FrozenTables(
        cdf=cdf,
        lengths=(lengths + 1).astype(np.int32),
        offsets=(-minima.numpy()).astype(np.int32),
        medians=medians.float().numpy().astype(np.float32),
        precision=precision,
    )


def symbol_counts(tables: FrozenTables, symbols: np.ndarray) -> np.ndarray:
    """How often each table index occurs in ``symbols`` (C, …), symbols outside a channel's table counted on its
    escape index: int64 (C, max(lengths))."""
    counts = np.zeros((tables.channels, int(tables.lengths.max())), dtype=np.int64)
    index = _table_indices(tables, symbols.reshape(tables.channels, -1))
    for c in range(tables.channels):
        n = int(tables.lengths[c])
        counts[c, :n] += np.bincount(index[c], minlength=n)
    return counts


def fit_tables(tables: FrozenTables, counts: np.ndarray, prior_weight: float = DEFAULT_PRIOR_WEIGHT) -> FrozenTables:
    """The same support, offsets and medians, with each channel's probabilities set to ``1 − prior_weight`` of
    the symbol frequencies in ``counts`` (from :func:`symbol_counts`) plus ``prior_weight`` of the frozen
    tables' own; a channel without counts keeps its frozen tables."""
    if not 0.0 <= prior_weight <= 1.0:
        raise ValueError(f"prior_weight must be in [0, 1], got {prior_weight}")
    if counts.shape != (tables.channels, int(tables.lengths.max())) or np.any(counts < 0):
        raise ValueError(f"counts must be non-negative with shape {(tables.channels, int(tables.lengths.max()))}")
    total = 1 << tables.precision
    cdf = tables.cdf.copy()
    for c in range(tables.channels):
        n = int(tables.lengths[c])
        seen = counts[c, :n].astype(np.float64)
        if seen.sum() == 0:
            continue
        frozen = np.diff(tables.cdf[c, : n + 1]).astype(np.float64) / total
        probabilities = (1.0 - prior_weight) * seen / seen.sum() + prior_weight * frozen
        cdf[c, 1 : n + 1] = np.cumsum(quantize_pmf(probabilities, tables.precision))
    return FrozenTables(cdf=cdf, lengths=tables.lengths.copy(), offsets=tables.offsets.copy(),
                        medians=tables.medians.copy(), precision=tables.precision)


def count_bits(tables: FrozenTables, counts: np.ndarray) -> float:
    """Bits the tables assign to the symbols counted in ``counts`` (escape payloads not counted)."""
    total = 1 << tables.precision
    bits = 0.0
    for c in range(tables.channels):
        n = int(tables.lengths[c])
        freqs = np.diff(tables.cdf[c, : n + 1]).astype(np.float64)
        bits += float(-(counts[c, :n] * np.log2(freqs / total)).sum())
    return bits


def _table_indices(tables: FrozenTables, symbols: np.ndarray) -> np.ndarray:
    """Table index of every symbol (C, …), escapes on the last index."""
    shape = (tables.channels,) + (1,) * (symbols.ndim - 1)
    lengths = tables.lengths.astype(np.int64).reshape(shape)
    index = symbols.astype(np.int64) - tables.offsets.astype(np.int64).reshape(shape)
    return np.where((index < 0) | (index >= lengths - 1), lengths - 1, index)


def fit_context_tables(tables: FrozenTables, symbols: list[np.ndarray], buckets: int = DEFAULT_CONTEXT_BUCKETS,
                       pseudo_counts: float = DEFAULT_CONTEXT_PSEUDO_COUNTS, clip: int = DEFAULT_CLIP,
                       window: int = DEFAULT_WINDOW, spatial_buckets: int = 0, learned: bool = True,
                       signs: str = "none", diagonal_buckets: int = 0) -> FrozenTables:
    """``tables`` with a channel context fitted to ``symbols`` (a list of (C, H, W) integer arrays).

    The learned activity's weights (``learned``, :func:`learned_mixing`) predict each channel's magnitudes
    from the earlier channels'; the counting rule's make every channel count alike (``4096 / (mean |s_c| +
    0.05)``). Channel c's B − 1 thresholds are quantiles of its activity over the symbols, so its buckets hold
    about equal shares of them. With ``spatial_buckets`` S > 0 the checkerboard's second pass gets S − 1
    thresholds per channel, quantiles of the anchor-neighbour sums of its positions, and with ``diagonal_buckets``
    S_d > 0 (needs the checkerboard) the (odd, odd) positions get a pass of their own (tables format 7) with S_d − 1
    thresholds per channel, quantiles of their diagonal-neighbour sums. Each table's probabilities
    are the frequencies of the symbols it codes with ``pseudo_counts`` symbols' worth of the channel's table,
    coded negated where the sign prediction ``signs`` says so (``ChannelContext.flips_of``): "none"; "neighbours",
    the second pass by its anchor neighbours' signed sum (needs the checkerboard); "learned", every symbol by
    :func:`learned_mixing` of the earlier channels' signed values and, at the neighbour and diagonal passes,
    :func:`learned_pass2`."""
    if not 2 <= buckets <= 256:
        raise ValueError(f"buckets must be 2..256, got {buckets}")
    if spatial_buckets and not 2 <= spatial_buckets <= 256:
        raise ValueError(f"spatial_buckets must be 0 or 2..256, got {spatial_buckets}")
    if diagonal_buckets and not (2 <= diagonal_buckets <= 256 and spatial_buckets):
        raise ValueError(f"diagonal_buckets must be 0, or 2..256 with spatial_buckets, got {diagonal_buckets}")
    if pseudo_counts <= 0:
        raise ValueError(f"pseudo_counts must be positive, got {pseudo_counts}")
    if signs not in SIGN_PREDICTIONS:
        raise ValueError(f"signs must be one of {', '.join(SIGN_PREDICTIONS)}, got {signs!r}")
    if signs == "neighbours" and not spatial_buckets:
        raise ValueError("signs='neighbours' needs spatial_buckets (the checkerboard's second pass)")
    if not symbols or any(s.ndim != 3 or s.shape[0] != tables.channels for s in symbols):
        raise ValueError(f"need symbol arrays of shape ({tables.channels}, H, W)")
    channels, width = tables.channels, int(tables.lengths.max())
    if learned:
        weights, mixing = None, learned_mixing(symbols, clip, window)
    else:
        mean_abs = sum(np.abs(s.astype(np.int64)).sum(axis=(1, 2)) for s in symbols) / sum(s[0].size for s in symbols)
        weights, mixing = np.maximum(np.round(_WEIGHT_SCALE / (mean_abs + 0.05)), 1).astype(np.int64), None
    probe = ChannelContext(weights=weights, edges=np.zeros((channels, 0), np.int64), clip=clip, window=window,
                           mixing=mixing)
    activities = [probe.activities_of(s) for s in symbols]
    edges = _quantile_edges([a.reshape(channels, -1) for a in activities], buckets)
    spatial_edges = diagonal_edges = None
    if spatial_buckets:
        spatial_edges = _pass_edges(symbols, clip, NEIGHBOURS, bool(diagonal_buckets), spatial_buckets)
    if diagonal_buckets:
        diagonal_edges = _pass_edges(symbols, clip, DIAGONAL, True, diagonal_buckets)
    context = ChannelContext(weights=weights, edges=edges, clip=clip, window=window, spatial_edges=spatial_edges,
                             mixing=mixing, diagonal_edges=diagonal_edges)
    if signs == "learned":
        signed = ChannelContext(weights=weights, edges=edges, clip=clip, window=window,
                                sign_mixing=learned_mixing(symbols, clip, window, signed=True))
        pass2 = learned_pass2(signed, symbols, NEIGHBOURS, bool(diagonal_buckets)) if spatial_buckets else None
        diagonal = learned_pass2(signed, symbols, DIAGONAL, True) if diagonal_buckets else None
        context = dataclasses.replace(context, sign_mixing=signed.sign_mixing, sign_pass2=pass2,
                                      sign_diagonal=diagonal)
    elif signs == "neighbours":
        context = dataclasses.replace(context, sign_pass2=np.tile(np.array([[0, 1]], dtype=np.int64), (channels, 1)))
    counts = np.zeros((channels, context.tables, width), dtype=np.float64)
    for s in symbols:
        index = _table_indices(tables, _as_coded(context, s))
        ids = context.table_ids_of(s)
        for c in range(channels):
            cell = ids[c].ravel() * width + index[c].ravel()
            counts[c] += np.bincount(cell, minlength=context.tables * width).reshape(context.tables, width)
    total = 1 << tables.precision
    context_cdf = np.full((channels, context.tables, tables.cdf.shape[1]), total, dtype=np.int32)
    for c in range(channels):
        n = int(tables.lengths[c])
        own = np.diff(tables.cdf[c, : n + 1]).astype(np.float64) / total
        for t in range(context.tables):
            probabilities = (counts[c, t, :n] + pseudo_counts * own) / (counts[c, t, :n].sum() + pseudo_counts)
            context_cdf[c, t, 0] = 0
            context_cdf[c, t, 1 : n + 1] = np.cumsum(quantize_pmf(probabilities, tables.precision))
    return dataclasses.replace(tables, context=context, context_cdf=context_cdf)


def learned_mixing(symbols: list[np.ndarray], clip: int = DEFAULT_CLIP, window: int = DEFAULT_WINDOW,
                   samples_per_image: int = _MIX_SAMPLES, signed: bool = False) -> np.ndarray:
    """The learned activity's weights (2, C, C) int64 for ``symbols`` (a list of (C, H, W) arrays): per channel c
    the least-squares prediction of m_c = min(|s_c|, clip) from the earlier channels' m_k at the same place and
    their window sums (plus a constant, not stored), over up to ``samples_per_image`` places of each image
    drawn with a fixed seed, scaled so that channel c's largest weight is ±4096 and rounded. With ``signed`` the
    sign prediction's weights instead: the same for the values clipped to ±clip, v_c, in place of m_c."""
    channels = symbols[0].shape[0]
    rng = np.random.default_rng(0)
    gram = np.zeros((2 * channels + 1, 2 * channels + 1))
    for s in symbols:
        if signed:
            magnitudes = np.clip(s.astype(np.int64), -clip, clip)
        else:
            magnitudes = np.minimum(np.abs(s.astype(np.int64)), clip)
        windowed = window_sum(magnitudes, window)
        features = np.concatenate([magnitudes.reshape(channels, -1), windowed.reshape(channels, -1)])
        places = rng.choice(features.shape[1], size=min(features.shape[1], samples_per_image), replace=False)
        sample = np.concatenate([features[:, places], np.ones((1, places.size))]).astype(np.float64)
        gram += sample @ sample.T
    mixing = np.zeros((2, channels, channels), dtype=np.int64)
    for c in range(1, channels):
        columns = np.r_[0:c, channels : channels + c, 2 * channels]
        normal = gram[np.ix_(columns, columns)]
        ridge = 1e-6 * np.trace(normal) / columns.size + 1e-9
        coefficients = np.linalg.solve(normal + ridge * np.eye(columns.size), gram[columns, c])[:-1]
        peak = np.abs(coefficients).max()
        if peak > 0:
            scaled = np.round(coefficients * (_MIX_SCALE / peak)).astype(np.int64)
            mixing[0, c, :c], mixing[1, c, :c] = scaled[:c], scaled[c:]
    return mixing


def learned_pass2(context: ChannelContext, symbols: list[np.ndarray], kind: int = NEIGHBOURS,
                  diagonal: bool = False, samples_per_image: int = _MIX_SAMPLES) -> np.ndarray:
    """A later pass's sign weights (C, 2) int64 (a_c, b_c) for ``context`` (with ``sign_mixing``): per channel the
    least-squares prediction of s_c from P_c and the signed sum of the pass's neighbours (N±_c at the neighbour
    pass, ``kind`` NEIGHBOURS; D±_c at the diagonal pass, DIAGONAL) over up to ``samples_per_image`` places of the
    pass in each image (``diagonal``: the level has a diagonal pass; fixed seed), scaled so that the larger weight
    is as large as keeps a_c · P_c + b_c · N±_c exact (at most 2**20), and rounded."""
    channels, clip = symbols[0].shape[0], context.clip
    rng = np.random.default_rng(1)
    gram = np.zeros((channels, 3, 3))
    signed_sum = neighbour_sum if kind == NEIGHBOURS else diagonal_sum
    for s in symbols:
        in_pass = np.flatnonzero(pass_map(*s.shape[1:], diagonal).reshape(-1) == kind)
        places = rng.choice(in_pass, size=min(in_pass.size, samples_per_image), replace=False)
        predictions = context.sign_predictions(s).reshape(channels, -1)[:, places]
        neighbours = signed_sum(np.clip(s.astype(np.int64), -clip, clip)).reshape(channels, -1)[:, places]
        sample = np.stack([predictions, neighbours, s.reshape(channels, -1)[:, places]], axis=1).astype(np.float64)
        gram += np.einsum("cin,cjn->cij", sample, sample)
    bounds = context.mixed_bounds(context.sign_mixing)
    weights = np.zeros((channels, 2), dtype=np.int64)
    for c in range(channels):
        scale = np.sqrt(np.maximum(np.diag(gram[c])[:2], 1e-12))  # P is thousands of times larger than N±
        normal = gram[c, :2, :2] / np.outer(scale, scale)
        coefficients = np.linalg.solve(normal + 1e-9 * np.eye(2), gram[c, :2, 2] / scale) / scale
        peak = np.abs(coefficients).max()
        if peak > 0:
            largest = min(_PASS2_SCALE, (EXACT_LIMIT // 2) // (int(bounds[c]) + 4 * clip))
            weights[c] = np.round(coefficients * (largest / peak)).astype(np.int64)
    return weights


def _pass_edges(symbols: list[np.ndarray], clip: int, kind: int, diagonal: bool, buckets: int) -> np.ndarray:
    """The thresholds (C, buckets − 1) of a later pass of the checkerboard (``kind`` NEIGHBOURS or DIAGONAL; a
    level with a ``diagonal`` pass): quantiles of its neighbours' magnitude sums over the pass's positions."""
    channels, neighbours_of = symbols[0].shape[0], neighbour_sum if kind == NEIGHBOURS else diagonal_sum
    sums = []
    for s in symbols:
        in_pass = pass_map(*s.shape[1:], diagonal).reshape(-1) == kind
        sums.append(neighbours_of(np.minimum(np.abs(s.astype(np.int64)), clip)).reshape(channels, -1)[:, in_pass])
    return _quantile_edges(sums, buckets)


def _as_coded(context: ChannelContext, symbols: np.ndarray) -> np.ndarray:
    """``symbols`` (C, H, W) as the coder codes them: negated where the context's sign flip says so."""
    flips = context.flips_of(symbols)
    return symbols if flips is None else symbols * flips


def runtime_coder(tables: FrozenTables) -> TableCoder:
    """The service's coder (``service.entropy_coder.TableCoder``) for ``tables``, as it reads them once saved."""
    context_cdf = None if tables.context_cdf is None else tables.context_cdf.astype(np.int64)
    return TableCoder(LevelTables(cdf=tables.cdf.astype(np.int64), lengths=tables.lengths.astype(np.int64),
                                  offsets=tables.offsets.astype(np.int64), medians=tables.medians.astype(np.float32),
                                  precision=tables.precision, context=tables.context, context_cdf=context_cdf))


def _quantile_edges(values: list[np.ndarray], buckets: int) -> np.ndarray:
    """Per channel, the ``buckets`` − 1 thresholds that split the values (list of (C, n) arrays) into about equal
    shares: int64 (C, buckets − 1)."""
    quantiles = np.linspace(0.0, 1.0, buckets + 1)[1:-1]
    channels = values[0].shape[0]
    return np.stack([
        np.quantile(np.concatenate([v[c] for v in values]), quantiles, method="lower") for c in range(channels)
    ]).astype(np.int64)


def context_bits(tables: FrozenTables, symbols: np.ndarray) -> float:
    """Bits the tables assign to ``symbols`` (C, H, W), through the channel context when the tables have one
    (escape payloads not counted)."""
    if tables.context is None:
        return ideal_bits(tables, symbols)
    index = _table_indices(tables, _as_coded(tables.context, symbols))
    table_ids = tables.context.table_ids_of(symbols)
    freqs = np.diff(tables.context_cdf.astype(np.int64), axis=2)
    channel = np.arange(tables.channels)[:, None, None]
    return float(-np.log2(freqs[channel, table_ids, index] / (1 << tables.precision)).sum())


class _Float64Density:
    """The bottleneck's cumulative evaluated in float64 (the freeze step needs accurate tails)."""

    def __init__(self, bottleneck: EntropyBottleneck):
        self.matrices = [torch.nn.functional.softplus(m.detach().double()) for m in bottleneck.matrices]
        self.biases = [b.detach().double() for b in bottleneck.biases]
        self.factors = [torch.tanh(f.detach().double()) for f in bottleneck.factors]

    def logits(self, values: torch.Tensor) -> torch.Tensor:
        """Logits of the cumulative at ``values`` (C, n)."""
        logits = values.unsqueeze(1)
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            logits = torch.matmul(matrix, logits) + bias
            if i < len(self.factors):
                logits = logits + self.factors[i] * torch.tanh(logits)
        return logits.squeeze(1)

    def pmf(self, samples: torch.Tensor) -> torch.Tensor:
        lower = self.logits(samples - 0.5)
        upper = self.logits(samples + 0.5)
        sign = -torch.sign(lower + upper)
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))


def save_tables(path: str | Path, tables: list[FrozenTables]) -> None:
    """Write every level's tables to one ``.npz`` (arrays only; ``level{i}_…`` keys, level 1 first)."""
    precisions = {t.precision for t in tables}
    if len(precisions) != 1:
        raise ValueError("all levels must share one table precision")
    with_context = [t.context is not None for t in tables]
    if any(with_context) and not all(with_context):
        raise ValueError("either every level has a channel context or none does")
    contexts = {(t.context.clip, t.context.window) for t in tables if t.context is not None}
    if len(contexts) > 1:
        raise ValueError("all levels must share one context clip and window")
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array([_table_format(tables)], dtype=np.int32),
        "precision": np.array([precisions.pop()], dtype=np.int32),
        "levels": np.array([len(tables)], dtype=np.int32),
    }
    for level, table in enumerate(tables, start=1):
        arrays[f"level{level}_cdf"] = table.cdf
        arrays[f"level{level}_lengths"] = table.lengths
        arrays[f"level{level}_offsets"] = table.offsets
        arrays[f"level{level}_medians"] = table.medians
        if table.context is not None:
            if table.context.learned:
                arrays[f"level{level}_context_mix"] = table.context.mixing.astype(np.int64)
            else:
                arrays[f"level{level}_context_weights"] = table.context.weights.astype(np.int64)
            arrays[f"level{level}_context_edges"] = table.context.edges.astype(np.int64)
            arrays[f"level{level}_context_cdf"] = table.context_cdf.astype(np.int32)
            if table.context.spatial_edges is not None:
                arrays[f"level{level}_spatial_edges"] = table.context.spatial_edges.astype(np.int64)
            if table.context.sign_mixing is not None:
                arrays[f"level{level}_sign_mix"] = table.context.sign_mixing.astype(np.int64)
            if table.context.sign_pass2 is not None:
                arrays[f"level{level}_sign_pass2"] = table.context.sign_pass2.astype(np.int64)
            if table.context.diagonal_edges is not None:
                arrays[f"level{level}_diagonal_edges"] = table.context.diagonal_edges.astype(np.int64)
            if table.context.sign_diagonal is not None:
                arrays[f"level{level}_sign_diagonal"] = table.context.sign_diagonal.astype(np.int64)
    if contexts:
        clip, window = contexts.pop()
        arrays["context_clip"] = np.array([clip], dtype=np.int32)
        arrays["context_window"] = np.array([window], dtype=np.int32)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _table_format(tables: list[FrozenTables]) -> int:
    """1: one table per channel; 2: channel context; 3: channel context, some levels with the checkerboard;
    4: channel context, some levels with the learned activity; 6: some levels with a sign prediction (format 5,
    the second pass's sign flip by the anchor neighbours alone, is read but no longer written); 7: some levels
    with a diagonal pass."""
    if tables[0].context is None:
        return 1
    if any(t.context.diagonal_edges is not None for t in tables):
        return 7
    if any(t.context.sign_flip for t in tables):
        return 6
    if any(t.context.learned for t in tables):
        return 4
    return 3 if any(t.context.spatial_edges is not None for t in tables) else 2


def ideal_bits(tables: FrozenTables, symbols: np.ndarray) -> float:
    """Bits the tables assign to ``symbols`` (C, n) (escape payloads not counted); for tests and reports."""
    return count_bits(tables, symbol_counts(tables, symbols))
