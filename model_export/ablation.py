"""The paper's ablations (section 4) with our code: every variant trained from scratch on the same budget.

    python -m model_export.ablation --base configs/ablation.yaml [--out docs/results] [--runs-dir runs/ablation]

Variants (``VARIANTS``): the reference (frozen SimCLR backbone, attention in the encoder), the same without the
self-supervised backbone (a stem learned from the pixels), and self-attention nowhere, in the decoder only, and in
both. Each one trains with the base config's steps, crops, schedule and seed (so every variant sees the same crops
in the same order), then its final weights are measured on val and on Kodak: mean estimated bpp (−log₂ of the
likelihoods of the rounded latents) and mean PSNR (8-bit RGB) per level. BD-rate and BD-PSNR of every variant
against the reference follow. Kodak is only measured, never used to choose anything.

Runs are resumable: a variant whose ``last.pt`` already holds the full step count is not trained again, and its
measurement is kept in ``measured.json`` beside it, keyed by the sha256 of ``last.pt`` and of the datasets, so
adding a variant measures only that one. Writes ``ablations.json``, ``ablations_rd.png`` and ``ablations.md`` to
``--out``.

``--reference-report`` compares the variants with the reference of an earlier report instead of training it
again (another sample of the same base config, perhaps trained on another machine): the earlier report's base
config and datasets must be this one's, and its reference entry is copied into the new report, marked with
``from_report``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .config import ExperimentConfig, load_config
from .data import ImageSet
from .model import SSLIC
from .runtime import ensure_fast_malloc, set_threads
from .train import Trainer
from .validation import evaluate_images

__all__ = [
    "VARIANTS", "REFERENCE", "variant_config", "train_variant", "measure_variant", "measure_run", "compare", "main",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KODAK = REPO.parent / "shared" / "data" / "kodak"

# name → (model overrides, description); the first is the reference every other variant is compared with
VARIANTS: dict[str, tuple[dict, str]] = {
    "simclr_encoder": ({"backbone": "simclr", "attention": "encoder"}, "SimCLR backbone, attention in the encoder"),
    "learned_encoder": ({"backbone": "learned", "attention": "encoder"}, "learned stem, attention in the encoder"),
    "simclr_none": ({"backbone": "simclr", "attention": "none"}, "SimCLR backbone, no attention"),
    "simclr_decoder": ({"backbone": "simclr", "attention": "decoder"}, "SimCLR backbone, attention in the decoder"),
    "simclr_both": ({"backbone": "simclr", "attention": "both"}, "SimCLR backbone, attention in both"),
    "simclr_encoder_no_shortcut": ({"backbone": "simclr", "attention": "encoder", "pixel_shortcut": False},
                                   "the reference without the pixel shortcut (the paper's exact encoder)"),
    "simclr7000_encoder": ({"backbone": "simclr", "attention": "encoder",
                            "backbone_checkpoint": "checkpoints/simclr_backbone_7000.pt"},
                           "the reference with a backbone pretrained 10x longer (7000 SimCLR steps, not 700)"),
    "random_encoder": ({"backbone": "simclr", "attention": "encoder", "backbone_checkpoint": None},
                       "the reference with the same ResNet-50 group 1 frozen at its seeded random initialisation"),
}
REFERENCE = "simclr_encoder"


def variant_config(base: ExperimentConfig, variant: str) -> ExperimentConfig:
    """The base config with the variant's model overrides; the name becomes ``<base name>-<variant>``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    data = copy.deepcopy(base.to_dict())
    data["name"] = f"{base.name}-{variant}"
    # the loss stays the base's: a variant with another backbone keeps the base backbone's perceptual features
    if data["loss"].get("perceptual_checkpoint") is None:
        data["loss"]["perceptual_checkpoint"] = data["model"].get("backbone_checkpoint")
    data["model"].update(VARIANTS[variant][0])
    return ExperimentConfig.from_dict(data)


def train_variant(config: ExperimentConfig, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) one variant to ``config.train.steps``; returns its step, wall time and parameters."""
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, run_dir, torch.device("cpu"), quiet=True)
    last = run_dir / "last.pt"
    if last.is_file():
        trainer.load_state(torch.load(last, map_location="cpu", weights_only=False))
        log(f"{config.name}: resumed at step {trainer.step}")
    else:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    if trainer.step < config.train.steps:
        trainer.run()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "steps": trainer.step,
        "train_seconds": round(trainer.elapsed, 1),
        "seconds_per_step": round(trainer.elapsed / max(trainer.step, 1), 3),
        "trainable_parameters": trainable,
        "skipped_updates": trainer.skipped,
        "val_history": trainer.val_history,
    }


def load_final_model(config: ExperimentConfig, run_dir: Path) -> SSLIC:
    """The variant's final weights (``last.pt``), not its best validation point: the budget is the same for all."""
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    model = SSLIC(config.model, load_backbone_weights=False)
    model.load_state_dict(state["model"])
    return model.eval()


