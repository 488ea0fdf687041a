"""Full-reference image quality metrics on 8-bit RGB images (numpy only).

Conventions follow CompressAI's evaluation (``compressai.utils.eval_model``), so numbers are comparable with the
published Kodak anchors:

- ``psnr``: MAX = 255, mean squared error over all pixels and all channels.
- ``ms_ssim``: Wang et al. 2003 with the constants of ``pytorch_msssim.ms_ssim(..., data_range=255)``: 5 scales,
  11×11 Gaussian window (σ = 1.5) applied as a separable "valid" filter, K1 = 0.01, K2 = 0.03, 2×2 average-pool
  downsampling (zero-padded by one pixel on each side of an odd dimension, padding counted in the mean), computed
  per channel and averaged over channels. Computed in float64 with the window normalised in float64; it agrees
  with ``pytorch_msssim`` to about 1e-6 (that library normalises the window in float32; given the same window the
  two agree to 1e-15).

``psnr`` of identical images is ``math.inf``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["psnr", "ms_ssim", "MS_SSIM_WEIGHTS", "MS_SSIM_MIN_SIDE"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
GAUSSIAN_SIZE = 11
GAUSSIAN_SIGMA = 1.5
K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0
# pytorch_msssim requires the smaller side to exceed (window - 1) * 2 ** (scales - 1) = 160
MS_SSIM_MIN_SIDE = (GAUSSIAN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def _as_image_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as uint8 arrays (H, W, C) of the same shape; PIL images are accepted."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
    return a, b


def psnr(a, b) -> float:
    """PSNR in dB of two uint8 images (MAX 255, MSE over all pixels and channels); ``inf`` when identical."""
    a, b = _as_image_pair(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return math.inf
    return float(10.0 * math.log10(DATA_RANGE**2 / mse))


def _gaussian_kernel(size: int = GAUSSIAN_SIZE, sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - size // 2
    kernel = np.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _filter_valid(maps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of (..., H, W) maps with ``kernel`` along W and then H."""
    size = kernel.size
    rows = sliding_window_view(maps, size, axis=-1) @ kernel
    return sliding_window_view(rows, size, axis=-2) @ kernel


def _ssim_and_contrast_structure(x: np.ndarray, y: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and mean contrast-structure term of float (C, H, W) images."""
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    mu_x, mu_y, xx, yy, xy = _filter_valid(np.stack([x, y, x * x, y * y, x * y]), kernel)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov_xy = xy - mu_x * mu_y
    contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (luminance * contrast_structure).mean(axis=(1, 2)), contrast_structure.mean(axis=(1, 2))


def _average_pool_2x2(image: np.ndarray) -> np.ndarray:
    """2×2 average pooling of (C, H, W) with stride 2 like ``F.avg_pool2d(x, 2, padding=[h % 2, w % 2])``."""
    pad_h, pad_w = image.shape[1] % 2, image.shape[2] % 2
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    height, width = image.shape[1] // 2 * 2, image.shape[2] // 2 * 2
    image = image[:, :height, :width]
    return 0.25 * (image[:, 0::2, 0::2] + image[:, 1::2, 0::2] + image[:, 0::2, 1::2] + image[:, 1::2, 1::2])


def ms_ssim(a, b) -> float:
    """MS-SSIM of two uint8 RGB (or grey) images, in [0, 1]; 1.0 when identical.

    Raises ValueError when the smaller side is under ``MS_SSIM_MIN_SIDE`` (161) pixels, too small for 5 scales.
    """
    a, b = _as_image_pair(a, b)
    if min(a.shape[0], a.shape[1]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both sides >= {MS_SSIM_MIN_SIDE} pixels, got {a.shape[1]}x{a.shape[0]}")
    kernel = _gaussian_kernel()
    x = np.moveaxis(a, -1, 0).astype(np.float64)
    y = np.moveaxis(b, -1, 0).astype(np.float64)
    scales = len(MS_SSIM_WEIGHTS)
    factors = []
    for scale in range(scales):
        ssim_per_channel, cs_per_channel = _ssim_and_contrast_structure(x, y, kernel)
        if scale < scales - 1:
            factors.append(np.maximum(cs_per_channel, 0.0))
            x = _average_pool_2x2(x)
            y = _average_pool_2x2(y)
    factors.append(np.maximum(ssim_per_channel, 0.0))
    weights = np.asarray(MS_SSIM_WEIGHTS)[:, None]
    per_channel = np.prod(np.stack(factors) ** weights, axis=0)
    return float(per_channel.mean())
