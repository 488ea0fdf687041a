"""Shared fixtures: a tiny model, small real images cut from the training set, repository paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_export.config import ModelConfig
from model_export.model import SSLIC

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_model_config(**overrides) -> ModelConfig:
    values = dict(
        backbone="simclr",
        backbone_checkpoint=None,
        attention="encoder",
        attention_window=4,
        attention_pool=2,
        pyramid_channels=16,
        latent_channels=[8, 8, 8],
        decoder_channels=16,
    )
    values.update(overrides)
    return ModelConfig(**values)


def offset_model(seed: int = 0) -> SSLIC:
    """A tiny SSLIC whose decoder has input offsets: the entropy models' medians and offsets drawn from ±0.3."""
    torch.manual_seed(seed)
    model = SSLIC(tiny_model_config(decoder_input_offsets=True), load_backbone_weights=False).eval()
    with torch.no_grad():
        for offsets, bottleneck in zip(model.decoder.input_offsets, model.entropy):
            offsets.medians.copy_(bottleneck.medians().reshape(-1))
            offsets.offsets.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("SSLIC_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def train_images_dir() -> Path:
    path = SHARED_DATA / "train"
    if not path.is_dir():
        pytest.skip(f"{path} not found (the shared data folder must sit beside the repository)")
    return path


@pytest.fixture(scope="session")
def small_image_dir(tmp_path_factory, train_images_dir) -> Path:
    """Six 160×160 crops of real training photos (written to a temporary folder, never into the repo)."""
    out = tmp_path_factory.mktemp("small_images")
    paths = sorted(train_images_dir.glob("*.png"))[::30][:6]
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            crop = image.crop((w // 2 - 80, h // 2 - 80, w // 2 + 80, h // 2 + 80))
            crop.save(out / f"img{index}.png")
    return out


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture
def tiny_config_file(tmp_path, small_image_dir) -> Path:
    """A training config of a tiny model on the small images, as a YAML file (for the command-line tools)."""
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny",
        "model": {"backbone_checkpoint": None, "attention_window": 4, "pyramid_channels": 16,
                  "latent_channels": [8, 8, 8], "decoder_channels": 16},
        "loss": {"alpha": [100.0, 300.0, 900.0], "beta": [0.1, 0.2, 0.4], "gamma": [1.0, 0.9, 0.8]},
        "train": {"data_dir": str(small_image_dir), "val_dir": str(small_image_dir), "crop": 64, "batch_size": 2},
    }))
    return path
