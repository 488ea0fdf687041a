"""The sslic container (``docs/bitstream.md``): header, one entropy-coded payload per level, optional
lossless alpha plane, CRC-32. Parsing needs no model; it checks the structure, lengths and checksum, so
corrupted or truncated input ends in a typed :mod:`service.errors` exception."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import (
    BadMagic,
    ChecksumMismatch,
    CorruptStream,
    LevelNotInStream,
    TrailingData,
    TruncatedStream,
    UnsupportedVersion,
)

__all__ = ["MAGIC", "VERSION", "MODES", "PLAIN_MARKABLE_LEVELS", "LevelStream", "Container", "plain_rounding_flags",
           "pack", "unpack", "extract_level"]

MAGIC = b"SSLC"
VERSION = 1
MODES = ("RGB", "RGBA", "L", "LA")
MODEL_ID_BYTES = 16
MAX_SIDE = 1 << 20
PLAIN_MARKABLE_LEVELS = 8  # header flag bit i − 1 marks level i as plainly rounded, for levels 1 … 8

_HEADER = struct.Struct("<4sBB16sIIBB")  # magic, version, flags, model id, width, height, mode, level count
_LEVEL = struct.Struct("<BHHHI")  # level, channels, latent height, latent width, payload bytes
_ALPHA = struct.Struct("<I")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class LevelStream:
    """One level's range-coded latent: ``channels × height × width`` symbols in ``payload``."""

    level: int
    channels: int
    height: int
    width: int
    payload: bytes


@dataclass(frozen=True)
class Container:
    model_id: str  # 32 hex digits
    width: int
    height: int
    mode: str  # one of MODES: the mode the decoded image is given
    levels: tuple[LevelStream, ...]
    alpha: bytes | None = None  # zlib-compressed alpha plane (height × width bytes) for RGBA / LA
    flags: int = field(default=0)  # bit i − 1: level i's symbols were plainly rounded (plain_rounding_flags)

    @property
    def level_numbers(self) -> list[int]:
        return [stream.level for stream in self.levels]

    def level(self, number: int | None = None) -> LevelStream:
        """The stream of level ``number`` (default: the finest present)."""
        if number is None:
            return self.levels[-1]
        for stream in self.levels:
            if stream.level == number:
                return stream
        raise LevelNotInStream(f"level {number} is not in this container (it holds {self.level_numbers})")

    def plainly_rounded(self, level: int) -> bool:
        """Whether the header marks ``level``'s symbols as plainly rounded: the decoder then reads them without
        the model's input offsets (docs/bitstream.md, flags)."""
        return 1 <= level <= PLAIN_MARKABLE_LEVELS and bool(self.flags >> (level - 1) & 1)

    def header_dict(self, total_bytes: int | None = None) -> dict:
        """The header as plain data (``sslic info``)."""
        info = {
            "format": "sslic",
            "version": VERSION,
            "model_id": self.model_id,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "alpha_bytes": len(self.alpha) if self.alpha is not None else 0,
            "levels": [
                {
                    "level": s.level,
                    "latent_shape": [s.channels, s.height, s.width],
                    "payload_bytes": len(s.payload),
                    "plainly_rounded": self.plainly_rounded(s.level),
                }
                for s in self.levels
            ],
        }
        if total_bytes is not None:
            info["bytes"] = total_bytes
            info["bpp_total"] = total_bytes * 8 / (self.width * self.height)
        return info


def _has_alpha(mode: str) -> bool:
    return mode in ("RGBA", "LA")


def plain_rounding_flags(levels: Iterable[int]) -> int:
    """The header flags marking ``levels`` as plainly rounded; raises ValueError for a level the byte cannot mark."""
    flags = 0
    for level in levels:
        if not 1 <= level <= PLAIN_MARKABLE_LEVELS:
            raise ValueError(f"the header flags mark levels 1..{PLAIN_MARKABLE_LEVELS}, not {level}")
        flags |= 1 << (level - 1)
    return flags


def _unmarked_levels(flags: int, numbers: list[int]) -> list[int]:
    """The levels ``flags`` marks that are not among ``numbers``."""
    return [bit + 1 for bit in range(PLAIN_MARKABLE_LEVELS) if flags >> bit & 1 and bit + 1 not in numbers]


