"""Fit the decoder's input offsets (``decoder.InputOffsets``) to the symbols the runtime codes, after training.

    python -m model_export.fit_offsets CHECKPOINT MODEL_DIR --out CHECKPOINT [--data-dir ../shared/data/train]
        [--val-dir ../shared/data/val] [--every 4] [--epochs 3] [--lr 0.01] [--levels L,…] [--threads 2]

MODEL_DIR is CHECKPOINT's exported folder: its encoder, tables and default RDO λ give each image's symbols exactly
as the service codes them. Per level (by default those the runtime rounds with RDO, λ > 0: plain rounding is what the
decoder was trained on, and the offsets stay 0 there), Adam fits the offsets δ (C, K) for the MSE of the decoded
image (the whole image, cropped to its size) over every ``--every``-th training image for ``--epochs`` epochs; no
other weight changes. The output checkpoint has ``model.decoder_input_offsets: true`` and the val PSNR per level
before and after in its summary (``input_offsets``); export it as usual. Every |δ| stays at most
``decoder.MAX_INPUT_OFFSET`` (below ½: the runtime cancels the offsets of a plainly rounded level by feeding ŷ − δ).
Refitting a checkpoint that has offsets starts again from zero.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from service.codec import Codec, pad_image

from .checkpoint import load_codec_checkpoint, save_codec_checkpoint
from .config import ExperimentConfig
from .data import IMAGE_SUFFIXES
from .decoder import MAX_INPUT_OFFSET
from .model import OFFSET_KEYS, SSLIC

__all__ = ["fit_offsets", "with_input_offsets", "LevelImage"]

class LevelImage:
    """One image as the runtime codes it: its pixels (3, H, W) in [0, 1], uncropped size, and per level the
    symbols (C, h, w) of its padded size."""

    def __init__(self, codec: Codec, path: Path):
        loaded = codec.load_image(path.read_bytes())
        self.name = path.name
        self.rgb = loaded.rgb
        self.pixels = torch.from_numpy(pad_image(loaded.rgb, codec.model.padding_multiple))
        self.symbols = codec.symbols(loaded, list(range(1, codec.levels + 1)), refine_steps=0)


def with_input_offsets(model: SSLIC, config: ExperimentConfig) -> tuple[SSLIC, ExperimentConfig]:
    """A copy of ``model`` whose decoder has zero input offsets and the entropy models' medians."""
    config = ExperimentConfig.from_dict(config.to_dict())
    config.model.decoder_input_offsets = True
    fitted = SSLIC(config.model, load_backbone_weights=False)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(OFFSET_KEYS)}
    missing, unexpected = fitted.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(OFFSET_KEYS) for k in missing):
        raise ValueError(f"the checkpoint does not match its config: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for offsets, bottleneck in zip(fitted.decoder.input_offsets, fitted.entropy):
            offsets.medians.copy_(bottleneck.medians().reshape(-1))
    fitted.eval()
    return fitted, config


def _decoded(model: SSLIC, image: LevelImage, level: int, medians: torch.Tensor) -> torch.Tensor:
    """The decoded image (3, H, W), unclamped, of ``image``'s symbols at ``level``."""
    y_hat = torch.from_numpy(image.symbols[level].astype(np.float32)) + medians.view(-1, 1, 1)
    height, width = image.rgb.shape[:2]
    y_hat = y_hat[None].contiguous(memory_format=torch.channels_last)  # 1.5–2× faster convolutions on the CPU
    return model.decoder(y_hat, level)[0, :, :height, :width]


def _psnr(model: SSLIC, images: list[LevelImage], level: int, medians: torch.Tensor) -> float:
    """Mean PSNR (dB, 8-bit RGB, as the service rounds) of ``images`` decoded at ``level``."""
    values = []
    with torch.no_grad():
        for image in images:
            decoded = _decoded(model, image, level, medians).clamp(0, 1).permute(1, 2, 0).numpy()
            error = np.mean((np.round(decoded * 255) - image.rgb.astype(np.float64)) ** 2)
            values.append(10 * np.log10(255**2 / max(error, 1e-12)))
    return float(np.mean(values))


def fit_offsets(model: SSLIC, train: list[LevelImage], val: list[LevelImage], epochs: int, lr: float,
                levels: list[int] | None = None, log=print) -> dict:
    """Fit the ``InputOffsets`` of ``levels`` (default: all) of ``model`` in place, each |δ| at most
    ``MAX_INPUT_OFFSET`` (projected after every step); returns the val PSNR per level before and after."""
    model.requires_grad_(False)
    model.decoder.to(memory_format=torch.channels_last)
    report = {}
    rng = np.random.default_rng(0)
    for level in levels or range(1, model.levels + 1):
        offsets = model.decoder.input_offsets[level - 1]
        medians = offsets.medians.detach().clone()
        with torch.no_grad():
            offsets.offsets.zero_()
        before = _psnr(model, val, level, medians) if val else None
        offsets.offsets.requires_grad_(True)
        optimizer = torch.optim.Adam([offsets.offsets], lr=lr)
        start = time.time()
        for _ in range(epochs):
            for index in rng.permutation(len(train)):
                image = train[index]
                height, width = image.rgb.shape[:2]
                error = _decoded(model, image, level, medians) - image.pixels[:, :height, :width]
                loss = 1000 * torch.mean(error**2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    offsets.offsets.clamp_(-MAX_INPUT_OFFSET, MAX_INPUT_OFFSET)
        offsets.offsets.requires_grad_(False)
        after = _psnr(model, val, level, medians) if val else None
        report[str(level)] = {"val_psnr_before": before, "val_psnr_after": after,
                              "mean_offset_per_class": offsets.offsets.mean(dim=0).tolist()}
        log(f"level {level}: {time.time() - start:.0f} s, val PSNR {before} -> {after}")
    return report


def _images(codec: Codec, directory: Path, every: int) -> list[LevelImage]:
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::every]
    if not paths:
        raise SystemExit(f"no images in {directory}")
    return [LevelImage(codec, path) for path in paths]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model_dir", help="the checkpoint's exported model folder (the runtime's symbols)")
    parser.add_argument("--out", required=True, help="checkpoint to write")
    parser.add_argument("--data-dir", default="../shared/data/train")
    parser.add_argument("--val-dir", default="../shared/data/val", help="'' for none")
    parser.add_argument("--every", type=int, default=4, help="fit on every N-th training image")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--levels", default=None, metavar="L[,L…]",
                        help="levels to fit (default: those the runtime rounds with RDO, λ > 0; the others keep 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.every < 1 or args.epochs < 1 or args.lr <= 0:
        parser.error("--every and --epochs must be at least 1 and --lr positive")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, config, summary = load_codec_checkpoint(args.checkpoint)
    model, config = with_input_offsets(model, config)
    codec = Codec.from_dir(args.model_dir, threads=args.threads)
    for level, offsets in enumerate(model.decoder.input_offsets):
        if not np.allclose(codec.model.tables[level].medians, offsets.medians.numpy(), atol=1e-3):
            raise SystemExit(f"{args.model_dir} was not exported from {args.checkpoint}: level {level + 1}'s "
                             "medians differ")
    if args.levels:
        levels = sorted({int(v) for v in args.levels.split(",")})
        if not all(1 <= level <= codec.levels for level in levels):
            parser.error(f"--levels must be in 1..{codec.levels}")
    else:
        levels = [level for level in range(1, codec.levels + 1) if codec.rdoq_per_level[level - 1] > 0]
    train = _images(codec, Path(args.data_dir), args.every)
    val = _images(codec, Path(args.val_dir), 1) if args.val_dir else []
    report = fit_offsets(model, train, val, args.epochs, args.lr, levels, log=lambda line: print(line, flush=True))
    summary = dict(summary)
    summary["input_offsets"] = {
        "model_dir": str(args.model_dir), "model_id": codec.model_id, "data_dir": str(args.data_dir),
        "every": args.every, "images": len(train), "epochs": args.epochs, "lr": args.lr, "levels": report,
    }
    save_codec_checkpoint(args.out, model, config, summary, half=True)
    return summary["input_offsets"]


if __name__ == "__main__":
    main()
