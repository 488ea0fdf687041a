"""Range coding of latent symbols with the frozen integer CDF tables and ``constriction``.

Per level, channel by channel (channel order, then raster order inside a channel), each symbol is coded
with its channel's table; a symbol outside the table is coded as the escape index (the table's last) and
its value follows right after its channel's symbols: per escaped symbol a bit length ``k`` (uniform over
0..31), then ``ceil(k / 16)`` 16-bit chunks, low chunk first. With a channel context (tables format 2,
``service.channel_context``) each channel has B tables: its symbols are coded bucket by bucket (bucket 0
first, raster order inside a bucket), each with its bucket's table, then its escapes in raster order. With
the checkerboard (tables format 3, levels with spatial thresholds) a channel is coded in two such passes: its
anchors ((i + j) even) table by table and their escapes, then the other positions, whose tables also depend
on their four anchor neighbours, table by table and their escapes. Tables format 4 codes the same way; only
the activity that picks a symbol's bucket is the learned rule's at levels that store its weights. Format 5 also
codes a second-pass symbol negated where its anchor neighbours' signed sum is negative, at levels that say so;
format 6 codes any symbol negated where the sign prediction of its level (earlier channels, and at the second
pass also the anchor neighbours) is negative. Format 7 adds, at levels that have it, a diagonal pass: the anchors
are then only the (even, even) positions, and the (odd, odd) ones follow in a pass of their own, with tables and
a sign prediction that also depend on their four diagonal neighbours, before the (i + j) odd positions.
Only the stored integer tables are used, so a stream decodes the same on every machine. Decoding checks that
every word of the payload was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np

from .channel_context import EXACT_LIMIT, ChannelContext
from .errors import CorruptStream, ModelLoadError, TrailingData

__all__ = ["LevelTables", "TableCoder", "load_tables", "MAX_ABS_SYMBOL", "DEFAULT_RDOQ_LAMBDA"]

MAX_ABS_SYMBOL = 1 << 24
_LENGTH_BITS = 32
_CHUNK_BITS = 16
_VECTOR_BUCKETS = 1 << 18
# passes of a channel with at most this many symbols are coded in one constriction call with per-symbol
# probabilities instead of one call per table (the same bytes; fewer calls on small planes)
_PER_SYMBOL_MAX = 512
# rate-distortion optimised rounding: squared latent error one bit is worth (0: plain rounding); chosen on val
DEFAULT_RDOQ_LAMBDA = 0.1


@dataclass(frozen=True)
class LevelTables:
    """One level's frozen tables (see ``docs/artifacts.md``)."""

    cdf: np.ndarray  # int32 (C, max length + 1)
    lengths: np.ndarray  # int32 (C,): table length, escape included
    offsets: np.ndarray  # int32 (C,): symbol of index 0
    medians: np.ndarray  # float32 (C,)
    precision: int
    context: ChannelContext | None = None
    context_cdf: np.ndarray | None = None  # int64 (C, T, max length + 1): the T = context.tables of each channel

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
            version = int(archive["format_version"][0])
            if version not in (1, 2, 3, 4, 5, 6, 7):
                raise ModelLoadError(f"{path}: unknown table format {version}")
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
                    **(_context_arrays(archive, i, version) if version >= 2 else {}),
                )
                for i in range(1, levels + 1)
            ]
        except KeyError as error:
            raise ModelLoadError(f"{path}: missing array {error}") from error
    for level, (table, expected) in enumerate(zip(tables, channels), start=1):
        _check_table(table, expected, level)
    return tables