def pack(container: Container) -> bytes:
    """Serialise ``container``; raises ValueError for values the format cannot hold."""
    if container.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if _has_alpha(container.mode) != (container.alpha is not None):
        raise ValueError("an alpha plane is stored exactly when the mode has alpha")
    if not container.levels or len(container.levels) > 255:
        raise ValueError("a container holds 1..255 levels")
    numbers = container.level_numbers
    if numbers != sorted(set(numbers)):
        raise ValueError("levels must be distinct and in increasing order")
    if not (1 <= container.width <= MAX_SIDE and 1 <= container.height <= MAX_SIDE):
        raise ValueError(f"width and height must be 1..{MAX_SIDE}")
    if not 0 <= container.flags <= 0xFF or _unmarked_levels(container.flags, numbers):
        raise ValueError(f"header flags {container.flags:#04x} mark levels the container does not hold")
    model_id = bytes.fromhex(container.model_id)
    if len(model_id) != MODEL_ID_BYTES:
        raise ValueError("model id must be 16 bytes (32 hex digits)")
    parts = [
        _HEADER.pack(
            MAGIC,
            VERSION,
            container.flags,
            model_id,
            container.width,
            container.height,
            MODES.index(container.mode),
            len(container.levels),
        )
    ]
    for stream in container.levels:
        parts.append(_LEVEL.pack(stream.level, stream.channels, stream.height, stream.width, len(stream.payload)))
    if container.alpha is not None:
        parts.append(_ALPHA.pack(len(container.alpha)))
    parts.extend(stream.payload for stream in container.levels)
    if container.alpha is not None:
        parts.append(container.alpha)
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> Container:
    """Parse and check a container: magic, version, structure, exact length, CRC-32."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise TruncatedStream(f"{len(data)} bytes: shorter than the magic")
        raise BadMagic("not an sslic container (magic bytes do not match)")
    if len(data) < len(MAGIC) + 1:
        raise TruncatedStream("the stream ends inside the header")
    if data[len(MAGIC)] != VERSION:
        raise UnsupportedVersion(f"container version {data[len(MAGIC)]}; this runtime reads version {VERSION}")
    if len(data) < _HEADER.size:
        raise TruncatedStream("the stream ends inside the header")
    _magic, _version, flags, model_id, width, height, mode_code, count = _HEADER.unpack_from(data, 0)
    if mode_code >= len(MODES):
        raise CorruptStream(f"unknown image mode code {mode_code}")
    mode = MODES[mode_code]
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise CorruptStream(f"image size {width}×{height} is outside 1..{MAX_SIDE}")
    if count == 0:
        raise CorruptStream("the container holds no level")
    offset = _HEADER.size
    table_end = offset + count * _LEVEL.size + (_ALPHA.size if _has_alpha(mode) else 0)
    if len(data) < table_end:
        raise TruncatedStream("the stream ends inside the level table")
    entries = []
    for _ in range(count):
        entries.append(_LEVEL.unpack_from(data, offset))
        offset += _LEVEL.size
    alpha_length = None
    if _has_alpha(mode):
        (alpha_length,) = _ALPHA.unpack_from(data, offset)
        offset += _ALPHA.size
    numbers = [entry[0] for entry in entries]
    if numbers != sorted(set(numbers)) or numbers[0] == 0:
        raise CorruptStream(f"level numbers {numbers} are not distinct, positive and increasing")
    unmarked = _unmarked_levels(flags, numbers)
    if unmarked:
        raise CorruptStream(f"the header flags {flags:#04x} mark levels {unmarked}, which the container does not hold")
    expected = offset + sum(entry[4] for entry in entries) + (alpha_length or 0) + _CRC.size
    if len(data) < expected:
        raise TruncatedStream(f"the container is {len(data)} bytes; its header announces {expected}")
    if len(data) > expected:
        raise TrailingData(f"{len(data) - expected} bytes after the end of the container")
    (stored_crc,) = _CRC.unpack_from(data, expected - _CRC.size)
    if zlib.crc32(data[: expected - _CRC.size]) != stored_crc:
        raise ChecksumMismatch("CRC-32 mismatch: the container is corrupted")
    streams = []
    for level, channels, latent_h, latent_w, length in entries:
        if channels == 0 or latent_h == 0 or latent_w == 0:
            raise CorruptStream(f"level {level} has an empty latent shape")
        if length % 4:
            raise CorruptStream(f"level {level}'s payload is not a whole number of 32-bit words")
        streams.append(LevelStream(level, channels, latent_h, latent_w, data[offset : offset + length]))
        offset += length
    alpha = None
    if alpha_length is not None:
        alpha = data[offset : offset + alpha_length]
    return Container(model_id.hex(), width, height, mode, tuple(streams), alpha, flags)


def extract_level(data: bytes, level: int | None = None) -> bytes:
    """A single-level container holding ``level`` (default: the finest) of ``data``; no model run."""
    container = unpack(data)
    stream = container.level(level)
    flags = plain_rounding_flags([stream.level]) if container.plainly_rounded(stream.level) else 0
    return pack(Container(container.model_id, container.width, container.height, container.mode, (stream,),
                          container.alpha, flags))
