import json

import pytest
import torch
import yaml

from model_export.ablation import REFERENCE, VARIANTS, compare, main, variant_config
from model_export.config import ExperimentConfig, load_config


def _base(data_dir, steps=2):
    return {
        "name": "abl",
        "model": {"backbone_checkpoint": None, "attention_window": 4, "pyramid_channels": 16,
                  "latent_channels": [8, 8, 8, 8], "decoder_channels": 16},
        "loss": {"alpha": [100.0, 200.0, 400.0, 800.0], "beta": [0.1, 0.2, 0.3, 0.4],
                 "gamma": [1.0, 0.9, 0.8, 0.7]},
        "train": {"data_dir": str(data_dir), "val_dir": str(data_dir), "crop": 64, "batch_size": 2,
                  "steps": steps, "log_every": 1, "eval_every": 100, "checkpoint_every": 1, "lr": 1e-3,
                  "lr_schedule": [[0.0, 1e-3]], "threads": 1},
    }


def test_variants_change_only_backbone_and_attention(small_image_dir):
    base = ExperimentConfig.from_dict(_base(small_image_dir))
    reference = variant_config(base, REFERENCE).to_dict()
    for variant, (overrides, _) in VARIANTS.items():
        config = variant_config(base, variant).to_dict()
        assert config["name"] == f"abl-{variant}"
        assert config["loss"] == reference["loss"] and config["train"] == reference["train"]
        changed = {k for k in config["model"] if config["model"][k] != reference["model"][k]}
        assert changed <= set(overrides)
        assert {config["model"]["backbone"], config["model"]["attention"]} == {overrides["backbone"],
                                                                                overrides["attention"]}
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "vgg")


def test_a_variant_with_another_backbone_keeps_the_base_perceptual_features(small_image_dir):
    data = _base(small_image_dir)
    data["model"]["backbone_checkpoint"] = "checkpoints/simclr_backbone.pt"
    base = ExperimentConfig.from_dict(data)
    reference = variant_config(base, REFERENCE)
    longer = variant_config(base, "simclr7000_encoder")
    assert reference.model.backbone_checkpoint == "checkpoints/simclr_backbone.pt"
    assert longer.model.backbone_checkpoint == "checkpoints/simclr_backbone_7000.pt"
    assert longer.loss.perceptual_checkpoint == reference.loss.perceptual_checkpoint == "checkpoints/simclr_backbone.pt"


def test_random_backbone_variant_is_frozen_at_the_seeded_initialisation():
    from model_export.backbone import ResNet50Group1, load_simclr_backbone
    from model_export.model import SSLIC

    data = load_config("configs/ablation_long.yaml").to_dict()
    data["model"].update(latent_channels=[8, 8, 8, 8], pyramid_channels=16, decoder_channels=16)
    config = variant_config(ExperimentConfig.from_dict(data), "random_encoder")
    assert config.model.backbone_checkpoint is None
    assert config.loss.perceptual_checkpoint == "checkpoints/simclr_backbone.pt"
    torch.manual_seed(config.train.seed)
    model = SSLIC(config.model)
    torch.manual_seed(config.train.seed)
    expected = ResNet50Group1()
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    assert torch.equal(model.encoder.backbone.conv1.weight, expected.conv1.weight)
    pretrained = load_simclr_backbone("checkpoints/simclr_backbone.pt")
    assert not torch.allclose(model.encoder.backbone.conv1.weight, pretrained.conv1.weight)


def test_every_backbone_a_variant_names_is_committed_and_loads():
    from model_export.ablation import REPO
    from model_export.backbone import load_simclr_backbone

    named = {overrides.get("backbone_checkpoint") for overrides, _ in VARIANTS.values()} - {None}
    assert named
    for path in named:
        backbone = load_simclr_backbone(REPO / path)
        assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 256, 8, 8)