def _context_arrays(archive, level: int, version: int) -> dict:
    """A level's channel context: the counting rule's weights, or (format ≥ 4, where the level has them) the
    learned rule's mixing weights; the sign prediction (format 6, where the level has it), or format 5's sign flip
    of the second pass, which is the prediction (a, b) = (0, 1) without earlier channels; the diagonal pass and its
    sign weights (format 7, where the level has them)."""
    spatial, mixing, flip = f"level{level}_spatial_edges", f"level{level}_context_mix", f"level{level}_sign_flip"
    sign_mixing, sign_pass2 = f"level{level}_sign_mix", f"level{level}_sign_pass2"
    diagonal, sign_diagonal = f"level{level}_diagonal_edges", f"level{level}_sign_diagonal"
    learned = version >= 4 and mixing in archive.files
    edges = archive[f"level{level}_context_edges"].astype(np.int64)
    signs: dict[str, np.ndarray] = {}
    if version >= 6:
        names = [("sign_mixing", sign_mixing), ("sign_pass2", sign_pass2)]
        names += [("sign_diagonal", sign_diagonal)] if version >= 7 else []
        signs = {name: archive[key].astype(np.int64) for name, key in names if key in archive.files}
    elif version == 5 and flip in archive.files and bool(archive[flip].reshape(-1)[0]):
        signs = {"sign_pass2": np.tile(np.array([[0, 1]], dtype=np.int64), (edges.shape[0], 1))}
    context = ChannelContext(
        weights=None if learned else archive[f"level{level}_context_weights"].astype(np.int64),
        edges=edges,
        clip=int(archive["context_clip"][0]),
        window=int(archive["context_window"][0]),
        spatial_edges=archive[spatial].astype(np.int64) if spatial in archive.files else None,
        mixing=archive[mixing].astype(np.int64) if learned else None,
        diagonal_edges=archive[diagonal].astype(np.int64) if version >= 7 and diagonal in archive.files else None,
        **signs,
    )
    return {"context": context, "context_cdf": archive[f"level{level}_context_cdf"].astype(np.int64)}


