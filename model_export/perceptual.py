"""Perceptual term P(x, x̂): MSE between features of a frozen network.

By default the network is the self-supervised backbone itself (no VGG weights can be downloaded here);
``--vgg19-weights PATH`` takes a torchvision-format VGG-19 state dict (``features.N.weight``) for users who
have one. Both compare features up to a fixed depth and never train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .backbone import CheckpointFormatError, ResNet50Group1

__all__ = ["BackboneFeatures", "VGG19Features", "load_vgg19_features", "PerceptualLoss"]

# torchvision's vgg19 configuration "E"; "M" is a 2×2 max-pool.
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_RELU3_1 = 12  # features[:12] ends with relu3_1


def _vgg19_layers() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG19Features(nn.Module):
    """torchvision VGG-19 ``features`` (same indices), evaluated up to relu3_1, ImageNet-normalised input."""

    mean: Tensor
    std: Tensor

    def __init__(self, depth: int = VGG19_RELU3_1):
        super().__init__()
        self.features = _vgg19_layers()
        self.depth = depth
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).reshape(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.features[: self.depth]((x - self.mean) / self.std)


def load_vgg19_features(path: str | Path) -> VGG19Features:
    """Load a torchvision VGG-19 state dict (``vgg19-*.pth``); classifier weights are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG-19 weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointFormatError(f"{path} is not a readable PyTorch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path} does not hold a state dict")
    model = VGG19Features()
    reference = model.features.state_dict()
    features = {}
    for key, expected in reference.items():
        name = f"features.{key}"
        if name not in state:
            raise CheckpointFormatError(f"{path} is not a torchvision VGG-19 state dict: missing {name!r}")
        if tuple(state[name].shape) != tuple(expected.shape):
            raise CheckpointFormatError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, VGG-19 has {tuple(expected.shape)}"
            )
        features[key] = state[name].float()
    model.features.load_state_dict(features)
    return model


class BackboneFeatures(nn.Module):
    """Features of the frozen self-supervised backbone: conv1 → bn1 → ReLU (64 channels at H/2)."""

    def __init__(self, backbone: ResNet50Group1):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.stem(x)


class PerceptualLoss(nn.Module):
    """mean((φ(x) − φ(x̂))²) with φ frozen; gradients flow only into x̂."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.network.eval()
        return self

    def target(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.network(x)

    def forward(self, x_hat: Tensor, target_features: Tensor) -> Tensor:
        return torch.mean((self.network(x_hat).float() - target_features.float()) ** 2)
