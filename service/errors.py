"""Typed errors of the codec runtime. Each carries a stable ``code`` (used in CLI messages and HTTP bodies);
the HTTP layer maps the classes to status codes."""

from __future__ import annotations

__all__ = [
    "SslicError",
    "InvalidParameter",
    "RefinementUnavailable",
    "RefinementTimeout",
    "ImageError",
    "UnsupportedImageType",
    "UndecodableImage",
    "ImageTooLarge",
    "BitstreamError",
    "BadMagic",
    "UnsupportedVersion",
    "TruncatedStream",
    "TrailingData",
    "CorruptStream",
    "ChecksumMismatch",
    "UnknownModel",
    "LevelNotInStream",
    "ModelLoadError",
]


class SslicError(Exception):
    """Base class of every error the runtime raises on purpose."""

    code = "sslic_error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidParameter(SslicError):
    """A caller-supplied parameter (level list, option) is malformed or out of range."""

    code = "invalid_parameter"


class RefinementUnavailable(InvalidParameter):
    """Latent refinement was asked of a model folder exported without its decoder-gradient graphs."""

    code = "refinement_unavailable"


class RefinementTimeout(SslicError):
    """Latent refinement ran past the request's time limit (fewer steps, or a smaller image, fit)."""

    code = "refinement_timeout"


class ImageError(SslicError):
    """The input image cannot be compressed."""

    code = "image_error"


class UnsupportedImageType(ImageError):
    """Not an image format the codec accepts (PNG, JPEG, WebP, BMP, TIFF, GIF, PPM)."""

    code = "unsupported_image_type"


class UndecodableImage(ImageError):
    """The bytes claim a supported format but cannot be decoded (truncated, corrupt)."""

    code = "undecodable_image"


class ImageTooLarge(ImageError):
    """More pixels than the configured limit (checked before the pixels are decoded)."""

    code = "image_too_large"


class BitstreamError(SslicError):
    """The container cannot be decoded."""

    code = "bitstream_error"


class BadMagic(BitstreamError):
    code = "bad_magic"


class UnsupportedVersion(BitstreamError):
    code = "unsupported_version"


class TruncatedStream(BitstreamError):
    code = "truncated_stream"


class TrailingData(BitstreamError):
    """Bytes left over after the container or after a payload's last symbol."""

    code = "trailing_data"


class CorruptStream(BitstreamError):
    """A field or payload is inconsistent with the format or with the loaded model."""

    code = "corrupt_stream"


class ChecksumMismatch(CorruptStream):
    code = "checksum_mismatch"


class UnknownModel(BitstreamError):
    """The container was made by a model that is not loaded."""

    code = "unknown_model"


class LevelNotInStream(SslicError):
    """The caller asked for a level the container does not hold."""

    code = "level_not_in_stream"


class ModelLoadError(SslicError):
    """The artifact folder is missing, incomplete, or its hashes do not match its manifest."""

    code = "model_load_error"
