"""The container format: round trips, extraction without a model, typed errors, and a fuzz test."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from service.bitstream import MAGIC, Container, LevelStream, extract_level, pack, plain_rounding_flags, unpack
from service.errors import (
    BadMagic,
    BitstreamError,
    ChecksumMismatch,
    CorruptStream,
    LevelNotInStream,
    SslicError,
    TrailingData,
    TruncatedStream,
    UnsupportedVersion,
)

MODEL_ID = "00112233445566778899aabbccddeeff"


def _container(alpha: bool = False, flags: int = 0) -> Container:
    levels = (
        LevelStream(1, 8, 2, 3, bytes(range(16))),
        LevelStream(3, 4, 8, 12, b"\xaa" * 40),
    )
    alpha_plane = zlib.compress(b"\x80" * 7000) if alpha else None
    return Container(MODEL_ID, 100, 70, "RGBA" if alpha else "RGB", levels, alpha_plane, flags)


@pytest.mark.parametrize("alpha", [False, True])
def test_pack_unpack_round_trip(alpha):
    container = _container(alpha)
    assert unpack(pack(container)) == container


def test_header_layout_is_as_documented():
    data = pack(_container())
    assert data[:4] == MAGIC and data[4] == 1 and data[5] == 0
    assert data[6:22] == bytes.fromhex(MODEL_ID)
    assert struct.unpack_from("<IIBB", data, 22) == (100, 70, 0, 2)
    assert struct.unpack_from("<BHHHI", data, 32) == (1, 8, 2, 3, 16)
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    assert len(data) == 32 + 2 * 11 + 16 + 40 + 4


def test_extract_keeps_one_level_and_the_alpha_plane():
    data = pack(_container(alpha=True))
    single = unpack(extract_level(data, 1))
    assert single.level_numbers == [1]
    assert single.levels[0] == _container().levels[0]
    assert single.alpha == _container(alpha=True).alpha
    assert unpack(extract_level(data)).level_numbers == [3]
    with pytest.raises(LevelNotInStream):
        extract_level(data, 2)


def test_plain_rounding_flags_mark_levels_and_survive_extraction():
    flags = plain_rounding_flags([3])
    assert flags == 0b100
    data = pack(_container(flags=flags))
    assert data[5] == 0b100
    parsed = unpack(data)
    assert parsed == _container(flags=flags)
    assert parsed.plainly_rounded(3) and not parsed.plainly_rounded(1)
    assert [entry["plainly_rounded"] for entry in parsed.header_dict()["levels"]] == [False, True]
    assert unpack(extract_level(data, 3)).flags == 0b100
    assert unpack(extract_level(data, 1)).flags == 0
    with pytest.raises(ValueError):
        plain_rounding_flags([9])
    with pytest.raises(ValueError):
        pack(_container(flags=plain_rounding_flags([2])))  # level 2 is not in the container


@pytest.mark.parametrize("flags", [0b10, 0b1000_0000])
def test_flags_marking_a_level_not_in_the_container_are_corrupt(flags):
    body = bytearray(pack(_container())[:-4])
    body[5] = flags
    with pytest.raises(CorruptStream):
        unpack(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))


def test_typed_errors_for_each_defect():
    data = pack(_container())
    with pytest.raises(BadMagic):
        unpack(b"\x89PNG" + data[4:])
    with pytest.raises(UnsupportedVersion):
        unpack(data[:4] + b"\x07" + data[5:])
    with pytest.raises(TruncatedStream):
        unpack(data[:-1])
    with pytest.raises(TruncatedStream):
        unpack(data[:10])
    with pytest.raises(TrailingData):
        unpack(data + b"\x00")
    corrupted = bytearray(data)
    corrupted[60] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        unpack(bytes(corrupted))
    with pytest.raises(TruncatedStream):
        unpack(b"")


def test_header_fields_are_validated_even_with_a_correct_crc():
    body = bytearray(pack(_container())[:-4])
    body[30] = 9  # unknown mode
    with pytest.raises(CorruptStream):
        unpack(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random defect: bit flips, byte changes, truncation, insertion, deletion or duplication."""
    buffer = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(buffer))
            buffer[position] ^= 1 << rng.randrange(8)
    elif kind == 1:
        buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    elif kind == 2:
        del buffer[rng.randrange(len(buffer)) :]
    elif kind == 3:
        position = rng.randrange(len(buffer) + 1)
        buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == 4:
        start = rng.randrange(len(buffer))
        del buffer[start : start + rng.randint(1, 8)]
    else:
        start = rng.randrange(len(buffer))
        buffer[start:start] = buffer[start : start + rng.randint(1, 16)]
    return bytes(buffer)


def test_fuzz_container_parser_only_raises_typed_errors():
    rng = random.Random(1234)
    original = pack(_container(alpha=True))
    outcomes = set()
    for _ in range(5000):
        mutated = mutate(original, rng)
        try:
            unpack(mutated)
            outcomes.add("ok" if mutated == original else "accepted-different")
        except BitstreamError as error:
            outcomes.add(type(error).__name__)
    assert "accepted-different" not in outcomes
    assert {"ChecksumMismatch", "TruncatedStream"} <= outcomes


def test_errors_are_sslic_errors_with_codes():
    with pytest.raises(SslicError) as info:
        unpack(b"nope")
    assert info.value.code == "bad_magic"
