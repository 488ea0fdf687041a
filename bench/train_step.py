"""Seconds per training step (forward, backward, both optimizers) in fp32 and in bf16 autocast.

    python -m bench.train_step [--config configs/default_continue4.yaml] [--steps 6] [--out docs/results/train_step.json]

Builds the real trainer of the config (its crops, batch, model and loss; fresh weights, a scratch run folder)
and times ``--steps`` updates per precision after two untimed warm-up updates, alternating the precisions
``--rounds`` times so that a change in machine load hits both. bf16 is timed even on a CPU without bf16
instructions, where the trainer itself would fall back to fp32; ``native_bf16`` in the report says which. Run it
with nothing else on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model_export.config import load_config
from model_export.runtime import ensure_fast_malloc, native_bf16, set_threads
from model_export.train import Trainer

REPO = Path(__file__).resolve().parents[1]


def time_steps(trainer: Trainer, steps: int) -> list[float]:
    trainer.model.train()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        ensure_fast_malloc("bench.train_step")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default_continue4.yaml"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    set_threads(config.train.threads)
    results: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {}
        for precision in results:
            variant = copy.deepcopy(config)
            variant.train.precision = precision
            trainers[precision] = Trainer(variant, Path(scratch) / precision, torch.device("cpu"), quiet=True)
            trainers[precision].autocast_bf16 = precision == "bf16"  # measured even where it is emulated
            time_steps(trainers[precision], 2)
        for _ in range(args.rounds):
            for precision, trainer in trainers.items():
                results[precision] += time_steps(trainer, args.steps)
    report = {
        "config": str(args.config),
        "batch": f"{config.train.batch_size} x {config.train.crop}^2",
        "threads": config.train.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "native_bf16": native_bf16(torch.device("cpu")),
        "median_s_per_step": {p: round(statistics.median(s), 3) for p, s in results.items()},
        "steps_s": {p: [round(v, 3) for v in s] for p, s in results.items()},
    }
    report["speedup_bf16"] = round(report["median_s_per_step"]["fp32"] / report["median_s_per_step"]["bf16"], 2)
    print(json.dumps({k: report[k] for k in ("batch", "median_s_per_step", "speedup_bf16")}))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
