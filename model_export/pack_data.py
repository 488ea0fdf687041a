"""Pack a training-image folder small enough to carry to a borrowed accelerator.

    python -m model_export.pack_data ../shared/data/train .gpudata/train [--quality 92]

Each image becomes a JPEG with full-resolution chroma (4:4:4) at the given quality: the 176 training PNGs
(157 MB) shrink to 42 MB at quality 92, whose artefacts (40 dB PSNR on average, 35 dB at worst, on every tenth
image; the large photos are downscaled again in training, which hides them further) lie below what the codec
reproduces (≤ 32 dB). Only for training elsewhere; validation and the benchmark always read the lossless PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from .data import IMAGE_SUFFIXES

__all__ = ["pack_images"]


def pack_images(source: Path, target: Path, quality: int) -> tuple[int, int]:
    """Write every image of ``source`` as ``target/<stem>.jpg``; returns (images, bytes written)."""
    target.mkdir(parents=True, exist_ok=True)
    count = size = 0
    for path in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        out = target / f"{path.stem}.jpg"
        with Image.open(path) as image:
            image.convert("RGB").save(out, "JPEG", quality=quality, subsampling=0)
        count += 1
        size += out.stat().st_size
    return count, size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--quality", type=int, default=92)
    args = parser.parse_args(argv)
    count, size = pack_images(Path(args.source), Path(args.target), args.quality)
    print(f"{count} images, {size / 2**20:.1f} MiB in {args.target}")


if __name__ == "__main__":
    main()
