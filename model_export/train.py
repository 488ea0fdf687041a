"""Train the sslic codec.

    python -m model_export.train --config configs/default.yaml [--resume] [--max-minutes M]
        [--init-from CODEC_CHECKPOINT | --continue-from runs/<earlier run>/last.pt]

Everything about a run lives in its config (configs/). A run folder ``runs/<name>/`` holds ``last.pt``
(resumable state, written every ``checkpoint_every`` steps), ``best.pt`` (best validation loss so far),
``train.log`` and ``val.jsonl``. ``--export PATH`` writes the best weights as a codec checkpoint with a JSON
summary (what the export step reads).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .backbone import ResNet50Group1, load_simclr_backbone
from .checkpoint import load_codec_checkpoint, save_codec_checkpoint
from .config import ExperimentConfig, load_config
from .data import BatchPrefetcher, CropSampler, ImageSet, crops_to_float
from .losses import RateDistortionLoss, mean_level_terms, psnr_from_mse
from .model import OFFSET_KEYS, SSLIC
from .perceptual import BackboneFeatures, PerceptualLoss, load_vgg19_features
from .runtime import describe_device, ensure_fast_malloc, native_bf16, select_device, set_threads
from .validation import evaluate_images

__all__ = ["Trainer", "chain_totals", "learning_rate", "main"]


def learning_rate(schedule: list[list[float]], progress: float) -> float:
    """Piecewise-constant schedule: the last [fraction, lr] pair whose fraction ≤ progress."""
    lr = schedule[0][1]
    for fraction, value in schedule:
        if progress >= fraction:
            lr = value
    return lr


def backbone_fine_tuned(model_config: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether the backbone of a run's weights has moved from the SimCLR ones: fine-tuned by this run, or by
    one of the runs it started from (a frozen backbone keeps the fine-tuned weights it was given)."""
    lineage = state.get("init_checkpoint") or {}
    return bool(model_config.get("finetune_backbone")) or bool(lineage.get("backbone_fine_tuned"))


def chain_totals(state: dict[str, Any]) -> tuple[int, float]:
    """Steps and training seconds of a run's state plus those of the chain of runs it started from."""
    lineage = state.get("init_checkpoint") or {}
    return (state["step"] + int(lineage.get("total_steps") or 0),
            state["elapsed"] + float(lineage.get("total_train_seconds") or 0.0))


class Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: Path, device: torch.device, quiet: bool = False,
                 validation: bool = True, loader_threads: int = 0):
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.quiet = quiet
        train = config.train
        torch.manual_seed(train.seed)
        self.model = SSLIC(config.model).to(device)
        self.perceptual = self._perceptual().to(device) if any(config.loss.beta) else None
        if train.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.perceptual is not None:
                self.perceptual.to(memory_format=torch.channels_last)
        self.criterion = RateDistortionLoss(config.loss, self.perceptual)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        aux_params = [p for n, p in trainable if n.endswith("quantiles")]
        # a fine-tuned pretrained backbone may learn at its own (lower) rate; a learned stem is part of the rest
        prefix = "encoder.backbone." if config.model.backbone == "simclr" else None
        backbone_params = [p for n, p in trainable if prefix and n.startswith(prefix)]
        main_params = [p for n, p in trainable if not n.endswith("quantiles") and not (prefix and n.startswith(prefix))]
        groups = [{"params": main_params, "lr_scale": 1.0}]
        if backbone_params:
            groups.append({"params": backbone_params, "lr_scale": train.backbone_lr_scale})
        # on a GPU one fused kernel updates all parameters instead of a few per parameter group and tensor list
        self.optimizer = torch.optim.Adam(groups, lr=train.lr, fused=device.type == "cuda" or None)
        self._group_settings = [{"lr": train.lr, "lr_scale": g["lr_scale"]} for g in groups]
        self.aux_optimizer = torch.optim.Adam(aux_params, lr=train.aux_lr)
        self.train_set = ImageSet.from_dir(train.data_dir)
        # without validation (a machine that holds only the training images) nothing is selected or exported
        # here: the run writes weight snapshots that --adopt-snapshots validates elsewhere
        self.val_set = ImageSet.from_dir(train.val_dir) if validation else None
        self.sampler = CropSampler(
            self.train_set.images, train.crop, train.min_downscale, train.downscale_min_side, seed=train.seed
        )
        self.loader_threads = loader_threads
        self.prefetcher: BatchPrefetcher | None = None
        self.trained_on = describe_device(device)
        self.trained_with = {"torch": str(torch.__version__), "train_data": {
            "dir": train.data_dir, "images": len(self.train_set.names), "sha256": self.train_set.sha256}}
        self.step = 0
        self.elapsed = 0.0
        self.best_val_loss = math.inf
        self.best_step = 0
        self.val_history: list[dict[str, Any]] = []
        self.skipped = 0
        self.init_checkpoint: dict[str, Any] | None = None  # lineage of the weights a run started from
        # bf16 autocast only where the hardware has bf16: emulated, it makes a CPU step many times slower
        wants_bf16 = train.precision == "bf16"
        self.autocast_bf16 = wants_bf16 and native_bf16(device)
        self.precision_note = None
        if wants_bf16 and not self.autocast_bf16:
            self.precision_note = ("train.precision is bf16 but this CPU has no bf16 instructions "
                                   "(emulated bf16 is many times slower): training in fp32")

    def _perceptual(self) -> PerceptualLoss:
        loss = self.config.loss
        if loss.perceptual == "vgg19":
            if not loss.vgg19_weights:
                raise SystemExit("loss.perceptual = vgg19 needs loss.vgg19_weights (or --vgg19-weights PATH)")
            return PerceptualLoss(load_vgg19_features(loss.vgg19_weights))
        checkpoint = loss.perceptual_checkpoint or self.config.model.backbone_checkpoint
        if checkpoint:
            backbone = load_simclr_backbone(checkpoint)
        else:
            backbone = ResNet50Group1()
        return PerceptualLoss(BackboneFeatures(backbone))

    # -- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "sampler": self.sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "val_history": self.val_history,
            "skipped": self.skipped,
            "init_checkpoint": self.init_checkpoint,
            "trained_on": self.trained_on,
            "trained_with": self.trained_with,
            "config": self.config.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.sampler.load_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = state["step"]
        self.elapsed = state["elapsed"]
        self.best_val_loss = state["best_val_loss"]
        self.best_step = state["best_step"]
        self.val_history = state["val_history"]
        self.skipped = state.get("skipped", 0)
        self.init_checkpoint = state.get("init_checkpoint")
        self.trained_on = state.get("trained_on", self.trained_on)

    def init_from(self, path: Path) -> None:
        """Start from a codec checkpoint's weights (same architecture); optimizer and step start afresh. The decoder's
        input offsets (``model_export.fit_offsets``) fit the checkpoint's decoder only: a run without them in its
        config drops them (fit them again after training), one with them starts them at 0 if the checkpoint has
        none."""
        model, config, summary = load_codec_checkpoint(path)
        weights = model.state_dict()
        offsets = [key for key in weights if key.startswith(OFFSET_KEYS)]
        if offsets and not self.config.model.decoder_input_offsets:
            weights = {key: value for key, value in weights.items() if not key.startswith(OFFSET_KEYS)}
            self.log(f"{path}: its decoder input offsets are not carried over (fit them again after training)")
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or any(not key.startswith(OFFSET_KEYS) for key in missing):
            raise ValueError(f"{path} does not match this run's model: missing {missing}, unexpected {unexpected}")
        self.init_checkpoint = {
            "path": str(path),
            "name": summary.get("name"),
            "total_steps": summary.get("total_steps", summary.get("step", 0)),
            "total_train_seconds": summary.get("total_train_seconds", summary.get("train_seconds", 0.0)),
            "backbone_fine_tuned": bool(summary.get("backbone_fine_tuned", config.model.finetune_backbone)),
        }
        self.log(f"initialised from {path} (its step {summary.get('step')})")

    def _check_same_model(self, state: dict[str, Any], path: Path, option: str) -> None:
        theirs = {**ExperimentConfig().to_dict()["model"], **state["config"]["model"]}  # older states lack newer keys
        ours = self.config.to_dict()["model"]
        differing = sorted(k for k in ours if k != "backbone_checkpoint" and theirs.get(k) != ours[k])
        if differing:
            raise ValueError(f"{path} holds another model than this config ({', '.join(differing)} differ); "
                             f"{option} needs the same model section")

    def continue_from(self, path: Path) -> None:
        """Start a new run (new config, step 0) from another run's ``last.pt``: its fp32 weights and its
        optimizer moments, so a follow-up schedule does not pay for re-estimating Adam's statistics."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        self._check_same_model(state, path, "--continue-from")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        for group, fresh in zip(self.optimizer.param_groups, self._group_settings):
            group.update(fresh)
        self.aux_optimizer.param_groups[0]["lr"] = self.config.train.aux_lr
        total_steps, total_seconds = chain_totals(state)
        self.init_checkpoint = {
            "path": str(path),
            "name": state["config"]["name"],
            "total_steps": total_steps,
            "total_train_seconds": total_seconds,
            "backbone_fine_tuned": backbone_fine_tuned(state["config"]["model"], state),
        }
        self.log(f"continued from {path} (its step {state['step']}, weights and optimizer state)")

    def save(self, name: str) -> None:
        path = self.run_dir / name
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    def save_snapshot(self, directory: Path) -> Path:
        """The weights (fp16) and bookkeeping of this step, without optimizer state: small enough to bring
        back from a borrowed accelerator (~14 MB), and enough for :meth:`adopt_snapshot` to validate and
        export them. Not resumable."""
        state = self.state()
        del state["optimizer"], state["aux_optimizer"]
        state["model"] = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
                          for k, v in state["model"].items()}
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"snapshot-{self.step:06d}.pt"
        torch.save(state, path)
        self.log(f"snapshot {path} at step {self.step}")
        return path

    def adopt_snapshot(self, path: Path) -> dict[str, Any]:
        """Take over a snapshot written by :meth:`save_snapshot` (on another machine, say) and validate it:
        its step, time, lineage and device become this run's, and ``best.pt`` follows the validation loss.
        The optimizer state stays fresh, so ``last.pt`` continues with re-estimated Adam moments."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self._check_same_model(state, path, "--adopt-snapshots")
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
        self.sampler.load_state(state["sampler"])
        self.step = state["step"]
        self.elapsed = state["elapsed"]
        self.skipped = state.get("skipped", 0)
        self.init_checkpoint = state.get("init_checkpoint")
        self.trained_on = state.get("trained_on", self.trained_on)
        self.trained_with = state.get("trained_with", self.trained_with)
        self.log(f"adopted {path} (step {self.step}, trained on {self.trained_on})")
        return self.validate()

    # -- loop ----------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        with open(self.run_dir / "train.log", "a") as handle:
            handle.write(message + "\n")

    def validate(self) -> dict[str, Any]:
        result = evaluate_images(self.model, self.val_set.images, self.device)
        loss = self.config.loss
        val_loss = sum(
            a * (10 ** (-p / 10)) + g * b for a, g, p, b in zip(loss.alpha, loss.gamma, result["psnr"], result["bpp"])
        )
        record = {"step": self.step, "elapsed_s": round(self.elapsed, 1), "val_loss": round(val_loss, 5), **result}
        self.val_history.append(record)
        with open(self.run_dir / "val.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_step = self.step
            self.save("best.pt")
        self.log(f"val step {self.step}: " + json.dumps(record))
        return record

    def next_batch(self) -> torch.Tensor:
        size = self.config.train.batch_size
        if self.loader_threads <= 0:
            batch = self.sampler.batch(size).to(self.device)
        else:
            if self.prefetcher is None:
                self.prefetcher = BatchPrefetcher(self.sampler, size, self.loader_threads,
                                                  pin=self.device.type == "cuda")
            batch = crops_to_float(self.prefetcher.next().to(self.device, non_blocking=True))
        return batch.contiguous(memory_format=torch.channels_last) if self.config.train.channels_last else batch

    def train_step(self, reference_loss: float | None = None) -> tuple[float, list, bool]:
        """One update from ``train.accumulate`` batches of ``train.batch_size`` crops (their gradients are
        averaged: one update of a batch that many times larger, in the memory of one); returns (loss, per-level
        terms, applied), averaged over those batches. A non-finite loss, or one above ``skip_spikes`` ×
        ``reference_loss``, in any of them is not applied, so one bad batch cannot wreck the run."""
        parts = self.config.train.accumulate
        spike = self.config.train.skip_spikes
        self.optimizer.zero_grad(set_to_none=True)
        values, part_terms = [], []
        for _ in range(parts):
            x = self.next_batch()
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.autocast_bf16):
                output = self.model(x, decoder_input=self.config.train.decoder_input)
                loss, terms = self.criterion(x, output)
            # the backward pass is queued before the loss is read: on a GPU the read then waits while the
            # backward kernels run instead of idling the device until the next launches; a skipped batch only
            # wastes its gradients
            (loss / parts).backward()
            value = float(loss.detach())
            if not math.isfinite(value) or (spike and reference_loss and value > spike * reference_loss):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped += 1
                self.log(f"step {self.step + 1}: skipped update, loss {value:.4g} (running {reference_loss})")
                return value, terms, False
            values.append(value)
            part_terms.append(terms)
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.config.train.grad_clip
            )
        self.optimizer.step()
        aux = self.model.aux_loss()
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux.backward()
        self.aux_optimizer.step()
        return sum(values) / parts, mean_level_terms(part_terms), True

    def run(self, max_minutes: float | None = None, max_steps: int | None = None,
            stop_at_step: int | None = None, time_budget_minutes: float | None = None,
            snapshot_fractions: tuple[float, ...] = (), snapshot_dir: Path | None = None) -> None:
        """Train to ``train.steps``, or fewer: ``max_steps`` more steps, up to step ``stop_at_step``, or until
        ``max_minutes`` have passed. The learning-rate schedule spans ``train.steps``, or with
        ``time_budget_minutes`` that many minutes of training time (for a borrowed accelerator whose speed is
        not known in advance; the run stops when they are spent). ``snapshot_fractions`` of that budget write
        weight snapshots to ``snapshot_dir``. A run that stops early validates its final weights, so
        ``best.pt`` can be them."""
        train = self.config.train
        total = train.steps
        stop_at = min(total, self.step + max_steps) if max_steps else total
        if stop_at_step:
            stop_at = min(stop_at, stop_at_step)
        deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
        budget = time_budget_minutes * 60 if time_budget_minutes else None
        pending_snapshots = sorted(f for f in snapshot_fractions if budget and self.elapsed < f * budget)
        if self.precision_note:
            self.log(self.precision_note)
            if not self.quiet:
                print(self.precision_note, flush=True)
        self.model.train()
        bar = tqdm(total=total, initial=self.step, desc=self.config.name, dynamic_ncols=True, disable=self.quiet)
        ema: dict[str, float] = {}
        last = time.monotonic()
        while self.step < stop_at and not (budget and self.elapsed >= budget):
            progress = self.elapsed / budget if budget else self.step / total
            lr = learning_rate(train.lr_schedule, progress)
            if train.warmup_steps:
                lr *= min(1.0, (self.step + 1) / train.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, terms, applied = self.train_step(ema.get("loss") if self.step > 50 else None)
            self.step += 1
            now = time.monotonic()
            self.elapsed += now - last
            last = now
            values = {"loss": loss}
            for level, term in enumerate(terms, start=1):
                values[f"bpp{level}"] = float(term.bpp)
                values[f"mse{level}"] = float(term.mse)
                values[f"p{level}"] = float(term.perceptual)
            for key, value in values.items():
                if applied or key not in ema:
                    ema[key] = value if key not in ema else 0.98 * ema[key] + 0.02 * value
            bar.update(1)
            levels = range(1, len(terms) + 1)
            postfix = f"loss {ema['loss']:.3f} | " + " ".join(
                f"L{i} {ema[f'bpp{i}']:.3f}b {psnr_from_mse(ema[f'mse{i}']):.1f}dB" for i in levels
            )
            bar.set_postfix_str(postfix)
            if self.step % train.log_every == 0:
                perceptual = " ".join(f"{ema[f'p{i}']:.4f}" for i in levels)
                self.log(f"step {self.step} lr {lr:.2e} elapsed {self.elapsed:.0f}s {postfix} | P {perceptual}")
            if self.val_set is not None and (self.step % train.eval_every == 0 or self.step == total):
                self.validate()
                last = time.monotonic()
            while pending_snapshots and self.elapsed >= pending_snapshots[0] * budget:
                pending_snapshots.pop(0)
                self.save_snapshot(snapshot_dir)
                last = time.monotonic()
            if self.step % train.checkpoint_every == 0:
                self.save("last.pt")
            if deadline and time.monotonic() > deadline:
                self.log(f"stopping at step {self.step}: --max-minutes reached")
                break
        bar.close()
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None
        if snapshot_dir is not None and not (snapshot_dir / f"snapshot-{self.step:06d}.pt").exists():
            self.save_snapshot(snapshot_dir)
        if self.val_set is not None and self.step < total \
                and (not self.val_history or self.val_history[-1]["step"] != self.step):
            self.validate()
        self.save("last.pt")

    def summary(self, state: dict[str, Any]) -> dict[str, Any]:
        best = next((r for r in state["val_history"] if r["step"] == state["step"]), None)
        total_steps, total_seconds = chain_totals(state)
        trained_with = state.get("trained_with", self.trained_with)
        return {
            "name": self.config.name,
            "step": state["step"],
            "train_seconds": round(state["elapsed"], 1),
            "device": state.get("trained_on") or str(self.device),
            "cpu": platform.processor() or platform.machine(),
            "torch": trained_with["torch"],
            "train_data": trained_with["train_data"],
            "val_data": {"dir": self.config.train.val_dir, "images": len(self.val_set.names),
                         "sha256": self.val_set.sha256},
            "val": best,
            "skipped_updates": state.get("skipped", 0),
            "init_checkpoint": state.get("init_checkpoint") or None,
            "total_steps": total_steps,
            "total_train_seconds": round(total_seconds, 1),
            "backbone_fine_tuned": backbone_fine_tuned(self.config.to_dict()["model"], state),
            "val_history": state["val_history"],
            "config": self.config.to_dict(),
        }

    def export(self, path: Path, half: bool) -> Path:
        """Write the best weights as a codec checkpoint; its summary's ``val`` is measured on exactly the
        stored weights (after fp16 rounding when ``half``)."""
        source = self.run_dir / "best.pt"
        if not source.is_file():
            source = self.run_dir / "last.pt"
        state = torch.load(source, map_location="cpu", weights_only=False)
        model = SSLIC(self.config.model, load_backbone_weights=False)
        weights = state["model"]
        if half:
            weights = {k: v.half().float() if v.is_floating_point() else v for k, v in weights.items()}
        model.load_state_dict(weights)
        summary = self.summary(state)
        summary["val_during_training"] = summary["val"]
        summary["val"] = {"step": state["step"], **evaluate_images(model, self.val_set.images)}
        summary["weights_dtype"] = "float16" if half else "float32"
        return save_codec_checkpoint(path, model, self.config, summary, half=half)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the sslic codec.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop when the run reaches this step (the schedule still spans train.steps)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (overrides train.device)")
    parser.add_argument("--vgg19-weights", default=None, help="torchvision VGG-19 state dict for the perceptual term")
    parser.add_argument("--init-from", default=None, help="start a new run from a codec checkpoint's weights")
    parser.add_argument("--continue-from", default=None,
                        help="start a new run from another run's last.pt: weights and optimizer state")
    parser.add_argument("--export", default=None, help="write the best weights as a codec checkpoint here")
    parser.add_argument("--half", action="store_true", help="store the exported weights as fp16")
    parser.add_argument("--quiet", action="store_true")
    accelerator = parser.add_argument_group("training on a borrowed accelerator (docs/training.md)")
    accelerator.add_argument("--data-dir", default=None, help="training images (overrides train.data_dir)")
    accelerator.add_argument("--no-val", action="store_true",
                             help="no validation images here: train, write snapshots, select nothing")
    accelerator.add_argument("--loader-threads", type=int, default=0,
                             help="cut crops on this many threads, one batch ahead (0: in the training thread)")
    accelerator.add_argument("--time-budget", type=float, default=None,
                             help="minutes of training; the learning-rate schedule spans them instead of train.steps")
    accelerator.add_argument("--snapshots", default="",
                             help="comma-separated fractions of --time-budget at which to write weight snapshots")
    accelerator.add_argument("--snapshot-dir", default=None, help="where snapshots go (default: <run-dir>/snapshots)")
    accelerator.add_argument("--adopt-snapshots", default=None,
                             help="validate the snapshots of this folder in step order as this run's history "
                                  "(best.pt, val.jsonl, last.pt with fresh optimizer state), then --export")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        ensure_fast_malloc("model_export.train")
    args = parse_args(argv)
    config = load_config(args.config)
    if args.vgg19_weights:
        config.loss.vgg19_weights = args.vgg19_weights
        config.loss.perceptual = "vgg19"
    if args.data_dir:
        config.train.data_dir = args.data_dir
    if args.no_val and args.export:
        raise SystemExit("--export needs validation images; export after --adopt-snapshots instead")
    if args.time_budget is None and args.snapshots:
        raise SystemExit("--snapshots are fractions of --time-budget")
    try:
        snapshot_fractions = tuple(float(f) for f in args.snapshots.split(",") if f.strip())
    except ValueError as exc:
        raise SystemExit(f"--snapshots: {exc}") from exc
    set_threads(config.train.threads)
    device = select_device(args.device or config.train.device)
    run_dir = Path(args.run_dir or Path("runs") / config.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    snapshot_dir = Path(args.snapshot_dir) if args.snapshot_dir else run_dir / "snapshots"
    trainer = Trainer(config, run_dir, device, quiet=args.quiet, validation=not args.no_val,
                      loader_threads=args.loader_threads)
    last = run_dir / "last.pt"
    if args.adopt_snapshots:
        snapshots = sorted(Path(args.adopt_snapshots).glob("snapshot-*.pt"))
        if not snapshots:
            raise SystemExit(f"no snapshot-*.pt in {args.adopt_snapshots}")
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        for path in snapshots:
            try:
                record = trainer.adopt_snapshot(path)
            except ValueError as exc:
                raise SystemExit(str(exc)) from exc
            print(json.dumps({"snapshot": path.name, "step": record["step"], "val_loss": record["val_loss"]}))
        trainer.save("last.pt")
        if args.export:
            print(f"exported {trainer.export(Path(args.export), half=args.half)}")
        return
    if args.resume and last.is_file():
        trainer.load_state(torch.load(last, map_location=device, weights_only=False))
        trainer.log(f"resumed at step {trainer.step}")
    else:
        if args.init_from and args.continue_from:
            raise SystemExit("--init-from and --continue-from exclude each other")
        if args.init_from:
            trainer.init_from(Path(args.init_from))
        if args.continue_from:
            try:
                trainer.continue_from(Path(args.continue_from))
            except (FileNotFoundError, ValueError) as exc:
                raise SystemExit(str(exc)) from exc
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    trainer.run(max_minutes=args.max_minutes, max_steps=args.max_steps, stop_at_step=args.stop_at,
                time_budget_minutes=args.time_budget, snapshot_fractions=snapshot_fractions,
                snapshot_dir=snapshot_dir if args.time_budget else None)
    if args.export:
        path = trainer.export(Path(args.export), half=args.half)
        print(f"exported {path}")
    print(json.dumps({"step": trainer.step, "best_step": trainer.best_step, "best_val_loss": trainer.best_val_loss}))


if __name__ == "__main__":
    main()
