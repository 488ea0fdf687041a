"""Learning curves of the shipped model's lineage of runs, and what more training would take.

    python -m model_export.learning_curve [--history docs/results/training_history.json] [--out docs/results]
    python -m model_export.learning_curve --append runs/default-c4 --config configs/default_continue3.yaml

``--append RUN_DIR`` adds a finished run (its ``val.jsonl`` and ``last.pt`` time) to the history, after the last
run there. The report puts every validation point on one step axis, interpolates the val PSNR at fixed rates
(linear in log-bpp between the levels), measures Pillow JPEG on the same val images, and fits
PSNR(s) = q∞ − a·s^(−b) to the points at each rate to estimate how many more steps the curve needs to reach
JPEG there. Writes ``training_curves.png`` and ``training_curves.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bd_rate import psnr_at_bpp
from .data import ImageSet

__all__ = ["append_run", "points", "rate_curves", "fit_power_law", "steps_to_reach", "jpeg_curve", "main"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HISTORY = REPO / "docs" / "results" / "training_history.json"
RATES = (0.25, 0.5, 1.0)
JPEG_QUALITIES = list(range(5, 100, 5))


def append_run(history: dict, run_dir: Path, config_path: str, device: str, init_step: int | None = None,
               fitted: bool = True) -> dict:
    """A run folder's validation points, placed after the last run of ``history`` (returns the new entry).

    ``init_step``: the step of the last run that the appended run started from (its best weights, say), when
    that is not the last run's final step; the last run's points after it leave the lineage. ``fitted=False``
    marks a run whose steps are not comparable with the others' (larger batches on a GPU): it stays on the step
    axis and in the plots but out of the power-law fits."""
    import torch

    from .config import load_config

    config = load_config(config_path)
    records = [json.loads(line) for line in (run_dir / "val.jsonl").read_text().splitlines() if line.strip()]
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    earlier = [run for run in history["runs"] if run["name"] != config.name]
    previous = earlier[-1] if earlier else None
    offset = 0
    if previous:
        start = previous["val"][0]["step"] - previous["val"][0]["run_step"]
        if init_step is not None:
            if not 0 < init_step <= previous["steps"]:
                raise ValueError(f"--init-step {init_step} is not a step of {previous['name']} (1..{previous['steps']})")
            previous["val"] = [point for point in previous["val"] if point["run_step"] <= init_step]
            previous["steps"] = init_step
        offset = start + previous["steps"]
    entry = {
        "name": config.name,
        "config": config_path,
        "init_from": previous["name"] if previous else None,
        "steps": int(state["step"]),
        "train_seconds": round(float(state["elapsed"])),
        "device": device,
        "fitted": fitted,
        "loss": {"alpha": config.loss.alpha, "gamma": config.loss.gamma},
        "val": [{"step": offset + r["step"], "run_step": r["step"], "bpp": [round(b, 4) for b in r["bpp"]],
                 "psnr": [round(q, 3) for q in r["psnr"]]} for r in records],
    }
    history["runs"] = earlier + [entry]
    return entry


def points(history: dict, fitted: bool | None = None) -> list[dict]:
    """Every validation point of every run (or of the fitted / unfitted runs only), in step order, with its run's
    name."""
    return [{"run": run["name"], **point} for run in history["runs"]
            if fitted is None or run.get("fitted", True) == fitted for point in run["val"]]


def rate_curves(history: dict, rates: Sequence[float] = RATES,
                fitted: bool | None = None) -> dict[str, list[tuple[int, float]]]:
    """Per rate: (step, val PSNR at that rate) wherever the levels of that point bracket it."""
    curves: dict[str, list[tuple[int, float]]] = {str(rate): [] for rate in rates}
    for point in points(history, fitted):
        for rate in rates:
            quality = psnr_at_bpp(point["bpp"], point["psnr"], rate)
            if quality is not None:
                curves[str(rate)].append((point["step"], quality))
    return curves


def fit_power_law(steps: Sequence[float], psnrs: Sequence[float]) -> dict | None:
    """Least-squares fit of q(s) = q∞ − a·s^(−b) (grid over b, linear in q∞ and a); None with < 4 points."""
    s = np.asarray(steps, dtype=np.float64)
    q = np.asarray(psnrs, dtype=np.float64)
    if s.size < 4:
        return None
    best = None
    for b in np.linspace(0.05, 3.0, 296):
        design = np.stack([np.ones_like(s), -(s ** -b)], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, q, rcond=None)
        residual = float(np.sum((design @ coefficients - q) ** 2))
        if coefficients[1] > 0 and (best is None or residual < best["sse"]):
            best = {"q_inf": float(coefficients[0]), "a": float(coefficients[1]), "b": float(b), "sse": residual}
    if best is not None:
        best["rmse_db"] = math.sqrt(best.pop("sse") / s.size)
    return best


def steps_to_reach(fit: dict | None, target: float) -> float | None:
    """Steps at which the fitted curve reaches ``target`` dB; None when it never does (q∞ ≤ target)."""
    if fit is None or fit["q_inf"] <= target:
        return None
    return float((fit["a"] / (fit["q_inf"] - target)) ** (1.0 / fit["b"]))


def jpeg_curve(dataset: ImageSet) -> tuple[list[float], list[float]]:
    """Pillow JPEG (4:2:0 default) mean bpp and PSNR over the quality sweep on ``dataset``."""
    from .evaluate import evaluate_pillow

    curve = evaluate_pillow(dataset, "JPEG", JPEG_QUALITIES, progress=lambda _: None)
    return [p["mean_bpp"] for p in curve], [p["mean_psnr"] for p in curve]


def plot(history: dict, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    all_points = points(history)
    levels = len(all_points[0]["bpp"])
    steps = [p["step"] for p in all_points]
    for level in range(levels):
        left.plot(steps, [p["psnr"][level] for p in all_points], marker="o", markersize=3, label=f"level {level + 1}")
        middle.plot(steps, [p["bpp"][level] for p in all_points], marker="o", markersize=3, label=f"level {level + 1}")
    for run in history["runs"][1:]:
        start = run["val"][0]["step"] - run["val"][0]["run_step"]
        for axis in (left, middle, right):
            axis.axvline(start, color="grey", linewidth=0.6, linestyle=":")
    left.set_title("val PSNR per level")
    left.set_ylabel("PSNR RGB (dB)")
    middle.set_title("val estimated bpp per level")
    middle.set_yscale("log")
    middle.set_ylabel("bpp")
    for rate, entry in report["rates"].items():
        line, = right.plot([s for s, _ in entry["points"]], [q for _, q in entry["points"]], marker="o",
                           markersize=3, label=f"at {rate} bpp")
        unfitted = entry.get("unfitted_points") or []
        if unfitted:
            right.plot([s for s, _ in unfitted], [q for _, q in unfitted], marker="x", linestyle="none",
                       color=line.get_color(), label=f"at {rate} bpp, not fitted (GPU steps)")
        if entry["jpeg_psnr"] is not None:
            right.axhline(entry["jpeg_psnr"], color=line.get_color(), linestyle="--", linewidth=0.9)
        fit = entry["fit"]
        if fit is not None:
            grid = np.geomspace(max(min(s for s, _ in entry["points"]), 1), max(steps) * 4, 100)
            right.plot(grid, fit["q_inf"] - fit["a"] * grid ** -fit["b"], color=line.get_color(), linewidth=0.7,
                       linestyle=":")
    right.set_title("val PSNR at fixed rates (dashed: JPEG; dotted: power-law fit)")
    right.set_xscale("log")
    for axis in (left, middle, right):
        axis.set_xlabel("training steps (all runs)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Learning curves of the shipped model's runs.")
    parser.add_argument("--history", default=str(DEFAULT_HISTORY))
    parser.add_argument("--append", default=None, help="a run folder to add after the last run of the history")
    parser.add_argument("--config", default=None, help="the appended run's config")
    parser.add_argument("--device", default="cpu (2 cores)", help="where the appended run trained")
    parser.add_argument("--init-step", type=int, default=None,
                        help="the last run's step the appended run started from (default: its final step)")
    parser.add_argument("--not-fitted", action="store_true",
                        help="the appended run's steps are not comparable with the others' (larger batches on a "
                             "GPU): plotted, left out of the power-law fits")
    parser.add_argument("--val", default=None, help="val images (default: the history's first config's val_dir)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    history_path = Path(args.history)
    history = json.loads(history_path.read_text())
    if args.append:
        if not args.config:
            raise SystemExit("--append needs --config")
        try:
            append_run(history, Path(args.append), args.config, args.device, args.init_step,
                       fitted=not args.not_fitted)
        except ValueError as error:
            raise SystemExit(str(error)) from error
        history_path.write_text(json.dumps(history, indent=1) + "\n")
    val_dir = args.val or str(REPO.parent / "shared" / "data" / "val")
    jpeg = jpeg_curve(ImageSet.from_dir(val_dir))
    report: dict = {"val_dir": val_dir, "jpeg_val": {"bpp": jpeg[0], "psnr": jpeg[1]}, "rates": {}}
    last_step = points(history)[-1]["step"]
    unfitted = rate_curves(history, fitted=False)
    for rate, curve in rate_curves(history, fitted=True).items():
        fit = fit_power_law([s for s, _ in curve], [q for _, q in curve])
        target = psnr_at_bpp(*jpeg, float(rate))
        reach = steps_to_reach(fit, target) if target is not None else None
        report["rates"][rate] = {
            "points": curve,
            "unfitted_points": unfitted[rate],
            "jpeg_psnr": target,
            "fit": fit,
            "steps_to_jpeg": reach,
            "more_steps_than_now": None if reach is None else max(reach - last_step, 0.0),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_curves.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(history, report, out / "training_curves.png")
    for rate, entry in report["rates"].items():
        fit = entry["fit"]
        print(f"{rate} bpp: now {entry['points'][-1][1] if entry['points'] else float('nan'):.2f} dB, JPEG "
              f"{entry['jpeg_psnr']}, fit {fit}, steps to JPEG {entry['steps_to_jpeg']}")
    return report


if __name__ == "__main__":
    main()
