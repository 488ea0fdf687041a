"""The freeze step: integer CDF tables that are valid, carry an escape, and cost what the density says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_export.entropy import EntropyBottleneck
from model_export.freeze import freeze_bottleneck, ideal_bits, quantize_pmf


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
