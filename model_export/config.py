"""Typed configuration: model architecture and training hyperparameters, loaded from YAML under configs/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ModelConfig", "LossConfig", "TrainConfig", "ExperimentConfig", "load_config", "ConfigError"]

ATTENTION_PLACEMENTS = ("none", "encoder", "decoder", "both")
BACKBONES = ("simclr", "learned")


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


@dataclass
class ModelConfig:
    backbone: str = "simclr"  # simclr: frozen self-supervised ResNet-50 group 1; learned: baseline stem
    backbone_checkpoint: str | None = None
    finetune_backbone: bool = False
    # concatenate the 4×4 space-to-depth of the pixels (48 ch) to the backbone features, so the encoder sees
    # what SimCLR's colour invariance may discard; false = the paper's encoder (see docs/architecture.md)
    pixel_shortcut: bool = True
    attention: str = "encoder"  # none | encoder | decoder | both
    attention_window: int = 16
    attention_pool: int = 2
    pyramid_channels: int = 128
    latent_channels: list[int] = field(default_factory=lambda: [192, 160, 128, 96])  # level 1 (coarsest) first
    decoder_channels: int = 128
    # per level, channel and |symbol| a learned shift of the decoder input, fitted after training for the symbols
    # the runtime codes (``model_export.fit_offsets``, docs/architecture.md); false: the decoder reads ŷ as it is
    decoder_input_offsets: bool = False

    @property
    def levels(self) -> int:
        return len(self.latent_channels)

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.attention not in ATTENTION_PLACEMENTS:
            raise ConfigError(f"model.attention must be one of {ATTENTION_PLACEMENTS}, got {self.attention!r}")
        if self.levels < 1:
            raise ConfigError("model.latent_channels needs at least one level")
        if self.attention_window < 0 or self.attention_pool < 1:
            raise ConfigError("attention_window must be ≥ 0 and attention_pool ≥ 1")
        if self.attention_window and self.attention_window % self.attention_pool:
            raise ConfigError("attention_pool must divide attention_window")


@dataclass
class LossConfig:
    """Σᵢ αᵢ·MSE + Σᵢ βᵢ·perceptual + Σᵢ γᵢ·bpp (MSE on [0,1] images), level 1 first; α, β increasing and γ
    decreasing."""

    alpha: list[float] = field(default_factory=lambda: [162.0, 392.0, 936.0, 2185.0])
    beta: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    gamma: list[float] = field(default_factory=lambda: [1.0, 0.9, 0.8, 0.7])
    perceptual: str = "backbone"  # backbone | vgg19
    vgg19_weights: str | None = None
    # the SimCLR checkpoint whose stem gives the "backbone" perceptual features; None: model.backbone_checkpoint
    # (the ablations pin it, so that a variant with another backbone keeps the same loss)
    perceptual_checkpoint: str | None = None

    def validate(self, levels: int) -> None:
        for name in ("alpha", "beta", "gamma"):
            values = getattr(self, name)
            if len(values) != levels:
                raise ConfigError(f"loss.{name} needs {levels} values (one per level), got {len(values)}")
        if any(b <= a for a, b in zip(self.alpha, self.alpha[1:])):
            raise ConfigError("loss.alpha must increase with the level (αᵢ < αᵢ₊₁)")
        if any(b <= a for a, b in zip(self.beta, self.beta[1:])) and any(self.beta):
            raise ConfigError("loss.beta must increase with the level (βᵢ < βᵢ₊₁) or be all zero")
        if any(b >= a for a, b in zip(self.gamma, self.gamma[1:])):
            raise ConfigError("loss.gamma must decrease with the level (γᵢ > γᵢ₊₁)")
        if self.perceptual not in ("backbone", "vgg19"):
            raise ConfigError("loss.perceptual must be 'backbone' or 'vgg19'")


@dataclass
class TrainConfig:
    data_dir: str = "../shared/data/train"
    val_dir: str = "../shared/data/val"
    crop: int = 128
    batch_size: int = 8
    accumulate: int = 1  # batches per update (gradients averaged): an update of accumulate × batch_size crops
    min_downscale: float = 0.5  # large photos are randomly downscaled by [min_downscale, 1] before cropping
    downscale_min_side: int = 800  # only images whose short side is at least this are downscaled
    steps: int = 10000
    lr: float = 1e-4
    lr_schedule: list[list[float]] = field(default_factory=lambda: [[0.0, 1e-4]])  # [[fraction, lr], ...]
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    skip_spikes: float = 20.0  # skip an update whose loss exceeds this multiple of the running mean (0: off)
    aux_lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # learning rate of a fine-tuned backbone relative to the rest
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 250
    device: str = "auto"
    # "bf16": convolutions and matmuls of the forward and backward pass in bfloat16 autocast (weights, optimizer,
    # entropy models and loss stay fp32); 1.9× faster per step on our AVX512-BF16 CPUs; on a CPU without bf16
    # instructions the trainer falls back to fp32 (emulated bf16 was 18× slower; docs/training.md)
    precision: str = "fp32"
    # what the decoder sees in training: "noise" (y + U(−½, ½), as the paper) or "round" (the rounded latents of
    # inference with a straight-through gradient; the rate term keeps the noisy proxy); docs/training.md
    decoder_input: str = "noise"
    # weights and batches in channels-last memory order: the crops arrive in it (uint8 HWC), so NCHW weights
    # make cuDNN convert each convolution's weights and gradients per step (10 ms of an H200 step of 110 ms)
    channels_last: bool = False

    def validate(self) -> None:
        if self.accumulate < 1:
            raise ConfigError("train.accumulate must be at least 1")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError("train.precision must be 'fp32' or 'bf16'")
        if self.decoder_input not in ("noise", "round"):
            raise ConfigError("train.decoder_input must be 'noise' or 'round'")


@dataclass
class ExperimentConfig:
    name: str = "sslic"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.loss.validate(self.model.levels)
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        data = dict(data or {})
        unknown = set(data) - {"name", "model", "loss", "train"}
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)}")
        config = cls(
            name=str(data.get("name", "sslic")),
            model=_build(ModelConfig, data.get("model"), "model"),
            loss=_build(LossConfig, data.get("loss"), "loss"),
            train=_build(TrainConfig, data.get("train"), "train"),
        )
        config.validate()
        return config


def _build(kind: type, values: dict[str, Any] | None, section: str):
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown keys in {section}: {sorted(unknown)}")
    return kind(**values)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return ExperimentConfig.from_dict(yaml.safe_load(path.read_text()))
