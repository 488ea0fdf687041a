"""Quality metrics, Bjontegaard deltas and the evaluation pipeline (with a stand-in codec)."""

from __future__ import annotations

import csv
import importlib.util
import io
import math

import numpy as np
import pytest
from PIL import Image

from model_export import evaluate
from model_export.bd_rate import bd_psnr, bd_rate, psnr_at_bpp, psnr_gap_on_grid
from model_export.data import ImageSet
from model_export.metrics import MS_SSIM_WEIGHTS, ms_ssim, psnr

from .conftest import REPO

ANCHORS_DIR = REPO.parent / "shared" / "anchors"


def textured_pair(shape=(192, 192), noise_sigma=10.0, seed=1234) -> tuple[np.ndarray, np.ndarray]:
    """A smooth textured RGB image with mild noise, and a noisier copy of it."""
    rng = np.random.default_rng(seed)
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(cols / 9.0) * np.cos(rows / 13.0) + 0.3 * (cols - rows)
    image = np.stack([base, base[::-1], 255 - base], -1) + rng.normal(0, 8, (height, width, 3))
    a = np.clip(np.round(image), 0, 255).astype(np.uint8)
    b = np.clip(np.round(a + rng.normal(0, noise_sigma, a.shape)), 0, 255).astype(np.uint8)
    return a, b