def measure_variant(model: SSLIC, datasets: dict[str, ImageSet]) -> dict:
    """Mean estimated bpp and PSNR per level on each dataset."""
    return {name: evaluate_images(model, dataset.images) for name, dataset in datasets.items()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure_run(config: ExperimentConfig, run_dir: Path, datasets: dict[str, ImageSet]) -> tuple[dict, bool]:
    """The variant's measurement, from ``measured.json`` when its weights and datasets are unchanged.

    Returns the per-dataset curves and whether they came from the cache.
    """
    key = {"weights_sha256": _file_sha256(run_dir / "last.pt"),
           "datasets": {name: dataset.sha256 for name, dataset in datasets.items()}}
    cache = run_dir / "measured.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["rd"], True
    rd = measure_variant(load_final_model(config, run_dir), datasets)
    cache.write_text(json.dumps({"key": key, "rd": rd}, indent=1))
    return rd, False


def compare(results: dict[str, dict], reference: str = REFERENCE) -> dict:
    """BD-rate (%) and BD-PSNR (dB) of every variant against ``reference``, per dataset (``evaluate``'s entries)."""
    from .evaluate import _bd_entry

    return {
        variant: {
            dataset: _bd_entry((curve["bpp"], curve["psnr"]),
                               (results[reference]["rd"][dataset]["bpp"], results[reference]["rd"][dataset]["psnr"]))
            for dataset, curve in result["rd"].items()
        }
        for variant, result in results.items()
    }


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def render_markdown(report: dict) -> str:
    """Tables: BD metrics against the reference, then the per-level points of every variant."""
    base = report["base_config"]
    lines = [
        f"# Ablations (base config `{report['base_config_path']}`)",
        "",
        f"Every variant: {base['train']['steps']} steps from scratch, {base['train']['crop']}² crops, batch "
        f"{base['train']['batch_size']}, seed {base['train']['seed']}, final weights. Rates are estimated from "
        "the entropy model (−log₂ likelihoods of the rounded latents), PSNR on 8-bit RGB. BD numbers are against "
        f"`{report['reference']}`; negative BD-rate / positive BD-PSNR = better than the reference.",
        "",
    ]
    borrowed = report["variants"][report["reference"]].get("from_report")
    if borrowed:
        lines += [f"The reference was not trained in this set: its entry is `{borrowed}`'s (same base config, "
                  "same datasets).", ""]
    lines += [
        "| variant | what | s/step | val BD-rate | val BD-PSNR | Kodak BD-rate | Kodak BD-PSNR |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, result in report["variants"].items():
        bd = report["bd_vs_reference"][variant]
        lines.append(
            f"| `{variant}` | {result['description']} | {result['training']['seconds_per_step']:.2f} | "
            f"{_fmt(bd['val']['bd_rate_percent'], 1, True)} % | {_fmt(bd['val']['bd_psnr_db'], 2, True)} dB | "
            f"{_fmt(bd['kodak']['bd_rate_percent'], 1, True)} % | {_fmt(bd['kodak']['bd_psnr_db'], 2, True)} dB |"
        )
    for dataset in ("val", "kodak"):
        levels = len(next(iter(report["variants"].values()))["rd"][dataset]["bpp"])
        lines += ["", f"## {dataset}: bpp / PSNR (dB) per level", "",
                  "| variant | " + " | ".join(f"level {i}" for i in range(1, levels + 1)) + " |",
                  "| --- |" + " --- |" * levels]
        for variant, result in report["variants"].items():
            curve = result["rd"][dataset]
            cells = [f"{b:.3f} / {q:.2f}" for b, q in zip(curve["bpp"], curve["psnr"])]
            lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """One panel per dataset: PSNR against estimated bpp for every variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = ("val", "kodak")
    figure, axes = plt.subplots(1, len(datasets), figsize=(12, 5))
    for axis, dataset in zip(axes, datasets):
        for variant, result in report["variants"].items():
            curve = result["rd"][dataset]
            style = {"linewidth": 2.2, "color": "black"} if variant == report["reference"] else {"linewidth": 1.2}
            axis.plot(curve["bpp"], curve["psnr"], marker="o", markersize=4, label=variant, **style)
        axis.set_title(f"{dataset} ({report['datasets'][dataset]['images']} images)")
        axis.set_xscale("log")
        axis.set_xlabel("estimated bits per pixel (log scale)")
        axis.set_ylabel("PSNR RGB (dB)")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Ablations, {report['base_config']['train']['steps']} steps per variant")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train and compare the paper's ablation variants.")
    parser.add_argument("--base", default="configs/ablation.yaml", help="config every variant starts from")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (reference first)")
    parser.add_argument("--runs-dir", default="runs/ablation")
    parser.add_argument("--kodak", default=str(DEFAULT_KODAK))
    parser.add_argument("--kodak-limit", type=int, default=None, help="measure only the first N Kodak images")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--train-only", action="store_true", help="train the variants, measure nothing")
    parser.add_argument("--reference-report", default=None,
                        help="an ablations.json of the same base config whose reference to compare with, "
                             "instead of training the reference in this set")
    return parser.parse_args(argv)


def load_reference(path: Path, base: ExperimentConfig) -> tuple[dict, dict]:
    """The reference entry of an earlier report and the datasets it was measured on, checked to share ``base``."""
    try:
        report = json.loads(path.read_text())
        entry, datasets = report["variants"][report["reference"]], report["datasets"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--reference-report {path}: not an ablations report with its reference ({error})")
    if report["reference"] != REFERENCE:
        raise SystemExit(f"--reference-report {path}: its reference is {report['reference']!r}, not {REFERENCE!r}")
    if report.get("base_config") != base.to_dict():
        raise SystemExit(f"--reference-report {path}: trained from another base config than this set's")
    return {**entry, "from_report": str(path)}, datasets


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict | None:
    if argv is None:
        ensure_fast_malloc("model_export.ablation")
    args = parse_args(argv)
    base = load_config(args.base)
    set_threads(base.train.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.reference_report and REFERENCE in variants:
        raise SystemExit(f"--reference-report replaces training {REFERENCE!r}: leave it out of --variants")
    if not args.reference_report and REFERENCE not in variants:
        raise SystemExit(f"--variants must include the reference {REFERENCE!r} (or name --reference-report)")
    borrowed = load_reference(Path(args.reference_report), base) if args.reference_report else None
    configs = {variant: variant_config(base, variant) for variant in variants}
    runs_dir = Path(args.runs_dir)
    training = {}
    for variant, config in configs.items():
        started = time.monotonic()
        training[variant] = train_variant(config, runs_dir / variant, log)
        log(f"{config.name}: {training[variant]['steps']} steps, {time.monotonic() - started:.0f} s this call")
    if args.train_only:
        return None
    datasets = {
        "val": ImageSet.from_dir(base.train.val_dir),
        "kodak": ImageSet.from_dir(args.kodak, limit=args.kodak_limit),
    }
    measured_on = {name: {"images": len(d.names), "sha256": d.sha256} for name, d in datasets.items()}
    results = {}
    if borrowed:
        if borrowed[1] != measured_on:
            raise SystemExit(f"--reference-report {args.reference_report}: measured on other datasets than this set's")
        results[REFERENCE] = borrowed[0]
    for variant, config in configs.items():
        rd, cached = measure_run(config, runs_dir / variant, datasets)
        results[variant] = {"description": VARIANTS[variant][1], "model": VARIANTS[variant][0], "rd": rd,
                            "training": training[variant]}
        log(f"{variant}{' (measured before)' if cached else ''}: " + "; ".join(
            f"{name} " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in zip(rd[name]["bpp"], rd[name]["psnr"]))
            for name in rd))
    report = {
        "base_config_path": args.base,
        "base_config": base.to_dict(),
        "reference": REFERENCE,
        "datasets": measured_on,
        "variants": results,
        "bd_vs_reference": compare(results),
        "torch": str(torch.__version__),
        "cpu": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablations.json").write_text(json.dumps(report, indent=1))
    (out / "ablations.md").write_text(render_markdown(report))
    plot(report, out / "ablations_rd.png")
    log(f"wrote {out / 'ablations.json'}, {out / 'ablations.md'}, {out / 'ablations_rd.png'}")
    return report


if __name__ == "__main__":
    main()
