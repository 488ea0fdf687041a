"""The torch-free codec on the shipped model: real images, exact symbol round trips, image modes and
sizes, typed errors, and a fuzz test through the whole decoder."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bitstream import pack, unpack
from service.codec import Codec, pad_image, parse_levels
from service.errors import (
    ImageTooLarge,
    InvalidParameter,
    LevelNotInStream,
    SslicError,
    UndecodableImage,
    UnknownModel,
    UnsupportedImageType,
)
from tests.test_bitstream import mutate

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"
VAL = REPO.parent / "shared" / "data" / "val"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.from_dir(REPO / "models" / "default", threads=1)


def _png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _photo(size=(96, 80)) -> Image.Image:
    path = sorted(VAL.glob("*.png"))[0]
    with Image.open(path) as image:
        return image.convert("RGB").crop((200, 200, 200 + size[0], 200 + size[1]))


def test_parse_levels():
    assert parse_levels("all", 4) == [1, 2, 3, 4]
    assert parse_levels("3,1,3", 4) == [1, 3]
    assert parse_levels(None, 4) == [4]
    assert parse_levels(2, 4) == [2]
    for bad in ("0", "5", "1,x", "", "two"):
        with pytest.raises(InvalidParameter):
            parse_levels(bad, 4)


def test_symbols_survive_range_coding_exactly(codec):
    image = codec.load_image(_png(_photo((200, 136))))
    symbols = codec.symbols(image, [1, 2, 3, 4])
    container = codec.parse(codec.container_from_symbols(image, symbols))
    for level in range(1, 5):
        decoded_level, decoded = codec.decode_symbols(container, level)
        assert decoded_level == level
        np.testing.assert_array_equal(decoded, symbols[level])


def test_multi_level_container_equals_single_level_ones(codec):
    data = _png(_photo())
    both = codec.compress(data, "1,3")
    assert codec.extract(both, 3) == codec.compress(data, 3)
    assert codec.extract(both, 1) == codec.compress(data, 1)
    with pytest.raises(LevelNotInStream):
        codec.decompress(both, level=2)


def test_compression_is_deterministic(codec):
    data = _png(_photo())
    assert codec.compress(data, "all") == codec.compress(data, "all")


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (65, 1), (63, 65), (130, 70)])
def test_any_size_round_trips_to_the_same_size(codec, size):
    image = _photo((max(size[0], 1), max(size[1], 1)))
    out = codec.decompress(codec.compress(_png(image), "all"), level=1)
    assert out.size == image.size and out.mode == "RGB"


def test_modes_alpha_and_grey(codec):
    rgba = _photo().convert("RGBA")
    alpha = np.tile(np.arange(96, dtype=np.uint8) * 2, (80, 1))
    rgba.putalpha(Image.fromarray(alpha))
    out = codec.decompress(codec.compress(_png(rgba), 2))
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[:, :, 3], alpha)

    grey = _photo().convert("L")
    out = codec.decompress(codec.compress(_png(grey), 4))
    assert out.mode == "L" and out.size == grey.size

    la = Image.merge("LA", (grey, Image.fromarray(alpha)))
    out = codec.decompress(codec.compress(_png(la), 1))
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out)[:, :, 1], alpha)

    palette = _photo().quantize(16)
    palette.info["transparency"] = 0
    out = codec.decompress(codec.compress(_png(palette, transparency=0), 1))
    assert out.mode == "RGBA" and out.size == palette.size


def test_sixteen_bit_grey_is_scaled_not_clipped(codec):
    ramp = (np.tile(np.linspace(0, 65535, 96), (80, 1))).astype(np.uint16)
    image = Image.fromarray(ramp)
    loaded = codec.load_image(_png(image))
    assert loaded.mode == "L"
    assert loaded.rgb[:, -1, 0].min() == 255 and loaded.rgb[:, 0, 0].max() == 0
    assert 120 < loaded.rgb[0, 48, 0] < 136


def test_cmyk_jpeg_and_gif_and_exif_orientation(codec):
    buffer = io.BytesIO()
    _photo().convert("CMYK").save(buffer, format="JPEG", quality=95)
    assert codec.load_image(buffer.getvalue()).rgb.shape == (80, 96, 3)

    buffer = io.BytesIO()
    frames = [_photo().quantize(8), _photo((96, 80)).rotate(90).quantize(8)]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert codec.load_image(buffer.getvalue()).rgb.shape == (80, 96, 3)

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _photo().save(buffer, format="JPEG", exif=exif)
    loaded = codec.load_image(buffer.getvalue())
    assert loaded.rgb.shape == (96, 80, 3)
    out = codec.decompress(codec.compress(buffer.getvalue(), 1))
    assert out.size == (80, 96)


def test_bad_images_give_typed_errors(codec):
    with pytest.raises(UnsupportedImageType):
        codec.compress(b"this is text, not an image")
    with pytest.raises(UndecodableImage):
        codec.compress(b"")
    truncated = _png(_photo())[:200]
    with pytest.raises(UndecodableImage):
        codec.compress(truncated)
    with pytest.raises(UnsupportedImageType):
        codec.compress(b"%PDF-1.4\n" + b"0" * 100)


def test_pixel_limit_is_checked_before_decoding(codec):
    small = Codec(codec.model, max_pixels=1000)
    with pytest.raises(ImageTooLarge):
        small.compress(_png(_photo()))
    # a PNG whose header claims 30000×30000 pixels: refused without decoding 900 M pixels
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLarge):
        codec.compress(bomb)


def test_stream_of_another_model_is_refused(codec):
    container = unpack(codec.compress(_png(_photo()), 1))
    foreign = pack(type(container)("ff" * 16, container.width, container.height, container.mode, container.levels))
    with pytest.raises(UnknownModel):
        codec.decompress(foreign)


def test_fuzz_decompress_never_escapes_typed_errors(codec):
    """Random defects in real containers, then random payload bytes behind a valid CRC."""
    rng = random.Random(7)
    original = codec.compress(_png(_photo((64, 64))), "1,2")
    for _ in range(2000):
        mutated = mutate(original, rng)
        try:
            codec.decompress(mutated)
        except SslicError:
            continue
    body_end = len(original) - 4
    header_end = 32 + 2 * 11
    outcomes = set()
    for _ in range(150):
        body = bytearray(original[:body_end])
        for _ in range(rng.randint(1, 6)):
            body[rng.randrange(header_end, body_end)] = rng.randrange(256)
        forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
        try:
            image = codec.decompress(forged, level=rng.choice([1, 2]))
            assert image.size == (64, 64)
            outcomes.add("decoded")
        except SslicError as error:
            outcomes.add(error.code)
    # forged payloads reach the range decoder: some decode to some image, others are caught there
    assert {"decoded", "trailing_data"} <= outcomes


def test_service_never_imports_torch():
    code = (
        "import sys, service, service.cli, service.codec, service.model, service.bitstream, "
        "service.entropy_coder, service.imageio; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
    for path in (REPO / "service").rglob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path


def test_tiled_coding_equals_untiled(codec):
    """Large images run as overlapping tiles; the margin exceeds the receptive fields, so the bytes and the
    decoded pixels are exactly those of the untiled run."""
    import dataclasses

    from service.model import Tiling

    tiles = [np.asarray(Image.open(KODAK / f"kodim{i:02d}.png").convert("RGB"))[:512, :576] for i in (1, 2, 3, 5)]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)  # 1024 × 1152
    data = _png(Image.fromarray(mosaic))
    small_tiles = Codec(dataclasses.replace(codec.model, tiling=Tiling(core=384, margin=320)))
    assert 1024 * 1152 > small_tiles.model.tiling.threshold_pixels
    container = small_tiles.compress(data, "1,4")
    assert container == codec.compress(data, "1,4")
    for level in (1, 4):
        np.testing.assert_array_equal(
            np.asarray(small_tiles.decompress(container, level)), np.asarray(codec.decompress(container, level))
        )


def test_rdo_rounding_trades_a_little_quality_for_fewer_bytes_on_a_real_image(codec):
    """Default RDO rounding against plain rounding (``rdoq_lambda`` 0) on a val crop, level 3."""
    plain = Codec(codec.model, codec.max_pixels, rdoq_lambda=0.0)
    image = _photo((384, 256))
    original = np.asarray(image, dtype=np.float64)
    loaded = plain.load_image(image)
    latent = codec.model.encode_latents(pad_image(loaded.rgb, codec.model.padding_multiple)[None])
    medians = codec.model.tables[2].medians[:, None, None]
    np.testing.assert_array_equal(plain.symbols(loaded, [3])[3], np.rint(latent[2][0] - medians).astype(np.int32))
    results = {}
    for name, chosen in (("plain", plain), ("rdo", codec)):
        container = chosen.compress(image, 3)
        decoded = np.asarray(chosen.decompress(container), dtype=np.float64)
        results[name] = (len(container), 10 * np.log10(255**2 / np.mean((decoded - original) ** 2)))
    assert codec.rdoq_per_level == (0.6, 0.15, 0.2, 0.0)  # the λ the tables were fitted for; plain at the finest
    assert results["rdo"][0] < 0.95 * results["plain"][0]
    assert results["plain"][1] - 1.0 < results["rdo"][1] < results["plain"][1]


def test_rdo_lambdas_per_level_and_their_errors(codec):
    assert Codec(codec.model, rdoq_lambda=0.3).rdoq_per_level == (0.3,) * 4
    assert Codec(codec.model, rdoq_lambda=[0, 0.1, 0.2, 0.4]).rdoq_per_level == (0.0, 0.1, 0.2, 0.4)
    for bad in ([0.1, 0.2], [-1.0], [float("nan")], 101.0):
        with pytest.raises(InvalidParameter):
            Codec(codec.model, rdoq_lambda=bad)


def _rd_cost(codec: Codec, image: Image.Image, level: int, refine_steps: int) -> tuple[float, float, float, bytes]:
    """(D + R / λ, bpp, PSNR, container) of ``image`` at ``level``, from the real container and its decoding."""
    container = codec.compress(image, level, refine_steps=refine_steps)
    original = np.asarray(image, dtype=np.float64) / 255.0
    decoded = np.asarray(codec.decompress(container), dtype=np.float64) / 255.0
    mse = float(np.mean((decoded - original) ** 2))
    bpp = len(container) * 8 / (image.width * image.height)
    lam = codec.model.refinement["mse_per_bpp"][level - 1]
    return mse + bpp / lam, bpp, 10 * np.log10(1.0 / mse), container


@pytest.mark.parametrize("level", [2, 4])
def test_latent_refinement_lowers_the_rate_distortion_cost_of_a_real_image(codec, level):
    """Refinement minimises D + R/λ through the decoder: on a val crop the real container and its decoding cost
    less than without it, the stream decodes with the plain decoder, and the result is deterministic."""
    image = _photo((256, 192))
    plain_cost, plain_bpp, plain_psnr, _ = _rd_cost(codec, image, level, 0)
    cost, bpp, psnr, container = _rd_cost(codec, image, level, 12)
    assert cost < 0.97 * plain_cost
    assert 0.7 * plain_bpp < bpp < 1.3 * plain_bpp and psnr > plain_psnr - 0.3
    assert codec.compress(image, level, refine_steps=12) == container
    assert codec.decompress(container).size == image.size


def test_refinement_steps_are_validated_and_time_limited(codec):
    from service.errors import RefinementTimeout
    from service.refine import MAX_REFINE_STEPS, Refinement, refine_latent

    for bad in (-1, MAX_REFINE_STEPS + 1, 2.5, "3"):
        with pytest.raises(InvalidParameter, match="refinement steps"):
            Codec(codec.model, refine_steps=bad)
    loaded = codec.load_image(_photo((64, 64)))
    padded = pad_image(loaded.rgb, codec.model.padding_multiple)
    latent = codec.model.encode_latents(padded[None])[0][0]
    with pytest.raises(RefinementTimeout, match="stopped after 0 of 5 steps"):
        refine_latent(codec.model, 1, padded[None], 64, 64, latent, Refinement(5), deadline=0.0)
    assert Codec(codec.model, refine_steps=3).compress(loaded, 1) == codec.compress(loaded, 1, refine_steps=3)


def test_tiled_decoder_gradient_equals_untiled(codec):
    """On large images the refinement's gradient runs tile by tile; the tiles' cores partition the image and
    their margins cover the decoder's receptive field, so the sums equal the untiled run."""
    import dataclasses

    from service.model import Tiling

    tiles = [np.asarray(Image.open(KODAK / f"kodim{i:02d}.png").convert("RGB"))[:512, :576] for i in (1, 2, 3, 5)]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)  # 1024 × 1152
    padded = pad_image(mosaic, codec.model.padding_multiple)[None]
    latent = codec.model.encode_latents(padded)[1]
    weight = np.ones((1, 1, *padded.shape[2:]), np.float32)
    small_tiles = dataclasses.replace(codec.model, tiling=Tiling(core=384, margin=320))
    assert padded.shape[2] * padded.shape[3] > small_tiles.tiling.threshold_pixels
    error, gradient = codec.model.decoder_gradient(2, latent, padded, weight)
    tiled_error, tiled_gradient = small_tiles.decoder_gradient(2, latent, padded, weight)
    assert tiled_error == pytest.approx(error, rel=1e-3)  # a float32 sum over 3.5 M terms in one piece or nine
    np.testing.assert_allclose(tiled_gradient, gradient, rtol=1e-3, atol=1e-4 * float(np.abs(gradient).max()))
