"""Range coding with the frozen tables: exact symbol round trips (escapes included), near-ideal size,
and a payload that holds more than its symbols is rejected."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from service.channel_context import (ANCHORS, DIAGONAL, NEIGHBOURS, ChannelContext, anchor_mask, diagonal_sum,
                                     neighbour_sum, pass_map, window_sum)
from service.entropy_coder import LevelTables, TableCoder, load_tables
from service.errors import CorruptStream, ModelLoadError, TrailingData

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "default"


def _laplace_tables(channels: int, half_width: int = 8, precision: int = 16) -> LevelTables:
    """Hand-made tables: a discretised Laplacian per channel over [−half_width, half_width] + escape."""
    n = 2 * half_width + 1
    values = np.arange(-half_width, half_width + 1)
    cdf = np.zeros((channels, n + 2), dtype=np.int64)
    for c in range(channels):
        probabilities = np.exp(-np.abs(values) / (0.5 + c))
        probabilities = np.r_[probabilities / probabilities.sum() * 0.999, 0.001]
        freqs = np.maximum(np.round(probabilities * (1 << precision)).astype(np.int64), 1)
        freqs[np.argmax(freqs)] -= freqs.sum() - (1 << precision)
        cdf[c, 1:] = np.cumsum(freqs)
    return LevelTables(
        cdf=cdf,
        lengths=np.full(channels, n + 1),
        offsets=np.full(channels, -half_width),
        medians=np.zeros(channels, dtype=np.float32),
        precision=precision,
    )


def test_round_trip_is_exact_including_escapes():
    rng = np.random.default_rng(0)
    coder = TableCoder(_laplace_tables(4))
    symbols = np.rint(rng.laplace(0, 2.0, size=(4, 17, 23))).astype(np.int32)
    symbols[0, 0, 0] = 9  # first value above the table
    symbols[1, 3, 4] = -9  # first value below
    symbols[2, 5, 6] = 70_000  # needs two 16-bit chunks
    symbols[3, 7, 8] = -(1 << 24)
    payload = coder.encode(symbols)
    decoded = coder.decode(payload, 17, 23)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, symbols)


def test_size_is_close_to_the_ideal_code_length():
    rng = np.random.default_rng(1)
    tables = _laplace_tables(3)
    coder = TableCoder(tables)
    symbols = np.clip(np.rint(rng.laplace(0, 1.5, size=(3, 64, 64))), -8, 8).astype(np.int32)
    ideal = 0.0
    for c in range(3):
        freqs = np.diff(tables.cdf[c])
        ideal += -np.log2(freqs[symbols[c] + 8] / 65536).sum()
    assert len(coder.encode(symbols)) * 8 == pytest.approx(ideal, rel=0.01, abs=64)


def test_extra_words_are_rejected():
    coder = TableCoder(_laplace_tables(2))
    symbols = np.zeros((2, 8, 8), dtype=np.int32)
    payload = coder.encode(symbols)
    with pytest.raises(TrailingData):
        coder.decode(payload + b"\x12\x34\x56\x78" * 3, 8, 8)


def test_payload_that_is_not_whole_words_is_rejected():
    coder = TableCoder(_laplace_tables(1))
    with pytest.raises(CorruptStream):
        coder.decode(b"\x00\x01\x02", 2, 2)


def test_shipped_tables_load_and_round_trip():
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    tables = load_tables(SHIPPED / "entropy_tables.npz", manifest["levels"], manifest["latent_channels"])
    rng = np.random.default_rng(2)
    for table in tables:
        coder = TableCoder(table)
        symbols = np.rint(rng.normal(0, 3, size=(table.channels, 5, 7))).astype(np.int32)
        np.testing.assert_array_equal(coder.decode(coder.encode(symbols), 5, 7), symbols)


def test_tables_that_are_not_strictly_increasing_are_rejected(tmp_path):
    tables = _laplace_tables(2)
    cdf = tables.cdf.copy()
    cdf[1, 3] = cdf[1, 2]
    np.savez(
        tmp_path / "t.npz",
        format_version=np.array([1]),
        precision=np.array([16]),
        levels=np.array([1]),
        level1_cdf=cdf,
        level1_lengths=tables.lengths,
        level1_offsets=tables.offsets,
        level1_medians=tables.medians,
    )
    with pytest.raises(ModelLoadError):
        load_tables(tmp_path / "t.npz", 1, [2])


def _context_tables(channels: int, buckets: int = 4, half_width: int = 8) -> LevelTables:
    """The Laplacian tables with a hand-made channel context: bucket b's table is b + 1 times wider."""
    base = _laplace_tables(channels, half_width)
    n = 2 * half_width + 1
    values = np.arange(-half_width, half_width + 1)
    context_cdf = np.zeros((channels, buckets, n + 2), dtype=np.int64)
    for c in range(channels):
        for b in range(buckets):
            probabilities = np.exp(-np.abs(values) / (0.4 * (b + 1)))
            probabilities = np.r_[probabilities / probabilities.sum() * 0.999, 0.001]
            freqs = np.maximum(np.round(probabilities * (1 << 16)).astype(np.int64), 1)
            freqs[np.argmax(freqs)] -= freqs.sum() - (1 << 16)
            context_cdf[c, b, 1:] = np.cumsum(freqs)
    edges = np.tile(np.array([4, 20, 60][: buckets - 1], dtype=np.int64), (channels, 1))
    context = ChannelContext(weights=np.full(channels, 2, dtype=np.int64), edges=edges)
    return dataclasses.replace(base, context=context, context_cdf=context_cdf)


