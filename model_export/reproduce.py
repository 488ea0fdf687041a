"""Reproduce the shipped model from scratch with one command: SimCLR pretraining, then every codec run of the
recipe in order, each starting from the previous run's exported weights.

    python -m model_export.reproduce [--recipe configs/recipe.yaml] [--work runs/reproduce] [--out PATH]

The recipe (``configs/recipe.yaml``) lists the SimCLR arguments and the codec stages (a config each, optionally
``max_steps`` where the historical run stopped early, and ``start: continue`` for a stage that carried on from the
previous run's ``last.pt`` with its optimizer state instead of from its exported weights). Every stage runs in its own process, as the shipped runs
did, and writes ``<work>/<stage>/`` and ``<work>/<stage>.pt``; the codec configs are copied into ``<work>`` with
their ``backbone_checkpoint`` pointing at the freshly trained backbone (or at ``--backbone``, to skip SimCLR).
Rerunning the command continues where it stopped: finished stages are skipped and an interrupted one resumes
from its ``last.pt``. The result equals the shipped model up to floating-point nondeterminism of the CPU kernels,
not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["Recipe", "CodecStage", "load_recipe", "plan", "main"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CodecStage:
    config: str
    max_steps: int | None = None
    start: str = "init"  # init: the previous stage's exported weights; continue: its last.pt with optimizer state


@dataclass
class Recipe:
    simclr_args: list[str] = field(default_factory=list)
    stages: list[CodecStage] = field(default_factory=list)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; raises ``ValueError`` naming what is wrong."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("codec"), list) or not raw["codec"]:
        raise ValueError(f"{path}: a recipe needs a non-empty 'codec' list of stages")
    stages = []
    for index, entry in enumerate(raw["codec"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
            raise ValueError(f"{path}: codec stage {index + 1} needs a 'config' path")
        unknown = set(entry) - {"config", "max_steps", "start"}
        if unknown:
            raise ValueError(f"{path}: codec stage {index + 1} has unknown keys {sorted(unknown)}")
        max_steps = entry.get("max_steps")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"{path}: codec stage {index + 1}: max_steps must be a positive integer")
        start = entry.get("start", "init")
        if start not in ("init", "continue"):
            raise ValueError(f"{path}: codec stage {index + 1}: start must be 'init' or 'continue', not {start!r}")
        if start == "continue" and index == 0:
            raise ValueError(f"{path}: codec stage 1 has no previous stage to continue")
        stages.append(CodecStage(entry["config"], max_steps, start))
    simclr = raw.get("simclr", {}) or {}
    args = [str(a) for a in simclr.get("args", [])]
    if "--out" in args or "--resume" in args:
        raise ValueError(f"{path}: simclr args must not set --out or --resume (the driver does)")
    return Recipe(args, stages)


def _stage_config(source: Path, backbone: Path, run_name: str) -> dict:
    config = yaml.safe_load(source.read_text())
    config["name"] = run_name
    model = config.setdefault("model", {})
    if model.get("backbone", "simclr") == "simclr":
        model["backbone_checkpoint"] = str(backbone)
    return config


def plan(recipe: Recipe, work: Path, backbone: Path | None, python: str = sys.executable,
         extra: Sequence[str] = ()) -> list[tuple[str, list[str], Path]]:
    """The commands to run, in order, as (stage name, argv, file the stage produces); writes the stage configs."""
    work.mkdir(parents=True, exist_ok=True)
    commands: list[tuple[str, list[str], Path]] = []
    if backbone is None:
        backbone = work / "simclr_backbone.pt"
        argv = [python, "-m", "model_export.simclr", *recipe.simclr_args, "--out", str(backbone), "--quiet",
                *extra]
        if backbone.with_suffix(".state.pt").is_file():
            argv.append("--resume")
        commands.append(("simclr", argv, backbone))
    previous: Path | None = None
    previous_run: Path | None = None
    for index, stage in enumerate(recipe.stages, start=1):
        name = f"stage{index}-{Path(stage.config).stem}"
        config_path = work / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(_stage_config(REPO / stage.config if not Path(stage.config).is_absolute()
                                                             else Path(stage.config), backbone, name)))
        run_dir = work / name
        exported = work / f"{name}.pt"
        argv = [python, "-m", "model_export.train", "--config", str(config_path), "--run-dir", str(run_dir),
                "--export", str(exported), "--half", "--quiet", *extra]
        if (run_dir / "last.pt").is_file():
            argv.append("--resume")
        elif stage.start == "continue" and previous_run is not None:
            argv += ["--continue-from", str(previous_run / "last.pt")]
        elif previous is not None:
            argv += ["--init-from", str(previous)]
        if stage.max_steps is not None:
            argv += ["--stop-at", str(stage.max_steps)]
        commands.append((name, argv, exported))
        previous = exported
        previous_run = run_dir
    return commands


def _finished(name: str, produced: Path) -> bool:
    """A codec stage is done once its checkpoint is exported; SimCLR once its summary reports every step."""
    if name != "simclr":
        return produced.is_file()
    summary = produced.with_suffix(".json")
    if not (produced.is_file() and summary.is_file()):
        return False
    meta = json.loads(summary.read_text())
    return meta.get("step", 0) >= meta.get("steps", float("inf"))


def main(argv: Sequence[str] | None = None, run: Callable[[list[str]], int] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Reproduce the shipped model from scratch.")
    parser.add_argument("--recipe", default=str(REPO / "configs" / "recipe.yaml"))
    parser.add_argument("--work", default=str(REPO / "runs" / "reproduce"))
    parser.add_argument("--out", default=None, help="copy the final checkpoint (and its JSON summary) here")
    parser.add_argument("--backbone", default=None, help="use this SimCLR backbone instead of training one")
    parser.add_argument("--device", default=None, help="passed to every stage (cpu, cuda, auto)")
    args = parser.parse_args(argv)
    run = run or (lambda command: subprocess.call(command, cwd=REPO))
    recipe = load_recipe(args.recipe)
    work = Path(args.work).resolve()
    extra = ["--device", args.device] if args.device else []
    commands = plan(recipe, work, Path(args.backbone).resolve() if args.backbone else None, extra=extra)
    for name, command, produced in commands:
        if _finished(name, produced):
            print(f"[reproduce] {name}: done before ({produced})", flush=True)
            continue
        print(f"[reproduce] {name}: {' '.join(command[1:])}", flush=True)
        code = run(command)
        if code != 0:
            raise SystemExit(f"[reproduce] stage {name} failed with exit code {code}; rerun to resume it")
    final = commands[-1][2]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, out)
        shutil.copyfile(final.with_suffix(".json"), out.with_suffix(".json"))
        final = out
    summary = json.loads(final.with_suffix(".json").read_text())
    print(json.dumps({"checkpoint": str(final), "val": summary.get("val")}), flush=True)
    return final


if __name__ == "__main__":
    main()
