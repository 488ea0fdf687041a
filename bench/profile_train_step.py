"""Where a training step's time goes, on any device: wall time per step, the time the step waits for its batch,
how busy the accelerator was, and the operators and kernels that take the most host and device time.

    python -m bench.profile_train_step --config configs/default_gpu3.yaml --device cuda \\
        [--data-dir .gpudata/train] [--loader-threads 12] [--batch-size N] [--init-from CHECKPOINT] \\
        [--warmup 20] [--steps 20] [--out DIR]

Builds the real trainer of the config (no validation, nothing saved), runs ``--warmup`` untimed updates
(cuDNN autotuning, allocator warm-up), ``--steps`` timed updates, then ``--steps`` updates under ``torch.profiler``
(which slows them). Writes
``DIR/profile.json`` (settings, seconds per step, batch waits, device-busy fraction, top operators) and
``DIR/profile.txt`` (the profiler's tables). Made to fit in one short call on a borrowed GPU
(docs/training.md), before spending the rest of the lease on training.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from model_export.config import load_config
from model_export.runtime import describe_device, ensure_fast_malloc, select_device, set_threads
from model_export.train import Trainer

TOP = 25


def _top(averages, key: str, steps: int) -> list[dict]:
    rows = sorted(averages, key=lambda a: getattr(a, key), reverse=True)[:TOP]
    return [{"name": a.key, "calls_per_step": a.count / steps,
             "self_cpu_ms_per_step": a.self_cpu_time_total / 1000 / steps,
             "self_device_ms_per_step": a.self_device_time_total / 1000 / steps} for a in rows]


def kernel_time_ms(averages) -> float:
    """Milliseconds the device spent in kernels and copies: only the device's own events count, since an
    operator's self device time repeats the time of the kernels it launched (as the profiler's table sums it)."""
    return sum(a.self_device_time_total for a in averages
               if a.device_type != DeviceType.CPU and not getattr(a, "is_user_annotation", False)) / 1000


def profile_steps(trainer: Trainer, warmup: int, steps: int) -> dict:
    """Run ``warmup`` updates, ``steps`` timed ones, then ``steps`` more under the profiler; the device is busy for
    the profiled steps' kernel time out of the timed steps' wall time."""
    device = trainer.device
    waits: list[float] = []
    fetch = trainer.next_batch

    def timed_fetch() -> torch.Tensor:
        start = time.perf_counter()
        batch = fetch()
        waits.append(time.perf_counter() - start)
        return batch

    def timed_steps(count: int) -> list[float]:
        """Seconds of each of ``count`` updates, the device's work included."""
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        return seconds

    trainer.next_batch = timed_fetch  # type: ignore[method-assign]
    trainer.model.train()
    timed_steps(warmup)
    plain = timed_steps(steps)
    waits.clear()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        seconds = timed_steps(steps)
    trainer.next_batch = fetch  # type: ignore[method-assign]
    if trainer.prefetcher is not None:
        trainer.prefetcher.close()
        trainer.prefetcher = None
    averages = profiler.key_averages()
    device_total_ms = kernel_time_ms(averages)
    wall_ms = sum(plain) * 1000  # the kernels take as long under the profiler; the host's gaps do not
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {
        "steps_s": seconds,
        "median_s_per_step": statistics.median(seconds),
        "median_s_per_step_unprofiled": statistics.median(plain),
        "batch_wait_ms_per_step": 1000 * sum(waits) / steps,
        "device_ms_per_step": device_total_ms / steps if device.type == "cuda" else None,
        "device_busy_fraction": device_total_ms / wall_ms if device.type == "cuda" else None,
        "top_by_device_time": _top(averages, "self_device_time_total", steps) if device.type == "cuda" else [],
        "top_by_cpu_time": _top(averages, "self_cpu_time_total", steps),
        "table": averages.table(sort_by=sort, row_limit=TOP),
    }


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        ensure_fast_malloc("bench.profile_train_step")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="training images (default: the config's)")
    parser.add_argument("--loader-threads", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    parser.add_argument("--init-from", default=None, help="codec checkpoint to start from (default: fresh weights)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels-last", action="store_true", help="set train.channels_last (weights and batches)")
    parser.add_argument("--out", default="profile")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be at least 1 and --warmup at least 0")
    config = load_config(args.config)
    if args.data_dir:
        config.train.data_dir = args.data_dir
    if args.batch_size:
        config.train.batch_size = args.batch_size
    if args.channels_last:
        config.train.channels_last = True
    set_threads(config.train.threads)
    device = select_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(config, Path(scratch), device, quiet=True, validation=False,
                          loader_threads=args.loader_threads)
        if args.init_from:
            trainer.init_from(Path(args.init_from))
        result = profile_steps(trainer, args.warmup, args.steps)
    table = result.pop("table")
    report = {
        "config": args.config,
        "device": describe_device(device),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "batch_size": config.train.batch_size,
        "crop": config.train.crop,
        "precision": config.train.precision,
        "channels_last": config.train.channels_last,
        "loader_threads": args.loader_threads,
        "warmup": args.warmup,
        "steps": args.steps,
        **result,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "profile.txt").write_text(table + "\n")
    busy = report["device_busy_fraction"]
    print(f"{report['device']}: {1000 * report['median_s_per_step_unprofiled']:.1f} ms per step of "
          f"{config.train.batch_size} x {config.train.crop}² ({1000 * report['median_s_per_step']:.1f} ms profiled)"
          f"{', channels last' if config.train.channels_last else ''}, batch wait {report['batch_wait_ms_per_step']:.1f} ms"
          + (f", device busy {100 * busy:.0f} %" if busy is not None else ""))
    return report


if __name__ == "__main__":
    main()
