"""What a learned context (docs/architecture.md, "A learned context: measured, not built yet") would cost the
runtime: an integer-valued network evaluated with float32 BLAS, exactly, and per-symbol range coding.

    python -m bench.context_net_cost [--channels 96] [--height 64] [--width 96] [--hidden 64] [--radius 63]
                                     [--out docs/results/context_net_cost.json]

The defaults are level 4 of a Kodak image (96 channels, 64 × 96 latents). Per channel, the running first layer
takes the channel just coded; then each checkerboard pass evaluates the own-channel layer, the hidden layer and
the logits for its half of the positions, turns the integer logits into integer frequencies through an exp
table and hands them to constriction's per-symbol ``Categorical``. With ``--tables T`` the network instead
picks one of T stored tables per symbol (the argmax of T logits); coding with stored tables is as fast as the
shipped coder's, so only the network is timed. Weights and symbols are random, with the
magnitudes a quantised network would have; the run checks that every float32 product equals the int64 one.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import constriction
import numpy as np

OWN_FEATURES = 25
ACTIVATION_MAX = 255
SHIFT = 4096.0
EXACT_LIMIT = 1 << 24


def _weights(rng: np.random.Generator, channels: int, hidden: int, classes: int) -> dict[str, np.ndarray]:
    """Integer weights whose every partial sum stays below 2^24 (inputs: |features| ≤ 8 · 9, activations ≤ 255)."""
    weights = {
        "first": rng.integers(-300, 301, (channels, 3, hidden)),
        "own": rng.integers(-300, 301, (OWN_FEATURES, hidden)),
        "embedding": rng.integers(-3000, 3001, (channels, hidden)),
        "hidden": rng.integers(-500, 501, (hidden, hidden)),
        "logits": rng.integers(-500, 501, (hidden, classes)),
    }
    bound = channels * 300 * (8 + 72 + 8) + 3000 + OWN_FEATURES * 300 * 8
    if bound >= EXACT_LIMIT or hidden * ACTIVATION_MAX * 500 >= EXACT_LIMIT:
        raise ValueError("these sizes would leave float32's exact integer range")
    return {name: value.astype(np.float32) for name, value in weights.items()}


def _check_exact(inputs: np.ndarray, weights: np.ndarray, product: np.ndarray) -> None:
    """Raise unless the float32 ``product`` of integer-valued ``inputs`` and ``weights`` is the int64 one."""
    if not np.array_equal(inputs.astype(np.int64) @ weights.astype(np.int64), product.astype(np.int64)):
        raise AssertionError("float32 BLAS differed from integer arithmetic")


def _frequencies(logits: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    integer = logits.astype(np.int64)
    steps = np.minimum((integer.max(axis=1, keepdims=True) - integer) // 64, exp_table.size - 1)
    return exp_table[steps] + 1


def run(channels: int, height: int, width: int, hidden: int, radius: int, check: bool, tables: int = 0,
        seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    classes = tables or 2 * radius + 2
    w = _weights(rng, channels, hidden, classes)
    exp_table = np.round(65536 * np.exp(-np.arange(4096) / 256.0)).astype(np.int64)
    positions = height * width
    symbols = np.clip(np.rint(rng.laplace(0.0, 0.6, (channels, positions))), -radius, radius).astype(np.int64)
    own = rng.integers(-8, 9, (positions, OWN_FEATURES)).astype(np.float32)
    halves = (slice(0, positions // 2), slice(positions // 2, positions))
    running = np.zeros((positions, hidden), dtype=np.float32)
    frequencies = []
    started = time.perf_counter()
    for c in range(channels):
        for half in halves:
            pre = running[half] + w["embedding"][c] + own[half] @ w["own"]
            first = np.minimum(np.floor(np.maximum(pre, 0) / SHIFT), ACTIVATION_MAX)
            second = np.minimum(np.floor(np.maximum(first @ w["hidden"], 0) / SHIFT), ACTIVATION_MAX)
            logits = second @ w["logits"]
            if check:
                _check_exact(own[half], w["own"], own[half] @ w["own"])
                _check_exact(first, w["hidden"], first @ w["hidden"])
                _check_exact(second, w["logits"], logits)
            frequencies.append(logits.argmax(axis=1) if tables else _frequencies(logits, exp_table))
        magnitude = np.minimum(np.abs(symbols[c]), 8)
        coded = np.stack([magnitude, 9 * magnitude, np.clip(symbols[c], -8, 8)], axis=1).astype(np.float32)
        update = coded @ w["first"][c]
        if check:
            _check_exact(coded, w["first"][c], update)
        running += update
    network_seconds = time.perf_counter() - started
    result = {
        "channels": channels, "latent": [height, width], "hidden": hidden, "classes": classes,
        "output": "table choice" if tables else "per-symbol distribution", "symbols": channels * positions,
        "multiply_adds_per_symbol": hidden * hidden + hidden * classes + OWN_FEATURES * hidden + 3 * hidden,
        "network_ms": round(1e3 * network_seconds, 1), "exact": check,
    }
    if tables:
        return result
    rows = np.concatenate(frequencies).astype(np.float64)
    probabilities = rows / rows.sum(axis=1, keepdims=True)
    coded_symbols = (symbols.reshape(-1) + radius).astype(np.int32)
    model = constriction.stream.model.Categorical(perfect=False)
    started = time.perf_counter()
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(coded_symbols, model, probabilities)
    compressed = encoder.get_compressed()
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    decoded = constriction.stream.queue.RangeDecoder(compressed).decode(model, probabilities)
    decode_seconds = time.perf_counter() - started
    if not np.array_equal(decoded, coded_symbols):
        raise AssertionError("per-symbol range coding did not round-trip")
    return {**result, "range_encode_ms": round(1e3 * encode_seconds, 1),
            "range_decode_ms": round(1e3 * decode_seconds, 1),
            "probability_rows_mb": round(probabilities.nbytes / 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--radius", type=int, default=63)
    parser.add_argument("--tables", type=int, default=0, help="pick one of T tables per symbol instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    shape = (args.channels, args.height, args.width, args.hidden, args.radius)
    run(*shape, check=True, tables=args.tables)
    timings = [run(*shape, check=False, tables=args.tables) for _ in range(args.repeats)]
    best = min(timings, key=lambda t: t["network_ms"] + t.get("range_encode_ms", 0) + t.get("range_decode_ms", 0))
    result = {**best, "exact": True, "repeats": args.repeats, "cpu": platform.processor() or platform.machine()}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