def _laplace_cdf(scale: float, values: np.ndarray) -> np.ndarray:
    probabilities = np.exp(-np.abs(values) / scale)
    probabilities = np.r_[probabilities / probabilities.sum() * 0.999, 0.001]
    freqs = np.maximum(np.round(probabilities * (1 << 16)).astype(np.int64), 1)
    freqs[np.argmax(freqs)] -= freqs.sum() - (1 << 16)
    return np.r_[0, np.cumsum(freqs)]


def _checkerboard_tables(channels: int, buckets: int = 4, spatial: int = 3, half_width: int = 8) -> LevelTables:
    """``_context_tables`` plus a hand-made checkerboard: the second pass's table (b, s) is wider with b and s."""
    tables = _context_tables(channels, buckets, half_width)
    values = np.arange(-half_width, half_width + 1)
    second = [_laplace_cdf(0.2 * (b + 1) * (s + 1), values) for b in range(buckets) for s in range(spatial)]
    context_cdf = np.concatenate([tables.context_cdf, np.tile(np.stack(second)[None], (channels, 1, 1))], axis=1)
    spatial_edges = np.tile(np.array([2, 8, 20][: spatial - 1], dtype=np.int64), (channels, 1))
    context = dataclasses.replace(tables.context, spatial_edges=spatial_edges)
    return dataclasses.replace(tables, context=context, context_cdf=context_cdf)


def _learned(tables: LevelTables) -> LevelTables:
    """``tables`` with the learned activity in place of the counting rule: hand-made weights, some negative, on
    the earlier channels at the symbol's place and over its window."""
    channels = tables.channels
    mixing = np.zeros((2, channels, channels), dtype=np.int64)
    for c in range(1, channels):
        mixing[0, c, :c] = np.arange(c) % 3 + 1
        mixing[1, c, c - 1] = 1
        mixing[1, c, 0] = -1 if c > 1 else 0
    return dataclasses.replace(tables, context=dataclasses.replace(tables.context, weights=None, mixing=mixing))


def _learned_tables(channels: int) -> LevelTables:
    return _learned(_context_tables(channels))


def _learned_checkerboard_tables(channels: int) -> LevelTables:
    return _learned(_checkerboard_tables(channels))


def _leaning(tables: LevelTables, context, first: int) -> LevelTables:
    """``tables`` with ``context`` and its tables from ``first`` on leaning positive (the mode at +1), as tables
    fitted to flipped symbols do."""
    values = np.arange(-8, 9)
    leaning = np.stack([_laplace_cdf(0.3 * (t % 8 + 1), values - 1) for t in range(context.tables - first)])
    context_cdf = tables.context_cdf.copy()
    context_cdf[:, first:] = leaning[None]
    return dataclasses.replace(tables, context=context, context_cdf=context_cdf)


def _flipping_tables(channels: int) -> LevelTables:
    """``_learned_checkerboard_tables`` with format 5's sign flip, (a, b) = (0, 1), and leaning second-pass tables."""
    tables = _learned_checkerboard_tables(channels)
    context = dataclasses.replace(tables.context, sign_pass2=np.tile(np.array([[0, 1]]), (channels, 1)))
    return _leaning(tables, context, context.buckets)


def _sign_mixing(channels: int) -> np.ndarray:
    """Sign weights (2, C, C): channel c leans against channel c − 1 at its place and with channel 0 around it."""
    mixing = np.zeros((2, channels, channels), dtype=np.int64)
    for c in range(1, channels):
        mixing[0, c, c - 1] = -4096
        mixing[1, c, 0] = 7 * c
    return mixing


def _predicting_tables(channels: int) -> LevelTables:
    """``_learned_checkerboard_tables`` with a sign prediction (format 6) and leaning tables."""
    tables = _learned_checkerboard_tables(channels)
    pass2 = np.stack([np.arange(channels) % 3, np.full(channels, 5000)], axis=1)
    context = dataclasses.replace(tables.context, sign_mixing=_sign_mixing(channels), sign_pass2=pass2)
    return _leaning(tables, context, 0)


def _predicting_one_pass_tables(channels: int) -> LevelTables:
    """``_learned_tables`` with the sign prediction of the earlier channels (format 6, no checkerboard)."""
    tables = _learned_tables(channels)
    return _leaning(tables, dataclasses.replace(tables.context, sign_mixing=_sign_mixing(channels)), 0)


