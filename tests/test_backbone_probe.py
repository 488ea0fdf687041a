"""The linear probe from backbone features to pixels: exact where the features are the pixels, chance where constant."""

import json

import numpy as np
import torch
import torch.nn.functional as F

from model_export import backbone_probe
from model_export.backbone import ResNet50Group1
from model_export.data import load_image


def _photos(small_image_dir):
    """Four real 160² crops to fit on, two others to measure on."""
    images = [load_image(p) for p in sorted(small_image_dir.glob("*.png"))]
    return images[:4], images[4:]


def test_pixels_as_features_reconstruct_exactly(small_image_dir):
    images, val = _photos(small_image_dir)
    space_to_depth = lambda x: F.pixel_unshuffle(x, backbone_probe.BLOCK)  # noqa: E731
    weights = backbone_probe.fit_linear_probe(space_to_depth, images, crop=128, per_image=2, ridge=1e-9)
    scores = backbone_probe.measure_linear_probe(space_to_depth, weights, val)
    assert scores["rgb"] > 55.0 and scores["luma"] > 55.0 and scores["chroma"] > 55.0


def test_constant_features_reach_only_the_mean_block(small_image_dir):
    images, val = _photos(small_image_dir)
    constant = lambda x: torch.zeros(1, 8, x.shape[2] // 4, x.shape[3] // 4)  # noqa: E731
    weights = backbone_probe.fit_linear_probe(constant, images, crop=128, per_image=2)
    scores = backbone_probe.measure_linear_probe(constant, weights, val)
    assert 5.0 < scores["rgb"] < 18.0
    pooled = lambda x: F.avg_pool2d(x, 4).repeat(1, 3, 1, 1)  # noqa: E731
    better = backbone_probe.measure_linear_probe(pooled, backbone_probe.fit_linear_probe(pooled, images, crop=128, per_image=2), val)
    assert better["rgb"] > scores["rgb"] + 5.0


def test_cli_writes_a_report_per_backbone(small_image_dir, tmp_path):
    checkpoint = tmp_path / "backbone.pt"
    torch.manual_seed(1)
    torch.save({"kind": "sslic-simclr-backbone", "state_dict": ResNet50Group1().state_dict()}, checkpoint)
    out = tmp_path / "probe.json"
    train, val = tmp_path / "train", tmp_path / "val"
    paths = sorted(small_image_dir.glob("*.png"))
    for folder, chosen in ((train, paths[:4]), (val, paths[4:])):
        folder.mkdir()
        for path in chosen:
            (folder / path.name).write_bytes(path.read_bytes())
    code = backbone_probe.main(
        ["--backbones", f"random,{checkpoint}", "--train-dir", str(train), "--val-dir", str(val), "--crop", "64",
         "--per-image", "1", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert code == 0
    assert set(report["backbones"]) == {"random", str(checkpoint)}
    for result in report["backbones"].values():
        assert np.isfinite(result["val"]["rgb"]) and result["val"]["rgb"] > 10.0
