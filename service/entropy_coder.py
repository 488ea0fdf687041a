"""Range coding of latent symbols with the frozen integer CDF tables and ``constriction``.

Per level, channel by channel (channel order, then raster order inside a channel), each symbol is coded
with its channel's table; a symbol outside the table is coded as the escape index (the table's last) and
its value follows right after its channel's symbols: per escaped symbol a bit length ``k`` (uniform over
0..31), then ``ceil(k / 16)`` 16-bit chunks, low chunk first. Only the stored integer tables are used, so a
stream decodes the same on every machine. Decoding checks that every word of the payload was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np

from .errors import CorruptStream, ModelLoadError, TrailingData

__all__ = ["LevelTables", "TableCoder", "load_tables", "MAX_ABS_SYMBOL"]

MAX_ABS_SYMBOL = 1 << 24
_LENGTH_BITS = 32
_CHUNK_BITS = 16


@dataclass(frozen=True)
class LevelTables:
    """One level's frozen tables (see ``docs/artifacts.md``)."""

    cdf: np.ndarray  # int32 (C, max length + 1)
    lengths: np.ndarray  # int32 (C,): table length, escape included
    offsets: np.ndarray  # int32 (C,): symbol of index 0
    medians: np.ndarray  # float32 (C,)
    precision: int

    @property
    def channels(self) -> int:
        return int(self.lengths.shape[0])