def _diagonal_tables(channels: int, diagonal: int = 3) -> LevelTables:
    """``_predicting_tables`` with a diagonal pass (format 7): its table (b, d) leans positive and is wider with b
    and d, and its sign prediction weighs the diagonal neighbours' signed sum."""
    tables = _predicting_tables(channels)
    buckets = tables.context.buckets
    values = np.arange(-8, 9)
    extra = [_laplace_cdf(0.25 * (b + 1) * (d + 1), values - 1) for b in range(buckets) for d in range(diagonal)]
    context_cdf = np.concatenate([tables.context_cdf, np.tile(np.stack(extra)[None], (channels, 1, 1))], axis=1)
    context = dataclasses.replace(
        tables.context, diagonal_edges=np.tile(np.array([3, 12][: diagonal - 1], dtype=np.int64), (channels, 1)),
        sign_diagonal=np.stack([np.arange(channels) % 2, np.full(channels, 3000)], axis=1))
    return dataclasses.replace(tables, context=context, context_cdf=context_cdf)


def _following_symbols(rng: np.random.Generator, channels: int, height: int, width: int) -> np.ndarray:
    """Symbols whose signs follow the sign field of ``_sign_field_symbols`` and, from channel 1 on, are the
    opposite of the channel before's where that is not 0."""
    symbols = _sign_field_symbols(rng, channels, height, width).astype(np.int64)
    for c in range(1, channels):
        against = -np.sign(symbols[c - 1])
        symbols[c] = np.where(against != 0, against * np.abs(symbols[c]), symbols[c])
    return symbols.astype(np.int32)


