import json
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from bench.profile_train_step import kernel_time_ms, main


def test_profile_of_training_steps_reports_times_waits_and_the_costliest_operators(tmp_path, tiny_config_file):
    out = tmp_path / "profile"
    report = main(["--config", str(tiny_config_file), "--device", "cpu", "--loader-threads", "2",
                   "--batch-size", "3", "--warmup", "1", "--steps", "2", "--out", str(out)])
    assert json.loads((out / "profile.json").read_text()) == report
    assert report["batch_size"] == 3 and len(report["steps_s"]) == 2 and report["median_s_per_step"] > 0
    assert report["median_s_per_step_unprofiled"] > 0 and report["channels_last"] is False
    assert report["batch_wait_ms_per_step"] >= 0 and report["device_busy_fraction"] is None
    names = [row["name"] for row in report["top_by_cpu_time"]]
    assert any("conv" in name for name in names)
    assert all(row["calls_per_step"] > 0 for row in report["top_by_cpu_time"])
    assert "Self CPU" in (out / "profile.txt").read_text()


def test_profile_takes_the_channels_last_layout(tmp_path, tiny_config_file):
    report = main(["--config", str(tiny_config_file), "--device", "cpu", "--channels-last", "--batch-size", "2",
                   "--warmup", "0", "--steps", "1", "--out", str(tmp_path)])
    assert report["channels_last"] is True and report["device_ms_per_step"] is None


def test_profile_refuses_zero_steps(tiny_config_file):
    with pytest.raises(SystemExit, match="--steps"):
        main(["--config", str(tiny_config_file), "--device", "cpu", "--steps", "0"])


def test_device_time_counts_each_kernel_once():
    """An operator's self device time repeats its kernels' time; only the device's events are summed."""
    averages = [
        SimpleNamespace(device_type=DeviceType.CPU, self_device_time_total=7000, is_user_annotation=False),
        SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=4000, is_user_annotation=False),
        SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=3000, is_user_annotation=False),
        SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=9000, is_user_annotation=True),
    ]
    assert kernel_time_ms(averages) == 7.0
