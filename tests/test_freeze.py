"""The freeze step: integer CDF tables that are valid, carry an escape, and cost what the density says."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from model_export.entropy import EntropyBottleneck
from model_export.freeze import (FrozenTables, context_bits, count_bits, fit_context_tables, fit_tables, freeze_bottleneck,
                                 ideal_bits, quantize_pmf, runtime_coder, save_tables, symbol_counts)
from service.channel_context import window_sum
from service.entropy_coder import LevelTables, TableCoder, load_tables


def test_quantize_pmf_sums_to_total_and_keeps_every_bin():
    probabilities = np.array([0.5, 0.3, 0.2 - 1e-9, 1e-12, 1e-9])
    freqs = quantize_pmf(probabilities, 16)
    assert freqs.sum() == 1 << 16
    assert freqs.min() >= 1
    assert abs(freqs[0] / 65536 - 0.5) < 1e-3


def test_quantize_pmf_many_tiny_bins_still_sum_exactly():
    probabilities = np.r_[1.0, np.full(300, 1e-15)]
    freqs = quantize_pmf(probabilities, 10)
    assert freqs.sum() == 1 << 10 and freqs.min() == 1


@pytest.mark.parametrize("bad", [np.array([1.0]), np.array([0.5, np.nan]), np.array([0.0, 0.0])])
def test_quantize_pmf_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        quantize_pmf(bad, 16)


def _trained_bottleneck(channels: int = 6) -> tuple[EntropyBottleneck, torch.Tensor]:
    """A bottleneck fitted briefly to Laplacian-ish latents of different scales per channel."""
    torch.manual_seed(0)
    bottleneck = EntropyBottleneck(channels)
    scales = torch.linspace(0.5, 6.0, channels).reshape(1, channels, 1, 1)
    optimizer = torch.optim.Adam(bottleneck.parameters(), lr=1e-2)
    for _ in range(300):
        y = torch.distributions.Laplace(0.0, 1.0).sample((4, channels, 16, 16)) * scales + 0.3
        _, likelihoods = bottleneck(y)
        loss = -torch.log2(likelihoods).mean() + bottleneck.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    aux = torch.optim.Adam([bottleneck.quantiles], lr=0.1)
    for _ in range(1500):
        aux.zero_grad()
        bottleneck.loss().backward()
        aux.step()
    y = torch.distributions.Laplace(0.0, 1.0).sample((1, channels, 32, 32)) * scales + 0.3
    return bottleneck.eval(), y


def test_tables_are_strictly_increasing_with_escape():
    bottleneck, _ = _trained_bottleneck()
    tables = freeze_bottleneck(bottleneck, precision=16)
    for c in range(tables.channels):
        n = int(tables.lengths[c])
        row = tables.cdf[c, : n + 1]
        assert row[0] == 0 and row[-1] == 1 << 16
        assert np.all(np.diff(row) > 0)
        assert tables.offsets[c] <= 0
    # wider latents get wider tables
    assert tables.lengths[-1] > tables.lengths[0]


def test_table_cost_matches_the_learned_density():
    bottleneck, y = _trained_bottleneck()
    tables = freeze_bottleneck(bottleneck, precision=16)
    with torch.no_grad():
        _, likelihoods = bottleneck(y, training=False)
    model_bits = float(-torch.log2(likelihoods).sum())
    symbols = torch.round(y - bottleneck.medians())[0].reshape(y.shape[1], -1).numpy().astype(np.int64)
    table_bits = ideal_bits(tables, symbols)
    assert table_bits == pytest.approx(model_bits, rel=0.01)


def test_precision_out_of_range_is_rejected():
    bottleneck, _ = _trained_bottleneck(2)
    with pytest.raises(ValueError):
        freeze_bottleneck(bottleneck, precision=20)


def _rounded_symbols(bottleneck: EntropyBottleneck, y: torch.Tensor) -> np.ndarray:
    return torch.round(y - bottleneck.medians())[0].numpy().astype(np.int64)


def test_tables_fitted_to_rounded_symbols_code_new_ones_in_fewer_bits():
    bottleneck, _ = _trained_bottleneck()
    frozen = freeze_bottleneck(bottleneck, precision=16)
    scales = torch.linspace(0.5, 6.0, 6).reshape(1, 6, 1, 1)
    torch.manual_seed(1)

    def counts_of_a_sample() -> np.ndarray:
        y = torch.distributions.Laplace(0.0, 1.0).sample((1, 6, 96, 96)) * scales + 0.3
        return symbol_counts(frozen, _rounded_symbols(bottleneck, y))

    fitted = fit_tables(frozen, counts_of_a_sample())
    fresh = counts_of_a_sample()
    assert count_bits(fitted, fresh) < count_bits(frozen, fresh)
    for c in range(fitted.channels):
        row = fitted.cdf[c, : int(fitted.lengths[c]) + 1]
        assert row[0] == 0 and row[-1] == 1 << 16 and np.all(np.diff(row) > 0)
    np.testing.assert_array_equal(fitted.lengths, frozen.lengths)
    np.testing.assert_array_equal(fitted.offsets, frozen.offsets)


def test_fitted_tables_still_code_any_symbol_exactly():
    bottleneck, y = _trained_bottleneck()
    frozen = freeze_bottleneck(bottleneck, precision=16)
    symbols = _rounded_symbols(bottleneck, y)
    fitted = fit_tables(frozen, symbol_counts(frozen, symbols), prior_weight=0.0)
    symbols[:, 0, :4] = [-100_000, 5_000, 0, 70_000]  # far outside every table: escapes
    coder = TableCoder(LevelTables(fitted.cdf, fitted.lengths, fitted.offsets, fitted.medians, fitted.precision))
    decoded = coder.decode(coder.encode(symbols.astype(np.int32)), symbols.shape[1], symbols.shape[2])
    np.testing.assert_array_equal(decoded, symbols)


def test_fitting_keeps_the_frozen_tables_where_it_has_nothing_to_say():
    bottleneck, y = _trained_bottleneck()
    frozen = freeze_bottleneck(bottleneck, precision=16)
    counts = symbol_counts(frozen, _rounded_symbols(bottleneck, y))
    counts[2] = 0
    np.testing.assert_array_equal(fit_tables(frozen, counts).cdf[2], frozen.cdf[2])
    np.testing.assert_array_equal(fit_tables(frozen, counts, prior_weight=1.0).cdf, frozen.cdf)
    with pytest.raises(ValueError, match="prior_weight"):
        fit_tables(frozen, counts, prior_weight=1.5)
    with pytest.raises(ValueError, match="counts"):
        fit_tables(frozen, counts[:, :3])


def _busy_symbols(seed: int, channels: int = 6, size: int = 64) -> np.ndarray:
    """Symbols whose scale follows a smooth busy/flat field shared by all channels (as image latents do)."""
    rng = np.random.default_rng(seed)
    field = np.kron(np.exp(rng.uniform(np.log(0.1), np.log(8.0), size=(size // 8, size // 8))), np.ones((8, 8)))
    scales = np.linspace(0.5, 2.0, channels)[:, None, None]
    return np.rint(rng.laplace(0, 1, size=(channels, size, size)) * field * scales).astype(np.int64)


def _wide_tables(channels: int = 6, half_width: int = 40) -> FrozenTables:
    """Frozen-format tables over [−half_width, half_width] + escape, one broad Laplacian per channel."""
    values = np.arange(-half_width, half_width + 1)
    n = values.size + 1
    cdf = np.full((channels, n + 1), 1 << 16, dtype=np.int32)
    for c in range(channels):
        probabilities = np.r_[np.exp(-np.abs(values) / (2.0 + c)), 1e-4]
        cdf[c, 0] = 0
        cdf[c, 1:] = np.cumsum(quantize_pmf(probabilities, 16))
    return FrozenTables(cdf=cdf, lengths=np.full(channels, n, dtype=np.int32),
                        offsets=np.full(channels, -half_width, dtype=np.int32),
                        medians=np.zeros(channels, dtype=np.float32), precision=16)


def test_context_tables_code_fresh_busy_symbols_in_fewer_bits_than_one_table_per_channel():
    frozen = _wide_tables()
    training = [_busy_symbols(seed) for seed in range(4)]
    fitted = fit_tables(frozen, sum(symbol_counts(frozen, s) for s in training))
    context = fit_context_tables(fitted, training, buckets=8)
    fresh = _busy_symbols(99)
    assert context_bits(context, fresh) < 0.93 * ideal_bits(fitted, fresh)
    assert context_bits(fitted, fresh) == ideal_bits(fitted, fresh)
    assert context.context_cdf.shape == (6, 8, frozen.cdf.shape[1])
    assert np.all(np.diff(context.context.edges, axis=1) >= 0)
    np.testing.assert_array_equal(context.cdf, fitted.cdf)


@pytest.mark.parametrize("learned, table_format", [(False, 2), (True, 4)])
def test_context_tables_survive_saving_and_code_any_symbol_exactly(tmp_path, learned, table_format):
    frozen = _wide_tables()
    context = fit_context_tables(frozen, [_busy_symbols(0)], buckets=4, learned=learned)
    save_tables(tmp_path / "t.npz", [context, context])
    loaded = load_tables(tmp_path / "t.npz", 2, [6, 6])
    assert int(np.load(tmp_path / "t.npz")["format_version"][0]) == table_format
    assert loaded[1].context.learned == learned
    symbols = _busy_symbols(7).astype(np.int32)
    symbols[:, 0, :3] = [[-100_000], [5_000], [70_000], [0], [1], [-1]]
    coder = TableCoder(loaded[1])
    payload = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(payload, 64, 64), symbols)
    assert len(payload) * 8 < ideal_bits(frozen, symbols)  # fitted to the busy field, cheaper than frozen
    with pytest.raises(ValueError, match="every level"):
        save_tables(tmp_path / "mixed.npz", [context, frozen])


def _own_field_symbols(seed: int, channels: int = 6, size: int = 64) -> np.ndarray:
    """Symbols whose scale follows a busy/flat field of each channel's own: what the channels before know
    little of, and a symbol's neighbours in its own channel much."""
    rng = np.random.default_rng(seed)
    field = np.kron(np.exp(rng.uniform(np.log(0.1), np.log(8.0), size=(channels, size // 4, size // 4))),
                    np.ones((1, 4, 4)))
    return np.rint(rng.laplace(0, 1, size=(channels, size, size)) * field).astype(np.int64)


def _saved_and_loaded(tmp_path, levels: list[FrozenTables], table_format: int, fresh: np.ndarray) -> list:
    """Save ``levels``, check the file's format, load them and check that the last level's saved tables code
    ``fresh`` exactly, in about the bits ``context_bits`` counts, and in the bytes of ``runtime_coder``."""
    save_tables(tmp_path / "t.npz", levels)
    assert int(np.load(tmp_path / "t.npz")["format_version"][0]) == table_format
    loaded = load_tables(tmp_path / "t.npz", len(levels), [t.channels for t in levels])
    coder = TableCoder(loaded[-1])
    symbols = fresh.astype(np.int32)
    payload = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(payload, *fresh.shape[1:]), fresh)
    assert abs(len(payload) * 8 - context_bits(levels[-1], fresh)) < 0.01 * len(payload) * 8 + 64
    assert runtime_coder(levels[-1]).encode(symbols) == payload
    return loaded


def test_checkerboard_tables_code_fresh_symbols_in_fewer_bits_and_round_trip(tmp_path):
    frozen = _wide_tables()
    training = [_own_field_symbols(seed) for seed in range(8)]
    channel_only = fit_context_tables(frozen, training, buckets=8, learned=False)
    checkerboard = fit_context_tables(frozen, training, buckets=8, spatial_buckets=4, learned=False)
    fresh = _own_field_symbols(99)
    assert context_bits(checkerboard, fresh) < 0.97 * context_bits(channel_only, fresh)
    assert checkerboard.context_cdf.shape == (6, 8 * (1 + 4), frozen.cdf.shape[1])
    assert checkerboard.context.spatial_edges.shape == (6, 3)
    np.testing.assert_array_equal(checkerboard.context.edges, channel_only.context.edges)
    loaded = _saved_and_loaded(tmp_path, [channel_only, checkerboard], 3, fresh)
    assert loaded[0].context.spatial_edges is None and loaded[1].context.spatial_buckets == 4


def _paired_symbols(seed: int, size: int = 48) -> np.ndarray:
    """Six channels: 0–2 with busy/flat fields of their own, 3–5 following the field of channel c − 3 only (an
    image's latents tie some channels together far more than others)."""
    rng = np.random.default_rng(seed)
    fields = np.kron(np.exp(rng.uniform(np.log(0.1), np.log(8.0), size=(3, size // 4, size // 4))), np.ones((1, 4, 4)))
    return np.rint(rng.laplace(0, 1, size=(6, size, size)) * np.concatenate([fields, fields])).astype(np.int64)


def test_the_learned_activity_finds_which_earlier_channels_matter():
    frozen = _wide_tables()
    training = [_paired_symbols(seed) for seed in range(8)]
    counting = fit_context_tables(frozen, training, buckets=8, learned=False)
    learned = fit_context_tables(frozen, training, buckets=8)
    mixing = learned.context.mixing
    assert mixing.shape == (2, 6, 6) and not np.triu(mixing[0]).any() and not np.triu(mixing[1]).any()
    for c in range(3, 6):  # channel c − 3 weighs most, at the symbol's place or over its window
        strongest = np.abs(mixing[:, c, :c]).max(axis=0)
        assert np.argmax(strongest) == c - 3 and np.abs(mixing[:, c, :c]).max() == 4096
    fresh = _paired_symbols(99)
    assert context_bits(learned, fresh) < 0.97 * context_bits(counting, fresh)  # channels 3–5 gain, 0–2 cannot
    np.testing.assert_array_equal(fit_context_tables(frozen, training, buckets=8).context.mixing, mixing)


@pytest.mark.parametrize("learned", [False, True])
def test_the_runtime_coder_of_fitted_tables_codes_what_the_saved_tables_code(tmp_path, learned):
    frozen = _wide_tables()
    checkerboard = fit_context_tables(frozen, [_own_field_symbols(seed) for seed in range(4)], buckets=4,
                                      spatial_buckets=4, learned=learned)
    save_tables(tmp_path / "t.npz", [checkerboard, checkerboard])
    saved = TableCoder(load_tables(tmp_path / "t.npz", 2, [6, 6])[1])
    coder = runtime_coder(checkerboard)
    fresh = _own_field_symbols(42).astype(np.int32)
    residuals = fresh + np.random.default_rng(1).uniform(-0.5, 0.5, size=fresh.shape)
    assert coder.encode(fresh) == saved.encode(fresh)
    np.testing.assert_array_equal(coder.rdo_symbols(residuals, 0.1), saved.rdo_symbols(residuals, 0.1))
    assert not np.array_equal(coder.rdo_symbols(residuals, 0.1), fresh)
    one_table = runtime_coder(frozen)
    np.testing.assert_array_equal(one_table.decode(one_table.encode(fresh), 64, 64), fresh)


def _sign_field_symbols(seed: int, channels: int = 6, size: int = 48) -> np.ndarray:
    """Symbols whose signs follow a smooth field of signs per channel, as a little of the latents' do."""
    rng = np.random.default_rng(seed)
    signs = np.kron(rng.choice([-1, 1], size=(channels, size // 6, size // 6)), np.ones((1, 6, 6)))
    return (signs * np.rint(np.abs(rng.laplace(0, 1.5, size=(channels, size, size))))).astype(np.int64)


def test_the_sign_flip_fits_tables_to_the_flipped_symbols_and_round_trips(tmp_path):
    frozen = _wide_tables()
    training = [_sign_field_symbols(seed) for seed in range(6)]
    plain = fit_context_tables(frozen, training, buckets=4, spatial_buckets=4)
    flipping = fit_context_tables(frozen, training, buckets=4, spatial_buckets=4, signs="neighbours")
    fresh = _sign_field_symbols(99)
    assert context_bits(flipping, fresh) < 0.95 * context_bits(plain, fresh)  # half the symbols are anchors
    np.testing.assert_array_equal(flipping.context.edges, plain.context.edges)
    loaded = _saved_and_loaded(tmp_path, [plain, flipping], 6, fresh)
    assert not loaded[0].context.sign_flip and loaded[1].context.sign_flip
    with pytest.raises(ValueError, match="neighbours"):
        fit_context_tables(frozen, training, buckets=4, signs="neighbours")
    with pytest.raises(ValueError, match="signs"):
        fit_context_tables(frozen, training, buckets=4, signs="yes")


def _sign_following_symbols(seed: int, channels: int = 6, size: int = 48) -> np.ndarray:
    """Symbols whose signs follow a smooth field in channel 0 and, from channel 1 on, mostly go against the
    channel before's at the same place, or with the channel two before's over the window."""
    rng = np.random.default_rng(seed)
    symbols = _sign_field_symbols(seed, channels, size)
    for c in range(1, channels):
        sign = -np.sign(symbols[c - 1]) if c % 2 else np.sign(window_sum(symbols[c - 2], 3))
        keep = (sign == 0) | (rng.random(sign.shape) < 0.1)
        symbols[c] = np.where(keep, symbols[c], sign * np.abs(symbols[c]))
    return symbols


@pytest.mark.parametrize("spatial_buckets", [0, 4])
def test_the_learned_sign_prediction_finds_what_the_earlier_channels_say(tmp_path, spatial_buckets):
    frozen = _wide_tables()
    training = [_sign_following_symbols(seed) for seed in range(6)]
    fit = functools.partial(fit_context_tables, frozen, training, buckets=4, spatial_buckets=spatial_buckets)
    plain, learned = fit(), fit(signs="learned")
    mixing = learned.context.sign_mixing
    assert np.all(np.triu(mixing[0]) == 0) and np.all(np.triu(mixing[1]) == 0)
    for c in range(1, 6):  # the strongest weight is where the signs come from
        if c % 2:
            assert mixing[0, c, c - 1] == -4096
        else:
            assert np.argmax(np.abs(mixing[1, c])) == c - 2 and mixing[1, c, c - 2] > 0
    assert (learned.context.sign_pass2 is not None) == bool(spatial_buckets)
    fresh = _sign_following_symbols(99)
    assert context_bits(learned, fresh) < 0.94 * context_bits(plain, fresh)
    if spatial_buckets:
        neighbours = fit(signs="neighbours")
        assert context_bits(learned, fresh) < 0.95 * context_bits(neighbours, fresh)
        assert np.abs(learned.context.sign_pass2).max() <= 1 << 20
    _saved_and_loaded(tmp_path, [learned], 6, fresh)


def _signed_field_symbols(seed: int, channels: int = 6, size: int = 64) -> np.ndarray:
    """``_own_field_symbols`` with the signs of ``_sign_field_symbols``: a symbol's neighbours in its own channel,
    diagonal ones too, tell its scale and its sign."""
    rng = np.random.default_rng(seed + 1000)
    signs = np.kron(rng.choice([-1, 1], size=(channels, size // 8, size // 8)), np.ones((1, 8, 8)))
    return (signs * np.abs(_own_field_symbols(seed, channels, size))).astype(np.int64)


def test_the_diagonal_pass_codes_fresh_symbols_in_fewer_bits_and_round_trips(tmp_path):
    frozen = _wide_tables()
    training = [_signed_field_symbols(seed) for seed in range(8)]
    fit = functools.partial(fit_context_tables, frozen, training, buckets=4, spatial_buckets=4, signs="learned")
    two_passes, diagonal = fit(), fit(diagonal_buckets=4)
    fresh = _signed_field_symbols(99)
    assert context_bits(diagonal, fresh) < 0.97 * context_bits(two_passes, fresh)
    assert diagonal.context_cdf.shape == (6, 4 * (1 + 4 + 4), frozen.cdf.shape[1])
    assert diagonal.context.diagonal_edges.shape == (6, 3) and diagonal.context.sign_diagonal.shape == (6, 2)
    assert np.all(diagonal.context.sign_diagonal[:, 1] > 0)  # the diagonal neighbours' signs are the symbol's
    np.testing.assert_array_equal(diagonal.context.edges, two_passes.context.edges)
    np.testing.assert_array_equal(diagonal.context.sign_mixing, two_passes.context.sign_mixing)
    loaded = _saved_and_loaded(tmp_path, [two_passes, diagonal], 7, fresh)
    assert loaded[0].context.diagonal_edges is None and loaded[1].context.diagonal_buckets == 4
    residuals = fresh + np.random.default_rng(2).uniform(-0.5, 0.5, size=fresh.shape)
    np.testing.assert_array_equal(runtime_coder(diagonal).rdo_symbols(residuals, 0.1),
                                  TableCoder(loaded[1]).rdo_symbols(residuals, 0.1))
    with pytest.raises(ValueError, match="diagonal_buckets"):
        fit_context_tables(frozen, training, buckets=4, diagonal_buckets=4)  # needs the checkerboard
    with pytest.raises(ValueError, match="diagonal_buckets"):
        fit(diagonal_buckets=1)


def test_context_fitting_rejects_bad_arguments():
    frozen = _wide_tables()
    with pytest.raises(ValueError, match="buckets"):
        fit_context_tables(frozen, [_busy_symbols(0)], buckets=1)
    with pytest.raises(ValueError, match="spatial_buckets"):
        fit_context_tables(frozen, [_busy_symbols(0)], spatial_buckets=1)
    with pytest.raises(ValueError, match="pseudo_counts"):
        fit_context_tables(frozen, [_busy_symbols(0)], pseudo_counts=0)
    with pytest.raises(ValueError, match="shape"):
        fit_context_tables(frozen, [_busy_symbols(0, channels=5)])