def test_compare_measures_rate_savings_against_the_reference():
    curve = {"bpp": [0.1, 0.25, 0.5, 1.0], "psnr": [24.0, 27.0, 30.0, 33.0]}
    cheaper = {"bpp": [b * 0.8 for b in curve["bpp"]], "psnr": curve["psnr"]}
    disjoint = {"bpp": curve["bpp"], "psnr": [10.0, 11.0, 12.0, 13.0]}
    results = {name: {"rd": {"val": c}} for name, c in
               ((REFERENCE, curve), ("simclr_none", cheaper), ("simclr_both", disjoint))}
    table = compare(results)
    assert table[REFERENCE]["val"]["bd_rate_percent"] == pytest.approx(0.0, abs=1e-9)
    assert table["simclr_none"]["val"]["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-6)
    assert table["simclr_none"]["val"]["bd_psnr_db"] > 0
    assert table["simclr_both"]["val"]["bd_rate_percent"] is None
    assert "overlap" in table["simclr_both"]["val"]["error"]


def test_ablation_trains_every_variant_on_the_same_budget_and_writes_the_report(tmp_path, small_image_dir):
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(_base(small_image_dir, steps=2)))
    variants = f"{REFERENCE},learned_encoder,simclr_decoder"
    args = ["--base", str(base_path), "--variants", variants, "--runs-dir", str(tmp_path / "runs"),
            "--kodak", str(small_image_dir), "--kodak-limit", "2", "--out", str(tmp_path / "out")]
    report = main(args, log=lambda _: None)
    assert list(report["variants"]) == variants.split(",")
    for result in report["variants"].values():
        assert result["training"]["steps"] == 2
        for dataset, images in (("val", 6), ("kodak", 2)):
            assert len(result["rd"][dataset]["bpp"]) == 4 and len(result["rd"][dataset]["psnr"]) == 4
            assert all(b > 0 for b in result["rd"][dataset]["bpp"])
            assert report["datasets"][dataset]["images"] == images
    learned = report["variants"]["learned_encoder"]["training"]["trainable_parameters"]
    assert learned > report["variants"][REFERENCE]["training"]["trainable_parameters"]
    saved = json.loads((tmp_path / "out" / "ablations.json").read_text())
    assert saved["bd_vs_reference"].keys() == report["variants"].keys()
    markdown = (tmp_path / "out" / "ablations.md").read_text()
    assert all(f"`{v}`" in markdown for v in variants.split(","))
    assert (tmp_path / "out" / "ablations_rd.png").stat().st_size > 10_000

    again = main(args + ["--train-only"], log=lambda _: None)
    assert again is None
    for variant in variants.split(","):
        log = (tmp_path / "runs" / variant / "train.log").read_text()
        assert log.count("step 2 ") == 1

    # measurements are reused while the weights and the data are unchanged, redone when they are not
    stale = tmp_path / "runs" / "simclr_decoder" / "measured.json"
    entry = json.loads(stale.read_text())
    entry["key"]["weights_sha256"] = "0" * 64
    entry["rd"]["val"]["psnr"] = [0.0] * 4
    stale.write_text(json.dumps(entry))
    lines = []
    repeated = main(args, log=lines.append)
    assert sum("(measured before)" in line for line in lines) == 2
    assert not any(line.startswith("simclr_decoder (measured before)") for line in lines)
    assert repeated["variants"]["simclr_decoder"]["rd"] == report["variants"]["simclr_decoder"]["rd"]
    assert repeated["bd_vs_reference"] == report["bd_vs_reference"]


def test_variants_can_be_compared_with_the_reference_of_an_earlier_report(tmp_path, small_image_dir):
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(_base(small_image_dir, steps=2)))
    common = ["--base", str(base_path), "--runs-dir", str(tmp_path / "runs"), "--kodak", str(small_image_dir),
              "--kodak-limit", "2"]
    first = main(common + ["--variants", REFERENCE, "--out", str(tmp_path / "first")], log=lambda _: None)
    earlier = tmp_path / "first" / "ablations.json"
    later = main(common + ["--variants", "simclr_none", "--reference-report", str(earlier),
                           "--out", str(tmp_path / "later")], log=lambda _: None)
    assert list(later["variants"]) == [REFERENCE, "simclr_none"]
    assert later["variants"][REFERENCE]["rd"] == first["variants"][REFERENCE]["rd"]
    assert later["variants"][REFERENCE]["from_report"] == str(earlier)
    assert later["bd_vs_reference"][REFERENCE]["val"]["bd_psnr_db"] == pytest.approx(0.0, abs=1e-9)
    assert f"`{earlier}`'s" in (tmp_path / "later" / "ablations.md").read_text()

    with pytest.raises(SystemExit, match="leave it out"):
        main(common + ["--variants", f"{REFERENCE},simclr_none", "--reference-report", str(earlier),
                       "--out", str(tmp_path / "x")], log=lambda _: None)
    with pytest.raises(SystemExit, match="must include the reference"):
        main(common + ["--variants", "simclr_none", "--out", str(tmp_path / "x")], log=lambda _: None)
    other = _base(small_image_dir, steps=3)
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))
    with pytest.raises(SystemExit, match="another base config"):
        main(["--base", str(other_path), "--runs-dir", str(tmp_path / "runs3"), "--kodak", str(small_image_dir),
              "--kodak-limit", "2", "--variants", "simclr_none", "--reference-report", str(earlier),
              "--out", str(tmp_path / "x")], log=lambda _: None)
    with pytest.raises(SystemExit, match="other datasets"):
        main(common + ["--kodak-limit", "1", "--variants", "simclr_none", "--reference-report", str(earlier),
                       "--out", str(tmp_path / "x")], log=lambda _: None)
    with pytest.raises(SystemExit, match="not an ablations report"):
        main(common + ["--variants", "simclr_none", "--reference-report", str(tmp_path / "missing.json"),
                       "--out", str(tmp_path / "x")], log=lambda _: None)
