"""The freeze step: integer CDF tables that are valid, carry an escape, and cost what the density says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_export.entropy import EntropyBottleneck
from model_export.freeze import count_bits, fit_tables, freeze_bottleneck, ideal_bits, quantize_pmf, symbol_counts
from service.entropy_coder import LevelTables, TableCoder


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
