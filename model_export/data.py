"""Training data: decode every image once into memory as uint8, then sample random crops from it."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["BatchPrefetcher", "ImageSet", "load_image", "CropSampler", "crops_to_float", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def crops_to_float(crops: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 crops, on any device, as the (N, 3, H, W) float32 batch in [0, 1] that training takes."""
    return crops.permute(0, 3, 1, 2).float().div_(255.0)


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array (H, W, 3)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


@dataclass
class ImageSet:
    """Images of one folder, sorted by name, with a checksum of the file bytes."""

    names: list[str]
    images: list[np.ndarray]
    sha256: str

    @classmethod
    def from_dir(cls, directory: str | Path, limit: int | None = None) -> "ImageSet":
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"image folder not found: {directory}")
        paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit:
            paths = paths[:limit]
        if not paths:
            raise FileNotFoundError(f"no images in {directory}")
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return cls([p.name for p in paths], [load_image(p) for p in paths], digest.hexdigest())

    @property
    def pixels(self) -> int:
        return sum(image.shape[0] * image.shape[1] for image in self.images)


class CropSampler:
    """Random crops with flips; images whose short side is ≥ ``downscale_min_side`` are first downscaled
    by a random factor in [min_downscale, 1] (cropping the source region and resizing it, which is cheaper).
    Images smaller than the crop are upscaled to fit."""

    def __init__(
        self,
        images: list[np.ndarray],
        crop: int,
        min_downscale: float = 0.5,
        downscale_min_side: int = 800,
        seed: int = 0,
    ):
        self.images = images
        self.crop = crop
        self.min_downscale = min_downscale
        self.downscale_min_side = downscale_min_side
        self.rng = np.random.default_rng(seed)
        areas = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
        self.weights = areas / areas.sum()  # sample images in proportion to their area

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def draw(self) -> tuple[int, int, int, int, bool, bool]:
        """Random parameters of one crop: (image index, top, left, source side, flip left-right, flip up-down)."""
        index = int(self.rng.choice(len(self.images), p=self.weights))
        h, w = self.images[index].shape[:2]
        scale = 1.0
        if min(h, w) >= self.downscale_min_side:
            scale = float(self.rng.uniform(self.min_downscale, 1.0))
        source = min(int(round(self.crop / scale)), h, w)
        top = int(self.rng.integers(0, h - source + 1))
        left = int(self.rng.integers(0, w - source + 1))
        return index, top, left, source, bool(self.rng.random() < 0.5), bool(self.rng.random() < 0.5)

    def cut(self, params: tuple[int, int, int, int, bool, bool]) -> np.ndarray:
        """The pixels of a crop drawn by :meth:`draw` (thread-safe: PIL releases the GIL while resizing)."""
        index, top, left, source, flip_lr, flip_ud = params
        region = self.images[index][top : top + source, left : left + source]
        if source != self.crop:
            region = np.asarray(Image.fromarray(region).resize((self.crop, self.crop), Image.BICUBIC))
        if flip_lr:
            region = region[:, ::-1]
        if flip_ud:
            region = region[::-1]
        return region

    def sample_crop(self) -> np.ndarray:
        return self.cut(self.draw())

    def crops(self, size: int, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """(size, crop, crop, 3) uint8; the same crops with or without a thread pool."""
        params = [self.draw() for _ in range(size)]
        crops = list(pool.map(self.cut, params)) if pool else [self.cut(p) for p in params]
        return torch.from_numpy(np.stack(crops))

    def batch(self, size: int, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """(size, 3, crop, crop) float32 in [0, 1]: :meth:`crops` through :func:`crops_to_float`."""
        return crops_to_float(self.crops(size, pool))


class BatchPrefetcher:
    """Cuts the next batch on ``threads`` worker threads while the current one trains (for GPU training, where
    cropping in the training thread would leave the accelerator idle). It hands out uint8 crops, a quarter of
    the float batch's bytes, in page-locked memory with ``pin`` so the copy to a GPU runs asynchronously; the
    conversion to float (:func:`crops_to_float`) is left to the device. The sampler's random state runs one
    batch ahead of the batches handed out, so a resumed run skips one batch."""

    def __init__(self, sampler: CropSampler, size: int, threads: int, pin: bool = False):
        self.sampler = sampler
        self.size = size
        self.pin = pin
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="crops")
        self.feeder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self.pending = self.feeder.submit(self._make)

    def _make(self) -> torch.Tensor:
        crops = self.sampler.crops(self.size, self.pool)
        return crops.pin_memory() if self.pin else crops

    def next(self) -> torch.Tensor:
        batch = self.pending.result()
        self.pending = self.feeder.submit(self._make)
        return batch

    def close(self) -> None:
        self.feeder.shutdown(wait=True)
        self.pool.shutdown(wait=True)
