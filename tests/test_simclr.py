import argparse

import torch

from model_export.backbone import load_simclr_backbone
from model_export.simclr import augment, nt_xent, parse_args, train_simclr


def test_nt_xent_prefers_matching_views():
    z = torch.randn(8, 16)
    aligned = nt_xent(z, z + 0.01 * torch.randn_like(z), temperature=0.2)
    shuffled = nt_xent(z, z[torch.randperm(8)], temperature=0.2)
    assert aligned < shuffled
    assert aligned > 0


def test_augment_makes_distinct_valid_views():
    x = torch.rand(4, 3, 64, 64)
    generator = torch.Generator().manual_seed(1)
    v1 = augment(x, 32, generator)
    v2 = augment(x, 32, generator)
    assert v1.shape == (4, 3, 32, 32)
    assert v1.min() >= 0 and v1.max() <= 1
    assert not torch.allclose(v1, v2)


def test_simclr_loss_decreases_on_a_tiny_run(tmp_path, small_image_dir):
    args: argparse.Namespace = parse_args([
        "--data", str(small_image_dir), "--out", str(tmp_path / "bb.pt"), "--steps", "60", "--batch-size", "16",
        "--source-crop", "96", "--view-size", "48", "--lr", "3e-3", "--log-every", "10", "--checkpoint-every", "30",
        "--quiet",
    ])
    result = train_simclr(args)
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.2, losses  # mean NT-Xent of the last 10 steps vs the first 10
    backbone = load_simclr_backbone(tmp_path / "bb.pt")
    assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 256, 8, 8)


def test_simclr_resumes_where_it_stopped(tmp_path, small_image_dir):
    common = ["--data", str(small_image_dir), "--out", str(tmp_path / "bb.pt"), "--batch-size", "4",
              "--source-crop", "64", "--view-size", "32", "--log-every", "1", "--checkpoint-every", "1", "--quiet"]
    first = train_simclr(parse_args(common + ["--steps", "2"]))
    assert first["step"] == 2
    resumed = train_simclr(parse_args(common + ["--steps", "4", "--resume"]))
    assert resumed["step"] == 4
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]


def test_simclr_in_bf16_channels_last_records_its_precision(tmp_path, small_image_dir):
    from model_export.runtime import native_bf16

    args = parse_args(["--data", str(small_image_dir), "--out", str(tmp_path / "bb.pt"), "--steps", "2",
                       "--batch-size", "4", "--source-crop", "64", "--view-size", "32", "--log-every", "1",
                       "--precision", "bf16", "--channels-last", "--quiet"])
    result = train_simclr(args)
    assert result["step"] == 2 and all(h["loss"] > 0 for h in result["history"])
    meta = torch.load(tmp_path / "bb.pt", weights_only=True)["meta"]
    assert meta["precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    backbone = load_simclr_backbone(tmp_path / "bb.pt")
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
