"""Encode and decode time per Kodak image: sslic runtime (ONNX), sslic PyTorch model, Pillow JPEG and WebP.

    python bench/bench_codecs.py [--model-dir models/default] [--checkpoint checkpoints/sslic_default.pt]
        [--data ../shared/data/kodak] [--limit 8] [--repeats 3] [--refine N] [--out docs/results/bench.json]

For every image each operation is timed ``--repeats`` times after one untimed warm-up on the first image; the
per-image median is kept and the table reports the median (and mean) of those over images. Rows:

- ``runtime L<n>``: ``Codec.compress(image, levels=[n])`` to bytes / ``Codec.decompress(data, level=n)`` to a
  PIL image (entropy coding and container included).
- ``torch L<n>``: encoder forward on the padded image + rounding of the latents (the encoder computes all levels
  at once, so it is timed once per image and shown on every level) / decoder forward of level n with crop and
  clamp; no entropy coding; ``torch.set_num_threads(2)``, ``no_grad``.
- ``runtime L<n> refine N`` (with ``--refine N``): the same with N steps of latent refinement, encoding timed
  once per image (it takes seconds).
- ``jpeg q75`` / ``webp q75``: Pillow encode to bytes / decode from bytes.

torch is imported only when a checkpoint is benchmarked, so the rest runs without it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from service.codec import Codec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "sslic_default.pt"
TORCH_THREADS = 2
PILLOW_QUALITY = 75


def load_images(directory: Path, limit: int) -> tuple[list[str], list[Image.Image]]:
    """The first ``limit`` images of ``directory`` sorted by name, as loaded RGB PIL images."""
    if not directory.is_dir():
        raise SystemExit(f"image folder not found: {directory}")
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".png", ".bmp", ".tif", ".tiff", ".ppm"))
    paths = paths[:limit]
    if not paths:
        raise SystemExit(f"no images in {directory}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return [p.name for p in paths], images


def seconds(operation: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``operation``."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class Benchmark:
    """Collects per-image encode/decode medians under row names."""

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.rows: dict[str, dict] = {}

    def add(self, row: str, encode_s: float, decode_s: float) -> None:
        entry = self.rows.setdefault(row, {"encode_s": [], "decode_s": []})
        entry["encode_s"].append(encode_s)
        entry["decode_s"].append(decode_s)

    def time(self, row: str, encode: Callable[[], object], decode: Callable[[], object]) -> None:
        self.add(row, seconds(encode, self.repeats), seconds(decode, self.repeats))

    def add_sizes(self, row: str, bits_per_pixel: float) -> None:
        self.rows[row].setdefault("bpp", []).append(bits_per_pixel)

    def table(self) -> dict[str, dict]:
        out = {}
        for row, entry in self.rows.items():
            out[row] = {
                "encode_median_s": statistics.median(entry["encode_s"]),
                "decode_median_s": statistics.median(entry["decode_s"]),
                "encode_mean_s": statistics.fmean(entry["encode_s"]),
                "decode_mean_s": statistics.fmean(entry["decode_s"]),
                "encode_per_image_s": entry["encode_s"],
                "decode_per_image_s": entry["decode_s"],
            }
            if "bpp" in entry:
                out[row]["mean_bpp"] = statistics.fmean(entry["bpp"])
        return out


def pillow_bytes(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=PILLOW_QUALITY)
    return buffer.getvalue()


def pillow_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def bench_pillow(bench: Benchmark, images: list[Image.Image]) -> None:
    for image_format, row in (("JPEG", f"jpeg q{PILLOW_QUALITY}"), ("WEBP", f"webp q{PILLOW_QUALITY}")):
        pillow_decode(pillow_bytes(images[0], image_format))
        for image in images:
            data = pillow_bytes(image, image_format)
            bench.time(row, lambda: pillow_bytes(image, image_format), lambda: pillow_decode(data))
            bench.add_sizes(row, len(data) * 8 / (image.width * image.height))


def bench_runtime(bench: Benchmark, images: list[Image.Image], model_dir: Path, refine_steps: int = 0) -> dict:
    """Rows for the ONNX runtime codec (and, with ``refine_steps``, its encoding with latent refinement, timed
    once per image); returns its description for the JSON."""
    if not (model_dir / "manifest.json").is_file():
        raise SystemExit(f"{model_dir / 'manifest.json'} not found: export the model first, or pass --skip-runtime")
    codec = Codec.from_dir(str(model_dir), threads=2)
    levels = list(range(1, codec.levels + 1))
    for level in levels:
        codec.decompress(codec.compress(images[0], levels=[level]), level=level)
    for image in images:
        for level in levels:
            data = codec.compress(image, levels=[level])
            bench.time(
                f"runtime L{level}",
                lambda: codec.compress(image, levels=[level]),
                lambda: codec.decompress(data, level=level),
            )
            bench.add_sizes(f"runtime L{level}", len(data) * 8 / (image.width * image.height))
            if refine_steps:
                row = f"runtime L{level} refine {refine_steps}"
                start = time.perf_counter()
                refined = codec.compress(image, levels=[level], refine_steps=refine_steps)
                encode_s = time.perf_counter() - start
                bench.add(row, encode_s, seconds(lambda: codec.decompress(refined, level=level), bench.repeats))
                bench.add_sizes(row, len(refined) * 8 / (image.width * image.height))
    return {"model_dir": str(model_dir), "model_id": codec.model_id, "levels": codec.levels,
            "refine_steps": refine_steps}


def bench_torch(bench: Benchmark, images: list[Image.Image], checkpoint: Path) -> dict:
    """Rows for the PyTorch model; returns its description for the JSON."""
    import torch
    from model_export.checkpoint import load_codec_checkpoint
    from model_export.model import crop_to, pad_to_multiple

    torch.set_num_threads(TORCH_THREADS)
    model, _, _ = load_codec_checkpoint(checkpoint)
    levels = list(range(1, model.levels + 1))
    medians = [eb.medians() for eb in model.entropy]

    def encode(x: torch.Tensor) -> list[torch.Tensor]:
        latents = model.encoder(pad_to_multiple(x, model.padding_multiple))
        return [torch.round(y - median) + median for y, median in zip(latents, medians)]

    def decode(y_hat: torch.Tensor, level: int, height: int, width: int) -> torch.Tensor:
        return crop_to(model.decoder(y_hat, level), height, width).clamp(0, 1)

    with torch.no_grad():
        tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0 for image in images]
        warm_up = encode(tensors[0])
        for level in levels:
            decode(warm_up[level - 1], level, images[0].height, images[0].width)
        for image, x in zip(images, tensors):
            encode_s = seconds(lambda: encode(x), bench.repeats)
            y_hats = encode(x)
            for level in levels:
                decode_s = seconds(lambda: decode(y_hats[level - 1], level, image.height, image.width), bench.repeats)
                bench.add(f"torch L{level}", encode_s, decode_s)
    return {"checkpoint": str(checkpoint), "threads": TORCH_THREADS, "torch": torch.__version__}


def machine_info() -> dict:
    import PIL

    info = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as handle:
            models = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
    except OSError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def print_table(table: dict[str, dict]) -> None:
    print(f"{'codec':<14} {'encode ms':>10} {'decode ms':>10} {'mean bpp':>9}")
    for row, entry in table.items():
        bpp = f"{entry['mean_bpp']:.3f}" if "mean_bpp" in entry else "-"
        print(f"{row:<14} {1000 * entry['encode_median_s']:>10.1f} {1000 * entry['decode_median_s']:>10.1f} {bpp:>9}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--limit", type=int, default=8, help="number of images (sorted by name)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image and operation")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "bench.json")
    parser.add_argument("--skip-runtime", action="store_true", help="leave out the ONNX runtime codec")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the PyTorch model")
    parser.add_argument("--refine", type=int, default=0, metavar="STEPS",
                        help="also time runtime encoding with this many latent refinement steps (once per image)")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.repeats < 1:
        raise SystemExit("--limit and --repeats must be at least 1")

    names, images = load_images(args.data, args.limit)
    bench = Benchmark(args.repeats)
    report: dict = {"machine": machine_info(), "images": names, "repeats": args.repeats}
    if not args.skip_runtime:
        report["runtime"] = bench_runtime(bench, images, args.model_dir, args.refine)
    if not args.skip_torch:
        if args.checkpoint.is_file():
            report["torch"] = bench_torch(bench, images, args.checkpoint)
        else:
            print(f"checkpoint {args.checkpoint} not found: PyTorch rows left out", file=sys.stderr)
    bench_pillow(bench, images)
    report["results"] = bench.table()
    print(f"{len(names)} images, {args.repeats} repeats, {report['machine']['cpu_count']} CPUs, "
          f"load {report['machine']['load_average_at_start']}")
    print_table(report["results"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
