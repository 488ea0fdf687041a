import json

import yaml

from bench.train_step import main


def test_train_step_benchmark_times_both_precisions_and_writes_the_report(tmp_path, small_image_dir):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bench",
        "model": {"backbone_checkpoint": None, "attention_window": 4, "pyramid_channels": 16,
                  "latent_channels": [8, 8, 8], "decoder_channels": 16},
        "loss": {"alpha": [100.0, 300.0, 900.0], "beta": [0.1, 0.2, 0.4], "gamma": [1.0, 0.9, 0.8]},
        "train": {"data_dir": str(small_image_dir), "val_dir": str(small_image_dir), "crop": 64, "batch_size": 2},
    }))
    out = tmp_path / "report.json"
    report = main(["--config", str(config), "--steps", "2", "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert len(report["steps_s"]["fp32"]) == 2 and len(report["steps_s"]["bf16"]) == 2
    assert all(s > 0 for s in report["median_s_per_step"].values())
    assert report["speedup_bf16"] > 0
