"""The SimCLR (torchvision layout) and VGG-19 loaders read real state dicts and reject wrong ones."""

import pytest
import torch
from torch import nn

from model_export.backbone import Bottleneck, CheckpointFormatError, ResNet50Group1, load_simclr_backbone
from model_export.perceptual import VGG19Features, load_vgg19_features


class _TorchvisionResNet50(nn.Module):
    """Just enough of torchvision's resnet50 to produce its exact state-dict layout (layer1-4, fc)."""

    def __init__(self):
        super().__init__()
        group1 = ResNet50Group1()
        self.conv1, self.bn1, self.layer1 = group1.conv1, group1.bn1, group1.layer1
        inplanes = 256
        for index, (planes, blocks) in enumerate([(128, 4), (256, 6), (512, 3)], start=2):
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=2, bias=False), nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(inplanes, planes, stride=2, downsample=down)]
            layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            inplanes = planes * 4
        self.fc = nn.Linear(2048, 1000)


def _randomised(module: nn.Module) -> nn.Module:
    """Random weights and BN statistics, so a load that drops or mixes tensors is noticed."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            tensor.copy_(torch.randn_like(tensor) * 0.1)
            if name.endswith("running_var"):
                tensor.abs_().add_(0.5)
    return module


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,  # SimCLR v1 conversion: a bare torchvision state dict
        lambda sd: {"state_dict": sd},  # SimCLR v1 converter's container
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},  # DataParallel prefix
        lambda sd: {"resnet": {f"net.{k}": v for k, v in sd.items()}, "head": {"w": torch.zeros(1)}},  # v2 style
        lambda sd: {"model": {f"encoder.{k}": v for k, v in sd.items()}},
    ],
)
def test_simclr_loader_reads_torchvision_layout_under_prefixes(tmp_path, wrap):
    full = _randomised(_TorchvisionResNet50())
    state = full.state_dict()
    path = tmp_path / "simclr.pth"
    torch.save(wrap(state), path)
    backbone = load_simclr_backbone(path)
    for key, value in backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[key])
    x = torch.rand(1, 3, 32, 32)
    full.eval()
    expected = full.layer1(torch.nn.functional.max_pool2d(full.bn1(full.conv1(x)).relu(), 3, 2, 1))
    torch.testing.assert_close(backbone.eval()(x), expected)
    assert expected.shape == (1, 256, 8, 8)


def test_simclr_loader_reads_our_own_pretraining_output(tmp_path):
    from model_export.simclr import SimCLR, backbone_checkpoint

    model = SimCLR()
    _randomised(model.backbone)
    torch.save(backbone_checkpoint(model, {"kind": "test"}), tmp_path / "ours.pt")
    loaded = load_simclr_backbone(tmp_path / "ours.pt")
    torch.testing.assert_close(loaded.conv1.weight, model.backbone.conv1.weight)


def test_simclr_loader_rejects_resnet18(tmp_path):
    state = {
        "conv1.weight": torch.zeros(64, 3, 7, 7),
        "bn1.weight": torch.zeros(64),
        "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),  # basic block: 3×3, no conv3
        "layer1.0.conv2.weight": torch.zeros(64, 64, 3, 3),
    }
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(CheckpointFormatError, match="group-1 keys|shape"):
        load_simclr_backbone(tmp_path / "r18.pth")


def test_simclr_loader_rejects_wrong_shapes(tmp_path):
    state = ResNet50Group1().state_dict()
    state["layer1.0.conv2.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointFormatError, match=r"layer1\.0\.conv2\.weight has shape"):
        load_simclr_backbone(tmp_path / "bad.pth")


def test_simclr_loader_rejects_non_checkpoints(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="not a readable PyTorch checkpoint"):
        load_simclr_backbone(tmp_path / "junk.pth")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointFormatError, match="no state dict"):
        load_simclr_backbone(tmp_path / "list.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")
    with pytest.raises(CheckpointFormatError, match="not a torchvision-layout ResNet"):
        load_simclr_backbone(tmp_path / "vgg.pth")
    with pytest.raises(FileNotFoundError):
        load_simclr_backbone(tmp_path / "missing.pth")


def _torchvision_vgg19_state() -> dict:
    features = _randomised(VGG19Features()).features.state_dict()
    state = {f"features.{k}": v for k, v in features.items()}
    state.update({
        "classifier.0.weight": torch.zeros(4096, 25088), "classifier.0.bias": torch.zeros(4096),
        "classifier.3.weight": torch.zeros(4096, 4096), "classifier.3.bias": torch.zeros(4096),
        "classifier.6.weight": torch.zeros(1000, 4096), "classifier.6.bias": torch.zeros(1000),
    })
    return state


def test_vgg19_loader_reads_torchvision_state_dict(tmp_path):
    state = _torchvision_vgg19_state()
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    model = load_vgg19_features(tmp_path / "vgg19-dcbb9e9d.pth")
    torch.testing.assert_close(model.features[34].weight, state["features.34.weight"])
    out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 256, 8, 8)  # relu3_1 at H/4


def test_vgg19_loader_rejects_other_networks(tmp_path):
    state = _torchvision_vgg19_state()
    del state["features.34.weight"]  # a VGG-16 has no features.34
    torch.save(state, tmp_path / "vgg16.pth")
    with pytest.raises(CheckpointFormatError, match="missing 'features.34.weight'"):
        load_vgg19_features(tmp_path / "vgg16.pth")
    state = _torchvision_vgg19_state()
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, tmp_path / "grey.pth")
    with pytest.raises(CheckpointFormatError, match="has shape"):
        load_vgg19_features(tmp_path / "grey.pth")
    torch.save(ResNet50Group1().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointFormatError):
        load_vgg19_features(tmp_path / "resnet.pth")
