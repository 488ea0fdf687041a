"""Bjontegaard delta metrics between rate-distortion curves (numpy only).

Rates are in bpp and quality is PSNR in dB. Following VCEG-M33 with a least-squares cubic fit:

- BD-rate: ln(rate) fitted as a cubic of PSNR for each curve, both fits averaged over the PSNR interval where the
  curves overlap; BD-rate = (exp(mean_test - mean_anchor) - 1) * 100 %. Negative: the test codec saves bits.
- BD-PSNR: PSNR fitted as a cubic of ln(rate), averaged over the overlapping ln(rate) interval; the difference in
  dB. Positive: the test codec is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bd_rate", "bd_psnr", "psnr_at_bpp", "psnr_gap_on_grid"]

MIN_POINTS = 4


def _sorted_curve(bpps: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points with positive rate, sorted by rate; ValueError when fewer than 4 remain."""
    rates = np.asarray(bpps, dtype=np.float64)
    quality = np.asarray(psnrs, dtype=np.float64)
    if rates.shape != quality.shape or rates.ndim != 1:
        raise ValueError(f"bpps and psnrs must be 1-D and of equal length, got {rates.shape} and {quality.shape}")
    keep = np.isfinite(rates) & np.isfinite(quality) & (rates > 0)
    rates, quality = rates[keep], quality[keep]
    if rates.size < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} valid RD points for a cubic fit, got {rates.size}")
    order = np.argsort(rates)
    return rates[order], quality[order]


def _mean_of_cubic_fit(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Average over [low, high] of the least-squares cubic y(x)."""
    antiderivative = np.polyint(np.polyfit(x, y, 3))
    return float((np.polyval(antiderivative, high) - np.polyval(antiderivative, low)) / (high - low))


def bd_rate(anchor_bpps, anchor_psnrs, test_bpps, test_psnrs) -> float:
    """BD-rate in percent of the test curve against the anchor; ValueError if the PSNR ranges do not overlap."""
    anchor_rates, anchor_quality = _sorted_curve(anchor_bpps, anchor_psnrs)
    test_rates, test_quality = _sorted_curve(test_bpps, test_psnrs)
    low = max(anchor_quality.min(), test_quality.min())
    high = min(anchor_quality.max(), test_quality.max())
    if not high > low:
        raise ValueError("the PSNR ranges of the two curves do not overlap")
    mean_anchor = _mean_of_cubic_fit(anchor_quality, np.log(anchor_rates), low, high)
    mean_test = _mean_of_cubic_fit(test_quality, np.log(test_rates), low, high)
    return (math.exp(mean_test - mean_anchor) - 1.0) * 100.0


def bd_psnr(anchor_bpps, anchor_psnrs, test_bpps, test_psnrs) -> float:
    """BD-PSNR in dB of the test curve against the anchor; ValueError if the rate ranges do not overlap."""
    anchor_rates, anchor_quality = _sorted_curve(anchor_bpps, anchor_psnrs)
    test_rates, test_quality = _sorted_curve(test_bpps, test_psnrs)
    anchor_log, test_log = np.log(anchor_rates), np.log(test_rates)
    low = max(anchor_log.min(), test_log.min())
    high = min(anchor_log.max(), test_log.max())
    if not high > low:
        raise ValueError("the rate ranges of the two curves do not overlap")
    return _mean_of_cubic_fit(test_log, test_quality, low, high) - _mean_of_cubic_fit(
        anchor_log, anchor_quality, low, high
    )


def psnr_at_bpp(bpps, psnrs, target: float) -> float | None:
    """PSNR at ``target`` bpp, linear in ln(bpp) between measured neighbours; None outside the measured range."""
    rates = np.asarray(bpps, dtype=np.float64)
    quality = np.asarray(psnrs, dtype=np.float64)
    if rates.shape != quality.shape or rates.ndim != 1 or rates.size == 0:
        raise ValueError("bpps and psnrs must be non-empty 1-D sequences of equal length")
    if target <= 0 or np.any(rates <= 0):
        raise ValueError("rates must be positive")
    order = np.argsort(rates)
    rates, quality = rates[order], quality[order]
    # the range is checked on the rates themselves: math.log and numpy's log differ in the last bit for some
    # values, which put a curve's own end point outside its range
    if not rates[0] <= target <= rates[-1]:
        return None
    return float(np.interp(np.log(target), np.log(rates), quality))


def psnr_gap_on_grid(
    test_bpps, test_psnrs, anchor_bpps, anchor_psnrs, low_bpp: float, high_bpp: float, points: int = 200
) -> dict | None:
    """PSNR(test) - PSNR(anchor) on a log-spaced bpp grid over [low_bpp, high_bpp] ∩ both measured ranges.

    Both curves are interpolated linearly in ln(bpp). Returns None when there is no common range, otherwise the
    range checked, the smallest and largest gap and the fraction of grid points where the test curve is above.
    """
    low = max(low_bpp, min(test_bpps), min(anchor_bpps))
    high = min(high_bpp, max(test_bpps), max(anchor_bpps))
    if not high > low:
        return None
    grid = np.clip(np.exp(np.linspace(math.log(low), math.log(high), points)), low, high)
    gaps = np.array(
        [psnr_at_bpp(test_bpps, test_psnrs, rate) - psnr_at_bpp(anchor_bpps, anchor_psnrs, rate) for rate in grid]
    )
    return {
        "low_bpp": float(low),
        "high_bpp": float(high),
        "min_gap_db": float(gaps.min()),
        "max_gap_db": float(gaps.max()),
        "fraction_above": float(np.mean(gaps > 0)),
        "above_everywhere": bool(np.all(gaps > 0)),
    }
