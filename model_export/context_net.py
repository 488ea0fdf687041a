"""A learned context model for the entropy coder, measured against the shipped counting context.

The runtime picks each symbol's table by counting (``service.channel_context``): a weighted sum of how busy the
channels coded before it are, and the sum of its four anchor neighbours. This module asks how much a small
network could save over that with the same causal information, so the format change it would need is sized
before it is built (``docs/architecture.md``, "A learned context: measured, not built yet").

For symbol s_c(i, j) of a level, coded channel after channel and, with the checkerboard, anchors ((i + j) even)
before the other positions, the network sees only what the decoder already has:

- every earlier channel k < c at (i, j): m_k = min(|s_k|, M), the 3 × 3 window sum of m_k (edges replicated, as
  ``service.channel_context.window_sum``) and clip(s_k, −M, M). These enter one linear layer, masked so that
  channel c reads channels 0 … c − 1 only; its pre-activation is a sum over coded channels, which a decoder can
  keep as a running sum, one channel at a time;
- at a non-anchor position, the 12 anchors of its own channel at distance 1 and 3 inside the 5 × 5 window
  (|v| and v, clipped) and a flag; nothing of its own channel at an anchor;
- a learned embedding of c;

then ReLU, one hidden layer, ReLU and K = 2R + 2 logits: the symbols −R … R and an escape for the others.
Training minimises the code length (cross-entropy in bits) on symbols sampled from the training images, as the
shipped encoder rounds them.

    python -m model_export.context_net [--model-dir models/default] [--levels 4,3,2] \
        [--out docs/results/context_net.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.channel_context import window_sum
from service.codec import Codec, pad_image
from service.entropy_coder import TableCoder

from .data import ImageSet

__all__ = [
    "ContextNet", "OWN_NEIGHBOURS", "features", "class_of", "train_context_net", "code_length", "runtime_symbols",
    "table_code_length", "main",
]

# a non-anchor's own-channel anchors inside its 5 × 5 window: (di, dj) at distance 1 and 3
OWN_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -2), (-1, 2), (1, -2), (1, 2), (-2, -1), (-2, 1), (2, -1),
                  (2, 1))
OWN_FEATURES = 2 * len(OWN_NEIGHBOURS) + 1
PER_CHANNEL = 3  # m_k, its window sum, clip(s_k)
# the shipped levels' symbols: 0.35 % beyond ±15, 0.02 % beyond ±31, 1 in 10⁸ beyond ±63 (training images)
DEFAULT_RADIUS = 63
DEFAULT_CLIP = 8
DEFAULT_HIDDEN = 64
# the runtime codes an escaped value as a 5-bit length and 16-bit chunks (service.entropy_coder)
_ESCAPE_LENGTH_BITS = 5
_ESCAPE_CHUNK_BITS = 16


class ContextNet(nn.Module):
    """Logits (n, 2R + 2) of symbols at n positions from :func:`features`; channel c reads channels < c only."""

    def __init__(self, channels: int, hidden: int = DEFAULT_HIDDEN, radius: int = DEFAULT_RADIUS,
                 clip: int = DEFAULT_CLIP):
        super().__init__()
        self.channels, self.hidden, self.radius, self.clip = channels, hidden, radius, clip
        self.earlier = nn.Linear(PER_CHANNEL * channels, hidden, bias=False)
        self.own = nn.Linear(OWN_FEATURES, hidden, bias=False)
        self.embedding = nn.Embedding(channels, hidden)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * radius + 2))
        earlier = torch.arange(channels)[None, :] < torch.arange(channels)[:, None]  # [c, k]: k < c
        self.register_buffer("mask", earlier.repeat(1, PER_CHANNEL).float(), persistent=False)

    def forward(self, earlier: torch.Tensor, own: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        return self.body(self.earlier(earlier * self.mask[channel]) + self.own(own) + self.embedding(channel))


def features(symbols: np.ndarray, rows: np.ndarray, cols: np.ndarray, channel: np.ndarray,
             clip: int = DEFAULT_CLIP) -> tuple[np.ndarray, np.ndarray]:
    """What the decoder knows when it reaches symbol (channel[n], rows[n], cols[n]) of ``symbols`` (C, H, W):
    the features of every channel at that place, float32 (n, 3C) grouped by feature (the network masks the
    channels not yet coded), and the own-channel anchor features, float32 (n, 25), zero at anchors."""
    values = np.clip(symbols.astype(np.int64), -clip, clip)
    magnitude = np.abs(values)
    window = window_sum(magnitude, 3)
    earlier = np.concatenate([magnitude[:, rows, cols], window[:, rows, cols], values[:, rows, cols]]).T
    padded = np.pad(values, ((0, 0), (2, 2), (2, 2)))
    neighbours = np.stack([padded[channel, rows + 2 + di, cols + 2 + dj] for di, dj in OWN_NEIGHBOURS], axis=-1)
    second_pass = ((rows + cols) % 2 == 1)[:, None]
    own = np.concatenate([np.abs(neighbours), neighbours, np.ones_like(neighbours[:, :1])], axis=-1) * second_pass
    return earlier.astype(np.float32), own.astype(np.float32)


def class_of(values: np.ndarray, radius: int = DEFAULT_RADIUS) -> np.ndarray:
    """Class of each symbol: s + R for |s| ≤ R, else the escape 2R + 1."""
    values = np.asarray(values, dtype=np.int64)
    return np.where(np.abs(values) <= radius, values + radius, 2 * radius + 1)


def _escape_payload_bits(values: np.ndarray, radius: int) -> float:
    """Bits the runtime's escape coding spends on the values of the escaped symbols (their lengths and chunks)."""
    escaped = np.abs(values[np.abs(values) > radius]).astype(np.int64)
    lengths = np.ceil(np.log2(2 * escaped + 2))
    return float((_ESCAPE_LENGTH_BITS + _ESCAPE_CHUNK_BITS * np.ceil(lengths / _ESCAPE_CHUNK_BITS)).sum())


