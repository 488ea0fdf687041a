"""ResNet-50 "group 1" (stem + layer1): 256 channels at H/4, with torchvision's parameter names.

Inputs are RGB in [0, 1] without mean/std normalisation, the convention of the official SimCLR v1/v2
checkpoints (their PyTorch conversions keep torchvision's layout, sometimes under a prefix), which
``load_simclr_backbone`` reads. ``LearnedStem`` is the ablation baseline that learns its stem from pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .gdn import GDN

__all__ = [
    "Bottleneck",
    "ResNet50Group1",
    "LearnedStem",
    "CheckpointFormatError",
    "extract_backbone_state",
    "load_simclr_backbone",
]

GROUP1_CHANNELS = 256


class CheckpointFormatError(ValueError):
    """A checkpoint file does not hold the weights it is expected to hold."""


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck block (1×1, 3×3, 1×1, expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Group1(nn.Module):
    """conv1 7×7/2, bn1, ReLU, max-pool 3×3/2, layer1 (three bottlenecks): (B,3,H,W) → (B,256,H/4,W/4)."""

    out_channels = GROUP1_CHANNELS
    stride = 4

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        downsample = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
        self.layer1 = nn.Sequential(
            Bottleneck(64, 64, downsample=downsample),
            Bottleneck(256, 64),
            Bottleneck(256, 64),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stem(self, x: Tensor) -> Tensor:
        """conv1 → bn1 → ReLU (64 channels at H/2)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer1(self.maxpool(self.stem(x)))


class LearnedStem(nn.Module):
    """Baseline without the self-supervised backbone: two strided 5×5 convs with GDN, 256 channels at H/4."""

    out_channels = GROUP1_CHANNELS
    stride = 4

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, hidden, 5, stride=2, padding=2),
            GDN(hidden),
            nn.Conv2d(hidden, GROUP1_CHANNELS, 5, stride=2, padding=2),
            GDN(GROUP1_CHANNELS),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


_CONTAINER_KEYS = ("state_dict", "model", "resnet", "backbone", "encoder", "net")
_KNOWN_PREFIXES = ("module.", "encoder.", "backbone.", "resnet.", "model.", "net.", "base_encoder.", "f.")


def _unwrap(checkpoint: object) -> Mapping[str, Tensor]:
    """Find the state dict inside the usual checkpoint containers."""
    current = checkpoint
    for _ in range(4):
        if not isinstance(current, Mapping):
            break
        if any(isinstance(v, Tensor) for v in current.values()):
            return current  # type: ignore[return-value]
        inner = next((current[k] for k in _CONTAINER_KEYS if k in current and isinstance(current[k], Mapping)), None)
        if inner is None:
            break
        current = inner
    raise CheckpointFormatError(
        "no state dict found: expected a mapping of tensors, possibly under one of " + ", ".join(_CONTAINER_KEYS)
    )


def extract_backbone_state(checkpoint: object) -> dict[str, Tensor]:
    """Return the stem + layer1 weights of a torchvision-layout ResNet-50 checkpoint, prefixes removed.

    Raises ``CheckpointFormatError`` naming the missing or mis-shaped keys when the checkpoint is not a
    ResNet-50 in torchvision layout (for example a ResNet-18, a VGG, or a codec checkpoint).
    """
    state = _unwrap(checkpoint)
    reference = ResNet50Group1().state_dict()
    wanted = [k for k in reference if not k.endswith("num_batches_tracked")]
    prefix = None
    for candidate in ("",) + _KNOWN_PREFIXES + tuple({k[: k.find("conv1.weight")] for k in state if k.endswith("conv1.weight")}):
        if f"{candidate}conv1.weight" in state and f"{candidate}layer1.0.conv1.weight" in state:
            prefix = candidate
            break
    if prefix is None:
        raise CheckpointFormatError(
            "not a torchvision-layout ResNet: keys 'conv1.weight' and 'layer1.0.conv1.weight' not found "
            f"(first keys: {list(state)[:5]})"
        )
    missing = [k for k in wanted if prefix + k not in state]
    if missing:
        raise CheckpointFormatError(f"checkpoint lacks {len(missing)} ResNet-50 group-1 keys, e.g. {missing[:3]}")
    result: dict[str, Tensor] = {}
    for key in wanted:
        tensor = state[prefix + key]
        if tuple(tensor.shape) != tuple(reference[key].shape):
            raise CheckpointFormatError(
                f"{prefix + key} has shape {tuple(tensor.shape)}, a ResNet-50 has {tuple(reference[key].shape)}"
            )
        result[key] = tensor.detach().to(torch.float32)
    return result


def load_simclr_backbone(path: str | Path, map_location: str = "cpu") -> ResNet50Group1:
    """Build ``ResNet50Group1`` from a SimCLR v1/v2 (1×) checkpoint converted to torchvision layout,
    or from a backbone checkpoint written by ``python -m model_export.simclr``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt or non-torch files
        raise CheckpointFormatError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    backbone = ResNet50Group1()
    backbone.load_state_dict(extract_backbone_state(checkpoint), strict=False)
    return backbone