def reference_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Straightforward MS-SSIM: full 11×11 2-D window per channel, no separable filtering, plain loops over scales."""
    coords = np.arange(11) - 5
    gauss = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(gauss, gauss) / np.outer(gauss, gauss).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for channel in range(a.shape[2]):
        x = a[..., channel].astype(np.float64)
        y = b[..., channel].astype(np.float64)
        values = []
        for scale in range(5):
            def blur(image):
                return np.einsum("ijkl,kl->ij", np.lib.stride_tricks.sliding_window_view(image, (11, 11)), window)

            mu_x, mu_y = blur(x), blur(y)
            var_x = blur(x * x) - mu_x**2
            var_y = blur(y * y) - mu_y**2
            cov = blur(x * y) - mu_x * mu_y
            cs = (2 * cov + c2) / (var_x + var_y + c2)
            if scale < 4:
                values.append(max(cs.mean(), 0.0))
                pad = ((x.shape[0] % 2,) * 2, (x.shape[1] % 2,) * 2)
                x, y = np.pad(x, pad), np.pad(y, pad)
                h, w = x.shape[0] // 2, x.shape[1] // 2
                x = x[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
                y = y[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
            else:
                luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
                values.append(max((luminance * cs).mean(), 0.0))
        per_channel.append(np.prod(np.array(values) ** np.array(MS_SSIM_WEIGHTS)))
    return float(np.mean(per_channel))


# ---------------------------------------------------------------- PSNR


def test_psnr_identical_images_is_infinite():
    a, _ = textured_pair()
    assert psnr(a, a.copy()) == math.inf


def test_psnr_of_constant_offset_of_one():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-9)
    assert psnr(a, a + 1) == pytest.approx(48.1308, abs=1e-4)


def test_psnr_averages_over_all_channels():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[..., 0] = 3  # MSE 9 on one channel of three → 3 overall
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 3.0), abs=1e-9)


def test_metrics_reject_bad_inputs():
    a, b = textured_pair()
    with pytest.raises(ValueError):
        psnr(a, b[:-1])
    with pytest.raises(ValueError):
        psnr(a.astype(np.float32) / 255, b.astype(np.float32) / 255)
    with pytest.raises(ValueError):
        ms_ssim(a[:160], b[:160])


# ---------------------------------------------------------------- MS-SSIM


def test_ms_ssim_of_identical_images_is_one():
    a, _ = textured_pair()
    assert ms_ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ms_ssim_decreases_with_noise():
    values = [ms_ssim(*textured_pair(noise_sigma=sigma)) for sigma in (2.0, 5.0, 10.0, 20.0, 40.0)]
    assert all(earlier > later for earlier, later in zip(values, values[1:])), values
    assert 0.5 < values[-1] < values[0] < 1.0


@pytest.mark.parametrize("shape", [(192, 192), (193, 201)])
def test_ms_ssim_matches_straightforward_implementation(shape):
    a, b = textured_pair(shape)
    assert ms_ssim(a, b) == pytest.approx(reference_ms_ssim(a, b), abs=1e-10)


def test_ms_ssim_pinned_value():
    """pytorch_msssim 1.0.0 gives 0.962401597 on this pair (float64 inputs; its window is normalised in float32)."""
    a, b = textured_pair()
    assert ms_ssim(a, b) == pytest.approx(0.9624016, abs=2e-6)
    assert psnr(a, b) == pytest.approx(28.125785, abs=1e-5)


def test_ms_ssim_accepts_pil_images():
    a, b = textured_pair()
    assert ms_ssim(Image.fromarray(a), Image.fromarray(b)) == ms_ssim(a, b)


# ---------------------------------------------------------------- Bjontegaard


def _load_shared_bd_rate():
    path = ANCHORS_DIR / "bd_rate.py"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared folder must sit beside the repository)")
    spec = importlib.util.spec_from_file_location("shared_bd_rate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _anchor_curves() -> dict[str, tuple[list[float], list[float]]]:
    curves: dict[str, tuple[list[float], list[float]]] = {}
    with open(ANCHORS_DIR / "kodak_rd_anchors.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["psnr"]:
                rates, quality = curves.setdefault(row["codec"], ([], []))
                rates.append(float(row["bpp"]))
                quality.append(float(row["psnr"]))
    return curves


@pytest.mark.parametrize(
    "codec, expected",
    [("webp", -36.6), ("bmshj2018-factorized-mse_cpu", -45.0), ("bmshj2018-hyperprior-mse_cpu", -55.3),
     ("bpg-444-x265-ycbcr", -59.1)],
)
def test_bd_rate_matches_shared_script_on_anchors(codec, expected):
    shared = _load_shared_bd_rate()
    curves = _anchor_curves()
    jpeg, test = curves["jpeg"], curves[codec]
    ours = bd_rate(*jpeg, *test)
    assert ours == pytest.approx(shared.bd_rate(*jpeg, *test)[0], abs=0.01)
    assert ours == pytest.approx(expected, abs=0.05)
    assert bd_psnr(*jpeg, *test) == pytest.approx(shared.bd_psnr(*jpeg, *test)[0], abs=1e-4)


def test_bd_metrics_on_synthetic_curves():
    rates = np.array([0.12, 0.19, 0.29, 0.44, 0.65, 0.97, 1.35, 1.83])
    quality = 30.0 + 4.2 * np.log2(rates / 0.3)
    assert bd_rate(rates, quality, rates, quality) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(rates, quality, 0.8 * rates, quality) == pytest.approx(-20.0, abs=1e-6)
    assert bd_psnr(rates, quality, rates, quality + 1.0) == pytest.approx(1.0, abs=1e-9)
    shuffled = np.random.default_rng(0).permutation(rates.size)
    assert bd_rate(rates, quality, 0.8 * rates[shuffled], quality[shuffled]) == pytest.approx(-20.0, abs=1e-6)


def test_bd_metrics_reject_unusable_curves():
    rates = [0.1, 0.2, 0.4, 0.8]
    with pytest.raises(ValueError):
        bd_rate(rates[:3], [25, 28, 31], rates, [25, 28, 31, 34])
    with pytest.raises(ValueError):
        bd_rate(rates, [25, 28, 31, 34], rates, [40, 41, 42, 43])
    with pytest.raises(ValueError):
        bd_psnr(rates, [25, 28, 31, 34], [2.0, 3.0, 4.0, 5.0], [25, 28, 31, 34])


def test_psnr_at_bpp_interpolates_in_log_rate():
    rates, quality = [0.4, 0.1, 0.2], [34.0, 28.0, 31.0]
    assert psnr_at_bpp(rates, quality, 0.2) == pytest.approx(31.0)
    assert psnr_at_bpp(rates, quality, math.sqrt(0.1 * 0.2)) == pytest.approx(29.5)
    assert psnr_at_bpp(rates, quality, 0.3) == pytest.approx(31.0 + 3.0 * math.log(1.5) / math.log(2.0))
    assert psnr_at_bpp(rates, quality, 0.1) == pytest.approx(28.0)
    assert psnr_at_bpp(rates, quality, 0.09) is None
    assert psnr_at_bpp(rates, quality, 0.5) is None


def test_psnr_gap_on_grid():
    rates = [0.1, 0.3, 0.6, 1.2]
    quality = [26.0, 29.0, 32.0, 35.0]
    gap = psnr_gap_on_grid(rates, [q + 1 for q in quality], rates, quality, 0.25, 1.0)
    assert gap["above_everywhere"] and gap["min_gap_db"] == pytest.approx(1.0)
    assert (gap["low_bpp"], gap["high_bpp"]) == (0.25, 1.0)
    crossing = psnr_gap_on_grid(rates, [25.0, 29.5, 31.0, 36.0], rates, quality, 0.25, 1.0)
    assert not crossing["above_everywhere"] and 0 < crossing["fraction_above"] < 1
    assert psnr_gap_on_grid([2.0, 3.0], [30, 31], rates, quality, 0.25, 1.0) is None



@pytest.mark.parametrize("end", [0.1938728458462594, 1.0136075481816968])
def test_a_curves_own_end_points_are_inside_its_range(end, monkeypatch):
    """On AVX512 CPUs numpy's log(end) is one ulp below math.log(end) for these rates (an AVX2-only CPU agrees
    with math.log): the range check must not use logs. numpy's log is made one ulp low here, so every machine
    tests that case."""
    exact_log = np.log
    monkeypatch.setattr(np, "log", lambda values: np.nextafter(exact_log(values), -np.inf))
    assert math.log(end) > np.log(np.array([end]))[0]
    rates, quality = [0.05, 0.08, 0.12, end], [24.0, 25.0, 26.0, 30.0]
    assert psnr_at_bpp(rates, quality, end) == pytest.approx(30.0)
    gap = psnr_gap_on_grid(rates, quality, [0.05, 0.5, 1.5, 2.0], [20.0, 25.0, 30.0, 31.0], 0.1, 2.0)
    assert gap is not None and gap["high_bpp"] == end


# ---------------------------------------------------------------- evaluation pipeline


class JpegStandInCodec:
    """Stand-in for ``service.codec.Codec``: level n is JPEG at quality 20n, a container holds several levels."""

    levels = 4
    model_id = "stand-in"

    def compress(self, image: Image.Image, levels) -> bytes:
        parts = []
        for level in levels:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=20 * level)
            parts.append(bytes([level]) + len(buffer.getvalue()).to_bytes(4, "big") + buffer.getvalue())
        return b"".join(parts)

    def _parts(self, data: bytes) -> dict[int, bytes]:
        parts, offset = {}, 0
        while offset < len(data):
            size = int.from_bytes(data[offset + 1 : offset + 5], "big")
            parts[data[offset]] = data[offset : offset + 5 + size]
            offset += 5 + size
        return parts

    def extract(self, data: bytes, level: int) -> bytes:
        return self._parts(data)[level]

    def decompress(self, data: bytes, level: int) -> Image.Image:
        return Image.open(io.BytesIO(self._parts(data)[level][5:])).convert("RGB")


def test_evaluation_pipeline_with_stand_in_codec():
    images = [textured_pair(seed=seed)[0] for seed in (1, 2)]
    dataset = ImageSet(["kodim09.png", "kodim10.png"], images, "0" * 64)
    points, check = evaluate.evaluate_runtime_codec(JpegStandInCodec(), dataset, progress=lambda _: None)
    assert check == {"extract_equals_single_level_compress": True, "rate_from": "extract"}
    assert [p["setting"] for p in points] == [1, 2, 3, 4]
    size, decoded = evaluate.pillow_round_trip(images[1], "JPEG", quality=40)
    level2 = points[1]["per_image"]["kodim10.png"]
    assert level2["bytes"] == size + 5
    assert level2["bpp"] == pytest.approx((size + 5) * 8 / (192 * 192))
    assert level2["psnr"] == pytest.approx(psnr(images[1], np.asarray(decoded)))
    assert points[1]["mean_bpp"] == pytest.approx(np.mean([m["bpp"] for m in points[1]["per_image"].values()]))

    codecs = {"sslic": {"points": points}}
    for key, image_format in (("jpeg", "JPEG"), ("jpeg_optimize", "JPEG"), ("webp", "WEBP")):
        extra = {"optimize": True} if key == "jpeg_optimize" else None
        codecs[key] = {"points": evaluate.evaluate_pillow(dataset, image_format, [10, 30, 50, 70, 90], extra,
                                                          progress=lambda _: None)}
    summary = evaluate.summarize(codecs, {})
    # the stand-in is JPEG with a 5-byte header: its BD-rate against JPEG is within the fitting noise
    assert abs(summary["bd"]["sslic_vs_jpeg"]["bd_rate_percent"]) < 5
    assert summary["bd"]["jpeg_optimize_vs_jpeg"]["bd_rate_percent"] < 0
    assert set(summary["psnr_at_bpp"]) == {"sslic", "jpeg", "jpeg_optimize", "webp"}
    report = {"date": "d", "dataset": {"dir": "x", "images": 2, "sha256": "0" * 64}, "model": {"model_id": "m"},
              "codecs": codecs, "summary": summary}
    markdown = evaluate.render_markdown(report)
    assert "## sslic per level" in markdown and "kodim10" in markdown and "NIQE" in markdown
    report["model"] = {"model_id": "m", "rdoq_lambda": [0.1, 0],
                       "entropy_coding": {"method": "channel-context", "activity": "learned",
                                          "spatial_buckets": [0, 8], "signs": ["learned", "learned"]}}
    assert ("m (entropy coding: channel-context with the learned activity, checkerboard of 8 spatial buckets at "
            "levels 2, sign prediction (learned / learned); "
            "RDO rounding λ per level: 0.1 / 0") in evaluate.render_markdown(report)
