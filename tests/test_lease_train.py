import json

import torch
import yaml

from bench.lease_train import main
from model_export.train import main as train_main


def test_lease_call_times_both_layouts_trains_in_the_faster_and_resumes(tmp_path, tiny_config_file):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    layouts = main(["--config", str(tiny_config_file), "--run-dir", str(run_dir), "--out", str(out),
                    "--device", "cpu", "--loader-threads", "2", "--warmup", "0", "--steps", "1",
                    "--time-budget", "0.05", "--snapshots", "0.5"])
    assert set(layouts["timings"]) == {"contiguous", "channels_last"}
    faster = min(layouts["timings"], key=lambda layout: layouts["timings"][layout]["median_s_per_step"])
    assert layouts["chosen"] == faster
    assert json.loads((out / "layouts.json").read_text()) == layouts
    config = yaml.safe_load((run_dir / "lease_config.yaml").read_text())
    assert config["train"]["channels_last"] is (faster == "channels_last")
    assert config["name"] == yaml.safe_load(tiny_config_file.read_text())["name"]
    snapshots = sorted(out.glob("snapshot-*.pt"))
    assert snapshots and (out / "train.log").is_file() and (out / "profile.txt").is_file()
    assert len(list(out.iterdir())) <= 8  # what one call may bring back
    assert (run_dir / "last.pt").is_file()
    step = torch.load(run_dir / "last.pt", weights_only=False)["step"]
    train_main(["--config", str(run_dir / "lease_config.yaml"), "--run-dir", str(run_dir), "--resume", "--no-val",
                "--device", "cpu", "--time-budget", "0.1", "--snapshots", "0.9", "--snapshot-dir", str(out), "--quiet"])
    assert len(list(out.glob("snapshot-*.pt"))) > len(snapshots)
    assert torch.load(run_dir / "last.pt", weights_only=False)["step"] > step
