"""The torch-free codec: image → pad → encoder (ONNX) → round → range code → container, and back.

>>> codec = Codec.from_dir("models/default")
>>> data = codec.compress(open("photo.png", "rb").read(), levels=[1, 4])
>>> image = codec.decompress(data, level=1)          # PIL image, input size and mode
>>> small = codec.extract(data, level=1)             # single-level container, no model run
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .bitstream import (PLAIN_MARKABLE_LEVELS, Container, LevelStream, extract_level, pack, plain_rounding_flags,
                        unpack)
from .entropy_coder import DEFAULT_RDOQ_LAMBDA
from .errors import CorruptStream, ImageTooLarge, InvalidParameter, UnknownModel
from .imageio import InputImage, from_pil, read_image, to_pil
from .model import LoadedModel, default_model_dir, load_model
from .refine import Refinement, refine_latent

__all__ = ["Codec", "parse_levels", "rdoq_lambdas", "DEFAULT_MAX_PIXELS", "pad_image", "to_uint8"]

DEFAULT_MAX_PIXELS = 50_000_000


def parse_levels(value: str | int | Iterable[int] | None, levels: int) -> list[int]:
    """``"2"``, ``"1,3"``, ``"all"``, an int or a list → sorted distinct levels in 1..``levels``."""
    if value is None:
        return [levels]
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return list(range(1, levels + 1))
        try:
            numbers = [int(part) for part in text.split(",")]
        except ValueError as error:
            raise InvalidParameter(f"level must be 1..{levels}, a comma list or 'all', got {value!r}") from error
    elif isinstance(value, (int, np.integer)):
        numbers = [int(value)]
    else:
        numbers = [int(v) for v in value]
    if not numbers:
        raise InvalidParameter("no level given")
    bad = [n for n in numbers if not 1 <= n <= levels]
    if bad:
        raise InvalidParameter(f"level {bad[0]} is outside 1..{levels}")
    return sorted(set(numbers))


def rdoq_lambdas(value: float | Sequence[float] | None, levels: int,
                 default: Sequence[float] | None = None) -> tuple[float, ...]:
    """λ of the rate-distortion optimised rounding per level: ``None`` gives ``default`` (the λ the model's tables
    were fitted for) or, without one, ``DEFAULT_RDOQ_LAMBDA`` to every level but the finest, which keeps plain
    rounding (the finest level stays the highest quality there is); one number applies to every level; L numbers
    give one per level. Each must be in [0, 100]."""
    if value is None and default is not None:
        value = default
    if value is None:
        return tuple(DEFAULT_RDOQ_LAMBDA if level < levels else 0.0 for level in range(1, levels + 1))
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * levels
    if len(values) != levels:
        raise InvalidParameter(f"RDO rounding needs one λ or {levels} (one per level), got {len(values)}")
    if not all(isinstance(v, (int, float)) and 0.0 <= v <= 100.0 for v in values):
        raise InvalidParameter(f"every RDO rounding λ must be between 0 and 100, got {values}")
    return tuple(float(v) for v in values)


def pad_image(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H', W') float32 in [0, 1], replicate-padded bottom/right to ``multiple``."""
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, (-height) % multiple), (0, (-width) % multiple), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def to_uint8(x_hat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Decoder output (3, H', W') → cropped (height, width, 3) uint8."""
    cropped = x_hat[:, :height, :width]
    return np.clip(np.rint(cropped * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


@dataclass
class Codec:
    """A loaded model plus the image and container logic around it."""

    model: LoadedModel
    max_pixels: int = DEFAULT_MAX_PIXELS
    rdoq_lambda: float | Sequence[float] | None = None
    refine_steps: int = 0

    def __post_init__(self) -> None:
        self.rdoq_per_level = rdoq_lambdas(self.rdoq_lambda, self.model.levels, self.model.fitted_rdoq_lambda)
        Refinement(self.refine_steps)  # validates

    @classmethod
    def from_dir(
        cls,
        directory: str | Path | None = None,
        providers: list[str] | None = None,
        threads: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tile_size: int = 1024,
        rdoq_lambda: float | Sequence[float] | None = None,
        refine_steps: int = 0,
    ) -> "Codec":
        model = load_model(
            directory or default_model_dir(), providers=providers, intra_op_threads=threads, tile_size=tile_size
        )
        return cls(model, max_pixels, rdoq_lambda, refine_steps)

    @property
    def levels(self) -> int:
        return self.model.levels

    @property
    def model_id(self) -> str:
        return self.model.model_id

    # -- compression ------------------------------------------------------------------------------------
    def load_image(self, image: bytes | Image.Image | InputImage) -> InputImage:
        if isinstance(image, InputImage):
            pixels = image.width * image.height
            if pixels > self.max_pixels:
                raise ImageTooLarge(f"{pixels} pixels is above the limit of {self.max_pixels}")
            return image
        if isinstance(image, Image.Image):
            return self.load_image(from_pil(image))
        return read_image(bytes(image), self.max_pixels)

    def symbols(self, image: InputImage, levels: Sequence[int], refine_steps: int | None = None
                ) -> dict[int, np.ndarray]:
        """Integer latent symbols (C, h, w) of each requested level (:meth:`quantize`), the latents refined by
        ``refine_steps`` gradient steps first (:meth:`refine`; default: the codec's ``refine_steps``)."""
        if refine_steps is None:
            refine_steps = self.refine_steps
        padded = pad_image(image.rgb, self.model.padding_multiple)
        latents = self.model.encode_latents(padded[None])
        return {
            level: self.quantize(level, self.refine(level, padded, image, latents[level - 1][0], refine_steps))
            for level in levels
        }

    def refine(self, level: int, padded: np.ndarray, image: InputImage, latent: np.ndarray, steps: int,
               deadline: float | None = None) -> np.ndarray:
        """``latent`` (C, h, w) of ``level`` after ``steps`` steps of latent refinement for the padded image
        (``service.refine``; 0 steps return it as it is); stops with :class:`RefinementTimeout` once ``deadline``
        (time.monotonic) passes."""
        return refine_latent(self.model, level, padded[None], image.height, image.width, latent,
                             Refinement(steps), deadline)

    def quantize(self, level: int, latent: np.ndarray, rdoq_lambda: float | None = None) -> np.ndarray:
        """Encoder output (C, h, w) of ``level`` → int32 symbols: ``round(y − median)``, each moved one step
        towards 0 where that saves enough bits for the error it adds (``rdoq_lambda``, by default the level's
        configured one, else the one its tables were fitted for; 0: plain rounding)."""
        if not np.all(np.isfinite(latent)):
            raise CorruptStream(f"the encoder produced non-finite latents at level {level}")
        medians = self.model.tables[level - 1].medians[:, None, None]
        if rdoq_lambda is None:
            rdoq_lambda = self.rdoq_per_level[level - 1]
        return self.model.coders[level - 1].rdo_symbols(latent - medians, rdoq_lambda)

    def plain_levels(self, rdoq_per_level: Sequence[float] | None = None) -> list[int]:
        """The levels ``rdoq_per_level`` (default: the codec's λ) rounds plainly (λ 0) where the model rounds them
        with RDO by default and its decoder has input offsets, which were fitted for that rounding: their containers
        mark them, and they decode without the offsets."""
        per_level = self.rdoq_per_level if rdoq_per_level is None else rdoq_per_level
        default = rdoq_lambdas(None, self.levels, self.model.fitted_rdoq_lambda)
        return [level for level in range(1, min(self.levels, PLAIN_MARKABLE_LEVELS) + 1)
                if per_level[level - 1] <= 0 < default[level - 1] and self.model.has_input_offsets(level)]

    def container_from_symbols(self, image: InputImage, symbols: dict[int, np.ndarray],
                               plain_levels: Iterable[int] = ()) -> bytes:
        """Range-code the symbols and pack them with the image's size, mode and alpha plane; the header marks the
        levels of ``plain_levels`` (:meth:`plain_levels`) it holds as plainly rounded."""
        streams = []
        for level in sorted(symbols):
            sym = symbols[level]
            payload = self.model.coders[level - 1].encode(sym)
            streams.append(LevelStream(level, sym.shape[0], sym.shape[1], sym.shape[2], payload))
        alpha = None
        if image.alpha is not None:
            alpha = zlib.compress(np.ascontiguousarray(image.alpha, dtype=np.uint8).tobytes(), 9)
        flags = plain_rounding_flags(level for level in plain_levels if level in symbols)
        return pack(Container(self.model_id, image.width, image.height, image.mode, tuple(streams), alpha, flags))

    def compress(self, image: bytes | Image.Image | InputImage, levels: str | int | Iterable[int] | None = None,
                 refine_steps: int | None = None) -> bytes:
        """One container holding every requested level (default: the finest); ``refine_steps`` of latent
        refinement per level (slower, smaller at the same quality; 0: none; default: the codec's)."""
        wanted = parse_levels(levels, self.levels)
        loaded = self.load_image(image)
        return self.container_from_symbols(loaded, self.symbols(loaded, wanted, refine_steps), self.plain_levels())

    # -- decompression ----------------------------------------------------------------------------------
    def parse(self, data: bytes) -> Container:
        """Parse ``data`` and check it belongs to the loaded model and matches its latent shapes."""
        container = unpack(data)
        if container.model_id != self.model_id:
            raise UnknownModel(f"stream made by model {container.model_id}; loaded model is {self.model_id}")
        if container.width * container.height > self.max_pixels:
            raise ImageTooLarge(f"{container.width}×{container.height} is above the pixel limit {self.max_pixels}")
        for stream in container.levels:
            if stream.level > self.levels:
                raise CorruptStream(f"level {stream.level} does not exist in this model (1..{self.levels})")
            expected = self.model.latent_shape(stream.level, container.height, container.width)
            if (stream.channels, stream.height, stream.width) != expected:
                raise CorruptStream(
                    f"level {stream.level} latent shape {(stream.channels, stream.height, stream.width)} "
                    f"does not match {expected} for a {container.width}×{container.height} image"
                )
        return container

    def decode_symbols(self, container: Container, level: int | None = None) -> tuple[int, np.ndarray]:
        """Range-decode one level's symbols; returns (level, symbols (C, h, w))."""
        stream = container.level(level)
        symbols = self.model.coders[stream.level - 1].decode(stream.payload, stream.height, stream.width)
        return stream.level, symbols

    def dequantize(self, level: int, symbols: np.ndarray, plain: bool = False) -> np.ndarray:
        """Symbols (C, h, w) → the decoder's input ŷ = symbol + median, float32. ``plain`` (symbols rounded plainly,
        λ 0) takes the level's input offsets off first, ŷ − sign(q)·δ[c, min(|q|, K − 1)] (δ[c, 0] where q = 0):
        every |δ| < ½, so the decoder graph rounds ŷ back to the same q, adds the offsets back and decodes the
        integers themselves, as it was trained to."""
        latent = symbols.astype(np.float32) + self.model.tables[level - 1].medians[:, None, None]
        if not plain or not self.model.has_input_offsets(level):
            return latent
        offsets = self.model.input_offsets[level - 1]
        magnitude = np.minimum(np.abs(symbols), offsets.shape[1] - 1)
        shift = np.take_along_axis(offsets, magnitude.reshape(symbols.shape[0], -1), axis=1).reshape(symbols.shape)
        return latent - np.where(symbols < 0, -shift, shift)

    def reconstruct(self, level: int, symbols: np.ndarray, height: int, width: int, plain: bool = False
                    ) -> np.ndarray:
        """Symbols → decoder → cropped uint8 RGB (height, width, 3); ``plain`` as in :meth:`dequantize`."""
        latent = self.dequantize(level, symbols, plain)
        return to_uint8(self.model.decode_latent(level, latent[None])[0], height, width)

    def alpha_plane(self, container: Container) -> np.ndarray | None:
        if container.alpha is None:
            return None
        try:
            raw = zlib.decompress(container.alpha)
        except zlib.error as error:
            raise CorruptStream(f"alpha plane: {error}") from error
        if len(raw) != container.width * container.height:
            raise CorruptStream("alpha plane size does not match the image")
        return np.frombuffer(raw, dtype=np.uint8).reshape(container.height, container.width)

    def decompress(self, data: bytes, level: int | None = None) -> Image.Image:
        """Decode ``level`` (default: the finest in the container) to a Pillow image of the input's size and mode."""
        container = self.parse(data)
        if level is not None:
            level = parse_levels(level, self.levels)[0] if not isinstance(level, int) else level
        decoded_level, symbols = self.decode_symbols(container, level)
        alpha = self.alpha_plane(container)
        rgb = self.reconstruct(decoded_level, symbols, container.height, container.width,
                               container.plainly_rounded(decoded_level))
        return to_pil(rgb, alpha, container.mode)

    def extract(self, data: bytes, level: int | None = None) -> bytes:
        """Single-level container of ``level`` (default: the finest present); no model run."""
        return extract_level(data, level)

    def info(self, data: bytes) -> dict:
        """Header of a container as plain data (does not need the model that made it)."""
        container = unpack(data)
        info = container.header_dict(len(data))
        info["model_loaded"] = container.model_id == self.model_id
        return info