def load_tables(path: str | Path, levels: int, channels: list[int]) -> list[LevelTables]:
    """Read ``entropy_tables.npz`` (no pickle) and check every table is a valid, strictly increasing CDF."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read entropy tables {path}: {error}") from error
    with archive:
        try:
            if int(archive["format_version"][0]) != 1:
                raise ModelLoadError(f"{path}: unknown table format {int(archive['format_version'][0])}")
            precision = int(archive["precision"][0])
            if int(archive["levels"][0]) != levels:
                raise ModelLoadError(f"{path}: {int(archive['levels'][0])} levels, manifest says {levels}")
            tables = [
                LevelTables(
                    cdf=archive[f"level{i}_cdf"].astype(np.int64),
                    lengths=archive[f"level{i}_lengths"].astype(np.int64),
                    offsets=archive[f"level{i}_offsets"].astype(np.int64),
                    medians=archive[f"level{i}_medians"].astype(np.float32),
                    precision=precision,
                )
                for i in range(1, levels + 1)
            ]
        except KeyError as error:
            raise ModelLoadError(f"{path}: missing array {error}") from error
    for level, (table, expected) in enumerate(zip(tables, channels), start=1):
        _check_table(table, expected, level)
    return tables


def _check_table(table: LevelTables, channels: int, level: int) -> None:
    total = 1 << table.precision
    if table.channels != channels or table.cdf.shape[0] != channels:
        raise ModelLoadError(f"level {level}: tables for {table.channels} channels, the model has {channels}")
    for c in range(channels):
        n = int(table.lengths[c])
        if n < 2 or n + 1 > table.cdf.shape[1]:
            raise ModelLoadError(f"level {level} channel {c}: bad table length {n}")
        row = table.cdf[c, : n + 1]
        if row[0] != 0 or row[-1] != total or np.any(np.diff(row) <= 0):
            raise ModelLoadError(f"level {level} channel {c}: the CDF is not strictly increasing from 0 to {total}")


class TableCoder:
    """Encodes and decodes one level's symbols (C, H, W) with that level's tables."""

    def __init__(self, tables: LevelTables):
        self.tables = tables
        total = float(1 << tables.precision)
        self._models = []
        for c in range(tables.channels):
            n = int(tables.lengths[c])
            probabilities = np.diff(tables.cdf[c, : n + 1]).astype(np.float64) / total
            self._models.append(constriction.stream.model.Categorical(probabilities, perfect=False))
        self._length_model = constriction.stream.model.Uniform(_LENGTH_BITS)
        self._chunk_model = constriction.stream.model.Uniform(1 << _CHUNK_BITS)

    def encode(self, symbols: np.ndarray) -> bytes:
        """Range-code integer symbols (C, H, W) (values are ``round(y − median)``)."""
        symbols = np.asarray(symbols)
        if symbols.ndim != 3 or symbols.shape[0] != self.tables.channels:
            raise ValueError(f"symbols must be ({self.tables.channels}, H, W), got {symbols.shape}")
        if np.abs(symbols).max(initial=0) > MAX_ABS_SYMBOL:
            raise ValueError(f"symbol magnitude above {MAX_ABS_SYMBOL}")
        encoder = constriction.stream.queue.RangeEncoder()
        for c in range(self.tables.channels):
            n = int(self.tables.lengths[c])
            index = symbols[c].reshape(-1).astype(np.int64) - int(self.tables.offsets[c])
            escaped = (index < 0) | (index >= n - 1)
            encoder.encode(np.where(escaped, n - 1, index).astype(np.int32), self._models[c])
            if escaped.any():
                self._encode_escapes(encoder, index[escaped], n - 1)
        return encoder.get_compressed().astype("<u4").tobytes()

    def _encode_escapes(self, encoder, values: np.ndarray, escape: int) -> None:
        raw = np.where(values < 0, -2 * values - 1, 2 * (values - escape))
        bits = np.zeros(raw.shape, dtype=np.int64)
        remaining = raw.copy()
        while np.any(remaining):
            bits += remaining > 0
            remaining >>= 1
        encoder.encode(bits.astype(np.int32), self._length_model)
        chunks = []
        for value, k in zip(raw.tolist(), bits.tolist()):
            for shift in range(0, k, _CHUNK_BITS):
                chunks.append((value >> shift) & ((1 << _CHUNK_BITS) - 1))
        if chunks:
            encoder.encode(np.asarray(chunks, dtype=np.int32), self._chunk_model)

    def decode(self, payload: bytes, height: int, width: int) -> np.ndarray:
        """Decode (C, height, width) int32 symbols; every word of ``payload`` must be used."""
        if len(payload) % 4:
            raise CorruptStream("payload length is not a multiple of 4 bytes")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        decoder = constriction.stream.queue.RangeDecoder(words)
        count = height * width
        out = np.empty((self.tables.channels, count), dtype=np.int64)
        try:
            for c in range(self.tables.channels):
                n = int(self.tables.lengths[c])
                index = decoder.decode(self._models[c], count).astype(np.int64)
                escaped = index == n - 1
                if escaped.any():
                    index[escaped] = self._decode_escapes(decoder, int(escaped.sum()), n - 1)
                out[c] = index + int(self.tables.offsets[c])
        except (ValueError, KeyError, RuntimeError, AssertionError) as error:
            raise CorruptStream(f"range decoding failed: {error}") from error
        if not decoder.maybe_exhausted():
            raise TrailingData("the payload holds more data than its symbols")
        if np.abs(out).max(initial=0) > MAX_ABS_SYMBOL:
            raise CorruptStream("decoded symbol out of range")
        return out.reshape(self.tables.channels, height, width).astype(np.int32)

    def _decode_escapes(self, decoder, count: int, escape: int) -> np.ndarray:
        bits = decoder.decode(self._length_model, count).astype(np.int64)
        chunk_counts = (bits + _CHUNK_BITS - 1) // _CHUNK_BITS
        total_chunks = int(chunk_counts.sum())
        chunks = decoder.decode(self._chunk_model, total_chunks).astype(np.int64) if total_chunks else np.zeros(0, np.int64)
        raw = np.zeros(count, dtype=np.int64)
        position = 0
        for i, n_chunks in enumerate(chunk_counts.tolist()):
            value = 0
            for j in range(n_chunks):
                value |= int(chunks[position + j]) << (_CHUNK_BITS * j)
            position += n_chunks
            raw[i] = value
        return np.where(raw % 2 == 1, -(raw + 1) // 2, raw // 2 + escape)