def _bad_rows(rows: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """Indices of the CDF rows (N, W) that do not rise strictly from 0 to ``total`` over their first length + 1
    entries (lengths already checked to fit)."""
    positions = np.arange(rows.shape[1])[None, :]
    steps = np.diff(np.where(positions <= lengths[:, None], rows, total + positions), axis=1)
    ends = rows[np.arange(rows.shape[0]), lengths]
    return np.flatnonzero((rows[:, 0] != 0) | (ends != total) | np.any(steps <= 0, axis=1))


def _check_table(table: LevelTables, channels: int, level: int) -> None:
    total = 1 << table.precision
    if table.channels != channels or table.cdf.shape[0] != channels:
        raise ModelLoadError(f"level {level}: tables for {table.channels} channels, the model has {channels}")
    for c in range(channels):
        n = int(table.lengths[c])
        if n < 2 or n + 1 > table.cdf.shape[1]:
            raise ModelLoadError(f"level {level} channel {c}: bad table length {n}")
    bad = _bad_rows(table.cdf, table.lengths, total)
    if bad.size:
        raise ModelLoadError(f"level {level} channel {bad[0]}: the CDF is not strictly increasing from 0 to {total}")
    if table.context is not None:
        _check_context(table, level)


def _check_context(table: LevelTables, level: int) -> None:
    context, cdf, total = table.context, table.context_cdf, 1 << table.precision
    buckets, channels = context.buckets, table.channels
    rule = context.mixing if context.learned else context.weights
    if (not 2 <= buckets <= 256 or rule.shape != ((2, channels, channels) if context.learned else (channels,))
            or context.edges.shape[0] != channels or context.edges.ndim != 2):
        raise ModelLoadError(f"level {level}: context weights {rule.shape} and edges {context.edges.shape} "
                             f"do not fit {channels} channels")
    spatial = context.spatial_edges
    if spatial is not None and (spatial.ndim != 2 or spatial.shape[0] != table.channels
                                or not 2 <= spatial.shape[1] + 1 <= 256 or np.any(np.diff(spatial, axis=1) < 0)):
        raise ModelLoadError(f"level {level}: spatial thresholds of shape {spatial.shape} for {table.channels} "
                             "channels, or not sorted")
    diagonal = context.diagonal_edges
    if diagonal is not None and (spatial is None or diagonal.ndim != 2 or diagonal.shape[0] != channels
                                 or not 2 <= diagonal.shape[1] + 1 <= 256 or np.any(np.diff(diagonal, axis=1) < 0)):
        raise ModelLoadError(f"level {level}: diagonal thresholds of shape {diagonal.shape} for {channels} "
                             "channels, not sorted, or without the checkerboard")
    if context.sign_diagonal is not None and (diagonal is None or context.sign_diagonal.shape != (channels, 2)):
        raise ModelLoadError(f"level {level}: the diagonal pass's sign weights need the diagonal pass and "
                             f"({channels}, 2) entries, got {context.sign_diagonal.shape}")
    if cdf is None or cdf.shape[:2] != (table.channels, context.tables) or cdf.shape[2] < int(table.lengths.max()) + 1:
        raise ModelLoadError(f"level {level}: context tables of shape {None if cdf is None else cdf.shape}, "
                             f"expected {context.tables} per channel")
    if np.any(np.diff(context.edges, axis=1) < 0):
        raise ModelLoadError(f"level {level}: context thresholds not sorted")
    if context.sign_pass2 is not None and (spatial is None or context.sign_pass2.shape != (channels, 2)):
        raise ModelLoadError(f"level {level}: the second pass's sign weights need the checkerboard and "
                             f"({channels}, 2) entries, got {context.sign_pass2.shape}")
    if context.sign_mixing is not None:
        if context.sign_mixing.shape != (2, channels, channels):
            raise ModelLoadError(f"level {level}: sign weights {context.sign_mixing.shape} do not fit {channels} "
                                 "channels")
        if np.any(np.triu(context.sign_mixing[0])) or np.any(np.triu(context.sign_mixing[1])):
            raise ModelLoadError(f"level {level}: a channel's sign prediction weighs itself or a later channel")
    if context.sign_flip and context.sign_bound() >= EXACT_LIMIT:
        raise ModelLoadError(f"level {level}: sign weights too large to sum exactly")
    if not 1 <= context.clip <= 1 << 16 or context.window not in (1, 3, 5, 7):
        raise ModelLoadError(f"level {level}: context clip {context.clip} or window {context.window} out of range")
    if context.learned:
        if np.any(np.triu(context.mixing[0])) or np.any(np.triu(context.mixing[1])):
            raise ModelLoadError(f"level {level}: a channel's learned context weighs itself or a later channel")
        if context.activity_bound() >= EXACT_LIMIT:
            raise ModelLoadError(f"level {level}: learned context weights too large to sum exactly")
    elif np.any(context.weights < 0) or np.any(context.weights > 1 << 24):
        raise ModelLoadError(f"level {level}: context weights out of range")
    for t in range(context.tables):
        if _bad_rows(cdf[:, t, :], table.lengths, total).size:
            raise ModelLoadError(f"level {level} table {t}: a context CDF is not strictly increasing from 0 to {total}")


def _escape_value(index: np.ndarray, escape: int) -> np.ndarray:
    """The non-negative integer an escaped table index stands for: −2v − 1 below the table, 2(v − escape) above."""
    return np.where(index < 0, -2 * index - 1, 2 * (index - escape))


def _escape_bits(index: np.ndarray, escaped: np.ndarray, escape: np.ndarray | int) -> np.ndarray | float:
    """Bits of the escaped symbols' payloads (a bit length, then 16-bit chunks); 0 where not escaped."""
    if not escaped.any():
        return 0.0
    raw = np.where(escaped, _escape_value(index, escape), 0)
    chunks = np.ceil(np.log2(raw.astype(np.float64) + 1.0) / _CHUNK_BITS)
    return np.where(escaped, np.log2(_LENGTH_BITS) + _CHUNK_BITS * chunks, 0.0)


class TableCoder:
    """Encodes and decodes one level's symbols (C, H, W) with that level's tables."""

    def __init__(self, tables: LevelTables):
        self.tables = tables
        total = float(1 << tables.precision)
        self._models = []
        self._probabilities = []  # per channel (tables, length) float64: what the models were built from
        # the same models with the probabilities given per symbol: the same quantisation, so the same bytes
        self._per_symbol = constriction.stream.model.Categorical(perfect=False)
        for c in range(tables.channels):
            n = int(tables.lengths[c])
            if tables.context is None:
                rows = [tables.cdf[c, : n + 1]]
            else:
                rows = [tables.context_cdf[c, t, : n + 1] for t in range(tables.context.tables)]
            probabilities = np.stack([np.diff(row).astype(np.float64) / total for row in rows])
            self._probabilities.append(probabilities)
            self._models.append([constriction.stream.model.Categorical(p, perfect=False) for p in probabilities])
        self._length_model = constriction.stream.model.Uniform(_LENGTH_BITS)
        self._chunk_model = constriction.stream.model.Uniform(1 << _CHUNK_BITS)
        self._bits: list[np.ndarray] | None = None
        self._padded_bits: np.ndarray | None = None

    def _passes(self, height: int, width: int) -> list[tuple[int | None, np.ndarray | None]]:
        """A channel's coding passes, each as (its kind, its flat positions): all at once (``None``, ``None``), or
        the checkerboard's (``ChannelContext.pass_positions``): the anchors, the diagonal pass where the level has
        one, then the neighbour pass."""
        if self.tables.context is None:
            return [(None, None)]
        return self.tables.context.pass_positions(height, width)

    def _table_index(self, channel: int, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table index of each symbol of ``channel`` (outside 0 … length − 2 when escaped) and the escaped mask."""
        n = int(self.tables.lengths[channel])
        index = symbols.astype(np.int64) - int(self.tables.offsets[channel])
        return index, (index < 0) | (index >= n - 1)

    def _symbol_bits(self, channel: int, table_ids: np.ndarray | int, symbols: np.ndarray) -> np.ndarray:
        """Bits that coding ``symbols`` of ``channel`` with tables ``table_ids`` costs (escapes with their
        payload)."""
        if self._bits is None:
            total = float(1 << self.tables.precision)
            cdf = self.tables.cdf[:, None, :] if self.tables.context is None else self.tables.context_cdf
            self._bits = [-np.log2(np.diff(cdf[c, :, : int(n) + 1], axis=1) / total) for c, n in enumerate(self.tables.lengths)]
        escape = int(self.tables.lengths[channel]) - 1
        index, escaped = self._table_index(channel, symbols)
        return self._bits[channel][table_ids, np.where(escaped, escape, index)] + _escape_bits(index, escaped, escape)

    def bit_costs(self, table_ids: np.ndarray, symbols: np.ndarray, flips: np.ndarray | None = None) -> np.ndarray:
        """Bits (C, H, W) of every symbol of ``symbols`` (C, H, W) under the table ``table_ids`` (C, H, W) gives
        it (escapes with their payload), coded negated where ``flips`` (``ChannelContext.flips_of``) is −1:
        :meth:`_symbol_bits` for a whole level at once."""
        if flips is not None:
            symbols = symbols * flips
        if self._padded_bits is None:
            self._symbol_bits(0, 0, np.zeros(1, dtype=np.int64))
            longest = max(bits.shape[1] for bits in self._bits)
            padded = np.zeros((self.tables.channels, self._bits[0].shape[0], longest))
            for c, bits in enumerate(self._bits):
                padded[c, :, : bits.shape[1]] = bits
            self._padded_bits = padded
        escape = self.tables.lengths.astype(np.int64)[:, None, None] - 1
        index = symbols.astype(np.int64) - self.tables.offsets.astype(np.int64)[:, None, None]
        escaped = (index < 0) | (index >= escape)
        channels = np.arange(self.tables.channels)[:, None, None]
        return self._padded_bits[channels, table_ids, np.where(escaped, escape, index)] + _escape_bits(
            index, escaped, escape)

    def rdo_symbols(self, residuals: np.ndarray, rdoq_lambda: float = DEFAULT_RDOQ_LAMBDA) -> np.ndarray:
        """Symbols (C, H, W) int32 for the residuals r = y − median: round(r), or the integer one step closer to 0
        where the bits that saves, times ``rdoq_lambda``, exceed the squared error it adds, (r − q′)² − (r − q)²
        (rate-distortion optimised rounding, decided channel after channel, and pass after pass of the
        checkerboard, with the tables the decoder will use). ``rdoq_lambda`` 0 gives plain rounding."""
        residuals = np.asarray(residuals, dtype=np.float64)
        rounded = np.rint(residuals).astype(np.int64)
        if rdoq_lambda <= 0:
            return rounded.astype(np.int32)
        context = self.tables.context
        height, width = residuals.shape[1:]
        state = context.start(height, width) if context is not None else None
        out = rounded.copy()
        passes = self._passes(height, width)
        for c in range(self.tables.channels):
            if not rounded[c].any():
                continue  # nothing to move, and zeros add nothing to the context of later channels
            buckets = state.buckets(c) if state is not None else None
            prediction = state.sign_prediction(c) if state is not None else None
            flat_residuals, flat_out = residuals[c].reshape(-1), out[c].reshape(-1)
            for kind, positions in passes:
                chosen = slice(None) if positions is None else positions
                symbols, r = flat_out[chosen], flat_residuals[chosen]
                closer = symbols - np.sign(symbols)
                added_error = (r - closer) ** 2 - (r - symbols) ** 2
                candidates = np.stack([symbols, closer])
                table_ids = 0
                if context is not None:  # the later passes' tables and flips also need the earlier passes' symbols
                    table_ids = context.pass_table_ids(c, buckets, out[c], kind, positions)
                    flips = context.pass_flips(c, prediction, out[c], kind, positions)
                    if flips is not None:
                        candidates = candidates * flips
                rounded_bits, closer_bits = self._symbol_bits(c, table_ids, candidates)
                move = (symbols != 0) & (added_error < rdoq_lambda * (rounded_bits - closer_bits))
                flat_out[chosen] = np.where(move, closer, symbols)
            if state is not None:
                state.add(c, out[c])
        return out.astype(np.int32)

    def _grouped(self, table_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]] | None]:
        """Order of positions by table (raster order inside a table), their tables in that order, and (table,
        start, end) of every table that codes some of them; ``None`` instead of the groups for a pass of at most
        ``_PER_SYMBOL_MAX`` symbols, which is coded in one call with per-symbol probabilities."""
        tables = len(self._models[0])
        if tables <= 1 << 16:  # numpy's stable sort of 8- and 16-bit integers is a radix sort
            table_ids = table_ids.astype(np.uint8 if tables <= 256 else np.uint16)
        order = np.argsort(table_ids, kind="stable")
        if table_ids.size <= _PER_SYMBOL_MAX:
            return order, table_ids[order], None
        sizes = np.bincount(table_ids, minlength=len(self._models[0]))
        ends = np.cumsum(sizes)
        used = np.flatnonzero(sizes)
        return order, table_ids[order], list(zip(used.tolist(), (ends[used] - sizes[used]).tolist(), ends[used].tolist()))

    def encode(self, symbols: np.ndarray) -> bytes:
        """Range-code integer symbols (C, H, W) (values are ``round(y − median)``)."""
        symbols = np.asarray(symbols)
        if symbols.ndim != 3 or symbols.shape[0] != self.tables.channels:
            raise ValueError(f"symbols must be ({self.tables.channels}, H, W), got {symbols.shape}")
        if np.abs(symbols).max(initial=0) > MAX_ABS_SYMBOL:
            raise ValueError(f"symbol magnitude above {MAX_ABS_SYMBOL}")
        context = self.tables.context
        height, width = symbols.shape[1:]
        state = context.start(height, width, signs=False) if context is not None else None
        # small levels: every table id at once (less per-channel overhead); large ones channel by channel (cache)
        all_ids = context.table_ids_of(symbols) if context is not None and symbols.size <= _VECTOR_BUCKETS else None
        flips = context.flips_of(symbols) if context is not None else None
        coded_symbols = symbols if flips is None else symbols * flips
        passes = self._passes(height, width)
        encoder = constriction.stream.queue.RangeEncoder()
        for c in range(self.tables.channels):
            n = int(self.tables.lengths[c])
            if state is None:
                table_ids = None
            elif all_ids is not None:
                table_ids = all_ids[c].reshape(-1)
            else:
                table_ids = context.table_ids(c, state.buckets(c), symbols[c]).reshape(-1)
                state.add(c, symbols[c])
            for _, positions in passes:
                values = coded_symbols[c].reshape(-1)
                if positions is not None:
                    values = values[positions]
                index, escaped = self._table_index(c, values)
                coded = np.where(escaped, n - 1, index).astype(np.int32)
                if table_ids is None:
                    encoder.encode(coded, self._models[c][0])
                else:
                    order, tables, groups = self._grouped(table_ids if positions is None else table_ids[positions])
                    coded = coded[order]
                    if groups is None:
                        encoder.encode(coded, self._per_symbol, self._probabilities[c][tables])
                    else:
                        for table, start, end in groups:
                            encoder.encode(coded[start:end], self._models[c][table])
                if escaped.any():
                    self._encode_escapes(encoder, index[escaped], n - 1)
        return encoder.get_compressed().astype("<u4").tobytes()

    def _encode_escapes(self, encoder, values: np.ndarray, escape: int) -> None:
        raw = _escape_value(values, escape)
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
        context = self.tables.context
        state = context.start(height, width) if context is not None else None
        passes = self._passes(height, width)
        out = np.zeros((self.tables.channels, count), dtype=np.int64)
        try:
            for c in range(self.tables.channels):
                n = int(self.tables.lengths[c])
                buckets = state.buckets(c) if state is not None else None
                prediction = None  # computed once a pass of the channel has a symbol that is not 0
                for kind, positions in passes:
                    size_of_pass = count if positions is None else positions.size
                    if state is None:
                        index = decoder.decode(self._models[c][0], size_of_pass).astype(np.int64)
                    else:  # the later passes' tables need the earlier passes' symbols, just decoded
                        table_ids = context.pass_table_ids(c, buckets, out[c].reshape(height, width), kind, positions)
                        order, tables, groups = self._grouped(table_ids)
                        if groups is None:
                            in_order = decoder.decode(self._per_symbol, self._probabilities[c][tables]).astype(np.int64)
                        else:
                            in_order = np.empty(size_of_pass, dtype=np.int64)
                            for table, start, end in groups:
                                in_order[start:end] = decoder.decode(self._models[c][table], end - start)
                        index = np.empty(size_of_pass, dtype=np.int64)
                        index[order] = in_order
                    escaped = index == n - 1
                    if escaped.any():
                        index[escaped] = self._decode_escapes(decoder, int(escaped.sum()), n - 1)
                    values = index + int(self.tables.offsets[c])
                    if np.abs(values).max(initial=0) > MAX_ABS_SYMBOL:
                        raise CorruptStream("decoded symbol out of range")
                    flips = None
                    if context is not None and context.sign_flip and values.any():  # a negated 0 is 0
                        prediction = state.sign_prediction(c) if prediction is None else prediction
                        flips = context.pass_flips(c, prediction, out[c].reshape(height, width), kind, positions)
                    if flips is not None:
                        values = values * flips
                    if positions is None:
                        out[c] = values
                    else:
                        out[c, positions] = values
                if state is not None:
                    state.add(c, out[c].reshape(height, width))
        except (ValueError, KeyError, RuntimeError, AssertionError) as error:
            raise CorruptStream(f"range decoding failed: {error}") from error
        if not decoder.maybe_exhausted():
            raise TrailingData("the payload holds more data than its symbols")
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
