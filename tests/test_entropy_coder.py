"""Range coding with the frozen tables: exact symbol round trips (escapes included), near-ideal size,
and a payload that holds more than its symbols is rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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