def _every_position(symbols: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    height, width = symbols.shape[1:]
    rows, cols = np.divmod(np.arange(height * width), width)
    return rows, cols, np.full(rows.shape, channel)


@torch.no_grad()
def code_length(net: ContextNet, symbols: np.ndarray) -> float:
    """Ideal code length in bits of ``symbols`` (C, H, W) under the network, escape payloads included."""
    net.eval()
    bits = 0.0
    for c in range(symbols.shape[0]):
        rows, cols, channel = _every_position(symbols, c)
        earlier, own = features(symbols, rows, cols, channel, net.clip)
        logits = net(torch.from_numpy(earlier), torch.from_numpy(own), torch.from_numpy(channel))
        target = torch.from_numpy(class_of(symbols[c].reshape(-1), net.radius))
        bits -= float(torch.log_softmax(logits, -1).gather(1, target[:, None]).sum()) / math.log(2)
    return bits + _escape_payload_bits(symbols, net.radius)


def _sample(images: list[np.ndarray], per_image: int, radius: int, clip: int,
            rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    parts = []
    for symbols in images:
        channels, height, width = symbols.shape
        rows, cols = rng.integers(0, height, per_image), rng.integers(0, width, per_image)
        channel = rng.integers(0, channels, per_image)
        earlier, own = features(symbols, rows, cols, channel, clip)
        parts.append((earlier, own, channel, class_of(symbols[channel, rows, cols], radius)))
    return tuple(torch.from_numpy(np.concatenate(column)) for column in zip(*parts))


def train_context_net(images: list[np.ndarray], epochs: int = 20, samples_per_image: int = 4000,
                      hidden: int = DEFAULT_HIDDEN, radius: int = DEFAULT_RADIUS, clip: int = DEFAULT_CLIP,
                      learning_rate: float = 2e-3, batch: int = 1024, seed: int = 0,
                      log: Callable[[str], None] | None = None) -> ContextNet:
    """A :class:`ContextNet` trained on symbols (C, H, W) of ``images``: each epoch draws ``samples_per_image``
    random (position, channel) pairs per image; Adam, the step size divided by 4 at 60 % and again at 85 %."""
    if not images or epochs < 1 or samples_per_image < 1:
        raise ValueError("need images, epochs ≥ 1 and samples_per_image ≥ 1")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ContextNet(images[0].shape[0], hidden, radius, clip)
    optimizer = torch.optim.Adam(net.parameters(), learning_rate)
    for epoch in range(epochs):
        scale = 1.0 if epoch < 0.6 * epochs else 0.25 if epoch < 0.85 * epochs else 1 / 16
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * scale
        earlier, own, channel, target = _sample(images, samples_per_image, radius, clip, rng)
        net.train()
        order, total = torch.randperm(len(target)), 0.0
        for start in range(0, len(target), batch):
            picked = order[start : start + batch]
            loss = nn.functional.cross_entropy(net(earlier[picked], own[picked], channel[picked]), target[picked])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(picked)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: {total / len(target) / math.log(2):.4f} bits per sampled symbol")
    return net


def runtime_symbols(codec: Codec, image_dir: str | Path, levels: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Per level of ``levels``, the symbols (C, H, W) the runtime ``codec`` codes for every image of ``image_dir``:
    its encoder, its padding and its rate-distortion optimised rounding with the model's λ for that level."""
    images = ImageSet.from_dir(image_dir)
    out: dict[int, dict[str, np.ndarray]] = {level: {} for level in levels}
    for name, image in zip(images.names, images.images):
        latents = codec.model.encode_latents(pad_image(image, codec.model.padding_multiple)[None])
        for level in levels:
            out[level][name] = codec.quantize(level, latents[level - 1][0])
    return out


def table_code_length(coder: TableCoder, symbols: np.ndarray) -> float:
    """Ideal code length in bits of ``symbols`` under a runtime coder's tables and counting context."""
    context = coder.tables.context
    table_ids = context.table_ids_of(symbols) if context is not None else np.zeros(symbols.shape, np.int64)
    return float(coder.bit_costs(table_ids, symbols, context.flips_of(symbols) if context is not None else None).sum())


def main(argv: list[str] | None = None) -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=str(repo / "models" / "default"))
    parser.add_argument("--train-dir", default=str(repo.parent / "shared" / "data" / "train"))
    parser.add_argument("--val-dir", default=str(repo.parent / "shared" / "data" / "val"))
    parser.add_argument("--levels", default="2,3,4", help="comma-separated levels to measure")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples-per-image", type=int, default=4000)
    parser.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN)
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS, help="symbols −R … R, escapes beyond")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON file for the measurements")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    levels = [int(v) for v in args.levels.split(",")]
    codec = Codec.from_dir(args.model_dir)
    train_symbols = runtime_symbols(codec, args.train_dir, levels)
    val_symbols = runtime_symbols(codec, args.val_dir, levels)
    results = []
    for level in levels:
        started = time.time()
        val = val_symbols[level]
        net = train_context_net(list(train_symbols[level].values()), args.epochs, args.samples_per_image, args.hidden,
                                args.radius, log=lambda line: print(f"level {level}: {line}", flush=True))
        tables = sum(table_code_length(codec.model.coders[level - 1], s) for s in val.values())
        learned = sum(code_length(net, s) for s in val.values())
        results.append({
            "level": level, "val_kbit_tables": round(tables / 1e3, 1), "val_kbit_net": round(learned / 1e3, 1),
            "change_percent": round(100 * (learned / tables - 1), 2), "hidden": args.hidden, "radius": args.radius,
            "epochs": args.epochs, "samples_per_image": args.samples_per_image,
            "parameters": sum(p.numel() for p in net.parameters()),
            "seconds": round(time.time() - started, 1),
        })
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model_id": codec.model_id, "levels": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
