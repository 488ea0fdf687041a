"""Self-supervised SimCLR pretraining (Chen et al. 2020) of the ResNet-50 group-1 backbone.

    python -m model_export.simclr --data ../shared/data/train --out checkpoints/simclr_backbone.pt

Two random views of each crop (crop + resize, flip, colour jitter, greyscale, blur) pass through the backbone,
global average pooling and a projection MLP; the NT-Xent loss pulls the two views of one crop together
against every other view in the batch. Resumable (``--resume``), CPU or CUDA, tqdm progress; the output
holds the backbone in torchvision layout and loads with ``load_simclr_backbone``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .backbone import ResNet50Group1
from .data import CropSampler, ImageSet
from .runtime import ensure_fast_malloc, native_bf16, select_device, set_threads

__all__ = ["SimCLR", "nt_xent", "augment", "train_simclr"]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross entropy over 2N views; positives are (z1[k], z2[k])."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(nn.Module):
    """Backbone → global average pool → projection head (256 → hidden → out)."""

    def __init__(self, hidden: int = 512, out: int = 128):
        super().__init__()
        self.backbone = ResNet50Group1()
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-image Gaussian blur; ``sigma`` (B,) in pixels."""
    radius = int(math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    b, c, h, w = x.shape
    padded = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    k = kernel.repeat_interleave(c, dim=0)
    out = F.conv2d(padded, k[:, None, None, :], groups=b * c)
    out = F.conv2d(out, k[:, None, :, None], groups=b * c)
    return out.reshape(b, c, h, w)


def _grey(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def augment(x: Tensor, out_size: int, generator: torch.Generator, strength: float = 0.5) -> Tensor:
    """One SimCLR view of each image in x (B,3,S,S) in [0,1]."""
    b, _, size, _ = x.shape
    device = x.device

    def uniform(low: float, high: float, shape=(b,)) -> Tensor:
        return torch.rand(shape, generator=generator).to(device) * (high - low) + low

    # random resized crop: area 25–100 % of the source, aspect 3/4–4/3, via an affine sampling grid
    area = uniform(0.25, 1.0)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = uniform(0, 1) * (1 - cw) * 2 - (1 - cw)
    cy = uniform(0, 1) * (1 - ch) * 2 - (1 - ch)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (b, 3, out_size, out_size), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # colour jitter with probability 0.8: brightness, contrast, saturation, hue (rotation in YIQ)
    s = strength
    jitter = (uniform(0, 1) < 0.8).float()[:, None, None, None]
    jittered = view * uniform(1 - 0.8 * s, 1 + 0.8 * s)[:, None, None, None]
    mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
    jittered = (jittered - mean) * uniform(1 - 0.8 * s, 1 + 0.8 * s)[:, None, None, None] + mean
    grey = _grey(jittered)
    jittered = (jittered - grey) * uniform(1 - 0.8 * s, 1 + 0.8 * s)[:, None, None, None] + grey
    angle = uniform(-0.2 * s, 0.2 * s) * 2 * math.pi
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=device)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, jittered)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    i_rot = yiq[:, 1] * cos - yiq[:, 2] * sin
    q_rot = yiq[:, 1] * sin + yiq[:, 2] * cos
    yiq = torch.stack([yiq[:, 0], i_rot, q_rot], dim=1)
    jittered = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    view = jitter * jittered + (1 - jitter) * view

    # greyscale with probability 0.2, blur with probability 0.5 (σ 0.1–2.0 px)
    grey_mask = (uniform(0, 1) < 0.2).float()[:, None, None, None]
    view = grey_mask * _grey(view) + (1 - grey_mask) * view
    blur_mask = (uniform(0, 1) < 0.5).float()[:, None, None, None]
    view = blur_mask * _gaussian_blur(view, uniform(0.1, 2.0)) + (1 - blur_mask) * view
    return view.clamp(0, 1)


def backbone_checkpoint(model: SimCLR, meta: dict) -> dict:
    """The backbone in torchvision layout under ``state_dict``, as the official conversions store it."""
    return {"state_dict": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, "meta": meta}


def train_simclr(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    device = select_device(args.device)
    torch.manual_seed(args.seed)
    data = ImageSet.from_dir(args.data, limit=args.limit_images)
    sampler = CropSampler(data.images, args.source_crop, min_downscale=0.5, seed=args.seed)
    model = SimCLR().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast_bf16 = args.precision == "bf16" and native_bf16(device)
    if args.precision == "bf16" and not autocast_bf16:
        print("--precision bf16 but this device has no bf16 instructions: training in fp32", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(args.seed)
    state_path = Path(args.out).with_suffix(".state.pt")
    step, history, elapsed = 0, [], 0.0
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state(state["sampler"])
        generator.set_state(state["generator"])
        step, history, elapsed = state["step"], state["history"], state.get("elapsed", 0.0)
    start = time.monotonic() - elapsed
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None

    def save() -> None:
        meta = {
            "kind": "sslic-simclr-backbone",
            "layout": "torchvision-resnet50",
            "input": "RGB in [0,1], no mean/std normalisation",
            "step": step,
            "steps": args.steps,
            "temperature": args.temperature,
            "batch_size": args.batch_size,
            "view_size": args.view_size,
            "data_sha256": data.sha256,
            "final_loss": history[-1]["loss"] if history else None,
            "precision": "bf16" if autocast_bf16 else "fp32",
            "elapsed_s": round(time.monotonic() - start, 1),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(backbone_checkpoint(model, meta), args.out)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state(),
            "generator": generator.get_state(),
            "step": step,
            "history": history,
            "elapsed": time.monotonic() - start,
        }
        torch.save(state, state_path)
        Path(args.out).with_suffix(".json").write_text(json.dumps({**meta, "history": history}, indent=1))

    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="simclr", dynamic_ncols=True, disable=args.quiet)
    window: list[float] = []
    while step < args.steps:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        source = sampler.batch(args.batch_size).to(device)
        v1 = augment(source, args.view_size, generator)
        v2 = augment(source, args.view_size, generator)
        if args.channels_last:
            v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            z1, z2 = model(v1), model(v2)
        loss = nt_xent(z1.float(), z2.float(), args.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(window):.3f}", lr=f"{lr:.1e}")
        if step % args.log_every == 0 or step == args.steps:
            mean_loss = round(float(np.mean(window)), 4)
            history.append({"step": step, "loss": mean_loss, "elapsed_s": round(time.monotonic() - start, 1)})
            window = []
        if step % args.checkpoint_every == 0:
            save()
        if deadline and time.monotonic() > deadline:
            break
    bar.close()
    save()
    return {"step": step, "history": history}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/train")
    parser.add_argument("--out", default="checkpoints/simclr_backbone.pt")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--source-crop", type=int, default=192, help="side of the crop both views come from")
    parser.add_argument("--view-size", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast where the device has bf16 instructions (fp32 otherwise)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        ensure_fast_malloc("model_export.simclr")
    args = parse_args(argv)
    result = train_simclr(args)
    print(json.dumps({"step": result["step"], "loss": result["history"][-1]["loss"] if result["history"] else None}))


if __name__ == "__main__":
    main()