def _sign_field_symbols(rng: np.random.Generator, channels: int, height: int, width: int) -> np.ndarray:
    """Symbols whose signs follow a smooth field of signs per channel: a symbol's neighbours tell its sign."""
    signs = np.kron(rng.choice([-1, 1], size=(channels, height // 6 + 1, width // 6 + 1)), np.ones((1, 6, 6)))
    magnitudes = np.rint(np.abs(rng.laplace(0, 1.5, size=(channels, height, width))))
    return (signs[:, :height, :width] * magnitudes).astype(np.int32)


def _busy_symbols(rng: np.random.Generator, channels: int, height: int, width: int) -> np.ndarray:
    """Symbols whose scale follows one smooth busy/flat field shared by all channels."""
    field = np.repeat(np.repeat(rng.uniform(0.1, 3.0, size=(height // 4 + 1, width // 4 + 1)), 4, 0), 4, 1)
    return np.rint(rng.laplace(0, 1, size=(channels, height, width)) * field[:height, :width]).astype(np.int32)


# the encoder finds the buckets of small levels all at once and of large ones channel by channel, as decoding does
@pytest.mark.parametrize("height, width", [(19, 26), (230, 240), (1, 1), (1, 7)])
@pytest.mark.parametrize("make_tables", [_context_tables, _checkerboard_tables, _learned_tables,
                                         _learned_checkerboard_tables, _flipping_tables, _predicting_tables,
                                         _predicting_one_pass_tables, _diagonal_tables])
def test_channel_context_round_trip_is_exact_and_byte_identical(height, width, make_tables):
    rng = np.random.default_rng(3)
    coder = TableCoder(make_tables(5))
    symbols = _busy_symbols(rng, 5, height, width)
    symbols[0, 0, 0] = 70_000  # escapes also feed the context of later channels (clipped)
    symbols[3, height - 1, width - 1] = -(1 << 24)
    payload = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(payload, height, width), symbols)
    assert TableCoder(make_tables(5)).encode(symbols) == payload
    if height * width < 10:
        return
    with pytest.raises((CorruptStream, TrailingData)):
        coder.decode(payload[: len(payload) // 2], height, width)
    with pytest.raises(TrailingData):
        coder.decode(payload + b"\x00\x00\x00\x01" * 2, height, width)


@pytest.mark.parametrize("height, width", [(12, 9), (60, 50)])  # one binary search / a pass per threshold
@pytest.mark.parametrize("make_tables", [_context_tables, _learned_tables])
def test_channel_context_buckets_are_what_the_decoder_sees(height, width, make_tables):
    rng = np.random.default_rng(4)
    context = make_tables(4).context
    symbols = _busy_symbols(rng, 4, height, width)
    buckets = context.buckets_of(symbols)  # the encoder's, all channels at once
    state = context.start(height, width)  # the decoder's, channel after channel
    for c in range(4):
        np.testing.assert_array_equal(state.buckets(c), buckets[c])
        np.testing.assert_array_equal(buckets[c], np.searchsorted(context.edges[c], state.activity(c), side="right"))
        state.add(c, symbols[c])
    assert np.all(buckets[0] == np.searchsorted(context.edges[0], 0, side="right"))
    assert len(np.unique(buckets[1:])) >= 3  # the context varies with the busy field


@pytest.mark.parametrize("height, width", [(12, 9), (60, 50)])
@pytest.mark.parametrize("make_tables", [_checkerboard_tables, _learned_checkerboard_tables])
def test_checkerboard_tables_are_what_the_decoder_sees(height, width, make_tables):
    """The encoder's table of every symbol, all channels at once, is what the decoder finds from the channels
    before and only the anchors of the symbol's own channel."""
    context = make_tables(4).context
    symbols = _busy_symbols(np.random.default_rng(9), 4, height, width)
    table_ids = context.table_ids_of(symbols)
    anchors = anchor_mask(height, width)
    state = context.start(height, width)
    for c in range(4):
        anchors_only = np.where(anchors, symbols[c], 0)
        np.testing.assert_array_equal(context.table_ids(c, state.buckets(c), anchors_only), table_ids[c])
        for kind, positions in context.pass_positions(height, width):
            np.testing.assert_array_equal(context.pass_table_ids(c, state.buckets(c), anchors_only, kind, positions),
                                          table_ids[c].reshape(-1)[positions])
        state.add(c, symbols[c])
    assert np.all(table_ids[:, anchors] < context.buckets) and np.all(table_ids[:, ~anchors] >= context.buckets)
    assert len(np.unique(table_ids[:, ~anchors])) >= 6 and context.tables == 4 * (1 + 3)


def test_the_sign_flip_codes_symbols_that_follow_their_neighbours_sign_in_fewer_bytes():
    rng = np.random.default_rng(14)
    flipping = _flipping_tables(4)
    plain = dataclasses.replace(flipping, context=dataclasses.replace(flipping.context, sign_pass2=None))
    symbols = _sign_field_symbols(rng, 4, 48, 40)
    flips = flipping.context.flips_of(symbols)
    anchors = anchor_mask(48, 40)
    assert np.all(flips[:, anchors] == 1) and (flips == -1).mean() > 0.2  # only second-pass symbols flip
    coder = TableCoder(flipping)
    payload = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(payload, 48, 40), symbols)
    assert len(payload) < 0.95 * len(TableCoder(plain).encode(symbols))
    table_ids = flipping.context.table_ids_of(symbols)
    ideal = coder.bit_costs(table_ids, symbols, flips).sum()
    assert abs(len(payload) * 8 - ideal) < 0.01 * ideal + 64
    assert coder.bit_costs(table_ids, symbols).sum() > 1.05 * ideal  # the same tables, not flipped


@pytest.mark.parametrize("height, width", [(12, 9), (60, 50), (1, 5)])
def test_diagonal_pass_tables_are_what_the_decoder_sees(height, width):
    """With a diagonal pass the encoder's table of every symbol is what the decoder finds pass after pass: the
    diagonal pass from the (even, even) anchors alone, the neighbour pass from both earlier passes."""
    context = _diagonal_tables(4).context
    symbols = _busy_symbols(np.random.default_rng(31), 4, height, width)
    table_ids = context.table_ids_of(symbols)
    kinds = context.pass_map(height, width)
    state = context.start(height, width)
    for c in range(4):
        buckets = state.buckets(c)
        known = {ANCHORS: np.zeros_like(symbols[c]), DIAGONAL: np.where(kinds == ANCHORS, symbols[c], 0),
                 NEIGHBOURS: np.where(kinds != NEIGHBOURS, symbols[c], 0)}
        for kind, positions in context.pass_positions(height, width):
            np.testing.assert_array_equal(context.pass_table_ids(c, buckets, known[kind], kind, positions),
                                          table_ids[c].reshape(-1)[positions])
            np.testing.assert_array_equal(positions, np.flatnonzero(kinds == kind))
        np.testing.assert_array_equal(context.table_ids(c, buckets, symbols[c]), table_ids[c])
        state.add(c, symbols[c])
    first_diagonal = context.buckets * (1 + context.spatial_buckets)
    assert context.passes == (ANCHORS, DIAGONAL, NEIGHBOURS) and context.tables == 4 * (1 + 3 + 3)
    assert np.all(table_ids[:, kinds == ANCHORS] < context.buckets)
    assert np.all((table_ids[:, kinds == NEIGHBOURS] >= context.buckets)
                  & (table_ids[:, kinds == NEIGHBOURS] < first_diagonal))
    if height > 1:
        assert np.all(table_ids[:, kinds == DIAGONAL] >= first_diagonal)
        assert len(np.unique(table_ids[:, kinds == DIAGONAL])) >= 4


def test_pass_map_and_diagonal_sum():
    np.testing.assert_array_equal(pass_map(3, 4, False), [[0, 2, 0, 2], [2, 0, 2, 0], [0, 2, 0, 2]])
    np.testing.assert_array_equal(pass_map(3, 4, True), [[0, 2, 0, 2], [2, 1, 2, 1], [0, 2, 0, 2]])
    values = np.random.default_rng(12).integers(0, 100, size=(2, 5, 7))
    padded = np.pad(values, [(0, 0), (1, 1), (1, 1)])
    expected = padded[:, :-2, :-2] + padded[:, :-2, 2:] + padded[:, 2:, :-2] + padded[:, 2:, 2:]
    np.testing.assert_array_equal(diagonal_sum(values), expected)
    known = pass_map(5, 7, True) == ANCHORS  # every diagonal neighbour of the diagonal pass is an anchor
    assert np.all(diagonal_sum((~known).astype(np.int64)[None])[0][pass_map(5, 7, True) == DIAGONAL] == 0)


def test_diagonal_pass_tables_load_and_bad_ones_are_rejected(tmp_path):
    tables = _diagonal_tables(3)
    context = tables.context
    arrays = {"format_version": np.array([7]), "level1_sign_mix": context.sign_mixing,
              "level1_sign_pass2": context.sign_pass2, "level1_diagonal_edges": context.diagonal_edges,
              "level1_sign_diagonal": context.sign_diagonal}
    _save_context_tables(tmp_path / "good.npz", tables, **arrays)
    loaded = load_tables(tmp_path / "good.npz", 1, [3])[0]
    np.testing.assert_array_equal(loaded.context.diagonal_edges, context.diagonal_edges)
    np.testing.assert_array_equal(loaded.context.sign_diagonal, context.sign_diagonal)
    symbols = _following_symbols(np.random.default_rng(32), 3, 12, 10)
    assert TableCoder(loaded).encode(symbols) == TableCoder(tables).encode(symbols)
    _save_context_tables(tmp_path / "old.npz", tables, **{**arrays, "format_version": np.array([6])})
    with pytest.raises(ModelLoadError, match="context tables of shape"):  # format 6 has no diagonal pass
        load_tables(tmp_path / "old.npz", 1, [3])
    unsorted = context.diagonal_edges.copy()
    unsorted[1] = unsorted[1, ::-1]
    for name, overrides in {
        "unsorted": {"level1_diagonal_edges": unsorted},
        "rows": {"level1_diagonal_edges": context.diagonal_edges[:2]},
        "sign shape": {"level1_sign_diagonal": context.sign_diagonal[:, :1]},
        "sign weights too large": {"level1_sign_diagonal": np.full((3, 2), 1 << 60)},
        "tables": {"level1_context_cdf": tables.context_cdf[:, :-1]},
    }.items():
        _save_context_tables(tmp_path / "bad.npz", tables, **{**arrays, **overrides})
        with pytest.raises(ModelLoadError):
            load_tables(tmp_path / "bad.npz", 1, [3])
    no_diagonal = {k: v for k, v in arrays.items() if k != "level1_diagonal_edges"}
    _save_context_tables(tmp_path / "bad.npz", tables, **no_diagonal)
    with pytest.raises(ModelLoadError, match="diagonal pass"):
        load_tables(tmp_path / "bad.npz", 1, [3])


def test_anchor_mask_and_neighbour_sum():
    np.testing.assert_array_equal(anchor_mask(2, 3), [[True, False, True], [False, True, False]])
    values = np.random.default_rng(10).integers(0, 100, size=(2, 5, 7))
    padded = np.pad(values, [(0, 0), (1, 1), (1, 1)])
    expected = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    np.testing.assert_array_equal(neighbour_sum(values), expected)


def _save_context_tables(path: Path, tables: LevelTables, **overrides) -> None:
    arrays = {
        "format_version": np.array([2]), "precision": np.array([16]), "levels": np.array([1]),
        "context_clip": np.array([255]), "context_window": np.array([3]),
        "level1_cdf": tables.cdf, "level1_lengths": tables.lengths, "level1_offsets": tables.offsets,
        "level1_medians": tables.medians, "level1_context_edges": tables.context.edges,
        "level1_context_cdf": tables.context_cdf,
    }
    if tables.context.spatial_edges is not None:
        arrays.update({"format_version": np.array([3]), "level1_spatial_edges": tables.context.spatial_edges})
    if tables.context.learned:
        arrays.update({"format_version": np.array([4]), "level1_context_mix": tables.context.mixing})
    else:
        arrays["level1_context_weights"] = tables.context.weights
    arrays.update(overrides)
    np.savez(path, **arrays)


def test_context_tables_load_and_bad_ones_are_rejected(tmp_path):
    tables = _context_tables(3)
    _save_context_tables(tmp_path / "good.npz", tables)
    loaded = load_tables(tmp_path / "good.npz", 1, [3])[0]
    symbols = _busy_symbols(np.random.default_rng(5), 3, 8, 8)
    assert TableCoder(loaded).encode(symbols) == TableCoder(tables).encode(symbols)
    unsorted = tables.context.edges.copy()
    unsorted[1] = unsorted[1, ::-1]
    flat = tables.context_cdf.copy()
    flat[2, 1, 5] = flat[2, 1, 4]
    for name, overrides in {
        "unsorted thresholds": {"level1_context_edges": unsorted},
        "flat CDF": {"level1_context_cdf": flat},
        "wrong bucket count": {"level1_context_cdf": tables.context_cdf[:, :2]},
        "negative weight": {"level1_context_weights": -tables.context.weights},
        "bad window": {"context_window": np.array([4])},
        "missing array": {"level1_context_weights": None},
    }.items():
        arrays = {k: v for k, v in overrides.items() if v is not None}
        _save_context_tables(tmp_path / "bad.npz", tables, **arrays)
        if "missing array" == name:
            data = dict(np.load(tmp_path / "bad.npz"))
            del data["level1_context_weights"]
            np.savez(tmp_path / "bad.npz", **data)
        with pytest.raises(ModelLoadError):
            load_tables(tmp_path / "bad.npz", 1, [3])


def test_learned_activity_is_exact_integer_arithmetic_up_to_its_bound():
    """Float64 matrix products give the learned activity; with weights near the loader's limit they still
    equal int64 arithmetic, for all channels at once and channel by channel."""
    rng = np.random.default_rng(13)
    context = _learned_tables(6).context
    mixing = np.tril(rng.integers(-(1 << 40), 1 << 40, size=(2, 6, 6)), k=-1)
    context = dataclasses.replace(context, mixing=mixing)
    assert 2**51 < context.activity_bound() < 2**53
    symbols = rng.integers(-300, 300, size=(6, 7, 5))
    magnitudes = np.minimum(np.abs(symbols), 255).astype(np.int64)
    centre = np.einsum("ck,khw->chw", mixing[0], magnitudes)
    expected = centre + window_sum(np.einsum("ck,khw->chw", mixing[1], magnitudes), 3)
    np.testing.assert_array_equal(context.activities_of(symbols), expected)
    state = context.start(7, 5)
    for c in range(6):
        np.testing.assert_array_equal(state.activity(c), expected[c])
        state.add(c, symbols[c])


def test_learned_context_tables_load_and_bad_ones_are_rejected(tmp_path):
    tables = _learned_checkerboard_tables(3)
    _save_context_tables(tmp_path / "good.npz", tables)
    loaded = load_tables(tmp_path / "good.npz", 1, [3])[0]
    assert loaded.context.learned and loaded.context.weights is None
    symbols = _busy_symbols(np.random.default_rng(12), 3, 9, 8)
    assert TableCoder(loaded).encode(symbols) == TableCoder(tables).encode(symbols)
    mixing = tables.context.mixing
    sees_itself, sees_later = mixing.copy(), mixing.copy()
    sees_itself[0, 1, 1] = 1
    sees_later[1, 0, 2] = 1
    huge = mixing.copy()
    huge[0, 2, 0] = 1 << 46  # times a magnitude of 255, its sums would leave float64's exact integers
    for name, overrides in {
        "weighs itself": {"level1_context_mix": sees_itself},
        "weighs a later channel": {"level1_context_mix": sees_later},
        "too large": {"level1_context_mix": huge},
        "wrong shape": {"level1_context_mix": mixing[:, :2, :2]},
        "one matrix": {"level1_context_mix": mixing[0]},
    }.items():
        _save_context_tables(tmp_path / "bad.npz", tables, **overrides)
        with pytest.raises(ModelLoadError):
            load_tables(tmp_path / "bad.npz", 1, [3])
    _save_context_tables(tmp_path / "old.npz", tables, format_version=np.array([3]))
    with pytest.raises(ModelLoadError, match="missing"):  # format 3 has no learned activity: weights needed
        load_tables(tmp_path / "old.npz", 1, [3])


def test_sign_flip_tables_load_and_need_the_checkerboard(tmp_path):
    tables = _flipping_tables(3)
    _save_context_tables(tmp_path / "good.npz", tables, format_version=np.array([5]),
                         level1_sign_flip=np.array([1], dtype=np.int32))
    loaded = load_tables(tmp_path / "good.npz", 1, [3])[0]
    assert loaded.context.sign_flip and loaded.context.learned
    symbols = _sign_field_symbols(np.random.default_rng(15), 3, 12, 10)
    assert TableCoder(loaded).encode(symbols) == TableCoder(tables).encode(symbols)
    _save_context_tables(tmp_path / "old.npz", tables, level1_sign_flip=np.array([1], dtype=np.int32))
    assert not load_tables(tmp_path / "old.npz", 1, [3])[0].context.sign_flip  # format 4 has no flip
    one_pass = _learned_tables(3)
    _save_context_tables(tmp_path / "bad.npz", one_pass, format_version=np.array([5]),
                         level1_sign_flip=np.array([1], dtype=np.int32))
    with pytest.raises(ModelLoadError, match="checkerboard"):
        load_tables(tmp_path / "bad.npz", 1, [3])


@pytest.mark.parametrize("make_tables", [_predicting_tables, _predicting_one_pass_tables, _flipping_tables,
                                         _diagonal_tables])
@pytest.mark.parametrize("height, width", [(12, 9), (33, 40)])
def test_sign_flips_are_what_the_decoder_sees(make_tables, height, width):
    rng = np.random.default_rng(21)
    context = make_tables(5).context
    symbols = _following_symbols(rng, 5, height, width)
    symbols[2, 0, 0] = 70_000  # clipped like every value
    flips = context.flips_of(symbols)
    state = context.start(height, width)
    known = np.zeros(height * width, dtype=np.int64)
    for c in range(5):
        prediction = state.sign_prediction(c)
        known[:] = 0
        for kind, positions in context.pass_positions(height, width):  # each pass knows the passes before it
            pass_flips = context.pass_flips(c, prediction, known.reshape(height, width), kind, positions)
            expected = flips[c].reshape(-1) if positions is None else flips[c].reshape(-1)[positions]
            np.testing.assert_array_equal(np.ones_like(expected) if pass_flips is None else pass_flips, expected)
            known[slice(None) if positions is None else positions] = (
                symbols[c].reshape(-1) if positions is None else symbols[c].reshape(-1)[positions])
        state.add(c, symbols[c])
    assert (flips == -1).mean() > 0.2


def test_the_sign_prediction_codes_symbols_that_follow_earlier_channels_in_fewer_bytes():
    rng = np.random.default_rng(22)
    predicting = _predicting_tables(4)
    symbols = _following_symbols(rng, 4, 48, 40)
    flips = predicting.context.flips_of(symbols)
    coded = symbols * flips
    assert np.mean(coded[1:][symbols[1:] != 0] > 0) > 0.75  # the prediction gets most signs right
    coder = TableCoder(predicting)
    payload = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(payload, 48, 40), symbols)
    neighbours_only = TableCoder(_leaning(predicting, dataclasses.replace(
        predicting.context, sign_mixing=None, sign_pass2=np.tile(np.array([[0, 1]]), (4, 1))), 0))
    assert len(payload) < 0.9 * len(neighbours_only.encode(symbols))
    table_ids = predicting.context.table_ids_of(symbols)
    ideal = coder.bit_costs(table_ids, symbols, flips).sum()
    assert abs(len(payload) * 8 - ideal) < 0.01 * ideal + 64


def test_sign_prediction_tables_load_and_bad_ones_are_rejected(tmp_path):
    tables = _predicting_tables(3)
    context = tables.context
    signs = {"format_version": np.array([6]), "level1_sign_mix": context.sign_mixing,
             "level1_sign_pass2": context.sign_pass2}
    _save_context_tables(tmp_path / "good.npz", tables, **signs)
    loaded = load_tables(tmp_path / "good.npz", 1, [3])[0]
    np.testing.assert_array_equal(loaded.context.sign_mixing, context.sign_mixing)
    np.testing.assert_array_equal(loaded.context.sign_pass2, context.sign_pass2)
    symbols = _following_symbols(np.random.default_rng(23), 3, 12, 10)
    assert TableCoder(loaded).encode(symbols) == TableCoder(tables).encode(symbols)
    _save_context_tables(tmp_path / "old.npz", tables, **{**signs, "format_version": np.array([4])})
    assert not load_tables(tmp_path / "old.npz", 1, [3])[0].context.sign_flip  # format 4 has no signs
    own = context.sign_mixing.copy()
    own[0, 1, 1] = 3
    huge = context.sign_mixing.copy()
    huge[1, 2, 0] = 1 << 62
    for name, overrides in {
        "weighs itself": {"level1_sign_mix": own},
        "one matrix": {"level1_sign_mix": context.sign_mixing[0]},
        "too large": {"level1_sign_mix": huge},
        "pass-2 weights too large": {"level1_sign_pass2": np.full((3, 2), 1 << 60)},
        "pass-2 shape": {"level1_sign_pass2": context.sign_pass2[:2]},
    }.items():
        _save_context_tables(tmp_path / "bad.npz", tables, **{**signs, **overrides})
        with pytest.raises(ModelLoadError):
            load_tables(tmp_path / "bad.npz", 1, [3])
    one_pass = _predicting_one_pass_tables(3)
    _save_context_tables(tmp_path / "bad.npz", one_pass, **signs)
    with pytest.raises(ModelLoadError, match="checkerboard"):
        load_tables(tmp_path / "bad.npz", 1, [3])
    _save_context_tables(tmp_path / "one.npz", one_pass, format_version=np.array([6]),
                         level1_sign_mix=context.sign_mixing)
    assert TableCoder(load_tables(tmp_path / "one.npz", 1, [3])[0]).encode(symbols) == TableCoder(one_pass).encode(
        symbols)


def test_checkerboard_tables_load_and_bad_ones_are_rejected(tmp_path):
    tables = _checkerboard_tables(3)
    _save_context_tables(tmp_path / "good.npz", tables)
    loaded = load_tables(tmp_path / "good.npz", 1, [3])[0]
    assert loaded.context.spatial_buckets == 3 and loaded.context.tables == 16
    symbols = _busy_symbols(np.random.default_rng(11), 3, 9, 8)
    assert TableCoder(loaded).encode(symbols) == TableCoder(tables).encode(symbols)
    unsorted = tables.context.spatial_edges.copy()
    unsorted[0] = unsorted[0, ::-1]
    for overrides in (
        {"level1_spatial_edges": unsorted},
        {"level1_spatial_edges": tables.context.spatial_edges[:2]},
        {"level1_context_cdf": tables.context_cdf[:, :10]},
        {"level1_spatial_edges": np.zeros((3, 0), dtype=np.int64)},
    ):
        _save_context_tables(tmp_path / "bad.npz", tables, **overrides)
        with pytest.raises(ModelLoadError):
            load_tables(tmp_path / "bad.npz", 1, [3])


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (7, 9), (3, 4, 5)])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_window_sum_replicates_edges_like_numpy_pad(shape, window):
    values = np.random.default_rng(6).integers(0, 1 << 40, size=shape)
    radius = window // 2
    padded = np.pad(values, [(0, 0)] * (values.ndim - 2) + [(radius, radius)] * 2, mode="edge")
    height, width = shape[-2:]
    expected = sum(padded[..., i : i + height, j : j + width] for i in range(window) for j in range(window))
    np.testing.assert_array_equal(window_sum(values, window), expected)


@pytest.mark.parametrize("make_tables", [_laplace_tables, _context_tables, _checkerboard_tables, _flipping_tables,
                                         _predicting_tables, _predicting_one_pass_tables, _diagonal_tables])
def test_rdo_rounding_moves_symbols_only_one_step_towards_zero_and_saves_bits(make_tables):
    tables = make_tables(5)
    coder = TableCoder(tables)
    residuals = _busy_symbols(np.random.default_rng(7), 5, 40, 40) + np.random.default_rng(8).uniform(-0.5, 0.5, (5, 40, 40))
    rounded = np.rint(residuals).astype(np.int32)
    np.testing.assert_array_equal(coder.rdo_symbols(residuals, 0.0), rounded)
    sizes, errors = [], []
    for rdoq_lambda in (0.0, 0.05, 0.2, 1.0):
        symbols = coder.rdo_symbols(residuals, rdoq_lambda)
        moved = symbols != rounded
        assert np.all(np.abs(symbols - rounded) <= 1) and np.all(rounded[moved] != 0)
        np.testing.assert_array_equal(symbols[moved], rounded[moved] - np.sign(rounded[moved]))
        np.testing.assert_array_equal(coder.decode(coder.encode(symbols), 40, 40), symbols)
        sizes.append(len(coder.encode(symbols)))
        errors.append(float(((residuals - symbols) ** 2).sum()))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.9 * sizes[0]
    assert errors == sorted(errors)


@pytest.mark.parametrize("make_tables", [_laplace_tables, _context_tables, _checkerboard_tables, _flipping_tables,
                                         _predicting_tables, _diagonal_tables])
def test_per_symbol_probabilities_give_the_bytes_of_one_model_per_table(make_tables, monkeypatch):
    """Small passes go to constriction in one call with per-symbol probabilities, larger ones table by table:
    the same quantised models, so the same bytes either way."""
    coder = TableCoder(make_tables(5))
    symbols = _busy_symbols(np.random.default_rng(13), 5, 24, 20)
    symbols[2, 3, 4] = 5_000  # an escape
    monkeypatch.setattr("service.entropy_coder._PER_SYMBOL_MAX", 0)
    per_table = coder.encode(symbols)
    monkeypatch.setattr("service.entropy_coder._PER_SYMBOL_MAX", 10_000)
    assert coder.encode(symbols) == per_table
    np.testing.assert_array_equal(coder.decode(per_table, 24, 20), symbols)


def test_rdo_rounding_follows_its_rule_on_a_single_symbol():
    coder = TableCoder(_laplace_tables(1))  # channel 0: scale 0.5, so 0 costs far fewer bits than ±1
    residual = np.full((1, 1, 1), 0.6)
    saved = float((coder._symbol_bits(0, 0, np.array([1])) - coder._symbol_bits(0, 0, np.array([0])))[0])
    added = 0.6**2 - 0.4**2
    assert saved > 1
    assert coder.rdo_symbols(residual, 0.99 * added / saved)[0, 0, 0] == 1
    assert coder.rdo_symbols(residual, 1.01 * added / saved)[0, 0, 0] == 0
    far = np.full((1, 1, 1), 70_000.3)  # an escape: its payload counts in the bits saved, still one step at most
    assert coder.rdo_symbols(far, 100.0)[0, 0, 0] in (70_000, 69_999)
