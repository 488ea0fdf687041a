"""How much of the pixels a frozen backbone's features keep: a linear probe from features to pixels.

For each backbone, a ridge regression maps the 256 features at each H/4 position to the 4×4 RGB block they cover
(48 values), fitted on training images and measured on val as PSNR of the linear reconstruction, on RGB and
separately on luma (Y) and chroma (Cb, Cr) of BT.601. A backbone that learned invariance to colour (SimCLR's
colour jitter and greyscale views) keeps less chroma; a reconstruction network sees the same features, so the
probe says which backbone leaves the codec's encoder more to work with. It is a linear lower bound, not what a
decoder could recover.

    python -m model_export.backbone_probe --backbones checkpoints/simclr_backbone.pt,checkpoints/simclr_backbone_7000.pt \
        --out docs/results/simclr_long/backbone_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import ResNet50Group1, load_simclr_backbone
from .data import ImageSet

__all__ = ["BLOCK", "RANDOM_BACKBONE", "fit_linear_probe", "measure_linear_probe", "probe_backbones", "main"]

BLOCK = 4
RANDOM_BACKBONE = "random"
_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) → (H/4 · W/4, 48): each 4×4 RGB block as one row."""
    return F.pixel_unshuffle(x, BLOCK)[0].flatten(1).T


def _features_rows(features: FeatureFn, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        f = features(x)[0].flatten(1).T.double()
    return torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype)], dim=1)


def _crop_to_blocks(image: np.ndarray) -> torch.Tensor:
    h, w = (image.shape[0] // BLOCK) * BLOCK, (image.shape[1] // BLOCK) * BLOCK
    return torch.from_numpy(image[:h, :w]).permute(2, 0, 1)[None].float().div(255.0)


def _random_crops(images: Sequence[np.ndarray], crop: int, per_image: int, seed: int):
    rng = np.random.default_rng(seed)
    for image in images:
        h, w = image.shape[:2]
        size_h, size_w = min(crop, h) // BLOCK * BLOCK, min(crop, w) // BLOCK * BLOCK
        for _ in range(per_image):
            top, left = rng.integers(0, h - size_h + 1), rng.integers(0, w - size_w + 1)
            yield _crop_to_blocks(image[top : top + size_h, left : left + size_w])


def fit_linear_probe(
    features: FeatureFn, images: Sequence[np.ndarray], crop: int = 256, per_image: int = 4, ridge: float = 1e-4, seed: int = 0
) -> np.ndarray:
    """Ridge regression (features + bias) → 4×4 RGB blocks over random crops; returns the (F+1, 48) weights."""
    gram = targets = None
    rows = 0
    for x in _random_crops(images, crop, per_image, seed):
        a = _features_rows(features, x)
        b = _blocks(x).double()
        gram = a.T @ a if gram is None else gram + a.T @ a
        targets = a.T @ b if targets is None else targets + a.T @ b
        rows += a.shape[0]
    if gram is None:
        raise ValueError("no training crops for the linear probe")
    scale = ridge * float(torch.trace(gram)) / gram.shape[0]
    weights = torch.linalg.solve(gram + scale * torch.eye(gram.shape[0], dtype=gram.dtype), targets)
    return weights.numpy()


def _psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def measure_linear_probe(features: FeatureFn, weights: np.ndarray, images: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean per-image PSNR of the probe's reconstruction on 8-bit RGB, luma and chroma (BT.601, full range)."""
    scores: dict[str, list[float]] = {"rgb": [], "luma": [], "chroma": []}
    for image in images:
        x = _crop_to_blocks(image)
        predicted = torch.from_numpy(_features_rows(features, x).numpy() @ weights).float()
        h, w = x.shape[2] // BLOCK, x.shape[3] // BLOCK
        reconstruction = F.pixel_shuffle(predicted.T.reshape(1, 3 * BLOCK * BLOCK, h, w), BLOCK)
        rec = (reconstruction[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round()
        ref = x[0].permute(1, 2, 0).numpy() * 255.0
        error = rec.astype(np.float64) - ref.astype(np.float64)
        ycc_error = error @ _YCBCR.T
        scores["rgb"].append(_psnr_from_mse(float(np.mean(error**2))))
        scores["luma"].append(_psnr_from_mse(float(np.mean(ycc_error[..., 0] ** 2))))
        scores["chroma"].append(_psnr_from_mse(float(np.mean(ycc_error[..., 1:] ** 2))))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def _load(spec: str) -> ResNet50Group1:
    if spec == RANDOM_BACKBONE:
        torch.manual_seed(0)
        return ResNet50Group1()
    return load_simclr_backbone(spec)


def probe_backbones(
    specs: Sequence[str], train_dir: str | Path, val_dir: str | Path, crop: int = 256, per_image: int = 4
) -> dict:
    """Fit and measure the probe for every backbone (a checkpoint path, or ``random`` for an untrained one)."""
    train, val = ImageSet.from_dir(train_dir), ImageSet.from_dir(val_dir)
    results = {}
    for spec in specs:
        start = time.perf_counter()
        backbone = _load(spec).eval()
        weights = fit_linear_probe(backbone, train.images, crop=crop, per_image=per_image)
        results[spec] = {
            "val": measure_linear_probe(backbone, weights, val.images),
            "train_seconds": round(time.perf_counter() - start, 1),
        }
    return {
        "probe": f"ridge regression from the {ResNet50Group1.out_channels} features at H/4 to the 4x4 RGB block, "
        f"{per_image} random {crop}^2 crops per training image",
        "train": {"images": len(train.images), "sha256": train.sha256},
        "val": {"images": len(val.images), "sha256": val.sha256},
        "backbones": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", required=True, help="comma-separated checkpoint paths; 'random' for an untrained backbone")
    parser.add_argument("--train-dir", default="../shared/data/train")
    parser.add_argument("--val-dir", default="../shared/data/val")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--per-image", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = probe_backbones(
        [s for s in args.backbones.split(",") if s], args.train_dir, args.val_dir, crop=args.crop, per_image=args.per_image
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for spec, result in report["backbones"].items():
        val = result["val"]
        print(f"{spec}: val RGB {val['rgb']:.2f} dB, luma {val['luma']:.2f} dB, chroma {val['chroma']:.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
