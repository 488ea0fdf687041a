"""Reading client images safely and writing decoded ones.

Accepted: PNG, JPEG, WebP, BMP, TIFF, GIF (first frame), PPM/PGM. The pixel limit is checked on the header,
before any pixel is decoded (decompression bombs). EXIF orientation is applied. Grey, palette, 16-bit,
CMYK and other modes become 8-bit RGB for the codec; the mode the decoded image is given back in is
L, LA, RGB or RGBA, and an alpha channel is kept losslessly.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLarge, InvalidParameter, UndecodableImage, UnsupportedImageType

__all__ = ["InputImage", "read_image", "from_pil", "to_pil", "encode_image", "ACCEPTED_FORMATS", "OUTPUT_FORMATS"]

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
OUTPUT_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}
# zlib level of PNG output: on a decoded Kodak image level 3 takes 33 ms and 4.6 % more bytes than level 6,
# which takes 126 ms, as long as the decoder itself (docs/benchmarks.md)
DEFAULT_PNG_LEVEL = 3
_GREY_MODES = {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class InputImage:
    """8-bit RGB pixels (H, W, 3), the optional alpha plane (H, W) and the mode to decode into."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    mode: str  # RGB, RGBA, L or LA

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def read_image(data: bytes, max_pixels: int) -> InputImage:
    """Open image bytes with the pixel limit enforced before decoding; raises typed errors."""
    if not data:
        raise UndecodableImage("empty image body")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError as error:
            raise UnsupportedImageType(
                f"not a supported image (accepted: {', '.join(ACCEPTED_FORMATS)})"
            ) from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageTooLarge(str(error)) from error
        except (OSError, ValueError, SyntaxError, struct.error) as error:
            raise UndecodableImage(f"cannot read the image header: {error}") from error
        width, height = image.size
        if width < 1 or height < 1:
            raise UndecodableImage(f"image has no pixels ({width}×{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}×{height} = {width * height} pixels is above the limit of {max_pixels}")
        try:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageTooLarge(str(error)) from error
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as error:
            raise UndecodableImage(f"cannot decode the image: {error}") from error
    return from_pil(image)


def from_pil(image: Image.Image) -> InputImage:
    """Normalise a loaded Pillow image to 8-bit RGB plus optional alpha."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _GREY_MODES:
        grey = _grey_to_uint8(image)
        return InputImage(np.repeat(grey[:, :, None], 3, axis=2), None, "L")
    if mode == "LA":
        array = np.asarray(image)
        return InputImage(np.repeat(array[:, :, :1], 3, axis=2).copy(), array[:, :, 1].copy(), "LA")
    if mode == "RGBA":
        array = np.asarray(image)
        return InputImage(np.ascontiguousarray(array[:, :, :3]), array[:, :, 3].copy(), "RGBA")
    if mode == "La":
        image = image.convert("LA")
        array = np.asarray(image)
        return InputImage(np.repeat(array[:, :, :1], 3, axis=2).copy(), array[:, :, 1].copy(), "LA")
    if mode in ("RGBa", "RGBX"):
        image = image.convert("RGBA") if mode == "RGBa" else image.convert("RGB")
        return from_pil(image)
    rgb = image.convert("RGB") if mode != "RGB" else image
    return InputImage(np.asarray(rgb, dtype=np.uint8).copy(), None, "RGB")


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    array = np.asarray(image)
    if mode == "F":
        scaled = np.clip(array, 0.0, 255.0)
    else:
        # 16-bit (I;16*) and 32-bit integer grey, taken as 16-bit samples
        scaled = np.clip(array.astype(np.float64), 0, 65535) / 257.0
    return np.rint(scaled).astype(np.uint8)


def to_pil(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """Decoded 8-bit RGB (+ alpha) as a Pillow image in ``mode``."""
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if mode == "RGB":
        return image
    if mode == "L":
        return image.convert("L")
    alpha_image = Image.fromarray(np.ascontiguousarray(alpha), "L")
    if mode == "RGBA":
        image.putalpha(alpha_image)
        return image
    if mode == "LA":
        return Image.merge("LA", (image.convert("L"), alpha_image))
    raise ValueError(f"unknown mode {mode!r}")


def encode_image(
    image: Image.Image, fmt: str = "png", quality: int | None = None, png_level: int = DEFAULT_PNG_LEVEL
) -> bytes:
    """Encode a decoded image as PNG (lossless, zlib level ``png_level``), WebP (lossless unless ``quality``)
    or JPEG."""
    key = fmt.lower()
    if key not in OUTPUT_FORMATS:
        raise InvalidParameter(f"output format must be one of {sorted(set(OUTPUT_FORMATS))}, got {fmt!r}")
    pil_format = OUTPUT_FORMATS[key]
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, format="PNG", compress_level=png_level)
    elif pil_format == "WEBP":
        if quality is None:
            image.save(buffer, format="WEBP", lossless=True)
        else:
            image.save(buffer, format="WEBP", quality=quality)
    else:
        if image.mode in ("RGBA", "LA"):
            raise InvalidParameter("JPEG cannot hold the image's alpha channel; ask for png or webp")
        image.save(buffer, format="JPEG", quality=quality or 95)
    return buffer.getvalue()
