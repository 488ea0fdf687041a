"""The first call on a lent GPU in one command: time the training step in both memory layouts, then train in the
faster one.

    python3 -m bench.lease_train --config configs/default_gpu5.yaml --run-dir /tmp/g5 --out "$OUT" \\
        --init-from checkpoints/sslic_default.pt --data-dir .gpudata/train --loader-threads 12 \\
        --time-budget 7.5 --snapshots 0.5,0.7,0.85

Each timing is ``bench.profile_train_step`` (``--warmup``/``--steps`` steps, in its own process) with and without
``--channels-last``; the faster unprofiled step wins. The config with ``train.channels_last`` set to the winner is
written to ``RUN_DIR/lease_config.yaml``, and ``model_export.train`` trains from it (``--no-val``, snapshots to
OUT). OUT receives ``layouts.json`` (both timings and the choice), the winner's ``profile.txt``, the snapshots and
``train.log``: at most 7 files, inside the 8 a call may bring back. The resume, a second call on the same warm
machine, is plain ``model_export.train --config RUN_DIR/lease_config.yaml --run-dir RUN_DIR --resume ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

LAYOUTS = {"contiguous": [], "channels_last": ["--channels-last"]}


def _run(module: str, arguments: list[str]) -> None:
    command = [sys.executable, "-m", module, *arguments]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _data_and_weights(args: argparse.Namespace) -> list[str]:
    """The options the timings and the training share: which images, and which weights to start from."""
    return [*(["--data-dir", args.data_dir] if args.data_dir else []),
            *(["--init-from", args.init_from] if args.init_from else [])]


def time_layouts(args: argparse.Namespace, scratch: Path) -> dict:
    """Median unprofiled step of each layout, from ``bench.profile_train_step``; the faster one is chosen."""
    timings = {}
    for layout, flag in LAYOUTS.items():
        out = scratch / f"profile-{layout}"
        options = ["--config", args.config, "--device", args.device, "--loader-threads", str(args.loader_threads),
                   "--warmup", str(args.warmup), "--steps", str(args.steps), "--out", str(out), *flag,
                   *_data_and_weights(args)]
        _run("bench.profile_train_step", options)
        report = json.loads((out / "profile.json").read_text())
        timings[layout] = {"median_s_per_step": report["median_s_per_step_unprofiled"],
                           "device_ms_per_step": report["device_ms_per_step"]}
    chosen = min(timings, key=lambda layout: timings[layout]["median_s_per_step"])
    return {"device": report["device"], "timings": timings, "chosen": chosen}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="what comes back from the call ($OUT)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--init-from", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--loader-threads", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each layout's timing")
    parser.add_argument("--steps", type=int, default=10, help="timed (and as many profiled) steps of each layout")
    parser.add_argument("--time-budget", type=float, required=True, help="minutes of training (train.py's)")
    parser.add_argument("--snapshots", default="0.5,0.7,0.85")
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.run_dir / "layouts"
    layouts = time_layouts(args, scratch)
    (args.out / "layouts.json").write_text(json.dumps(layouts, indent=1) + "\n")
    shutil.copy(scratch / f"profile-{layouts['chosen']}" / "profile.txt", args.out / "profile.txt")
    print(json.dumps(layouts), flush=True)

    config = yaml.safe_load(Path(args.config).read_text())
    config.setdefault("train", {})["channels_last"] = layouts["chosen"] == "channels_last"
    lease_config = args.run_dir / "lease_config.yaml"
    lease_config.write_text(yaml.safe_dump(config, sort_keys=False))
    options = ["--config", str(lease_config), "--run-dir", str(args.run_dir), "--no-val", "--device", args.device,
               "--loader-threads", str(args.loader_threads), "--time-budget", str(args.time_budget),
               "--snapshots", args.snapshots, "--snapshot-dir", str(args.out), "--quiet", *_data_and_weights(args)]
    try:
        _run("model_export.train", options)
    finally:
        log = args.run_dir / "train.log"
        if log.is_file():
            shutil.copy(log, args.out / "train.log")
    return layouts


if __name__ == "__main__":
    main()
